package dev.panamavmm.kvm;

import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.MemorySegment;

/**
 * A vCPU fd and its {@code kvm_run} page. The state ioctls take caller-owned segments laid out
 * as the matching binding ({@code KvmRegs.LAYOUT}, ...) so hot paths allocate nothing.
 */
public final class VcpuFd implements AutoCloseable {
    private final int id;
    private final int fd;
    private final MemorySegment run;
    private boolean closed;

    VcpuFd(int id, int fd, MemorySegment run) {
        this.id = id;
        this.fd = fd;
        this.run = run;
    }

    public int id() {
        return id;
    }

    public int fd() {
        return fd;
    }

    /** The shared {@code kvm_run} mapping (read exits with {@code KvmRun}'s accessors). */
    public MemorySegment runPage() {
        return run;
    }

    /** KVM_RUN: 0 on an exit to read from {@link #runPage()}, or {@code -errno} (EINTR when kicked). */
    public int run() {
        return LibC.ioctlOrErrno(fd, Ioctls.KVM_RUN, MemorySegment.NULL);
    }

    /** Any vCPU ioctl with a struct argument; throws {@link KvmException} naming the ioctl on failure. */
    public int ioctl(long request, MemorySegment arg) {
        return LibC.ioctl(fd, request, arg);
    }

    public void getRegs(MemorySegment regs) {
        LibC.ioctl(fd, Ioctls.KVM_GET_REGS, regs);
    }

    public void setRegs(MemorySegment regs) {
        LibC.ioctl(fd, Ioctls.KVM_SET_REGS, regs);
    }

    public void getSregs(MemorySegment sregs) {
        LibC.ioctl(fd, Ioctls.KVM_GET_SREGS, sregs);
    }

    public void setSregs(MemorySegment sregs) {
        LibC.ioctl(fd, Ioctls.KVM_SET_SREGS, sregs);
    }

    /** KVM_SET_CPUID2 with a {@code kvm_cpuid2} (for example from {@link Kvm#supportedCpuid}). */
    public void setCpuid2(MemorySegment cpuid) {
        LibC.ioctl(fd, Ioctls.KVM_SET_CPUID2, cpuid);
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            LibC.close(fd);
        }
    }
}
