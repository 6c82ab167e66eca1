package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.GuestRam;
import dev.panamavmm.devices.virtio.VirtioBalloon;
import dev.panamavmm.devices.virtio.VirtioBlock;
import dev.panamavmm.devices.virtio.VirtioDevice;
import dev.panamavmm.devices.virtio.VirtioMmio;
import dev.panamavmm.devices.virtio.VirtioNet;
import dev.panamavmm.devices.virtio.VirtioRng;
import dev.panamavmm.devices.virtio.VirtioVsock;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.sandbox.Sandbox;
import dev.panamavmm.sandbox.ThreadKind;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The VMM side of one virtio-mmio device: its transport on the MMIO bus, one eventfd per queue
 * that KVM signals on the guest's QueueNotify write (ioeventfd: the vCPU does not leave the
 * kernel), an eventfd that raises the device's GSI (irqfd), and the device's own thread, which
 * waits on the queue's eventfd and processes the queue. A disk's reads and writes run on a small
 * pool of its own, so no vCPU thread ever waits for file I/O and several requests are in flight.
 */
final class VirtioHost implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(VirtioHost.class);
    /** Threads that move a disk's bytes through the page cache: requests in flight at once. */
    static final int DISK_IO_THREADS = 4;
    /**
     * The same with O_DIRECT ({@code cache=none}): each request waits for the device itself, so
     * only threads put more of them on it (with 4, a disk at queue depth 32 ran at 0.38-0.47x QEMU's
     * aio=native; docs/benchmarks.md). The pool makes threads only as requests need them.
     */
    static final int DIRECT_DISK_IO_THREADS = 16;

    static int ioThreads(DiskConfig disk) {
        return disk.cache() == DiskConfig.Cache.NONE ? DIRECT_DISK_IO_THREADS : DISK_IO_THREADS;
    }
    /** The value written to an eventfd: one event. */
    private static final MemorySegment ONE = Arena.global().allocate(8);

    static {
        ONE.set(ValueLayout.JAVA_LONG, 0, 1);
    }

    private final DeviceTable.VirtioSlot slot;
    private final VirtioDevice device;
    private final VirtioMmio transport;
    private final int irqFd;
    private final int[] queueFds;
    private final ExecutorService io;
    /** A network device's tap (the host closes it), else null. */
    private final TapBackend tap;
    /** A vsock device's host sockets, else null. */
    private final UnixVsockBackend vsock;

    private final List<Thread> threads = new ArrayList<>();
    private volatile boolean stopping;

    private VirtioHost(
            DeviceTable.VirtioSlot slot,
            VirtioMmio.State state,
            VmFd vmFd,
            GuestMemory memory,
            OpenDisk disk,
            int irqFd,
            int[] queueFds,
            ExecutorService io,
            TapBackend tap,
            UnixVsockBackend vsock) {
        this.slot = slot;
        this.tap = tap;
        this.vsock = vsock;
        this.irqFd = irqFd;
        this.queueFds = queueFds;
        this.io = io;
        this.device = switch (slot.config()) {
            case DiskConfig d -> new VirtioBlock(slot.name(), disk.backend(), d.readOnly(), d.id(), io, ioThreads(d));
            case VirtioConfig.Rng r -> new VirtioRng(slot.name(), LibC::getrandom);
            case NetConfig n -> new VirtioNet(slot.name(), n.macBytes(), tap);
            case VirtioConfig.Balloon b ->
                new VirtioBalloon(
                        slot.name(),
                        new BalloonBackend(memory),
                        b.deflateOnOom(),
                        b.statsSeconds() > 0 ? Duration.ofSeconds(b.statsSeconds()) : null,
                        b.reporting());
            case VsockConfig v -> new VirtioVsock(slot.name(), v.cid(), vsock);
        };
        if (device.queueCount() != queueFds.length)
            throw new IllegalStateException(
                    slot.name() + " has " + device.queueCount() + " queues, not " + queueFds.length);
        // A writable buffer is marked as it is handed out (KVM's dirty log does not see device writes); a read-only one
        // needs not be.
        GuestRam ram = new GuestRam() {
            @Override
            public MemorySegment slice(long address, long length) {
                return memory.deviceSlice(address, length);
            }

            @Override
            public MemorySegment readSlice(long address, long length) {
                return memory.deviceReadSlice(address, length);
            }
        };
        VirtioMmio.Notifier notifier = this::kick;
        VirtioMmio.Interrupt interrupt = () -> LibC.write(irqFd, ONE);
        if (state != null && slot.config() instanceof NetConfig n) state = withMac(state, n.macBytes());
        this.transport = state == null
                ? new VirtioMmio(device, ram, notifier, interrupt)
                : new VirtioMmio(device, state, ram, notifier, interrupt);
        vmFd.irqfd(irqFd, slot.gsi());
        for (int q = 0; q < queueFds.length; q++)
            vmFd.ioeventfd(queueFds[q], slot.address() + VirtioMmio.QUEUE_NOTIFY, 4, q);
    }

    /**
     * {@code state} with {@code mac} in its configuration space: a clone's override replaces the
     * template's MAC, and the generation moves so a driver reading it sees the change.
     */
    private static VirtioMmio.State withMac(VirtioMmio.State state, byte[] mac) {
        var config = state.config();
        if (config.length < mac.length || java.util.Arrays.equals(config, 0, mac.length, mac, 0, mac.length))
            return state;
        System.arraycopy(mac, 0, config, 0, mac.length);
        return new VirtioMmio.State(
                state.deviceId(),
                state.driverFeatures(),
                state.deviceFeaturesSel(),
                state.driverFeaturesSel(),
                state.status(),
                state.queueSel(),
                state.interruptStatus(),
                state.configGeneration() + 1,
                config,
                state.queues(),
                state.deviceState());
    }

    /**
     * The device of {@code slot} (a disk's {@code disk} already open), fresh or in {@code state}
     * (null for fresh). Registers its eventfds with KVM; {@link #start} starts its thread.
     */
    static VirtioHost build(
            DeviceTable.VirtioSlot slot, VirtioMmio.State state, VmFd vmFd, GuestMemory memory, OpenDisk disk) {
        var fds = new ArrayList<Integer>();
        ExecutorService io = null;
        TapBackend tap = null;
        UnixVsockBackend vsock = null;
        try {
            int irq = LibC.eventfd(0, LibcConstants.EFD_CLOEXEC | LibcConstants.EFD_NONBLOCK);
            fds.add(irq);
            int[] queues = new int[queueCount(slot.config())];
            for (int q = 0; q < queues.length; q++) {
                queues[q] = LibC.eventfd(0, LibcConstants.EFD_CLOEXEC);
                fds.add(queues[q]);
            }
            if (slot.disk() != null) {
                var ioThreads = Thread.ofPlatform()
                        .daemon()
                        .name(slot.name() + "-io-", 0)
                        .factory();
                io = Executors.newFixedThreadPool(
                        ioThreads(slot.disk()), r -> ioThreads.newThread(Sandbox.confined(ThreadKind.DEVICE, r)));
            }
            if (slot.config() instanceof NetConfig n)
                tap = n.fd() >= 0 ? TapBackend.adopt(n.fd()) : TapBackend.open(n.tap());
            if (slot.config() instanceof VsockConfig v) vsock = UnixVsockBackend.open(v);
            return new VirtioHost(slot, state, vmFd, memory, disk, irq, queues, io, tap, vsock);
        } catch (RuntimeException e) {
            fds.forEach(LibC::close);
            if (tap != null) tap.close();
            if (vsock != null) vsock.close(true);
            if (io != null) io.shutdownNow();
            throw e;
        }
    }

    /** How many queues a device of this configuration has (each gets an eventfd and a thread). */
    private static int queueCount(VirtioConfig config) {
        return switch (config) {
            case DiskConfig d -> 1;
            case VirtioConfig.Rng r -> 1;
            case NetConfig n -> 2;
            case VirtioConfig.Balloon b -> 2 + (b.statsSeconds() > 0 ? 1 : 0) + (b.reporting() ? 1 : 0);
            case VsockConfig v -> 3;
        };
    }

    DeviceTable.VirtioSlot slot() {
        return slot;
    }

    VirtioMmio transport() {
        return transport;
    }

    /**
     * Starts the device's threads: one per queue, which processes it each time the guest (or the
     * device's own work, through {@link VirtioDevice.Context#kick}) notifies it, and whatever the
     * device runs beside them.
     */
    void start() {
        for (int q = 0; q < queueFds.length; q++) {
            int queue = q;
            var t = Thread.ofPlatform()
                    .daemon()
                    .name(slot.name() + (queueFds.length > 1 ? "-q" + q : ""))
                    .unstarted(Sandbox.confined(ThreadKind.DEVICE, () -> serve(queue)));
            threads.add(t);
            t.start();
        }
        device.start(new VirtioDevice.Context() {
            @Override
            public void kick(int queue) {
                VirtioHost.this.kick(queue);
            }

            @Override
            public void updateConfig(int offset, byte[] bytes) {
                transport.updateConfig(offset, bytes);
            }
        });
    }

    private void serve(int queue) {
        try (var arena = Arena.ofConfined()) {
            var counter = arena.allocate(8);
            while (!stopping) {
                LibC.read(queueFds[queue], counter); // blocks until the guest (or the VMM) notifies
                if (stopping) return;
                transport.processQueue(queue);
            }
        } catch (KvmException e) {
            if (!stopping) log.warn("{} stopped: {}", slot.name(), e.getMessage());
        }
    }

    /** Wakes the device's thread for {@code queue} (a QueueNotify that reached the VMM, a resume). */
    private void kick(int queue) {
        if (queue >= 0 && queue < queueFds.length) LibC.write(queueFds[queue], ONE);
    }

    /** Stops taking requests and waits for those in flight (a save reads the state next). */
    void pause(Duration timeout) throws InterruptedException {
        transport.pause(timeout);
        logConnections("paused");
    }

    /** A vsock device's per-connection counters at debug level: where a stalled stream's bytes are. */
    private void logConnections(String when) {
        if (device instanceof VirtioVsock v && log.isDebugEnabled()) {
            for (var line : v.connectionCounters()) log.debug("{} {}: {}", slot.name(), when, line);
        }
    }

    /** Takes requests again and looks at every queue. */
    void resume() {
        if (vsock != null) vsock.ownPath();
        transport.resume();
    }

    /** Stops the thread and the I/O pool; the caller closes the disk afterwards. */
    @Override
    public void close() {
        stopping = true;
        logConnections("closing");
        try {
            device.stop();
        } catch (RuntimeException e) {
            log.warn("{}: stopping its work failed: {}", slot.name(), e.getMessage());
        }
        for (int fd : queueFds) LibC.write(fd, ONE);
        for (var t : threads) {
            try {
                t.join(5_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        if (io != null) {
            io.shutdown();
            try {
                if (!io.awaitTermination(5, TimeUnit.SECONDS)) log.warn("{}: I/O still running at close", slot.name());
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        for (int fd : queueFds) LibC.close(fd);
        LibC.close(irqFd);
        if (tap != null) tap.close();
        // A device paused at its end handed its sockets to a new process (or was saved to a file): the path stays.
        if (vsock != null) vsock.close(!((VirtioVsock) device).paused());
    }

    /** A network device's tap, else null: its descriptor travels with a live update, its name goes in a snapshot. */
    TapBackend tap() {
        return tap;
    }

    /**
     * A vsock device's host sockets for a live update, as its last saved state lists them: the
     * listener, then every connection; empty for other devices.
     */
    List<Integer> vsockDescriptors() {
        if (vsock == null) return List.of();
        var fds = new ArrayList<Integer>();
        fds.add(vsock.listenerFd());
        for (var s : ((VirtioVsock) device).savedStreams()) fds.add(UnixVsockBackend.fd(s));
        return fds;
    }
}
