package dev.panamavmm.vmm;

import dev.panamavmm.devices.I8042;
import dev.panamavmm.devices.Serial8250;
import dev.panamavmm.devices.VmmPort;
import dev.panamavmm.kvm.HostFlavour;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.log.Log;
import dev.panamavmm.migration.FileIdentity;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamBlockEntry;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.RecordCodec;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.migration.SnapshotWriter;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.state.KvmState;
import dev.panamavmm.vmm.state.VcpuState;
import dev.panamavmm.vmm.state.VmState;
import dev.panamavmm.vmm.vcpu.Cpuid;

import java.io.IOException;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * Saving a VM to a snapshot directory and building a VM from one.
 *
 * <p>Save: pause (pending I/O completed), capture every vCPU, the VM and the devices, write RAM
 * blocks — a shared block by reference when bypass-shared-memory is on, every other block's
 * non-zero pages — then commit atomically. Restore: check the host flavour and every referenced
 * memory file's identity, map RAM (shared files shared; the snapshot's own pages private, loaded
 * lazily), recreate the VM, devices and vCPUs, and set their state. Nothing on the restore path
 * reads guest RAM.
 */
public final class VmSnapshots {
    private VmSnapshots() {}

    private static final Log log = Log.of(VmSnapshots.class);

    /** What a save did. */
    public record Saved(Path file, long ramBytesWritten, long ramBlocksByReference, long millis) {}

    /** Device section names; the VMM's port map is fixed, so these three are always present. */
    static final String SERIAL = "device/serial", I8042_SECTION = "device/i8042", VMM_PORT = "device/vmm-port";

    /**
     * Saves {@code vm} into {@code dir}. With {@code bypass}, shared blocks are stored by reference;
     * then the guest must not run on in that file, so {@code resume} with shared blocks is refused.
     * On failure nothing is left in {@code dir} and the VM runs on as before.
     */
    public static Saved save(Vm vm, Path dir, boolean bypass, boolean resume, RamWriter.Progress progress) throws InterruptedException {
        return save(vm, dir, bypass, resume ? After.RESUME : After.STOP, false, progress);
    }

    /** What happens to the VM after a successful save. */
    public enum After { STOP, RESUME, STAY_PAUSED }

    /**
     * The general save. With {@code passMemfd}, memfd blocks are recorded by descriptor (index 0:
     * the guest's memory fd), for a local migration that hands the memfd itself to the new process.
     */
    public static Saved save(Vm vm, Path dir, boolean bypass, After after, boolean passMemfd, RamWriter.Progress progress)
            throws InterruptedException {
        boolean resume = after == After.RESUME;
        boolean anyShared = vm.memory().blocks().stream().anyMatch(b -> b.shared());
        if (bypass && resume && anyShared) {
            throw new SnapshotException("resuming after a bypass-shared-memory snapshot would let the guest change the memory file"
                    + " the snapshot points to; stop the VM after saving, or save without bypass");
        }
        long start = System.nanoTime();
        boolean wasPaused = vm.isPaused();
        vm.pause();
        long paused = System.nanoTime();
        Saved saved;
        try (var writer = SnapshotWriter.create(dir)) {
            var kvm = vm.kvm();
            int xsaveSize = xsaveSize(vm);
            int[] msrs = msrsToSave(vm);
            for (var vcpu : vm.vcpuFds()) {
                writer.section("vcpu/" + vcpu.id(), RecordCodec.encode(KvmState.capture(vcpu, msrs, xsaveSize)));
            }
            writer.section("vm", RecordCodec.encode(KvmState.capture(vm.vmFd())));
            var devices = vm.deviceStates();
            writer.section(SERIAL, RecordCodec.encode(devices.serial()));
            writer.section(I8042_SECTION, RecordCodec.encode(devices.i8042()));
            writer.section(VMM_PORT, RecordCodec.encode(devices.vmmPort()));

            long captured = System.nanoTime();
            long written = 0, references = 0;
            for (var block : vm.memory().blocks()) {
                String kind = kind(block.backing());
                if (passMemfd && block.backing() instanceof Backing.Memfd) {
                    writer.ramByReference(RamBlockEntry.byDescriptor(block.id(), block.guestAddress(), block.size(), kind, 0, block.fileOffset()));
                    references++;
                } else if (bypass && block.shared()) {
                    Path file = block.backing().file().toAbsolutePath();
                    writer.ramByReference(RamBlockEntry.byReference(block.id(), block.guestAddress(), block.size(), kind,
                            file, block.fileOffset(), FileIdentity.of(file)));
                    references++;
                } else {
                    var entry = writer.ramWithData(block.id(), block.guestAddress(), kind, block.shared(), block.segment(),
                            block.dataExtents(), progress);
                    written += entry.nonZeroPages() * 4096;
                }
            }
            var c = vm.config();
            var metadata = Json.object(
                    "machine", Json.object("memory", c.memoryBytes(), "cpus", (long) c.cpus(), "kernel", c.kernelName(),
                            "cmdline", c.cmdline(), "backing", kind(c.backing())),
                    "host", Json.object("flavour", Kvm.hostFlavour().name(), "xsaveSize", (long) xsaveSize),
                    "devices", List.of(SERIAL, I8042_SECTION, VMM_PORT),
                    "createdBy", "panama-vmm");
            long ram = System.nanoTime();
            Path file = writer.commit(metadata, Kvm.hostFlavour().name(), bypass);
            long end = System.nanoTime();
            saved = new Saved(file, written, references, (end - start) / 1_000_000);
            log.debug("saved {}: pause {} us, state {} us, RAM {} us, commit {} us", file, (paused - start) / 1000,
                    (captured - paused) / 1000, (ram - captured) / 1000, (end - ram) / 1000);
        } catch (IOException e) {
            if (!wasPaused) vm.resume();
            throw new SnapshotException("saving failed: " + e.getMessage(), e);
        } catch (RuntimeException e) {
            if (!wasPaused) vm.resume();
            throw e;
        }
        switch (after) {
            case RESUME -> {
                if (!wasPaused) vm.resume();
            }
            case STOP -> vm.end(new VmExitReason.Stopped("snapshot to " + dir));
            case STAY_PAUSED -> { }
        }
        return saved;
    }

    /**
     * The MSRs a save captures. Probing costs one ioctl per MSR KVM lists (milliseconds here), and
     * needs a vCPU that is not running, so it is done once per KVM handle (every VM of a process
     * gets the same CPUID, hence the same readable MSRs) and remembered by the VM; a process's
     * {@code Rehearsal} fills it before the first real save.
     */
    public static int[] msrsToSave(Vm vm) {
        int[] msrs = vm.savedMsrs;
        if (msrs == null) {
            msrs = MSRS_BY_KVM.get(vm.kvm());
            if (msrs == null) {
                msrs = KvmState.readableMsrs(vm.vcpuFds().getFirst(), vm.kvm().msrIndexList());
                MSRS_BY_KVM.put(vm.kvm(), msrs);
            }
            vm.savedMsrs = msrs;
        }
        return msrs;
    }

    private static final Map<Kvm, int[]> MSRS_BY_KVM = java.util.Collections.synchronizedMap(new java.util.WeakHashMap<>());

    /** KVM_CAP_XSAVE2's answer (the XSAVE buffer size, at least 4096): a property of the host, asked once per KVM handle. */
    static int xsaveSize(Vm vm) {
        return XSAVE_BY_KVM.computeIfAbsent(vm.kvm(), k -> Math.max(vm.vmFd().checkExtension(KvmConstants.KVM_CAP_XSAVE2), 4096));
    }

    private static final Map<Kvm, Integer> XSAVE_BY_KVM = java.util.Collections.synchronizedMap(new java.util.WeakHashMap<>());

    /**
     * Runs the state encoding and decoding once on dummy values, so the first real save or
     * restore in a fresh JVM does not pay class loading and interpretation inside a downtime.
     */
    public static void warmUp() {
        var vcpu = new VcpuState(0, new byte[8], new byte[8], new byte[8], new byte[8], new byte[8], new int[1], new long[1],
                new byte[8], 0, new byte[8]);
        RecordCodec.decode(VcpuState.class, RecordCodec.encode(vcpu), "warm-up");
        var vmState = new VmState(new byte[8], new byte[8], new byte[8], new byte[8], new byte[8]);
        RecordCodec.decode(VmState.class, RecordCodec.encode(vmState), "warm-up");
        RecordCodec.decode(Serial8250.State.class, RecordCodec.encode(Serial8250.State.RESET), "warm-up");
        RecordCodec.decode(I8042.State.class, RecordCodec.encode(I8042.State.RESET), "warm-up");
        RecordCodec.decode(VmmPort.State.class, RecordCodec.encode(VmmPort.State.INITIAL), "warm-up");
    }

    /** Encodes every state record of {@code loaded} as a save would (and drops the bytes): to warm the codec. */
    public static int encodeAll(Loaded loaded) {
        int bytes = 0;
        for (var vcpu : loaded.vcpus()) bytes += RecordCodec.encode(vcpu).length;
        bytes += RecordCodec.encode(loaded.vm()).length;
        bytes += RecordCodec.encode(loaded.devices().serial()).length;
        bytes += RecordCodec.encode(loaded.devices().i8042()).length;
        return bytes + RecordCodec.encode(loaded.devices().vmmPort()).length;
    }

    static String kind(Backing backing) {
        return switch (backing) {
            case Backing.Memfd m -> "memfd";
            case Backing.SharedFile f -> "shared-file";
            case Backing.PrivateFile f -> "private-file";
        };
    }

    /**
     * A snapshot read, checked and decoded, ready to become one VM ({@link #restore}) or many
     * ({@link #build} with {@link Mode#CLONE}): everything that does not depend on the new VM.
     */
    public record Loaded(Path dir, SnapshotReader snapshot, MachineConfig config, int xsaveSize,
                         List<VcpuState> vcpus, VmState vm, Vm.DeviceStates devices, int[] descriptors) {
        public int cpus() {
            return vcpus.size();
        }
    }

    /** How referenced memory files are mapped: the guest continues in the file, or gets a private copy-on-write view. */
    public enum Mode { CONTINUE, CLONE }

    /**
     * Reads and checks a snapshot (flavour, memory files' identity) and decodes its state. No KVM
     * handle is needed yet (a restore reads its snapshot while the FFM downcall is still being
     * linked, see cli.EarlyWarmup); {@link #build} checks the vCPU count against the host's.
     */
    public static Loaded load(Path dir) {
        return load(dir, new int[0]);
    }

    /** As {@link #load(Path)}, for a migration: {@code descriptors} are the fds passed with the snapshot. */
    public static Loaded load(Path dir, int[] descriptors) {
        var snapshot = SnapshotReader.open(dir);
        String host = Kvm.hostFlavour().name();
        if (!snapshot.flavour().equals(host) && !snapshot.flavour().equals(HostFlavour.UNKNOWN.name())) {
            throw new SnapshotException("the snapshot was taken on a " + snapshot.flavour() + " host and this host is " + host
                    + ": CPU state cannot move between KVM flavours");
        }
        var meta = snapshot.metadata();
        var machine = Json.asObject(meta.get("machine"), "machine");
        long memoryBytes = number(machine, "memory");
        int cpus = (int) number(machine, "cpus");
        if (cpus < 1) throw new SnapshotException("the snapshot has " + cpus + " vCPUs");
        int xsaveSize = (int) number(Json.asObject(meta.get("host"), "host"), "xsaveSize");
        long total = 0;
        for (var e : snapshot.ram()) {
            if (e.byReference()) checkMemoryFile(e);
            if (e.byDescriptor() && e.descriptor() >= descriptors.length) {
                throw new SnapshotException(descriptors.length == 0
                        ? "the snapshot in " + dir + " is a local migration stream: its RAM lives in a descriptor passed over the migration socket"
                        : "the migration stream names descriptor " + e.descriptor() + " but only " + descriptors.length + " came with it");
            }
            total += e.size();
        }
        if (total != memoryBytes) throw new SnapshotException("the snapshot's RAM blocks do not add up to its memory size");
        var vcpuStates = new ArrayList<VcpuState>();
        for (int i = 0; i < cpus; i++) vcpuStates.add(RecordCodec.decode(VcpuState.class, snapshot.section("vcpu/" + i), "vcpu/" + i));
        var vmState = RecordCodec.decode(VmState.class, snapshot.section("vm"), "vm");
        var devices = new Vm.DeviceStates(
                RecordCodec.decode(Serial8250.State.class, snapshot.section(SERIAL), SERIAL),
                RecordCodec.decode(I8042.State.class, snapshot.section(I8042_SECTION), I8042_SECTION),
                RecordCodec.decode(VmmPort.State.class, snapshot.section(VMM_PORT), VMM_PORT));
        var config = new MachineConfig(memoryBytes, cpus, restoredBacking(snapshot), String.valueOf(machine.get("kernel")),
                new byte[0], null, String.valueOf(machine.get("cmdline")));
        return new Loaded(dir, snapshot, config, xsaveSize, List.copyOf(vcpuStates), vmState, devices, descriptors.clone());
    }

    /** Builds a paused VM from a snapshot; {@link Vm#start()} runs it. The guest continues in its memory file. */
    public static Vm restore(Kvm kvm, Path dir, OutputStream console, VmListener listener) {
        return build(kvm, load(dir), Mode.CONTINUE, console, listener);
    }

    /** A new VM from a loaded snapshot. In CLONE mode no file is written: shared files are mapped private. */
    public static Vm build(Kvm kvm, Loaded loaded, Mode mode, OutputStream console, VmListener listener) {
        checkHostAllows(kvm, loaded);
        var sources = new ArrayList<GuestMemory.BlockSource>();
        for (var e : loaded.snapshot().ram()) {
            if (e.byDescriptor()) {
                sources.add(new GuestMemory.BlockSource(e.id(), e.guestAddress(), e.size(), new Backing.Memfd(), e.fileOffset(),
                        loaded.descriptors()[e.descriptor()]));
            } else if (e.byReference()) {
                var backing = mode == Mode.CLONE ? new Backing.PrivateFile(e.file()) : new Backing.SharedFile(e.file());
                sources.add(new GuestMemory.BlockSource(e.id(), e.guestAddress(), e.size(), backing, e.fileOffset()));
            } else {
                sources.add(new GuestMemory.BlockSource(e.id(), e.guestAddress(), e.size(),
                        new Backing.PrivateFile(loaded.snapshot().file()), e.dataOffset()));
            }
        }
        var config = loaded.config();
        if (mode == Mode.CLONE) {
            config = new MachineConfig(config.memoryBytes(), config.cpus(), new Backing.PrivateFile(loaded.dir()),
                    config.kernelName(), config.kernel(), null, config.cmdline());
        }
        return finish(kvm, Shell.prepare(kvm, sources, loaded.cpus()), loaded, config, console, listener);
    }

    /**
     * Everything of a VM that does not depend on its saved state: guest memory mapped, the VM fd
     * with irqchip, PIT and memslots, the vCPUs with their CPUID. A local migration prepares it
     * while the source guest still runs, so only state is applied during the downtime.
     */
    public record Shell(java.lang.foreign.Arena arena, GuestMemory memory, dev.panamavmm.kvm.VmFd vmFd,
                        List<dev.panamavmm.kvm.VcpuFd> vcpuFds) implements AutoCloseable {

        public static Shell prepare(Kvm kvm, List<GuestMemory.BlockSource> sources, int cpus) {
            var arena = Arena.ofShared();
            try {
                return around(kvm, GuestMemory.map(sources, arena), arena, cpus);
            } catch (RuntimeException e) {
                arena.close();
                throw e;
            }
        }

        /** The VM fd and vCPUs (with CPUID) around memory already mapped in {@code arena}; on failure the memory is closed. */
        public static Shell around(Kvm kvm, GuestMemory memory, Arena arena, int cpus) {
            dev.panamavmm.kvm.VmFd vmFd = null;
            var vcpus = new ArrayList<dev.panamavmm.kvm.VcpuFd>();
            try {
                vmFd = Vm.createVmFd(kvm, memory, arena);
                var supported = kvm.supportedCpuid(arena);
                for (int i = 0; i < cpus; i++) {
                    var vcpuFd = vmFd.createVcpu(i);
                    vcpus.add(vcpuFd);
                    vcpuFd.setCpuid2(Cpuid.forVcpu(supported, i, cpus, arena));
                }
                return new Shell(arena, memory, vmFd, List.copyOf(vcpus));
            } catch (RuntimeException e) {
                vcpus.forEach(dev.panamavmm.kvm.VcpuFd::close);
                if (vmFd != null) vmFd.close();
                memory.close();
                throw e;
            }
        }

        /** Releases a shell that never became a VM. */
        @Override
        public void close() {
            vcpuFds.forEach(dev.panamavmm.kvm.VcpuFd::close);
            vmFd.close();
            memory.close();
            arena.close();
        }
    }

    /** Turns a prepared shell into the VM of {@code loaded}: devices from their records, then VM and vCPU state. */
    static Vm finish(Kvm kvm, Shell shell, Loaded loaded, MachineConfig config, OutputStream console, VmListener listener) {
        if (shell.vcpuFds().size() != loaded.cpus()) {
            shell.close();
            throw new SnapshotException("the prepared VM has " + shell.vcpuFds().size() + " vCPUs, the state " + loaded.cpus());
        }
        Vm vm = null;
        try {
            vm = new Vm(shell.arena(), kvm, shell.vmFd(), shell.memory(), config, console, listener, loaded.devices());
            for (var vcpuFd : shell.vcpuFds()) vm.addVcpu(vcpuFd);
            KvmState.restore(shell.vmFd(), loaded.vm());
            for (int i = 0; i < loaded.cpus(); i++) KvmState.restore(shell.vcpuFds().get(i), loaded.vcpus().get(i), loaded.xsaveSize());
            return vm;
        } catch (RuntimeException e) {
            if (vm != null) vm.close();
            else shell.close();
            throw e;
        }
    }

    /** The host must allow as many vCPUs as the snapshot has. */
    private static void checkHostAllows(Kvm kvm, Loaded loaded) {
        int max = kvm.maxVcpus();
        if (loaded.cpus() > max) throw new SnapshotException("the snapshot has " + loaded.cpus() + " vCPUs; this host allows " + max);
    }

    /** The backing a restored VM reports: its shared file when it had one, else the snapshot (private). */
    private static Backing restoredBacking(SnapshotReader snapshot) {
        for (var e : snapshot.ram()) if (e.byDescriptor()) return new Backing.Memfd();
        for (var e : snapshot.ram()) if (e.byReference()) return new Backing.SharedFile(e.file());
        return new Backing.PrivateFile(snapshot.file());
    }

    private static void checkMemoryFile(RamBlockEntry e) {
        if (!Files.exists(e.file())) {
            throw new SnapshotException("the snapshot's memory file " + e.file() + " is missing");
        }
        FileIdentity now;
        try {
            now = FileIdentity.of(e.file());
        } catch (IOException ex) {
            throw new SnapshotException("cannot check memory file " + e.file() + ": " + dev.panamavmm.migration.IoErrors.reason(ex));
        }
        String diff = e.identity().difference(now);
        if (diff != null) {
            throw new SnapshotException("refusing to restore: the memory file " + e.file() + " does not match the snapshot (" + diff + ")");
        }
        if (now.size() < e.fileOffset() + e.size()) {
            throw new SnapshotException("the memory file " + e.file() + " is smaller than the snapshot's RAM");
        }
    }

    private static long number(Map<String, Object> m, String name) {
        if (m.get(name) instanceof Long l) return l;
        throw new SnapshotException("snapshot metadata lacks " + name);
    }
}
