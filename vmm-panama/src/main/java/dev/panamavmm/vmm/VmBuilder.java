package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.VirtioMmio;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmMpState;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.SnapshotChain;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.boot.AcpiTables;
import dev.panamavmm.vmm.boot.BootException;
import dev.panamavmm.vmm.boot.KernelImage;
import dev.panamavmm.vmm.boot.MpTable;
import dev.panamavmm.vmm.boot.X86Boot;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.MemoryLoad;
import dev.panamavmm.vmm.postcopy.PageSet;
import dev.panamavmm.vmm.postcopy.PostcopyDestination;
import dev.panamavmm.vmm.state.KvmState;
import dev.panamavmm.vmm.vcpu.Cpuid;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The one place a {@link Vm} is assembled: for a boot, from a snapshot (restore or clone), and for
 * an incoming live update (a shell built while the source still runs, finished with its state).
 * Every path is the same three steps: map guest memory, build the KVM VM around it (memslots,
 * irqchip, PIT, vCPUs with CPUID: {@link Shell}), then give it its devices and state. Any failure
 * releases what was built so far. {@link Vm} itself knows nothing of snapshots.
 */
public final class VmBuilder {
    private static final Logger log = LoggerFactory.getLogger(VmBuilder.class);

    private VmBuilder() {}

    /** Where the TSS of real mode goes on Intel: three pages just below the BIOS area at 4 GiB. */
    static final long TSS_ADDRESS = 0xfffbd000L;

    /** What a VM built from a snapshot is to its guest. */
    public enum Mode {
        /** A restore: the guest continues in the referenced memory files. */
        CONTINUE,
        /** A live update's destination: as {@link #CONTINUE}, and the very same guest runs on (its generation ID stays). */
        MOVE,
        /** A clone: referenced files are mapped private (copy-on-write), nothing is written to them. */
        CLONE
    }

    /** Boots {@code config}: the kernel loaded, every vCPU in its entry state; {@link Vm#start()} runs it. */
    public static Vm boot(Kvm kvm, MachineConfig config, OutputStream console, VmListener listener) {
        var kernel = KernelImage.parse(config.kernel(), config.kernelName());
        if (config.cpus() > MpTable.MAX_CPUS)
            throw new BootException("at most " + MpTable.MAX_CPUS + " vCPUs (8-bit APIC IDs)");
        var arena = Arena.ofShared();
        Shell shell;
        try {
            shell = Shell.around(
                    kvm, GuestMemory.create(config.memoryBytes(), config.backing(), arena), arena, config.cpus());
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        }
        Vm vm = null;
        List<OpenDisk> disks = List.of();
        try {
            disks = openDisks(config, null);
            vm = new Vm(
                    shell.arena(),
                    kvm,
                    shell.vmFd(),
                    shell.memory(),
                    config,
                    console,
                    listener,
                    DeviceTable.States.FRESH,
                    disks);
            for (var vcpuFd : shell.vcpuFds()) vm.addVcpu(vcpuFd);
            var entry = X86Boot.load(
                    shell.memory(),
                    kernel,
                    config.kernel(),
                    config.initrd(),
                    DeviceTable.cmdlineWithVirtio(config.cmdline(), config),
                    config.cpus(),
                    config.boot(),
                    DeviceTable.virtio(config).stream()
                            .map(slot -> new AcpiTables.MmioDevice(slot.address(), VirtioMmio.WINDOW_SIZE, slot.gsi()))
                            .toList());
            VmGenerationId.write(shell.memory());
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
            else {
                shell.close();
                disks.forEach(OpenDisk::close);
            }
            throw e;
        }
    }

    /**
     * Opens the disks of {@code config} in order: by path, or, for a live update, the descriptor the
     * source passed (nothing is reopened). On failure the ones opened so far are closed.
     */
    static List<OpenDisk> openDisks(MachineConfig config, LoadedSnapshot loaded) {
        var disks = new ArrayList<OpenDisk>();
        int i = 0;
        try {
            for (; i < config.disks().size(); i++) {
                var disk = config.disks().get(i);
                int d = loaded != null ? loaded.diskDescriptors()[i] : -1;
                disks.add(d >= 0 ? OpenDisk.adopt(disk, loaded.descriptors()[d]) : OpenDisk.open(disk));
            }
            return List.copyOf(disks);
        } catch (RuntimeException e) {
            disks.forEach(OpenDisk::close);
            // Passed descriptors not reached are ours too (adopt closes the one it fails on).
            for (int j = i + 1; loaded != null && j < config.disks().size(); j++) {
                int d = loaded.diskDescriptors()[j];
                if (d >= 0) LibC.close(loaded.descriptors()[d]);
            }
            throw e;
        }
    }

    /** A paused VM from a loaded snapshot. In {@link Mode#CLONE} no file is written: referenced files are mapped private. */
    public static Vm fromSnapshot(
            Kvm kvm, LoadedSnapshot loaded, Mode mode, OutputStream console, VmListener listener) {
        return fromSnapshot(kvm, loaded, mode, MemoryLoad.MAPPED, List.of(), console, listener);
    }

    /**
     * As above, with the RAM stored in the snapshot file brought in as {@code load} says (a
     * restore's choice; blocks held by reference are mapped whatever it is). A lazy load that fails
     * later ends the VM.
     */
    public static Vm fromSnapshot(
            Kvm kvm, LoadedSnapshot loaded, Mode mode, MemoryLoad load, OutputStream console, VmListener listener) {
        return fromSnapshot(kvm, loaded, mode, load, List.of(), console, listener);
    }

    /**
     * As above; a clone's writable disks become private disks of its own ({@link CloneDisks}),
     * made at {@code cloneDisks} (in the order of the writable disks) or beside the template's.
     */
    public static Vm fromSnapshot(
            Kvm kvm,
            LoadedSnapshot loaded,
            Mode mode,
            List<Path> cloneDisks,
            OutputStream console,
            VmListener listener) {
        return fromSnapshot(kvm, loaded, mode, MemoryLoad.MAPPED, cloneDisks, console, listener);
    }

    private static Vm fromSnapshot(
            Kvm kvm,
            LoadedSnapshot loaded,
            Mode mode,
            MemoryLoad load,
            List<Path> cloneDisks,
            OutputStream console,
            VmListener listener) {
        // A live update's destination times the whole of its side as live-update-in; this is its build.
        var timing = VmMetrics.begin(
                switch (mode) {
                    case CLONE -> "clone";
                    case MOVE -> "live-update-build";
                    case CONTINUE -> "restore";
                });
        int max = kvm.maxVcpus();
        if (loaded.cpus() > max)
            throw new SnapshotException("the snapshot has " + loaded.cpus() + " vCPUs; this host allows " + max);
        if (mode != Mode.CLONE) TemplateGuard.refuseTemplate(loaded);
        if (mode != Mode.CLONE && !cloneDisks.isEmpty())
            throw new IllegalArgumentException("disks for a clone given to a restore");
        var sources = new ArrayList<GuestMemory.BlockSource>();
        var plans = SnapshotChain.plan(loaded.chain());
        var withData = new HashSet<String>();
        for (var plan : plans) {
            var e = plan.bottom();
            if (e.byDescriptor()) {
                sources.add(new GuestMemory.BlockSource(
                        e.id(),
                        e.guestAddress(),
                        e.size(),
                        new Backing.Memfd(),
                        e.fileOffset(),
                        loaded.descriptors()[e.descriptor()]));
            } else if (e.byReference()) {
                var backing = mode == Mode.CLONE ? new Backing.PrivateFile(e.file()) : new Backing.SharedFile(e.file());
                sources.add(new GuestMemory.BlockSource(e.id(), e.guestAddress(), e.size(), backing, e.fileOffset()));
            } else {
                withData.add(e.id());
                // A diff chain: the newest full copy of the block, each newer layer's pages over it.
                var overlays = plan.overlays().stream()
                        .map(o -> new GuestMemory.Overlay(o.file(), o.dataOffset(), o.runs()))
                        .toList();
                sources.add(new GuestMemory.BlockSource(
                        e.id(),
                        e.guestAddress(),
                        e.size(),
                        new Backing.PrivateFile(plan.bottomFile()),
                        e.dataOffset(),
                        -1,
                        overlays));
            }
        }
        var config = loaded.config();
        CloneDisks.Made disks = null;
        if (mode == Mode.CLONE) {
            config = config.withBacking(new Backing.PrivateFile(loaded.dir()));
            // Clones of one state must not write one disk file: each gets its own copy-on-write view.
            if (config.disks().stream().anyMatch(d -> !d.readOnly())) {
                disks = CloneDisks.forClone(config.disks(), cloneDisks);
                config = config.withVirtio(disks.disks(), config.rng());
            } else if (!cloneDisks.isEmpty()) {
                throw new SnapshotException("disks given for a clone of a template without a writable disk");
            }
            NetOverrides.checkClone(loaded, config);
        } else if (load != MemoryLoad.MAPPED && config.backing() instanceof Backing.PrivateFile) {
            config = config.withBacking(new Backing.Memfd()); // the snapshot's pages now live in a memfd
        }
        if (mode != Mode.CLONE && !loaded.layers().isEmpty())
            throw new IllegalArgumentException("a chained template's layers given to a restore");
        long prepared = System.nanoTime();
        Vm vm;
        long mappedAt;
        try {
            var shell = loaded.layers().isEmpty()
                    ? shell(kvm, sources, loaded.cpus(), load)
                    : layeredShell(kvm, sources, loaded.layers(), loaded.cpus());
            mappedAt = System.nanoTime();
            vm = finish(kvm, shell, loaded, config, console, listener);
        } catch (RuntimeException e) {
            if (disks != null) disks.removeCreated();
            throw e;
        }
        try {
            vm.memory().onLoadFailure(message -> vm.end(new VmExitReason.Failed(message)));
            if (VmGenerationId.changesOn(loaded, mode)) VmGenerationId.renew(vm);
            if (mode == Mode.CONTINUE && loaded.descriptors().length == 0) {
                // The snapshot is this VM's base: a diff snapshot of it holds only what changes from here.
                // Mapped, every change is a copied-on-write page; loaded into a memfd, only a dirty log can tell.
                boolean mapped = load == MemoryLoad.MAPPED;
                if (!mapped) vm.startDirtyLog();
                vm.base(new SnapshotBase(loaded.snapshot().identity(), Set.copyOf(withData), mapped));
            }
        } catch (RuntimeException e) {
            vm.close(); // a VM nobody got: its threads and the disks made for it go with it
            if (disks != null) disks.removeCreated();
            throw e;
        }
        long done = System.nanoTime();
        timing.end(
                vm.metrics(),
                VmMetrics.phases(
                        "disks",
                        prepared - timing.startNanos(),
                        "memory",
                        mappedAt - prepared,
                        "state",
                        done - mappedAt));
        return vm;
    }

    /** A post-copy destination's VM, paused: its memory registered for post-copy ({@code fill}), every page still {@code missing}. */
    public record Postcopy(Vm vm, PostcopyDestination fill, PageSet missing) {}

    /**
     * A paused VM from a snapshot without RAM whose blocks are all passed descriptors (fresh, empty
     * memfds), its pages to come by post-copy: the memory is mapped and registered with
     * userfaultfd before the devices are built and before any vCPU runs.
     */
    public static Postcopy forPostcopy(Kvm kvm, LoadedSnapshot loaded, OutputStream console, VmListener listener) {
        var sources = new ArrayList<GuestMemory.BlockSource>();
        for (var e : loaded.snapshot().ram()) {
            if (!e.byDescriptor())
                throw new SnapshotException(
                        "post-copy needs every RAM block by descriptor; block " + e.id() + " is not");
            sources.add(new GuestMemory.BlockSource(
                    e.id(),
                    e.guestAddress(),
                    e.size(),
                    new Backing.Memfd(),
                    e.fileOffset(),
                    loaded.descriptors()[e.descriptor()]));
        }
        var shell = shell(kvm, sources, loaded.cpus());
        PageSet missing;
        PostcopyDestination fill;
        try {
            missing = PageSet.all(shell.memory());
            fill = PostcopyDestination.register(shell.memory(), missing);
        } catch (RuntimeException e) {
            shell.close();
            throw e;
        }
        return new Postcopy(finish(kvm, shell, loaded, loaded.config(), console, listener), fill, missing);
    }

    /** Memory mapped from {@code sources} and the VM built around it: the part of a live update done before the source pauses. */
    public static Shell shell(Kvm kvm, List<GuestMemory.BlockSource> sources, int cpus) {
        return shell(kvm, sources, cpus, MemoryLoad.MAPPED);
    }

    private static Shell shell(Kvm kvm, List<GuestMemory.BlockSource> sources, int cpus, MemoryLoad load) {
        var arena = Arena.ofShared();
        try {
            return Shell.around(kvm, GuestMemory.map(sources, arena, load), arena, cpus);
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    /** A clone's shell over a chained template: the root's file mapped private, each layer's runs over it. */
    private static Shell layeredShell(
            Kvm kvm, List<GuestMemory.BlockSource> sources, List<GuestMemory.Layer> layers, int cpus) {
        var arena = Arena.ofShared();
        try {
            return Shell.around(kvm, GuestMemory.map(sources, arena, layers), arena, cpus);
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    /** Turns a shell into the VM of {@code loaded}: devices from their states, then VM and vCPU state. The shell is consumed. */
    static Vm finish(
            Kvm kvm,
            Shell shell,
            LoadedSnapshot loaded,
            MachineConfig config,
            OutputStream console,
            VmListener listener) {
        if (shell.vcpuFds().size() != loaded.cpus()) {
            shell.close();
            throw new SnapshotException(
                    "the prepared VM has " + shell.vcpuFds().size() + " vCPUs, the state " + loaded.cpus());
        }
        Vm vm = null;
        List<OpenDisk> disks = List.of();
        try {
            disks = openDisks(config, loaded);
            vm = new Vm(
                    shell.arena(),
                    kvm,
                    shell.vmFd(),
                    shell.memory(),
                    config,
                    console,
                    listener,
                    loaded.devices(),
                    disks);
            for (var vcpuFd : shell.vcpuFds()) vm.addVcpu(vcpuFd);
            KvmState.restore(shell.vmFd(), loaded.vm());
            int[] hostMsrs = HostFacts.of(kvm).msrIndexList();
            var leftOut = new java.util.TreeSet<Integer>();
            for (int i = 0; i < loaded.cpus(); i++)
                for (int msr :
                        KvmState.restore(shell.vcpuFds().get(i), loaded.vcpus().get(i), loaded.xsaveSize(), hostMsrs))
                    leftOut.add(msr);
            if (!leftOut.isEmpty())
                log.warn(
                        "the saved vCPUs hold {} MSR(s) this host's KVM does not have or refuses, left out: {} (saved on another"
                                + " kind of CPU; a guest that uses them may fault)",
                        leftOut.size(),
                        leftOut.stream().map(m -> String.format("0x%x", m)).toList());
            return vm;
        } catch (RuntimeException e) {
            if (vm != null) vm.close();
            else {
                shell.close();
                disks.forEach(OpenDisk::close);
            }
            throw e;
        }
    }

    /**
     * Everything of a VM that does not depend on its saved state: guest memory mapped, the VM fd
     * with irqchip, PIT and memslots, the vCPUs with their CPUID. A local migration prepares it
     * while the source guest still runs, so only state is applied during the downtime.
     */
    public record Shell(Arena arena, GuestMemory memory, VmFd vmFd, List<VcpuFd> vcpuFds) implements AutoCloseable {

        /** The VM fd and vCPUs (with CPUID) around memory already mapped in {@code arena}; on failure the memory is closed. */
        static Shell around(Kvm kvm, GuestMemory memory, Arena arena, int cpus) {
            VmFd vmFd = null;
            var vcpus = new ArrayList<VcpuFd>();
            try {
                vmFd = createVmFd(kvm, memory, arena);
                var supported = HostFacts.of(kvm).supportedCpuid(arena);
                for (int i = 0; i < cpus; i++) {
                    var vcpuFd = vmFd.createVcpu(i);
                    vcpus.add(vcpuFd);
                    vcpuFd.setCpuid2(Cpuid.forVcpu(supported, i, cpus, arena));
                }
                return new Shell(arena, memory, vmFd, List.copyOf(vcpus));
            } catch (RuntimeException e) {
                vcpus.forEach(VcpuFd::close);
                if (vmFd != null) vmFd.close();
                memory.close();
                throw e;
            }
        }

        /** Releases a shell that never became a VM. */
        @Override
        public void close() {
            vcpuFds.forEach(VcpuFd::close);
            vmFd.close();
            memory.close();
            arena.close();
        }
    }

    /** The VM fd with its irqchip, PIT and one memslot per RAM block. */
    private static VmFd createVmFd(Kvm kvm, GuestMemory memory, Arena arena) {
        var vmFd = kvm.createVm(arena);
        try {
            // Memslots first: registering them after the irqchip costs milliseconds more here (measured,
            // bench/run-clone-bench).
            int slot = 0;
            for (var block : memory.blocks())
                vmFd.setUserMemoryRegion(slot++, 0, block.guestAddress(), block.segment());
            vmFd.setTssAddress(TSS_ADDRESS);
            vmFd.createIrqchip();
            vmFd.createPit2(KvmConstants.KVM_PIT_SPEAKER_DUMMY); // port 0x61 handled in the kernel
            return vmFd;
        } catch (RuntimeException e) {
            vmFd.close();
            throw e;
        }
    }

    /** APs wait for INIT/SIPI with an in-kernel LAPIC; a guest that asked to be entered on every CPU is started directly. */
    private static void setRunnable(VcpuFd vcpu, Arena arena) {
        var mp = arena.allocate(KvmMpState.LAYOUT);
        KvmMpState.mpState(mp, KvmConstants.KVM_MP_STATE_RUNNABLE);
        vcpu.ioctl(Ioctls.KVM_SET_MP_STATE, mp);
    }
}
