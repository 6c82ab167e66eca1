package dev.panamavmm.vmm.vcpu;

import dev.panamavmm.kvm.bindings.KvmCpuid2;
import dev.panamavmm.kvm.bindings.KvmCpuidEntry2;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * The CPUID table one vCPU gets: the host's supported set ({@code KVM_GET_SUPPORTED_CPUID}) with
 * the topology made true for this VM — one socket of {@code count} single-threaded cores, APIC ID
 * = vCPU index — and the hypervisor bit set, so a guest counts its CPUs right and knows it is
 * virtualised. Everything else passes through as KVM offers it.
 */
public final class Cpuid {
    private Cpuid() {}

    static final int HYPERVISOR_BIT = 1 << 31; // leaf 1 ECX
    static final int HTT_BIT = 1 << 28; // leaf 1 EDX

    /** A copy of {@code supported} (a {@code kvm_cpuid2}) adjusted for vCPU {@code index} of {@code count}. */
    public static MemorySegment forVcpu(MemorySegment supported, int index, int count, Arena arena) {
        if (count < 1 || index < 0 || index >= count)
            throw new IllegalArgumentException("vCPU " + index + " of " + count);
        int n = KvmCpuid2.nent(supported);
        long bytes = KvmCpuid2.ENTRIES + (long) n * KvmCpuidEntry2.BYTE_SIZE;
        var table = arena.allocate(bytes, KvmCpuid2.BYTE_ALIGNMENT);
        MemorySegment.copy(supported, 0, table, 0, bytes);
        int coreBits = 32 - Integer.numberOfLeadingZeros(Math.max(count - 1, 0)); // ceil(log2(count))
        for (int i = 0; i < n; i++) {
            var e = KvmCpuid2.entries(table, i);
            switch (KvmCpuidEntry2.function(e)) {
                case 0x1 -> {
                    int ebx = KvmCpuidEntry2.ebx(e) & 0x0000_ffff;
                    KvmCpuidEntry2.ebx(e, ebx | (index << 24) | (Math.min(count, 255) << 16));
                    KvmCpuidEntry2.ecx(e, KvmCpuidEntry2.ecx(e) | HYPERVISOR_BIT);
                    int edx = KvmCpuidEntry2.edx(e);
                    KvmCpuidEntry2.edx(e, count > 1 ? edx | HTT_BIT : edx & ~HTT_BIT);
                }
                case 0x4 -> {
                    // Cores per package - 1 in [31:26]; L3 (level 3) is shared by all cores.
                    int eax = KvmCpuidEntry2.eax(e) & 0x0000_3fff;
                    int level = (eax >>> 5) & 0x7;
                    int sharing = level >= 3 ? count - 1 : 0;
                    if ((eax & 0x1f) != 0) eax |= ((count - 1) << 26) | (sharing << 14);
                    KvmCpuidEntry2.eax(e, eax);
                }
                case 0xb, 0x1f -> {
                    int level = KvmCpuidEntry2.index(e);
                    if (level == 0) { // SMT level: one thread per core
                        setLeaf(e, 0, 1, (1 << 8) | level, index);
                    } else if (level == 1) { // core level: count cores per package
                        setLeaf(e, coreBits, count, (2 << 8) | level, index);
                    } else { // no further levels
                        setLeaf(e, 0, 0, level, index);
                    }
                }
                case 0x8000_0008 -> KvmCpuidEntry2.ecx(e, (KvmCpuidEntry2.ecx(e) & ~0xff) | (count - 1));
                default -> {}
            }
        }
        return table;
    }

    private static void setLeaf(MemorySegment e, int eax, int ebx, int ecx, int edx) {
        KvmCpuidEntry2.eax(e, eax);
        KvmCpuidEntry2.ebx(e, ebx);
        KvmCpuidEntry2.ecx(e, ecx);
        KvmCpuidEntry2.edx(e, edx);
    }

    /** The entry for {@code function}/{@code index} in a {@code kvm_cpuid2}, or null. */
    public static MemorySegment find(MemorySegment table, int function, int index) {
        for (int i = 0; i < KvmCpuid2.nent(table); i++) {
            var e = KvmCpuid2.entries(table, i);
            if (KvmCpuidEntry2.function(e) == function && KvmCpuidEntry2.index(e) == index) return e;
        }
        return null;
    }
}
