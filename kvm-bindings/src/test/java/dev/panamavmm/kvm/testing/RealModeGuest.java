package dev.panamavmm.kvm.testing;

import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.kvm.bindings.KvmRegs;
import dev.panamavmm.kvm.bindings.KvmSegment;
import dev.panamavmm.kvm.bindings.KvmSregs;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/** Hand-assembled real-mode code on a bare VM: the smallest guest a KVM test can run. */
public final class RealModeGuest {
    private RealModeGuest() {}

    /** Where the code is loaded and entered (one memslot of {@link #SIZE} bytes starts here). */
    public static final long ADDRESS = 0x1000;

    public static final long SIZE = 0x2000;

    /** Maps RAM at {@link #ADDRESS}, copies {@code code} there and creates vCPU 0 about to execute it. */
    public static VcpuFd load(VmFd vm, Arena arena, byte[] code) {
        var memory = LibC.mapInto(
                arena,
                SIZE,
                LibcConstants.PROT_READ | LibcConstants.PROT_WRITE,
                LibcConstants.MAP_PRIVATE | LibcConstants.MAP_ANONYMOUS,
                -1,
                0);
        MemorySegment.copy(MemorySegment.ofArray(code), 0, memory, 0, code.length);
        vm.setUserMemoryRegion(0, 0, ADDRESS, memory);
        var vcpu = vm.createVcpu(0);
        var sregs = arena.allocate(KvmSregs.LAYOUT);
        vcpu.getSregs(sregs);
        KvmSegment.base(KvmSregs.cs(sregs), 0);
        KvmSegment.selector(KvmSregs.cs(sregs), 0);
        vcpu.setSregs(sregs);
        var regs = arena.allocate(KvmRegs.LAYOUT);
        KvmRegs.rip(regs, ADDRESS);
        KvmRegs.rflags(regs, 0x2);
        vcpu.setRegs(regs);
        return vcpu;
    }
}
