package dev.panamavmm.vmm;

import dev.panamavmm.devices.I8042;
import dev.panamavmm.devices.Serial8250;
import dev.panamavmm.devices.VmmPort;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmMpState;
import dev.panamavmm.log.Log;
import dev.panamavmm.vmm.boot.BootException;
import dev.panamavmm.vmm.boot.KernelImage;
import dev.panamavmm.vmm.boot.MpTable;
import dev.panamavmm.vmm.boot.X86Boot;
import dev.panamavmm.vmm.memory.GuestMemory;

import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/**
 * A running virtual machine: guest memory, the KVM VM with its in-kernel irqchip and PIT, the
 * legacy devices on the I/O bus, and one platform thread per vCPU.
 *
 * <p>Lifetime: everything native (RAM mappings, {@code kvm_run} pages) belongs to one shared arena
 * that {@link #close()} closes only after every vCPU thread has ended and the memslots are gone,
 * so no path (errors included) can touch unmapped memory.
 *
 * <p>Port map: COM1 8250 at 0x3f8 (IRQ 4), i8042 at 0x60/0x64, the VMM port at 0x500-0x50f.
 */
public final class Vm implements AutoCloseable {
    private static final Log log = Log.of(Vm.class);

    public static final int COM1 = 0x3f8, COM1_IRQ = 4;
    public static final int I8042_DATA = 0x60, I8042_COMMAND = 0x64;
    public static final int VMM_PORT = 0x500;
    /** Where KVM puts the real-mode TSS on Intel: three pages just below the BIOS area at 4 GiB. */
    static final long TSS_ADDRESS = 0xfffbd000L;

    private final Arena arena;
    private final Kvm kvm;
    private final VmFd vmFd;
    private final GuestMemory memory;
    private final IoBus ioBus;
    private final MmioBus mmioBus;
    private final Serial8250 serial;
    private final I8042 i8042;
    private final VmmPort vmmPort;
    private final MachineConfig config;
    private final VcpuControl control = new VcpuControl();
    private final List<Vcpu> vcpus = new ArrayList<>();
    private final List<VcpuFd> vcpuFds = new ArrayList<>();
    private final List<Thread> threads = new ArrayList<>();
    private final CompletableFuture<VmExitReason> termination = new CompletableFuture<>();
    private final java.util.concurrent.atomic.AtomicBoolean ending = new java.util.concurrent.atomic.AtomicBoolean();
    private final VmListener listener;
    private boolean closed;
    /** System.nanoTime() when a vCPU first entered the guest (0 until then): for start-latency measurements. */
    volatile long firstEntryNanos;
    /** The MSRs a save captures, once probed (see VmSnapshots.msrsToSave). */
    volatile int[] savedMsrs;

    /** Device states when restoring; null fields mean "fresh device". */
    record DeviceStates(Serial8250.State serial, I8042.State i8042, VmmPort.State vmmPort) {
        static final DeviceStates FRESH = new DeviceStates(Serial8250.State.RESET, I8042.State.RESET, VmmPort.State.INITIAL);
    }

    Vm(Arena arena, Kvm kvm, VmFd vmFd, GuestMemory memory, MachineConfig config, OutputStream console,
       VmListener listener, DeviceStates devices) {
        this.arena = arena;
        this.kvm = kvm;
        this.vmFd = vmFd;
        this.memory = memory;
        this.config = config;
        this.listener = listener;
        this.ioBus = new IoBus(log::warn);
        this.mmioBus = new MmioBus(log::warn);
        this.serial = new Serial8250(devices.serial(), level -> vmFd.irqLine(COM1_IRQ, level), console);
        this.i8042 = new I8042(devices.i8042(), () -> end(new VmExitReason.Reset("i8042 reset")));
        this.vmmPort = new VmmPort(devices.vmmPort(), new VmmPort.Listener() {
            @Override
            public void exitRequested(int code) {
                end(new VmExitReason.GuestExit(code));
            }

            @Override
            public void guestEvent(int event) {
                if (event == 1) listener.ready();
                else listener.guestEvent(event);
            }
        });
        ioBus.register(COM1, 8, serial);
        ioBus.register(I8042_DATA, I8042_COMMAND - I8042_DATA + 1, i8042); // offset 0 = data, 4 = command/status
        ioBus.register(VMM_PORT, 16, vmmPort);
    }

    /**
     * Builds the VM and loads the kernel; vCPUs are created but not started ({@link #start()}).
     * Any failure releases what was built so far.
     */
    public static Vm create(Kvm kvm, MachineConfig config, OutputStream console, VmListener listener) {
        var kernel = KernelImage.parse(config.kernel(), config.kernelName());
        if (config.cpus() > MpTable.MAX_CPUS) throw new BootException("at most " + MpTable.MAX_CPUS + " vCPUs (8-bit APIC IDs)");
        var arena = Arena.ofShared();
        VmSnapshots.Shell shell;
        try {
            shell = VmSnapshots.Shell.around(kvm, GuestMemory.create(config.memoryBytes(), config.backing(), arena), arena, config.cpus());
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        }
        Vm vm = null;
        try {
            vm = new Vm(arena, kvm, shell.vmFd(), shell.memory(), config, console, listener, DeviceStates.FRESH);
            for (var vcpuFd : shell.vcpuFds()) vm.addVcpu(vcpuFd);
            var entry = X86Boot.load(shell.memory(), kernel, config.kernel(), config.initrd(), config.cmdline(), config.cpus(), config.boot());
            for (var vcpuFd : shell.vcpuFds()) {
                int i = vcpuFd.id();
                X86Boot.setBootMsrs(vcpuFd, arena);
                if (i == 0 || entry.startAllCpus()) {
                    X86Boot.setEntryState(vcpuFd, entry, i == 0, arena);
                    if (i > 0) setRunnable(vcpuFd, arena);
                }
            }
            return vm;
        } catch (RuntimeException e) {
            if (vm != null) vm.close();
            else shell.close();
            throw e;
        }
    }

    /** Creates the VM fd with its irqchip, PIT and one memslot per RAM block: the common start of boot and restore. */
    static VmFd createVmFd(Kvm kvm, GuestMemory memory, Arena arena) {
        var vmFd = kvm.createVm(arena);
        try {
            // Memslots first: registering them after the irqchip costs milliseconds more here (measured, bench/run-clone-bench).
            int slot = 0;
            for (var block : memory.blocks()) vmFd.setUserMemoryRegion(slot++, 0, block.guestAddress(), block.segment());
            vmFd.setTssAddress(TSS_ADDRESS);
            vmFd.createIrqchip();
            vmFd.createPit2(KvmConstants.KVM_PIT_SPEAKER_DUMMY); // port 0x61 handled in the kernel
            return vmFd;
        } catch (RuntimeException e) {
            vmFd.close();
            throw e;
        }
    }

    void addVcpu(VcpuFd vcpuFd) {
        vcpuFds.add(vcpuFd);
        vcpus.add(new Vcpu(this, vcpuFd, control));
    }

    /** APs wait for INIT/SIPI with an in-kernel LAPIC; a guest that asked to be entered on every CPU is started directly. */
    private static void setRunnable(VcpuFd vcpu, Arena arena) {
        var mp = arena.allocate(KvmMpState.LAYOUT);
        KvmMpState.mpState(mp, KvmConstants.KVM_MP_STATE_RUNNABLE);
        vcpu.ioctl(Ioctls.KVM_SET_MP_STATE, mp);
    }

    private static final java.util.concurrent.atomic.AtomicBoolean KICK_SETUP = new java.util.concurrent.atomic.AtomicBoolean();

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
            Thread.ofPlatform().daemon().name("kick-setup").start(dev.panamavmm.vmm.vcpu.VcpuKick::signal);
        }
        for (var vcpu : vcpus) {
            control.started();
            String name = "vcpu-" + vcpu.index();
            if (prestarted != null) {
                threads.add(prestarted.run(vcpu.index(), name, vcpu));
            } else {
                var t = Thread.ofPlatform().name(name).unstarted(vcpu);
                threads.add(t);
                t.start();
            }
        }
    }

    /** Makes the vCPUs park as soon as they start: a VM that starts paused (restore --paused). */
    public void pauseBeforeStart() {
        control.set(VcpuControl.Request.PAUSE);
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
        control.set(VcpuControl.Request.PAUSE);
        vcpus.forEach(Vcpu::kick);
        if (!control.awaitParked(pauseTimeout.toNanos(), TimeUnit.NANOSECONDS) && !ending.get()) {
            throw new IllegalStateException("the vCPUs did not pause within " + pauseTimeout.toMillis() + " ms");
        }
        if (!ending.get()) listener.paused();
    }

    public void resume() {
        control.set(VcpuControl.Request.RUN);
        listener.resumed();
    }

    public boolean isPaused() {
        return control.request() == VcpuControl.Request.PAUSE;
    }

    /** Ends the VM with {@code reason} (the first reason wins) and gets every vCPU out of the guest. */
    public void end(VmExitReason reason) {
        if (ending.compareAndSet(false, true)) {
            log.debug("VM ending: {}", reason.describe());
            control.set(VcpuControl.Request.STOP);
            for (var vcpu : vcpus) {
                if (!vcpu.isCurrentThread()) vcpu.kick(); // a vCPU ending the VM itself sees STOP on its own
            }
            listener.ended(reason);
            termination.complete(reason); // last: whoever waits on it sees every effect of the end
        }
    }

    /** Completes when the VM has ended, with the reason. */
    public CompletableFuture<VmExitReason> termination() {
        return termination;
    }

    /** System.nanoTime() of the first KVM_RUN of any vCPU, or 0 if none ran yet. */
    public long firstEntryNanos() {
        return firstEntryNanos;
    }

    public GuestMemory memory() {
        return memory;
    }

    public Serial8250 serial() {
        return serial;
    }

    public VmmPort vmmPort() {
        return vmmPort;
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

    DeviceStates deviceStates() {
        return new DeviceStates(serial.state(), i8042.state(), vmmPort.state());
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
        serial.flush();
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
