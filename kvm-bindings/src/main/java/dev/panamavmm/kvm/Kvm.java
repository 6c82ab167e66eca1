package dev.panamavmm.kvm;

import static java.lang.foreign.ValueLayout.JAVA_INT;

import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmCpuid2;
import dev.panamavmm.kvm.bindings.KvmCpuidEntry2;
import dev.panamavmm.kvm.bindings.KvmMsrList;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;

/** The {@code /dev/kvm} system fd: what the host supports, and the factory for VMs. */
public final class Kvm implements AutoCloseable {
    public static final Path DEFAULT_DEVICE = Path.of("/dev/kvm");

    /** Upper bound when asking for the supported CPUID leaves or MSR indices (grown on E2BIG). */
    private static final int MAX_LIST_ENTRIES = 1 << 16;

    private final int fd;
    private boolean closed;

    private Kvm(int fd) {
        this.fd = fd;
    }

    /** Opens {@code /dev/kvm} and checks its API version. */
    public static Kvm open() {
        return open(DEFAULT_DEVICE);
    }

    /**
     * Opens a KVM device. A path that cannot be opened, or that is not KVM, throws a
     * {@link KvmException} whose message says which.
     */
    public static Kvm open(Path device) {
        int fd = LibC.open(device.toString(), LibcConstants.O_RDWR | LibcConstants.O_CLOEXEC, 0);
        var kvm = new Kvm(fd);
        try {
            int version;
            try {
                version = kvm.apiVersion();
            } catch (KvmException e) {
                throw new KvmException(
                        "KVM_GET_API_VERSION", device + " is not a KVM device (" + Errno.describe(e.errno()) + ")");
            }
            if (version != KvmConstants.KVM_API_VERSION) {
                throw new KvmException(
                        "KVM_GET_API_VERSION", "API version " + version + ", expected " + KvmConstants.KVM_API_VERSION);
            }
            return kvm;
        } catch (RuntimeException e) {
            kvm.close();
            throw e;
        }
    }

    public int fd() {
        return fd;
    }

    public int apiVersion() {
        return LibC.ioctl(fd, Ioctls.KVM_GET_API_VERSION, 0L);
    }

    /** KVM_CHECK_EXTENSION: 0 when absent, otherwise 1 or a capability-specific value. */
    public int checkExtension(int capability) {
        return LibC.ioctl(fd, Ioctls.KVM_CHECK_EXTENSION, capability);
    }

    public boolean hasExtension(int capability) {
        return checkExtension(capability) > 0;
    }

    /** Bytes to mmap from each vCPU fd: {@code kvm_run} plus the pages that follow it. */
    public int vcpuMmapSize() {
        return LibC.ioctl(fd, Ioctls.KVM_GET_VCPU_MMAP_SIZE, 0L);
    }

    /** The recommended (NR_VCPUS) and maximum (MAX_VCPUS) vCPU counts per VM. */
    public int recommendedVcpus() {
        int n = checkExtension(KvmConstants.KVM_CAP_NR_VCPUS);
        return n > 0 ? n : 4; // the KVM API documents 4 when the capability is absent
    }

    public int maxVcpus() {
        int n = checkExtension(KvmConstants.KVM_CAP_MAX_VCPUS);
        return n > 0 ? n : recommendedVcpus();
    }

    public int maxMemslots() {
        return checkExtension(KvmConstants.KVM_CAP_NR_MEMSLOTS);
    }

    /** The host's answer to KVM_GET_SUPPORTED_CPUID, asked once per Kvm (it does not change). */
    private volatile byte[] supportedCpuid;

    /**
     * KVM_GET_SUPPORTED_CPUID: a {@code kvm_cpuid2} allocated in {@code arena}, its {@code nent}
     * set to the number of entries the host filled in. Asked once, then copied (clones need it each time).
     */
    public MemorySegment supportedCpuid(Arena arena) {
        byte[] cached = supportedCpuid;
        if (cached == null) {
            try (var scratch = Arena.ofConfined()) {
                cached = querySupportedCpuid(scratch).toArray(ValueLayout.JAVA_BYTE);
            }
            supportedCpuid = cached;
        }
        var copy = arena.allocate(cached.length, KvmCpuid2.BYTE_ALIGNMENT);
        MemorySegment.copy(MemorySegment.ofArray(cached), 0, copy, 0, cached.length);
        return copy;
    }

    private MemorySegment querySupportedCpuid(Arena arena) {
        for (int n = 128; ; n *= 2) {
            var cpuid =
                    arena.allocate(KvmCpuid2.ENTRIES + (long) n * KvmCpuidEntry2.BYTE_SIZE, KvmCpuid2.BYTE_ALIGNMENT);
            KvmCpuid2.nent(cpuid, n);
            int r = LibC.ioctlOrErrno(fd, Ioctls.KVM_GET_SUPPORTED_CPUID, cpuid);
            if (r >= 0)
                return cpuid.asSlice(0, KvmCpuid2.ENTRIES + (long) KvmCpuid2.nent(cpuid) * KvmCpuidEntry2.BYTE_SIZE);
            if (-r != LibcConstants.E2BIG || n >= MAX_LIST_ENTRIES)
                throw new KvmException("KVM_GET_SUPPORTED_CPUID", -r);
        }
    }

    /** KVM_GET_MSR_INDEX_LIST: every MSR the host lets a guest have saved and restored. */
    public int[] msrIndexList() {
        try (var arena = Arena.ofConfined()) {
            var probe = arena.allocate(KvmMsrList.LAYOUT);
            KvmMsrList.nmsrs(probe, 0);
            // With nmsrs = 0 the kernel answers E2BIG and writes the count it needs.
            int r = LibC.ioctlOrErrno(fd, Ioctls.KVM_GET_MSR_INDEX_LIST, probe);
            if (r < 0 && -r != LibcConstants.E2BIG) throw new KvmException("KVM_GET_MSR_INDEX_LIST", -r);
            int n = KvmMsrList.nmsrs(probe);
            if (n < 0 || n > MAX_LIST_ENTRIES)
                throw new KvmException("KVM_GET_MSR_INDEX_LIST", "implausible count " + n);
            var list = arena.allocate(KvmMsrList.INDICES + 4L * n, KvmMsrList.BYTE_ALIGNMENT);
            KvmMsrList.nmsrs(list, n);
            LibC.ioctl(fd, Ioctls.KVM_GET_MSR_INDEX_LIST, list);
            int filled = Math.min(n, KvmMsrList.nmsrs(list));
            return list.asSlice(KvmMsrList.INDICES, 4L * filled).toArray(JAVA_INT);
        }
    }

    /** Creates a VM; its memory mappings and vCPU pages belong to {@code arena}. */
    public VmFd createVm(Arena arena) {
        int vmFd = LibC.ioctl(fd, Ioctls.KVM_CREATE_VM, 0L);
        return new VmFd(this, vmFd, arena);
    }

    public static HostFlavour hostFlavour() {
        return HostFlavour.detect();
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            LibC.close(fd);
        }
    }
}
