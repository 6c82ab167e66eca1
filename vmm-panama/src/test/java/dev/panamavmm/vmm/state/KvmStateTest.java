package dev.panamavmm.vmm.state;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmMsrEntry;
import dev.panamavmm.kvm.bindings.KvmMsrs;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.vmm.vcpu.Cpuid;
import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.stream.IntStream;

/**
 * A vCPU state saved on another kind of CPU holds MSRs this host's KVM does not have, or values
 * it refuses: a restore leaves them out, writes every other MSR and says which it left out.
 */
class KvmStateTest {
    private static final int SYSENTER_CS = 0x174;
    /** An index no KVM lists. */
    private static final int NO_SUCH_MSR = 0x4b56_4eff;
    /** IA32_ARCH_CAPABILITIES: every bit set is more than any host's KVM offers, wherever it is listed. */
    private static final int ARCH_CAPABILITIES = 0x10a;

    @KvmTest
    void msrsTheHostLacksOrRefusesAreLeftOutAndTheRestWritten() {
        try (var kvm = Kvm.open();
                var arena = Arena.ofShared();
                var vm = kvm.createVm(arena)) {
            vm.createIrqchip();
            int xsave = Math.max(vm.checkExtension(KvmConstants.KVM_CAP_XSAVE2), 4096);
            int[] host = kvm.msrIndexList();
            Arrays.sort(host);
            try (var source = vm.createVcpu(0);
                    var target = vm.createVcpu(1)) {
                source.setCpuid2(Cpuid.forVcpu(kvm.supportedCpuid(arena), 0, 2, arena));
                target.setCpuid2(Cpuid.forVcpu(kvm.supportedCpuid(arena), 1, 2, arena));
                var saved = KvmState.capture(source, new int[] {SYSENTER_CS}, xsave);
                var foreign = new VcpuState(
                        1,
                        saved.regs(),
                        saved.sregs(),
                        saved.xsave(),
                        saved.xcrs(),
                        saved.lapic(),
                        new int[] {NO_SUCH_MSR, ARCH_CAPABILITIES, SYSENTER_CS},
                        new long[] {1, -1L, 0x23},
                        saved.events(),
                        saved.mpState(),
                        saved.debugregs());

                int[] leftOut = KvmState.restore(target, foreign, xsave, host);

                // Refused (with every bit set) where the host's KVM checks the value, as on this machine; left
                // out before writing where it is not listed at all.
                assertArrayEquals(
                        new int[] {ARCH_CAPABILITIES, NO_SUCH_MSR},
                        IntStream.of(leftOut).sorted().toArray());
                var written = KvmState.capture(target, new int[] {SYSENTER_CS}, xsave);
                assertEquals(0x23, written.msrValues()[0], "the MSR after the refused ones was written");
            }
        }
    }

    @KvmTest
    void theReadableMsrsProbedInBatchesAreTheOnesReadableOneByOne() {
        try (var kvm = Kvm.open();
                var arena = Arena.ofShared();
                var vm = kvm.createVm(arena)) {
            vm.createIrqchip();
            try (var vcpu = vm.createVcpu(0)) {
                vcpu.setCpuid2(Cpuid.forVcpu(kvm.supportedCpuid(arena), 0, 1, arena));
                // The host's list, with indices no KVM has among them (first, in a run, and last) and
                // more than one ioctl's worth of them in all.
                var candidates = IntStream.concat(
                                IntStream.of(NO_SUCH_MSR, NO_SUCH_MSR + 1),
                                IntStream.concat(
                                        IntStream.of(kvm.msrIndexList()),
                                        IntStream.range(0, KvmState.MAX_MSRS_PER_IOCTL)
                                                .map(i -> NO_SUCH_MSR - 1 - i)))
                        .toArray();
                var oneByOne = IntStream.of(candidates)
                        .filter(index -> {
                            var msrs = arena.allocate(KvmMsrs.ENTRIES + KvmMsrEntry.BYTE_SIZE, KvmMsrs.BYTE_ALIGNMENT);
                            KvmMsrs.nmsrs(msrs, 1);
                            KvmMsrEntry.index(KvmMsrs.entries(msrs, 0), index);
                            return vcpu.ioctl(Ioctls.KVM_GET_MSRS, msrs) == 1;
                        })
                        .toArray();
                assertTrue(oneByOne.length > 10, "this host's KVM reads " + oneByOne.length + " MSRs");
                assertArrayEquals(oneByOne, KvmState.readableMsrs(vcpu, candidates));
            }
        }
    }
}
