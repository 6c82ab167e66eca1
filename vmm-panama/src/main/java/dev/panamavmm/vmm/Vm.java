package dev.panamavmm.vmm;

import dev.panamavmm.devices.PortIoDevice;
import dev.panamavmm.devices.Serial8250;
import dev.panamavmm.devices.VmmPort;
import dev.panamavmm.devices.virtio.VirtioMmio;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.migration.Json;
import dev.panamavmm.sandbox.Sandbox;
import dev.panamavmm.sandbox.ThreadKind;
import dev.panamavmm.vmm.memory.DirtyLog;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.vcpu.VcpuKick;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A running virtual machine: guest memory, the KVM VM with its in-kernel irqchip and PIT, the
 * devices of the {@link DeviceTable} on the I/O bus, and one platform thread per vCPU. Built by
 * {@link VmBuilder}; knows nothing of snapshots.
 *
 * <p>Lifetime: everything native (RAM mappings, {@code kvm_run} pages) belongs to one shared arena
 * that {@link #close()} closes only after every vCPU thread has ended and the memslots are gone,
 * so no path (errors included) can touch unmapped memory.
 */
public final class Vm implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(Vm.class);

    private final Arena arena;
    private final Kvm kvm;
    private final VmFd vmFd;
    private final GuestMemory memory;
    private final IoBus ioBus;
    private final MmioBus mmioBus;
    /** The built devices, in the table's order. */
    private final Map<DeviceTable.Row<?, ?>, PortIoDevice> devices = new LinkedHashMap<>();
    /** The virtio devices, in slot order, and the disks they use (the VM closes them). */
    private final List<VirtioHost> virtio = new ArrayList<>();

    private final List<OpenDisk> disks;

    private final MachineConfig config;
    private final VcpuControl control = new VcpuControl();
    private final ExitContext exits;
    private final List<Vcpu> vcpus = new ArrayList<>();
    private final List<VcpuFd> vcpuFds = new ArrayList<>();
    private final List<Thread> threads = new ArrayList<>();
    private final CompletableFuture<VmExitReason> termination = new CompletableFuture<>();
    private final AtomicBoolean ending = new AtomicBoolean();
    private final AtomicLong firstEntryNanos = new AtomicLong();
    private final VmMetrics metrics;
    /** When the current pause began (0: running), for the metrics' paused time. */
    private final AtomicLong pausedSince = new AtomicLong();

    private final VmListener listener;
    /** Dirty logging, once a snapshot made this VM's memory a base (null before). */
    private volatile DirtyLog dirtyLog;
    /** What the next diff snapshot is taken against; null when there is nothing (a booted VM never saved). */
    private volatile SnapshotBase base;

    /** Set when the guest arrived by a TCP migration that switched to post-copy. */
    private volatile PostcopyIncoming postcopyIncoming;

    private volatile Arrival arrival;

    private boolean closed;

    Vm(
            Arena arena,
            Kvm kvm,
            VmFd vmFd,
            GuestMemory memory,
            MachineConfig config,
            OutputStream console,
            VmListener listener,
            DeviceTable.States states,
            List<OpenDisk> disks) {
        this.arena = arena;
        this.kvm = kvm;
        this.vmFd = vmFd;
        this.memory = memory;
        this.config = config;
        this.listener = listener;
        this.ioBus = new IoBus(log::warn);
        this.mmioBus = new MmioBus(log::warn);
        var context = new DeviceTable.Context(console, vmFd, this::end, listener);
        for (var row : DeviceTable.ROWS) {
            var device = row.build(states.bySection().get(row.section()), context);
            devices.put(row, device);
            ioBus.register(row.port(), row.ports(), device);
        }
        // Virtio devices: their eventfds are registered with KVM here, their threads start with the vCPUs.
        this.disks = List.copyOf(disks);
        try {
            int disk = 0;
            for (var slot : DeviceTable.virtio(config)) {
                var open = slot.disk() != null ? disks.get(disk++) : null;
                var state = states.bySection().get(slot.section()) instanceof VirtioMmio.State s ? s : null;
                var host = VirtioHost.build(slot, state, vmFd, memory, open);
                virtio.add(host);
                mmioBus.register(slot.address(), host.transport());
            }
        } catch (RuntimeException e) {
            virtio.forEach(VirtioHost::close);
            throw e;
        }
        this.metrics = new VmMetrics(config.cpus());
        this.exits = new ExitContext(
                ioBus,
                mmioBus,
                this::end,
                (vcpu, nanos) -> {
                    if (firstEntryNanos.compareAndSet(0, nanos)) listener.entered(nanos);
                },
                metrics);
    }

    void addVcpu(VcpuFd vcpuFd) {
        vcpuFds.add(vcpuFd);
        vcpus.add(new Vcpu(exits, vcpuFd, control));
    }

    private static final AtomicBoolean KICK_SETUP = new AtomicBoolean();

    /** Starts one platform thread per vCPU. */
    public void start() {
        start(null);
    }

    /** As {@link #start()}, on threads started beforehand (one per vCPU), or new ones when {@code prestarted} is null. */
    public void start(PrestartedThreads prestarted) {
        if (prestarted != null && prestarted.size() != vcpus.size()) {
            throw new IllegalArgumentException(prestarted.size() + " threads for " + vcpus.size() + " vCPUs");
        }
        // Link the kick signal's downcalls now, off the vCPU threads: a later pause or stop is then
        // quick. Once per process: a clone in `vmm serve` should not pay a thread for nothing.
        if (!KICK_SETUP.getAndSet(true)) {
            Thread.ofPlatform().daemon().name("kick-setup").start(VcpuKick::signal);
        }
        for (var host : virtio) {
            host.start();
            // A restored device may find requests its source never took; a VM that starts paused looks at them on
            // resume.
            if (isPaused()) pauseDevice(host);
            else host.resume();
        }
        for (var vcpu : vcpus) {
            control.started();
            String name = "vcpu-" + vcpu.index();
            if (prestarted != null) {
                threads.add(prestarted.run(vcpu.index(), name, Sandbox.confined(ThreadKind.VCPU, vcpu)));
            } else {
                var t = Thread.ofPlatform().name(name).unstarted(Sandbox.confined(ThreadKind.VCPU, vcpu));
                threads.add(t);
                t.start();
            }
        }
    }

    /** Makes the vCPUs park as soon as they start: a VM that starts paused (restore --paused). */
    public void pauseBeforeStart() {
        control.set(VcpuControl.Request.PAUSE);
        virtio.forEach(this::pauseDevice);
    }

    /** How long {@link #pause} waits for every vCPU to park (a vCPU stuck in an exit handler, e.g. on a blocked console, cannot). */
    private volatile Duration pauseTimeout = Duration.ofSeconds(10);

    /** For tests of the failure paths: a shorter pause timeout. */
    void pauseTimeout(Duration timeout) {
        pauseTimeout = timeout;
    }

    /**
     * Parks every vCPU outside the guest (pending I/O completed); returns when they are. If they
     * do not all park in time it throws, and the VM stays paused: the caller resumes it.
     */
    public void pause() throws InterruptedException {
        // Paused already (a save of a VM a migration paused): no second kick, drain or STOP event.
        if (settled && control.request() == VcpuControl.Request.PAUSE) return;
        pausedSince.compareAndSet(0, System.nanoTime());
        control.set(VcpuControl.Request.PAUSE);
        vcpus.forEach(Vcpu::kick);
        if (!control.awaitParked(pauseTimeout.toNanos(), TimeUnit.NANOSECONDS) && !ending.get()) {
            throw new IllegalStateException("the vCPUs did not pause within " + pauseTimeout.toMillis() + " ms");
        }
        // Then the devices: requests in flight complete into the used rings before any state is read.
        for (var host : virtio) host.pause(pauseTimeout);
        settled = true;
        if (!ending.get()) listener.paused();
    }

    /** Set when a {@link #pause} has parked every vCPU and paused every device; cleared by {@link #resume}. */
    private volatile boolean settled;

    private void pauseDevice(VirtioHost host) {
        try {
            host.pause(pauseTimeout);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /**
     * Auto-converge of a TCP migration: parks the vCPUs for {@code nanos}, devices untouched and
     * no STOP/RESUME event, then lets them run again unless a real {@link #pause} came meanwhile.
     * Does nothing to a paused or ending VM.
     */
    void throttleVcpus(long nanos) throws InterruptedException {
        if (control.request() != VcpuControl.Request.RUN || pausedSince.get() != 0) return;
        control.set(VcpuControl.Request.PAUSE);
        vcpus.forEach(Vcpu::kick);
        try {
            TimeUnit.NANOSECONDS.sleep(nanos);
        } finally {
            if (pausedSince.get() == 0) control.set(VcpuControl.Request.RUN);
        }
    }

    public void resume() {
        settled = false;
        long since = pausedSince.getAndSet(0);
        if (since != 0) metrics.paused(System.nanoTime() - since);
        for (var host : virtio) host.resume();
        var at = Instant.now();
        control.set(VcpuControl.Request.RUN);
        listener.resumed(at);
    }

    /** What a VM is doing, as QMP's {@code query-status} names it. */
    public enum Status {
        RUNNING("running"),
        PAUSED("paused"),
        SHUTDOWN("shutdown");

        private final String qmpName;

        Status(String qmpName) {
            this.qmpName = qmpName;
        }

        public String qmpName() {
            return qmpName;
        }
    }

    /** Whether the VM runs, is paused, or has ended. */
    public Status status() {
        return termination.isDone() ? Status.SHUTDOWN : isPaused() ? Status.PAUSED : Status.RUNNING;
    }

    public boolean isPaused() {
        return control.request() == VcpuControl.Request.PAUSE;
    }

    /** Ends the VM with {@code reason} (the first reason wins) and gets every vCPU out of the guest. */
    public void end(VmExitReason reason) {
        if (ending.compareAndSet(false, true)) {
            try {
                control.set(VcpuControl.Request.STOP);
                for (var vcpu : vcpus) {
                    if (!vcpu.isCurrentThread()) vcpu.kick(); // a vCPU ending the VM itself sees STOP on its own
                }
                log.debug("VM ending: {}", reason.describe());
                listener.ended(reason);
            } finally {
                // last, and always: whoever waits on it sees every effect of the end, and a failure
                // above (a listener, a class that cannot load) must not leave them waiting forever
                termination.complete(reason);
            }
        }
    }

    /** Completes when the VM has ended, with the reason. */
    public CompletableFuture<VmExitReason> termination() {
        return termination;
    }

    /** System.nanoTime() of the first KVM_RUN of any vCPU, or 0 if none ran yet. */
    public long firstEntryNanos() {
        return firstEntryNanos.get();
    }

    /** The post-copy this VM's memory arrives by, or null (it did not arrive by post-copy). */
    public PostcopyIncoming postcopyIncoming() {
        return postcopyIncoming;
    }

    void postcopyIncoming(PostcopyIncoming incoming) {
        postcopyIncoming = incoming;
    }

    /**
     * How this VM arrived by a pre-copy over TCP (what the destination's {@code query-migrate}
     * reports, as QEMU's does), or null: it did not.
     *
     * @param totalMillis from the source's first message to the resume here
     * @param pages       pages received (zero markers included)
     * @param sharedFile  the memory file mapped here by reference, or null
     */
    public record Arrival(long totalMillis, long pages, java.nio.file.Path sharedFile) {}

    public Arrival arrival() {
        return arrival;
    }

    void arrival(Arrival a) {
        arrival = a;
    }

    public GuestMemory memory() {
        return memory;
    }

    /** The device of {@code row}. */
    public <D extends PortIoDevice> D device(DeviceTable.Row<?, D> row) {
        @SuppressWarnings("unchecked")
        D d = (D) devices.get(row);
        return d;
    }

    /** The console UART. */
    public Serial8250 serial() {
        return device(DeviceTable.SERIAL);
    }

    /** Its counters and operation timings ({@code query-metrics}). */
    public VmMetrics metrics() {
        return metrics;
    }

    /** The metrics with the virtio devices' requests: what {@code query-metrics} returns. */
    public Map<String, Object> metricsReport() {
        var report = new LinkedHashMap<>(metrics.describe());
        var devices = new ArrayList<Object>();
        for (var host : virtio)
            devices.add(Json.object(
                    "name", host.slot().name(), "requests", host.transport().requests()));
        report.put("devices", devices);
        report.put("status", status().qmpName());
        return report;
    }

    public VmmPort vmmPort() {
        return device(DeviceTable.VMM_PORT);
    }

    MachineConfig config() {
        return config;
    }

    Kvm kvm() {
        return kvm;
    }

    VmFd vmFd() {
        return vmFd;
    }

    List<VcpuFd> vcpuFds() {
        return vcpuFds;
    }

    Arena arena() {
        return arena;
    }

    /** Every device's current state (a consistent picture only while the VM is paused). */
    DeviceTable.States deviceStates() {
        var states = new LinkedHashMap<String, Object>();
        devices.forEach((row, device) -> states.put(row.section(), row.stateOf(device)));
        for (var host : virtio)
            states.put(host.slot().section(), host.transport().state());
        return new DeviceTable.States(states);
    }

    /** Every device's state, encoded by its codec, by section: what a save writes. */
    Map<String, byte[]> deviceSections() {
        var sections = new LinkedHashMap<String, byte[]>();
        devices.forEach((row, device) -> sections.put(row.section(), row.encode(device)));
        for (var host : virtio)
            sections.put(
                    host.slot().section(),
                    DeviceTable.VIRTIO_CODEC.encode(host.transport().state()));
        return sections;
    }

    SnapshotBase base() {
        return base;
    }

    void base(SnapshotBase base) {
        this.base = base;
    }

    /** The dirty log; null until {@link #startDirtyLog} turned it on. */
    DirtyLog dirtyLog() {
        return dirtyLog;
    }

    /** Turns dirty logging on if it is not yet (safe while the guest runs); returns it. */
    synchronized DirtyLog startDirtyLog() {
        if (dirtyLog == null) dirtyLog = DirtyLog.enable(vmFd, memory);
        return dirtyLog;
    }

    /**
     * Takes the pages changed since the last take ({@link DirtyLog#take}). With
     * {@code devicesPaused} the VMM's write marks are reset too; then the rings of every ready
     * queue are marked again, as a device holds them for the queue's life, not per request.
     */
    long[][] takeChanged(boolean devicesPaused) {
        var taken = dirtyLog.take(devicesPaused);
        if (devicesPaused) {
            for (var host : virtio) {
                for (var q : host.transport().state().queues()) {
                    if (!q.ready()) continue;
                    memory.vmmWrites().mark(q.desc(), 16L * q.size());
                    memory.vmmWrites().mark(q.driver(), 6 + 2L * q.size());
                    memory.vmmWrites().mark(q.device(), 6 + 8L * q.size());
                }
            }
        }
        return taken;
    }

    /** The virtio devices, in slot order. */
    List<VirtioHost> virtioDevices() {
        return virtio;
    }

    /** The network devices' taps, in the machine's order (a live update passes their descriptors). */
    List<TapBackend> taps() {
        return virtio.stream()
                .map(VirtioHost::tap)
                .filter(java.util.Objects::nonNull)
                .toList();
    }

    /** The vsock device's host sockets as its last saved state lists them (a live update passes them); empty without one. */
    List<Integer> vsockDescriptors() {
        var fds = new ArrayList<Integer>();
        for (var host : virtio) fds.addAll(host.vsockDescriptors());
        return fds;
    }

    /** The disks' open files, in the machine's order (a live update passes their descriptors). */
    List<OpenDisk> disks() {
        return disks;
    }

    IoBus ioBus() {
        return ioBus;
    }

    MmioBus mmioBus() {
        return mmioBus;
    }

    public int vcpuCount() {
        return vcpus.size();
    }

    /** Stops the vCPUs, waits for their threads, removes the memslots, then releases fds and mappings. */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        end(new VmExitReason.Stopped("close"));
        memory.stopLoading(); // a vCPU waiting on a page of a lazy restore wakes (a zero page) and sees the stop
        for (var t : threads) {
            boolean interrupted = false;
            while (t.isAlive()) {
                try {
                    t.join();
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
            if (interrupted) Thread.currentThread().interrupt();
        }
        serial().flush();
        virtio.forEach(VirtioHost::close);
        if (dirtyLog != null) dirtyLog.close();
        disks.forEach(OpenDisk::close);
        int slot = 0;
        for (var block : memory.blocks()) {
            try {
                vmFd.removeUserMemoryRegion(slot++, block.guestAddress());
            } catch (KvmException e) {
                log.warn("removing memslot {}: {}", slot - 1, e.getMessage());
            }
        }
        vcpuFds.forEach(VcpuFd::close);
        vmFd.close();
        memory.close();
        arena.close();
    }
}
