package dev.panamavmm.kvm;

import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmClearDirtyLog;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmDirtyLog;
import dev.panamavmm.kvm.bindings.KvmEnableCap;
import dev.panamavmm.kvm.bindings.KvmIoeventfd;
import dev.panamavmm.kvm.bindings.KvmIrqLevel;
import dev.panamavmm.kvm.bindings.KvmIrqfd;
import dev.panamavmm.kvm.bindings.KvmPitConfig;
import dev.panamavmm.kvm.bindings.KvmUserspaceMemoryRegion;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.ref.Reference;
import java.util.Arrays;

/**
 * A VM fd: memslots, the in-kernel interrupt controllers and timers, and the factory for vCPUs.
 * Typed wrappers over the VM ioctls; policy (which slots, which devices) lives in the VMM.
 */
public final class VmFd implements AutoCloseable {
    private static final int IOAPIC_PINS = 24;
    /** KVM_MAX_IRQ_ROUTES on x86: no GSI routing entry can name a higher line. */
    private static final int MAX_IRQ_LINES = 4096;

    private final Kvm kvm;
    private final int fd;
    private final Arena arena;
    private boolean closed;

    /**
     * The structs {@link #irqLine} passes, in memory of their own: the VM's arena may be confined
     * to another thread. Freed with this object (an auto arena), never while it is reachable.
     */
    private final Arena irqLevelArena = Arena.ofAuto();
    /** Per line, the address of its pair in {@link #irqLevelArena}, 0 until first used; copy on write. */
    private volatile long[] irqLevels = new long[0];

    VmFd(Kvm kvm, int fd, Arena arena) {
        this.kvm = kvm;
        this.fd = fd;
        this.arena = arena;
    }

    public int fd() {
        return fd;
    }

    public Kvm kvm() {
        return kvm;
    }

    /** KVM_CHECK_EXTENSION on the VM: some answers (KVM_CAP_XSAVE2's size) are per VM. */
    public int checkExtension(int capability) {
        return LibC.ioctl(fd, Ioctls.KVM_CHECK_EXTENSION, capability);
    }

    /**
     * Maps {@code memory} at guest-physical {@code guestAddress} in {@code slot}; a size of zero
     * removes the slot. KVM keeps using the host address until the slot is removed.
     */
    public void setUserMemoryRegion(int slot, int flags, long guestAddress, MemorySegment memory) {
        try (var a = Arena.ofConfined()) {
            var region = a.allocate(KvmUserspaceMemoryRegion.LAYOUT);
            KvmUserspaceMemoryRegion.slot(region, slot);
            KvmUserspaceMemoryRegion.flags(region, flags);
            KvmUserspaceMemoryRegion.guestPhysAddr(region, guestAddress);
            KvmUserspaceMemoryRegion.memorySize(region, memory.byteSize());
            KvmUserspaceMemoryRegion.userspaceAddr(region, memory.address());
            LibC.ioctl(fd, Ioctls.KVM_SET_USER_MEMORY_REGION, region);
        }
    }

    /** Removes a memslot (KVM_SET_USER_MEMORY_REGION with size 0). */
    public void removeUserMemoryRegion(int slot, long guestAddress) {
        setUserMemoryRegion(slot, 0, guestAddress, MemorySegment.NULL);
    }

    /** Three pages of guest-physical space KVM needs for the real-mode TSS on Intel. */
    public void setTssAddress(long address) {
        LibC.ioctl(fd, Ioctls.KVM_SET_TSS_ADDR, address);
    }

    /** In-kernel PIC, IOAPIC and per-vCPU LAPICs. */
    public void createIrqchip() {
        LibC.ioctl(fd, Ioctls.KVM_CREATE_IRQCHIP, 0L);
    }

    /** In-kernel 8254 PIT (create after the irqchip). */
    public void createPit2(int flags) {
        try (var a = Arena.ofConfined()) {
            var config = a.allocate(KvmPitConfig.LAYOUT);
            KvmPitConfig.flags(config, flags);
            LibC.ioctl(fd, Ioctls.KVM_CREATE_PIT2, config);
        }
    }

    /**
     * KVM_IRQFD: a write to {@code eventfd} raises GSI {@code gsi} as an edge in the in-kernel
     * irqchip, without a VMM thread in between (virtio's used-buffer interrupts).
     */
    public void irqfd(int eventfd, int gsi) {
        try (var a = Arena.ofConfined()) {
            var s = a.allocate(KvmIrqfd.LAYOUT);
            KvmIrqfd.fd(s, eventfd);
            KvmIrqfd.gsi(s, gsi);
            LibC.ioctl(fd, Ioctls.KVM_IRQFD, s);
        }
    }

    /**
     * KVM_IOEVENTFD: a guest MMIO write of {@code length} bytes of value {@code datamatch} at
     * {@code address} signals {@code eventfd} inside KVM and the vCPU goes straight back into the
     * guest (virtio's QueueNotify). Other values at that address still exit to the VMM.
     */
    public void ioeventfd(int eventfd, long address, int length, long datamatch) {
        try (var a = Arena.ofConfined()) {
            var s = a.allocate(KvmIoeventfd.LAYOUT);
            KvmIoeventfd.datamatch(s, datamatch);
            KvmIoeventfd.addr(s, address);
            KvmIoeventfd.len(s, length);
            KvmIoeventfd.fd(s, eventfd);
            KvmIoeventfd.flags(s, KvmConstants.KVM_IOEVENTFD_FLAG_DATAMATCH);
            LibC.ioctl(fd, Ioctls.KVM_IOEVENTFD, s);
        }
    }

    /**
     * Raises or lowers interrupt line {@code irq} (a GSI) of the in-kernel irqchip: the level
     * stays until the next call, so a device that keeps its line high (the 8250 while an
     * interrupt is pending) calls this only when the level changes. Safe from any thread and
     * allocates nothing after the first call for a given line.
     */
    public void irqLine(int irq, boolean level) {
        LibC.ioctl(fd, Ioctls.KVM_IRQ_LINE, irqLevelAddress(irq) + (level ? KvmIrqLevel.BYTE_SIZE : 0));
        Reference.reachabilityFence(this); // the kernel reads the auto arena's memory during the call
    }

    /**
     * The address of {@code irq}'s pair of {@code kvm_irq_level} structs, {level 0} then
     * {level 1}. KVM_IRQ_LINE only reads its argument (KVM_IRQ_LINE_STATUS would write back), so
     * one immutable pair per line serves every thread at once: no lock, no per-thread buffer.
     * (irqfd would avoid the struct too, but it injects edges; the 8250's line is a level.)
     */
    private long irqLevelAddress(int irq) {
        long[] table = irqLevels;
        if (irq >= 0 && irq < table.length && table[irq] != 0) {
            return table[irq];
        }
        return newIrqLevels(irq);
    }

    private synchronized long newIrqLevels(int irq) {
        if (irq < 0 || irq >= MAX_IRQ_LINES) {
            throw new IllegalArgumentException("interrupt line " + irq + " is outside 0 to " + (MAX_IRQ_LINES - 1));
        }
        long[] table = irqLevels;
        if (irq >= table.length) {
            // Room for the IOAPIC's 24 pins at once; lines above them (custom GSI routing) one by one.
            table = Arrays.copyOf(table, Math.max(irq + 1, IOAPIC_PINS));
        } else if (table[irq] != 0) {
            return table[irq];
        } else {
            table = table.clone();
        }
        var pair = irqLevelArena.allocate(KvmIrqLevel.LAYOUT, 2);
        for (int level = 0; level < 2; level++) {
            var line = pair.asSlice(level * KvmIrqLevel.BYTE_SIZE, KvmIrqLevel.LAYOUT);
            KvmIrqLevel.irq(line, irq);
            KvmIrqLevel.level(line, level);
        }
        table[irq] = pair.address();
        irqLevels = table; // published only once filled in
        return table[irq];
    }

    /** KVM_ENABLE_CAP on the VM with one argument ({@code args[0]}). */
    public void enableCap(int capability, long arg0) {
        try (var a = Arena.ofConfined()) {
            var cap = a.allocate(KvmEnableCap.LAYOUT);
            KvmEnableCap.cap(cap, capability);
            cap.set(ValueLayout.JAVA_LONG, KvmEnableCap.ARGS, arg0);
            LibC.ioctl(fd, Ioctls.KVM_ENABLE_CAP, cap);
        }
    }

    /**
     * KVM_GET_DIRTY_LOG: the pages of {@code slot} written since the last call (or clear), one bit
     * per page into {@code bitmap} (the slot's pages rounded up to 64 bits). Without manual
     * protection the kernel also resets the log and write-protects the pages again.
     */
    public void getDirtyLog(int slot, MemorySegment bitmap) {
        try (var a = Arena.ofConfined()) {
            var log = a.allocate(KvmDirtyLog.LAYOUT);
            KvmDirtyLog.slot(log, slot);
            KvmDirtyLog.dirtyBitmap(log, bitmap);
            LibC.ioctl(fd, Ioctls.KVM_GET_DIRTY_LOG, log);
        }
    }

    /**
     * KVM_CLEAR_DIRTY_LOG (with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled): resets the log of the
     * pages set in {@code bitmap}, from page {@code firstPage} on for {@code pages} pages (both
     * multiples of 64, or the range ends at the slot's end), and write-protects them again.
     */
    public void clearDirtyLog(int slot, long firstPage, int pages, MemorySegment bitmap) {
        try (var a = Arena.ofConfined()) {
            var clear = a.allocate(KvmClearDirtyLog.LAYOUT);
            KvmClearDirtyLog.slot(clear, slot);
            KvmClearDirtyLog.numPages(clear, pages);
            KvmClearDirtyLog.firstPage(clear, firstPage);
            KvmClearDirtyLog.dirtyBitmap(clear, bitmap);
            LibC.ioctl(fd, Ioctls.KVM_CLEAR_DIRTY_LOG, clear);
        }
    }

    /** Any VM ioctl with a struct argument; throws {@link KvmException} naming the ioctl on failure. */
    public int ioctl(long request, MemorySegment arg) {
        return LibC.ioctl(fd, request, arg);
    }

    /** Creates vCPU {@code id} and maps its {@code kvm_run} page into this VM's arena. */
    public VcpuFd createVcpu(int id) {
        int vcpuFd = LibC.ioctl(fd, Ioctls.KVM_CREATE_VCPU, id);
        try {
            long size = kvm.vcpuMmapSize();
            var run = LibC.mapInto(
                    arena,
                    size,
                    LibcConstants.PROT_READ | LibcConstants.PROT_WRITE,
                    LibcConstants.MAP_SHARED,
                    vcpuFd,
                    0);
            return new VcpuFd(id, vcpuFd, run);
        } catch (RuntimeException e) {
            LibC.close(vcpuFd);
            throw e;
        }
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            LibC.close(fd);
        }
    }
}
