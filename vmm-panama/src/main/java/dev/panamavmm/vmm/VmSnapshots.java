package dev.panamavmm.vmm;

import dev.panamavmm.kvm.HostFlavour;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.migration.FileIdentity;
import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.LayerPages;
import dev.panamavmm.migration.RamBlockEntry;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotChain;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.migration.SnapshotFormat;
import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.migration.SnapshotWriter;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.DirtyLog;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.MemoryLoad;
import dev.panamavmm.vmm.state.KvmState;
import dev.panamavmm.vmm.state.VcpuState;
import dev.panamavmm.vmm.state.VcpuStateCodec;
import dev.panamavmm.vmm.state.VmState;
import dev.panamavmm.vmm.state.VmStateCodec;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.BooleanSupplier;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Saving a VM to a snapshot directory, and reading one back ({@link #load}) for {@link VmBuilder}.
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

    private static final Logger log = LoggerFactory.getLogger(VmSnapshots.class);

    /**
     * What a save did; {@code pausedAtNanos} (System.nanoTime) is when the guest stopped, after the
     * snapshot file was opened. {@code type} is what was written ({@code full} or {@code diff}: a
     * diff asked of a VM with no base is full); {@code pauseMicros} how long the guest was paused
     * (a live save: the last pass and the state only); {@code passes} the copies of RAM made while
     * the guest ran (0 unless live). {@code container}: a save kept in memory ({@link #saveState}),
     * the snapshot's bytes, and {@code file} is null; else null.
     */
    public record Saved(
            Path file,
            long ramBytesWritten,
            long ramBlocksByReference,
            long millis,
            long pausedAtNanos,
            String type,
            long pauseMicros,
            int passes,
            byte[] container) {}

    /**
     * How to save. {@code diff}: only the pages changed since the VM's base (its last snapshot it
     * resumed from, or the snapshot it was restored from), as a layer naming that base;
     * {@code live}: copy RAM while the guest runs, pausing it only for the last changed pages and
     * the state; {@code firstStateDescriptor} >= 0: a live update passes a vsock device's host
     * sockets with its state message, the listener as that descriptor and its connections after it
     * ({@link Vm#vsockDescriptors}). See {@link #save(Vm, Path, boolean, After, boolean, int,
     * RamWriter.Progress)} for the others.
     */
    public record Request(
            boolean bypass,
            After after,
            boolean passMemfd,
            int firstDiskDescriptor,
            boolean diff,
            boolean live,
            int firstStateDescriptor) {
        public static Request of(boolean bypass, After after) {
            return new Request(bypass, after, false, -1, false, false, -1);
        }

        public Request diff(boolean diff) {
            return new Request(bypass, after, passMemfd, firstDiskDescriptor, diff, live, firstStateDescriptor);
        }

        public Request live(boolean live) {
            return new Request(bypass, after, passMemfd, firstDiskDescriptor, diff, live, firstStateDescriptor);
        }
    }

    /**
     * Saves the paused state of {@code vm} as a snapshot kept in memory, for a migration that sends
     * it ({@link Saved#container}, read back by {@link #load(byte[], int[])}): every block as the
     * entry {@code asReferences} gives for it (its pages travel, or are there, another way). The
     * guest stays paused; on failure it runs on.
     */
    static Saved saveState(Vm vm, Map<String, RamBlockEntry> asReferences) throws InterruptedException {
        for (var b : vm.memory().blocks())
            if (!asReferences.containsKey(b.id()))
                throw new IllegalArgumentException(
                        "block " + b.id() + " has no reference: a state in memory holds no pages");
        return save(vm, null, Request.of(false, After.STAY_PAUSED), RamWriter.Progress.NONE, asReferences);
    }

    /**
     * Saves {@code vm} into {@code dir}. With {@code bypass}, shared blocks are stored by reference;
     * then the guest must not run on in that file, so {@code resume} with shared blocks is refused.
     * On failure of any kind nothing is left in {@code dir} and the VM runs on as before.
     */
    public static Saved save(Vm vm, Path dir, boolean bypass, boolean resume, RamWriter.Progress progress)
            throws InterruptedException {
        return save(vm, dir, bypass, resume ? After.RESUME : After.STOP, false, -1, progress);
    }

    /** What happens to the VM after a successful save. */
    public enum After {
        STOP,
        RESUME,
        STAY_PAUSED
    }

    /** As the general save below, with the disks recorded by path and identity. */
    public static Saved save(
            Vm vm, Path dir, boolean bypass, After after, boolean passMemfd, RamWriter.Progress progress)
            throws InterruptedException {
        return save(vm, dir, bypass, after, passMemfd, -1, progress);
    }

    /**
     * The general full, paused save. With {@code passMemfd}, memfd blocks are recorded by descriptor (index 0:
     * the guest's memory fd), for a local migration that hands the memfd itself to the new process;
     * with {@code firstDiskDescriptor} >= 0 the disks are too, disk i as descriptor
     * {@code firstDiskDescriptor + i} (else by path and identity).
     */
    public static Saved save(
            Vm vm,
            Path dir,
            boolean bypass,
            After after,
            boolean passMemfd,
            int firstDiskDescriptor,
            RamWriter.Progress progress)
            throws InterruptedException {
        return save(vm, dir, new Request(bypass, after, passMemfd, firstDiskDescriptor, false, false, -1), progress);
    }

    /** Pages still changed at which a live save stops copying with the guest running and pauses it. */
    static final long LIVE_FINAL_BYTES = 16L << 20;
    /** Copies while the guest runs at most (the first included): a guest that writes faster than they copy is paused after them. */
    static final int LIVE_MAX_PASSES = 8;

    /** Saves as {@code request} says; on failure of any kind nothing is left in {@code dir} and the VM runs on as before. */
    public static Saved save(Vm vm, Path dir, Request request, RamWriter.Progress progress)
            throws InterruptedException {
        return save(vm, dir, request, progress, Map.of());
    }

    /**
     * As {@link #save(Vm, Path, Request, RamWriter.Progress)}, with the blocks named in
     * {@code asReferences} (by id) recorded as the given entries instead of their pages: a chained
     * template refers to its root's memory file, its clone's own pages being in a layer file
     * ({@link Templates#createFromClone}).
     */
    static Saved save(
            Vm vm, Path dir, Request request, RamWriter.Progress progress, Map<String, RamBlockEntry> asReferences)
            throws InterruptedException {
        var after = request.after();
        boolean resume = after == After.RESUME;
        boolean bypass = request.bypass();
        boolean anyShared = vm.memory().blocks().stream().anyMatch(b -> b.shared());
        if (bypass && resume && anyShared) {
            throw new SnapshotException(
                    "resuming after a bypass-shared-memory snapshot would let the guest change the memory file"
                            + " the snapshot points to; stop the VM after saving, or save without bypass");
        }
        if ((request.diff() || request.live()) && request.passMemfd())
            throw new IllegalArgumentException("a local migration's snapshot is neither diff nor live");
        boolean inMemory = dir == null; // saveState: every block by reference, the container kept as bytes
        if (inMemory && (request.diff() || request.live() || after != After.STAY_PAUSED))
            throw new IllegalArgumentException("a state kept in memory is full, not live, and leaves the VM paused");
        if (!inMemory && Files.exists(dir) && !Files.isDirectory(dir))
            throw new SnapshotException("cannot write a snapshot in " + dir + ": it is not a directory");
        // A lazily restored guest's pages not yet loaded would read as holes: load them first, guest running.
        vm.memory().awaitLoaded();
        var base = request.diff() ? vm.base() : null;
        if (base != null
                && base.identity()
                        .dir()
                        .toAbsolutePath()
                        .normalize()
                        .equals(dir.toAbsolutePath().normalize()))
            throw new SnapshotException(
                    "a diff snapshot cannot replace its own base " + dir + ": save it into another directory");
        boolean wasPaused = vm.isPaused();
        boolean keepPaused = false; // set once the save is complete and the guest is not to run on here
        // The writer first: a directory that cannot be written fails here, before the guest stops.
        try (var writer = inMemory ? SnapshotWriter.inMemory() : SnapshotWriter.create(dir)) {
            var timing = VmMetrics.begin("save");
            if (base != null) writer.layerOver(base.identity());
            var blocks = vm.memory().blocks();
            // Per block: what this snapshot stores of it (null: by reference), and the pages it holds.
            var stored = new boolean[blocks.size()];
            for (int i = 0; i < blocks.size(); i++) {
                var b = blocks.get(i);
                stored[i] = !(request.passMemfd() && b.backing() instanceof Backing.Memfd)
                        && !(bypass && b.shared())
                        && !asReferences.containsKey(b.id());
            }
            Live live = null;
            if (request.live() && !wasPaused) live = Live.precopy(vm, writer, stored, base);
            long start = System.nanoTime(); // the guest's downtime starts here
            vm.pause();
            long paused = System.nanoTime();
            var host = HostFacts.of(vm.kvm());
            int xsaveSize = host.xsaveSize(vm.vmFd());
            int[] msrs = host.msrsToSave(vm.vcpuFds().getFirst());
            writeStateSections(writer, vm, msrs, xsaveSize, null);

            long captured = System.nanoTime();
            // Pages changed since the base (a diff), or since the live passes; with dirty logging on,
            // this take also makes the log start afresh from this moment.
            long[][] changed =
                    vm.dirtyLog() != null && (base != null || live != null || resume) ? vm.takeChanged(true) : null;
            long written = 0, references = 0;
            for (int i = 0; i < blocks.size(); i++) {
                var block = blocks.get(i);
                String kind = kind(block.backing());
                if (asReferences.containsKey(block.id())) {
                    writer.ramByReference(asReferences.get(block.id()));
                    references++;
                } else if (!stored[i] && request.passMemfd()) {
                    writer.ramByReference(RamBlockEntry.byDescriptor(
                            block.id(), block.guestAddress(), block.size(), kind, 0, block.fileOffset()));
                    references++;
                } else if (!stored[i]) {
                    Path file = block.backing().file().toAbsolutePath();
                    writer.ramByReference(RamBlockEntry.byReference(
                            block.id(),
                            block.guestAddress(),
                            block.size(),
                            kind,
                            file,
                            block.fileOffset(),
                            FileIdentity.of(file)));
                    references++;
                } else if (live != null) {
                    written += live.finish(i, changed[i]);
                } else if (base != null) {
                    long[][] runs = diffRuns(vm, base, i, changed);
                    var entry = writer.ramWithData(
                            block.id(),
                            block.guestAddress(),
                            kind,
                            block.shared(),
                            block.segment(),
                            LayerPages.whole(runs, block.size()) ? block.dataExtents() : runs,
                            progress);
                    writer.layerPages(block.id(), runs);
                    written += entry.nonZeroPages() * 4096;
                } else {
                    var entry = writer.ramWithData(
                            block.id(),
                            block.guestAddress(),
                            kind,
                            block.shared(),
                            block.segment(),
                            block.dataExtents(),
                            progress);
                    written += entry.nonZeroPages() * 4096;
                }
            }
            var metadata = metadata(vm, request.firstDiskDescriptor(), request.firstStateDescriptor(), xsaveSize);
            long ram = System.nanoTime();
            long resumedAt = 0;
            if (live != null && resume) {
                // Everything of the guest is in the file or in memory now: it runs on while the file is committed.
                vm.resume();
                resumedAt = System.nanoTime();
                if (vm.dirtyLog() == null) vm.startDirtyLog();
            } else if (resume && vm.dirtyLog() == null) {
                vm.startDirtyLog(); // still paused: every write from here on is logged
            }
            if (live != null) {
                long recordStart = System.nanoTime();
                live.record();
                log.debug("live save: checksums read back in {} ms", (System.nanoTime() - recordStart) / 1_000_000);
            }
            String flavour = Kvm.hostFlavour().name();
            byte[] container = inMemory ? writer.commitToBytes(metadata, flavour, bypass) : null;
            Path file = inMemory ? null : writer.commit(metadata, flavour, bypass);
            long end = System.nanoTime();
            timing.end(
                    vm.metrics(),
                    VmMetrics.phases(
                            "live-copy",
                            start - timing.startNanos(),
                            "pause",
                            paused - start,
                            "state",
                            captured - paused,
                            "ram",
                            ram - captured,
                            "commit",
                            end - ram));
            keepPaused = after != After.RESUME;
            if (resume) {
                // This snapshot is now the base of the next diff.
                var withData = new java.util.HashSet<String>();
                for (int i = 0; i < blocks.size(); i++)
                    if (stored[i]) withData.add(blocks.get(i).id());
                vm.dirtyLog().rebase();
                vm.base(new SnapshotBase(SnapshotReader.open(dir).identity(), Set.copyOf(withData), false));
            }
            log.debug(
                    "saved {}: pause {} us, state {} us, RAM {} us, commit {} us",
                    inMemory ? "the state in memory" : file,
                    (paused - start) / 1000,
                    (captured - paused) / 1000,
                    (ram - captured) / 1000,
                    (end - ram) / 1000);
            long pauseMicros = ((resumedAt != 0 ? resumedAt : end) - start) / 1000;
            var saved = new Saved(
                    file,
                    live != null ? live.bytes() : written,
                    references,
                    (end - (live != null ? live.startNanos() : start)) / 1_000_000,
                    start,
                    base != null ? "diff" : "full",
                    pauseMicros,
                    live != null ? live.passes() : 0,
                    container);
            if (after == After.STOP) {
                vm.end(new VmExitReason.Stopped("snapshot to " + dir));
                // The paused guest never runs again: a restore may take its memory file right away,
                // not only once this process has exited.
                vm.memory().unlockSharedFiles();
                vm.disks().forEach(OpenDisk::unlock);
            }
            return saved;
        } catch (IOException e) {
            throw new SnapshotException("saving failed: " + e.getMessage(), e);
        } finally {
            // Whatever went wrong (a pause that timed out, an ioctl, a full disk, a bug), the guest runs on.
            if (!wasPaused && !keepPaused) giveBack(vm);
        }
    }

    /**
     * The copies of a live save made while the guest runs: a first pass over every stored block
     * (its data extents, or for a diff the pages changed since the base), then passes over the
     * pages the guest changed meanwhile, until few are left or {@value #LIVE_MAX_PASSES} passes
     * were made; the last changed pages are copied with the guest paused ({@link #finish}). Each
     * block has its place in the file from the start, so a page copied again is written over its
     * earlier copy.
     */
    private static final class Live {
        private final Vm vm;
        private final SnapshotWriter writer;
        private final boolean[] stored;
        private final SnapshotBase base;
        private final long[] offsets;
        private final List<List<long[]>> touched = new ArrayList<>();
        private final List<List<long[]>> layerRuns = new ArrayList<>();
        private long[][] pending;
        private long bytes;
        private int passes;
        private final long startNanos = System.nanoTime();

        private Live(Vm vm, SnapshotWriter writer, boolean[] stored, SnapshotBase base) {
            this.vm = vm;
            this.writer = writer;
            this.stored = stored;
            this.base = base;
            this.offsets = new long[stored.length];
        }

        static Live precopy(Vm vm, SnapshotWriter writer, boolean[] stored, SnapshotBase base) {
            var live = new Live(vm, writer, stored, base);
            vm.startDirtyLog();
            var first = vm.takeChanged(false); // logged from here on; everything before is in the first pass
            var blocks = vm.memory().blocks();
            for (int i = 0; i < blocks.size(); i++) {
                var block = blocks.get(i);
                live.touched.add(new ArrayList<>());
                live.layerRuns.add(new ArrayList<>());
                if (!stored[i]) continue;
                live.offsets[i] = writer.reserve(block.size());
                long[][] runs = base != null ? diffRuns(vm, base, i, first) : new long[][] {{0, block.size()}};
                long[][] read = LayerPages.whole(runs, block.size()) ? block.dataExtents() : runs;
                writer.writePages(live.offsets[i], block.segment(), read, true);
                live.touched.set(i, List.of(read));
                live.layerRuns.set(i, List.of(runs));
                live.bytes += LayerPages.bytes(read);
            }
            live.passes = 1;
            log.debug(
                    "live save, pass 1: {} bytes in {} ms",
                    live.bytes,
                    (System.nanoTime() - live.startNanos) / 1_000_000);
            while (true) {
                long passStart = System.nanoTime(), before = live.bytes;
                var changed = vm.takeChanged(false);
                if (DirtyLog.pages(changed) * 4096 <= LIVE_FINAL_BYTES || live.passes >= LIVE_MAX_PASSES) {
                    live.pending = changed; // copied with the last pages, guest paused
                    break;
                }
                for (int i = 0; i < blocks.size(); i++) live.write(i, changed[i]);
                live.passes++;
                log.debug(
                        "live save, pass {}: {} bytes in {} ms",
                        live.passes,
                        live.bytes - before,
                        (System.nanoTime() - passStart) / 1_000_000);
            }
            return live;
        }

        /** Copies the pages set in {@code bits} of block {@code i} (all of each: a page may have become zero). */
        private long write(int i, long[] bits) {
            if (!stored[i]) return 0;
            var runs = DirtyLog.runs(bits);
            if (runs.length == 0) return 0;
            writer.writePages(offsets[i], vm.memory().blocks().get(i).segment(), runs, false);
            touched.set(i, unionRuns(touched.get(i), List.of(runs)));
            layerRuns.set(i, unionRuns(layerRuns.get(i), List.of(runs)));
            long n = LayerPages.bytes(runs);
            bytes += n;
            return n;
        }

        /** Block {@code i}'s last pages, guest paused: those changed since the last pass. Returns the bytes copied. */
        long finish(int i, long[] changed) {
            long[] bits = changed.clone();
            for (int w = 0; w < bits.length; w++) bits[w] |= pending[i][w];
            return write(i, bits);
        }

        /** Records every stored block (checksums read back from the file): after the guest runs again. */
        void record() {
            var blocks = vm.memory().blocks();
            for (int i = 0; i < blocks.size(); i++) {
                if (!stored[i]) continue;
                var b = blocks.get(i);
                writer.addReserved(
                        b.id(),
                        b.guestAddress(),
                        kind(b.backing()),
                        b.shared(),
                        b.size(),
                        offsets[i],
                        touched.get(i).toArray(long[][]::new));
                if (base != null) writer.layerPages(b.id(), layerRuns.get(i).toArray(long[][]::new));
            }
        }

        /** Bytes of guest RAM copied in every pass, the paused one included. */
        long bytes() {
            return bytes;
        }

        int passes() {
            return passes;
        }

        long startNanos() {
            return startNanos;
        }
    }

    /**
     * The pages of block {@code i} a diff holds: those changed since the base, or the whole block
     * when the base does not hold its pages (it had it by reference).
     */
    private static long[][] diffRuns(Vm vm, SnapshotBase base, int i, long[][] changed) {
        var block = vm.memory().blocks().get(i);
        if (!base.blocksWithData().contains(block.id())) return new long[][] {{0, block.size()}};
        var runs = new java.util.ArrayList<long[]>();
        if (changed != null) {
            runs.addAll(List.of(DirtyLog.runs(vm.dirtyLog().sinceBase()[i])));
        }
        if (base.copiedSinceBase()) runs = new java.util.ArrayList<>(unionRuns(runs, List.of(block.copiedOnWrite())));
        return runs.toArray(long[][]::new);
    }

    static List<long[]> unionRuns(List<long[]> a, List<long[]> b) {
        var all = new java.util.ArrayList<long[]>(a.size() + b.size());
        all.addAll(a);
        all.addAll(b);
        all.sort((x, y) -> Long.compare(x[0], y[0]));
        var merged = new java.util.ArrayList<long[]>();
        for (long[] r : all) {
            var last = merged.isEmpty() ? null : merged.getLast();
            if (last != null && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
            else merged.add(new long[] {r[0], r[1]});
        }
        return merged;
    }

    private static Map<String, Object> metadata(
            Vm vm, int firstDiskDescriptor, int firstStateDescriptor, int xsaveSize) {
        var c = vm.config();
        var metadata = Json.object(
                "machine",
                        Json.object(
                                "memory",
                                c.memoryBytes(),
                                "cpus",
                                (long) c.cpus(),
                                "kernel",
                                c.kernelName(),
                                "cmdline",
                                c.cmdline(),
                                "backing",
                                kind(c.backing()),
                                "disks",
                                diskEntries(vm, firstDiskDescriptor),
                                "rng",
                                c.rng(),
                                "nets",
                                netEntries(
                                        vm,
                                        firstDiskDescriptor >= 0
                                                ? firstDiskDescriptor
                                                        + vm.disks().size()
                                                : -1)),
                "host", Json.object("flavour", Kvm.hostFlavour().name(), "xsaveSize", (long) xsaveSize),
                "devices", DeviceTable.sections(c),
                "createdBy", "panama-vmm");
        if (c.vsock() != null) machineEntry(metadata).put("vsock", vsockEntry(vm, c.vsock(), firstStateDescriptor));
        if (c.balloon() != null) machineEntry(metadata).put("balloon", Balloons.toJson(c.balloon()));
        return metadata;
    }

    /** What a merge wrote: the full snapshot, the bytes of RAM in it, and how many snapshots it folded. */
    public record Merged(Path file, long ramBytesWritten, int snapshots, long millis) {}

    /**
     * Folds the chain under the diff snapshot {@code dir} into one full snapshot in {@code out}:
     * the newest layer's state, and per RAM block the newest copy of every page (a block held by
     * reference stays a reference). The chain is read through the same stacked mappings a restore
     * uses; nothing in it changes. {@code out} is committed atomically, as a save is.
     */
    public static Merged merge(Path dir, Path out) {
        long start = System.nanoTime();
        var chain = SnapshotChain.open(dir);
        var target = out.toAbsolutePath().normalize();
        for (var r : chain) {
            if (r.file().getParent().toAbsolutePath().normalize().equals(target))
                throw new SnapshotException("cannot merge into " + out + ": it holds a snapshot of the chain");
        }
        var top = chain.getFirst();
        var plans = SnapshotChain.plan(chain);
        var sources = new ArrayList<GuestMemory.BlockSource>();
        for (var plan : plans) {
            var e = plan.bottom();
            if (e.byDescriptor())
                throw new SnapshotException(
                        "the snapshot in " + dir + " is a local migration stream: nothing to merge");
            if (e.byReference()) continue;
            sources.add(new GuestMemory.BlockSource(
                    e.id(),
                    e.guestAddress(),
                    e.size(),
                    new Backing.PrivateFile(plan.bottomFile()),
                    e.dataOffset(),
                    -1,
                    plan.overlays().stream()
                            .map(o -> new GuestMemory.Overlay(o.file(), o.dataOffset(), o.runs()))
                            .toList()));
        }
        long written = 0;
        try (var writer = SnapshotWriter.create(out);
                var arena = Arena.ofShared();
                var memory = GuestMemory.map(sources, arena)) {
            for (var name : top.stateSections()) writer.section(name, top.section(name));
            for (var plan : plans) {
                var e = plan.bottom();
                if (e.byReference()) {
                    writer.ramByReference(e);
                    continue;
                }
                var block = memory.blocks().stream()
                        .filter(b -> b.id().equals(e.id()))
                        .findFirst()
                        .orElseThrow();
                var entry = writer.ramWithData(
                        e.id(),
                        e.guestAddress(),
                        e.kind(),
                        e.shared(),
                        block.segment(),
                        block.dataExtents(),
                        RamWriter.Progress.NONE);
                written += entry.nonZeroPages() * 4096;
            }
            var metadata = new LinkedHashMap<>(top.metadata());
            metadata.remove("ram");
            metadata.remove("base");
            Path file = writer.commit(metadata, top.flavour(), top.bypass());
            return new Merged(file, written, chain.size(), (System.nanoTime() - start) / 1_000_000);
        }
    }

    /**
     * The disks as the metadata lists them: path, read-only, id, and either the file's identity
     * now (a restore opens the path and refuses a file that changed) or, when the fds travel with
     * a live update, the index of the disk's descriptor among them.
     */
    private static List<Object> diskEntries(Vm vm, int first) {
        boolean passDescriptors = first >= 0;
        var entries = new ArrayList<Object>();
        var disks = vm.disks();
        for (int i = 0; i < disks.size(); i++) {
            var open = disks.get(i);
            var d = open.config();
            var e = Json.object(
                    "path",
                    d.path().toAbsolutePath().toString(),
                    "readOnly",
                    d.readOnly(),
                    "id",
                    d.id(),
                    "cache",
                    d.cache().spelling());
            if (passDescriptors) {
                e.put("descriptor", (long) (first + i));
            } else {
                e.put("identity", identityEntry(open.identity()));
            }
            if (d.base() != null) {
                // An overlay: the template's disk it reads through must be the very same file.
                e.put("base", d.base().toAbsolutePath().toString());
                e.put("baseIdentity", identityEntry(OpenDisk.identity(d.base())));
            }
            entries.add(e);
        }
        return entries;
    }

    /**
     * The network devices as the metadata lists them: tap name (as the tap reports it, also for
     * one given as {@code fd=N}), MAC and id, and, when the fds travel with a live update, the
     * index of the tap's descriptor (after the disks'). A restore reopens the tap by name.
     */
    private static List<Object> netEntries(Vm vm, int first) {
        var entries = new ArrayList<Object>();
        var nets = vm.config().nets();
        var taps = vm.taps();
        for (int i = 0; i < nets.size(); i++) {
            var n = nets.get(i);
            var e = Json.object("tap", taps.get(i).name(), "mac", n.mac(), "id", n.id());
            if (first >= 0) e.put("descriptor", (long) (first + i));
            entries.add(e);
        }
        return entries;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> machineEntry(Map<String, Object> metadata) {
        return (Map<String, Object>) metadata.get("machine");
    }

    /**
     * The vsock device as the metadata lists it: CID, socket path and, when its host sockets
     * travel with a live update's state message, where they start among the descriptors and how
     * many there are (the listener and each connection of the device's saved state).
     */
    private static Map<String, Object> vsockEntry(Vm vm, VsockConfig v, int first) {
        var e = Json.object("cid", v.cid(), "uds", v.uds().toAbsolutePath().toString());
        if (first >= 0) {
            e.put("descriptor", (long) first);
            e.put("descriptors", (long) vm.vsockDescriptors().size());
        }
        return e;
    }

    /** The vsock device of a snapshot's machine entry, or null; its passed sockets from {@code descriptors}. */
    private static VsockConfig vsockOf(Map<String, Object> machine, int[] descriptors) {
        if (!(machine.get("vsock") instanceof Map<?, ?>)) return null;
        var e = Json.asObject(machine.get("vsock"), "vsock");
        VsockConfig v;
        try {
            v = new VsockConfig(e.get("cid") instanceof Long cid ? cid : -1, Path.of(String.valueOf(e.get("uds"))));
        } catch (IllegalArgumentException ex) {
            throw new SnapshotException("the snapshot names its vsock device badly: " + ex.getMessage());
        }
        if (e.get("descriptor") instanceof Long first && e.get("descriptors") instanceof Long count) {
            if (first < 0 || count < 1 || first + count > descriptors.length)
                throw new SnapshotException("the snapshot's vsock sockets are descriptors " + first + " to "
                        + (first + count - 1) + " but " + descriptors.length + " came with it");
            var passed = new ArrayList<Integer>();
            for (long i = first; i < first + count; i++) passed.add(descriptors[(int) i]);
            v = v.withPassed(passed);
        }
        return v;
    }

    /** Resumes a VM after a failed operation; a VM that ended meanwhile stays ended. */
    static void giveBack(Vm vm) {
        if (!vm.termination().isDone()) vm.resume();
    }

    private static final AtomicBoolean WARM = new AtomicBoolean();
    private static final AtomicBoolean WARM_IN_MEMORY = new AtomicBoolean();

    /** Whether {@link #warmUp} has run in this process (a caller can skip making it a scratch directory). */
    public static boolean warm() {
        return WARM.get();
    }

    /**
     * As {@link #warmUp}, for the state kept in memory ({@link #saveState}, {@link #load(byte[],
     * int[])}): a TCP migration's source before its pause, its destination before the state arrives.
     */
    static void warmUpInMemory() {
        if (WARM_IN_MEMORY.getAndSet(true)) return;
        try (var writer = SnapshotWriter.inMemory()) {
            fillWithMadeUpState(writer);
            encodeAll(load(
                    writer.commitToBytes(madeUpMetadata(), Kvm.hostFlavour().name(), true), new int[0]));
        } catch (RuntimeException e) {
            log.debug("warming the state path failed (a migration then runs it cold): {}", e.getMessage());
        }
    }

    /**
     * The vCPU, VM and device sections of {@code vm}'s state; each vCPU's is read from
     * {@code readFrom} instead when that is not null (a warm-up's scratch vCPU).
     */
    private static void writeStateSections(SnapshotWriter writer, Vm vm, int[] msrs, int xsaveSize, VcpuFd readFrom) {
        for (var vcpu : vm.vcpuFds()) {
            var state = KvmState.capture(readFrom != null ? readFrom : vcpu, msrs, xsaveSize);
            writer.section("vcpu/" + vcpu.id(), VcpuStateCodec.INSTANCE.encode(state));
        }
        writer.section("vm", VmStateCodec.INSTANCE.encode(KvmState.capture(vm.vmFd())));
        vm.deviceSections().forEach(writer::section);
    }

    /** {@link #saveState}'s references for a state that goes over a connection: each block as the guest's memory. */
    static Map<String, RamBlockEntry> inMemoryReferences(Vm vm) {
        var references = new HashMap<String, RamBlockEntry>();
        for (var b : vm.memory().blocks())
            references.put(b.id(), RamBlockEntry.byDescriptor(b.id(), b.guestAddress(), b.size(), "memfd", 0, 0));
        return references;
    }

    /** At most this many rounds of {@link #warmUpSaveState}. */
    static final int WARM_SAVE_ROUNDS = 40;
    /**
     * At least this many, ready or not: the first round in a process is slow enough (10-14 ms) for a
     * destination to be ready by its end, and one round left the pause 2-3 ms longer than ten.
     */
    static final int WARM_SAVE_MIN_ROUNDS = 10;

    /**
     * A TCP migration's source before its pause: {@link #saveState} of this VM as it runs, in
     * rounds until {@code enough} (at least {@link #WARM_SAVE_MIN_ROUNDS}, at most
     * {@link #WARM_SAVE_ROUNDS}), each vCPU's state read from {@code scratch} (a running vCPU's
     * cannot be), the VM's and the devices' from the live VM (read under their locks; the bytes
     * are dropped); returns the rounds made. Why: the pause then runs this very code with more of
     * it compiled. One round before made the save 2-2.8 ms of the pause, a warm process's 0.3 ms
     * (docs/benchmarks.md).
     */
    static int warmUpSaveState(Vm vm, VcpuFd scratch, BooleanSupplier enough) {
        var host = HostFacts.of(vm.kvm());
        int xsaveSize = host.xsaveSize(vm.vmFd());
        int[] msrs = host.msrsToSave(scratch);
        var references = inMemoryReferences(vm);
        var request = Request.of(false, After.STAY_PAUSED);
        int rounds = 0;
        do {
            try (var writer = SnapshotWriter.inMemory()) {
                writeStateSections(writer, vm, msrs, xsaveSize, scratch);
                for (var b : vm.memory().blocks()) writer.ramByReference(references.get(b.id()));
                var metadata = metadata(vm, request.firstDiskDescriptor(), request.firstStateDescriptor(), xsaveSize);
                writer.commitToBytes(metadata, Kvm.hostFlavour().name(), request.bypass());
            }
        } while (++rounds < WARM_SAVE_ROUNDS && (rounds < WARM_SAVE_MIN_ROUNDS || !enough.getAsBoolean()));
        log.debug("warmed the save of the state in {} rounds", rounds);
        return rounds;
    }

    /** Every state section (made-up contents): what a save writes, to warm the codecs and the container. */
    private static void fillWithMadeUpState(SnapshotWriter writer) {
        byte[] b = new byte[64];
        var vcpu = new VcpuState(0, b, b, b, b, b, new int[] {0x10}, new long[] {1}, b, 0, b);
        writer.section("vcpu/0", VcpuStateCodec.INSTANCE.encode(vcpu));
        writer.section("vm", VmStateCodec.INSTANCE.encode(new VmState(b, b, b, b, b)));
        for (var row : DeviceTable.ROWS) writer.section(row.section(), encode(row, DeviceTable.States.FRESH));
    }

    private static Map<String, Object> madeUpMetadata() {
        return Json.object(
                "machine",
                Json.object("memory", 0L, "cpus", 1L, "kernel", "warm-up", "cmdline", "", "backing", "memfd"),
                "host",
                Json.object("flavour", Kvm.hostFlavour().name(), "xsaveSize", 4096L),
                "devices",
                DeviceTable.sections(),
                "createdBy",
                "panama-vmm");
    }

    /**
     * Takes the state path once, on a snapshot of made-up state with no RAM in {@code scratch}:
     * write (every codec, the device table, the metadata, the commit) and load (the reader, every
     * decoder). The first use of each class costs a cold JVM tens of milliseconds; a live update
     * calls this in its prepare phase, on both sides, so none of that falls into the downtime.
     * Once per process; later calls return at once.
     */
    public static void warmUp(Path scratch) {
        if (WARM.getAndSet(true)) return;
        var dir = scratch.resolve("warm-up");
        try (var writer = SnapshotWriter.create(dir)) {
            fillWithMadeUpState(writer);
            writer.commit(madeUpMetadata(), Kvm.hostFlavour().name(), true);
            encodeAll(load(dir));
        } catch (RuntimeException e) {
            log.debug("warming the state path failed (a save or restore then runs cold): {}", e.getMessage());
        }
    }

    /** Probes what a save needs to know of this host (the readable MSRs) while the guest runs, so the downtime does not. */
    public static void probeHost(Vm vm) {
        HostFacts.of(vm.kvm()).msrsToSaveWhileRunning();
    }

    /** Encodes every state of {@code loaded} as a save would (and drops the bytes): to warm the codecs. */
    public static int encodeAll(LoadedSnapshot loaded) {
        int bytes = 0;
        for (var vcpu : loaded.vcpus()) bytes += VcpuStateCodec.INSTANCE.encode(vcpu).length;
        bytes += VmStateCodec.INSTANCE.encode(loaded.vm()).length;
        for (var row : DeviceTable.ROWS) bytes += encode(row, loaded.devices()).length;
        return bytes;
    }

    private static <S> byte[] encode(DeviceTable.Row<S, ?> row, DeviceTable.States states) {
        return row.codec().encode(states.of(row));
    }

    static String kind(Backing backing) {
        return switch (backing) {
            case Backing.Memfd m -> "memfd";
            case Backing.SharedFile f -> "shared-file";
            case Backing.PrivateFile f -> "private-file";
        };
    }

    /**
     * Reads and checks a snapshot (flavour, memory files' identity) and decodes its state. No KVM
     * handle is needed yet (a restore reads its snapshot while the FFM downcall is still being
     * linked, see cli.EarlyWarmup); {@link VmBuilder#fromSnapshot} checks the vCPU count against the host's.
     */
    public static LoadedSnapshot load(Path dir) {
        return load(dir, new int[0]);
    }

    /** As {@link #load(Path)}, for a migration: {@code descriptors} are the fds passed with the snapshot. */
    public static LoadedSnapshot load(Path dir, int[] descriptors) {
        return load(dir, SnapshotChain.open(dir), descriptors);
    }

    /** What a state kept in memory ({@link #saveState}) is called in messages, as a snapshot file would be. */
    static final Path STREAM = Path.of("migration-stream", SnapshotFormat.FILE_NAME);

    /**
     * As {@link #load(Path, int[])}, for a state that came as bytes ({@link #saveState}'s): the
     * same checks as a snapshot file's, and its blocks can only be by reference or by descriptor.
     */
    static LoadedSnapshot load(byte[] container, int[] descriptors) {
        return load(STREAM.getParent(), List.of(SnapshotReader.fromBytes(container, STREAM)), descriptors);
    }

    private static LoadedSnapshot load(Path dir, List<SnapshotReader> chain, int[] descriptors) {
        var snapshot = chain.getFirst();
        String host = Kvm.hostFlavour().name();
        if (!snapshot.flavour().equals(host) && !snapshot.flavour().equals(HostFlavour.UNKNOWN.name())) {
            throw new SnapshotException("the snapshot was taken on a " + snapshot.flavour() + " host and this host is "
                    + host + ": CPU state cannot move between KVM flavours");
        }
        var meta = snapshot.metadata();
        var machine = Json.asObject(meta.get("machine"), "machine");
        long memoryBytes = number(machine, "memory");
        int cpus = (int) number(machine, "cpus");
        if (cpus < 1) throw new SnapshotException("the snapshot has " + cpus + " vCPUs");
        int xsaveSize = (int) number(Json.asObject(meta.get("host"), "host"), "xsaveSize");
        long total = 0;
        // A memory file counts where it is the newest layer's: an older layer's reference to it is stale by design.
        for (var plan : SnapshotChain.plan(chain)) if (plan.bottom().byReference()) checkMemoryFile(plan.bottom());
        for (var e : snapshot.ram()) {
            if (e.byDescriptor() && e.descriptor() >= descriptors.length) {
                throw new SnapshotException(
                        descriptors.length == 0
                                ? "the snapshot in " + dir
                                        + " is a local migration stream: its RAM lives in a descriptor passed over the migration socket"
                                : "the migration stream names descriptor " + e.descriptor() + " but only "
                                        + descriptors.length + " came with it");
            }
            total += e.size();
        }
        if (total != memoryBytes)
            throw new SnapshotException("the snapshot's RAM blocks do not add up to its memory size");
        int format = snapshot.version();
        var vcpuStates = new ArrayList<VcpuState>();
        for (int i = 0; i < cpus; i++)
            vcpuStates.add(VcpuStateCodec.INSTANCE.decode(snapshot.section("vcpu/" + i), format, "vcpu/" + i));
        var vmState = VmStateCodec.INSTANCE.decode(snapshot.section("vm"), format, "vm");
        var devices = new LinkedHashMap<String, Object>();
        for (var row : DeviceTable.ROWS) {
            // A device added after the snapshot was taken starts fresh, as on a boot.
            devices.put(
                    row.section(),
                    snapshot.hasSection(row.section())
                            ? row.codec().decode(snapshot.section(row.section()), format, row.section())
                            : row.fresh());
        }
        // Disks and rng: absent from snapshots taken before virtio existed.
        var disks = new ArrayList<DiskConfig>();
        var diskDescriptors = new ArrayList<Integer>();
        for (var item : machine.containsKey("disks") ? Json.asList(machine.get("disks"), "disks") : List.of()) {
            var e = Json.asObject(item, "disk");
            DiskConfig disk;
            try {
                disk = new DiskConfig(
                        Path.of(String.valueOf(e.get("path"))),
                        Boolean.TRUE.equals(e.get("readOnly")),
                        String.valueOf(e.getOrDefault("id", "")),
                        e.get("base") instanceof String base ? Path.of(base) : null,
                        e.get("cache") instanceof String cache
                                ? DiskConfig.Cache.parse(cache)
                                : DiskConfig.Cache.WRITEBACK);
            } catch (IllegalArgumentException ex) {
                throw new SnapshotException("the snapshot names a disk badly: " + ex.getMessage());
            }
            if (e.get("descriptor") instanceof Long d) {
                if (d < 0 || d >= descriptors.length)
                    throw new SnapshotException("the snapshot's disk " + disk.path() + " is descriptor " + d + " but "
                            + descriptors.length + " came with it");
                diskDescriptors.add(d.intValue());
            } else {
                checkDisk(disk.path(), Json.asObject(e.get("identity"), "disk identity"));
                diskDescriptors.add(-1);
            }
            if (disk.base() != null) checkDisk(disk.base(), Json.asObject(e.get("baseIdentity"), "disk base identity"));
            disks.add(disk);
        }
        // Network devices: absent from snapshots taken before virtio-net existed.
        var nets = new ArrayList<NetConfig>();
        for (var item : machine.containsKey("nets") ? Json.asList(machine.get("nets"), "nets") : List.of()) {
            var e = Json.asObject(item, "net");
            NetConfig net;
            try {
                net = new NetConfig(
                        String.valueOf(e.get("tap")),
                        -1,
                        String.valueOf(e.get("mac")),
                        String.valueOf(e.getOrDefault("id", "")));
            } catch (IllegalArgumentException ex) {
                throw new SnapshotException("the snapshot names a network device badly: " + ex.getMessage());
            }
            if (e.get("descriptor") instanceof Long d) {
                if (d < 0 || d >= descriptors.length)
                    throw new SnapshotException("the snapshot's tap " + net.tap() + " is descriptor " + d + " but "
                            + descriptors.length + " came with it");
                net = net.withFd(descriptors[d.intValue()]);
            }
            nets.add(net);
        }
        var config = new MachineConfig(
                        memoryBytes,
                        cpus,
                        restoredBacking(snapshot),
                        String.valueOf(machine.get("kernel")),
                        new byte[0],
                        null,
                        String.valueOf(machine.get("cmdline")))
                .withVirtio(disks, Boolean.TRUE.equals(machine.get("rng")))
                .withNets(nets)
                .withVsock(vsockOf(machine, descriptors))
                .withBalloon(Balloons.fromJson(machine.get("balloon")));
        List<DeviceTable.VirtioSlot> slots;
        try {
            slots = DeviceTable.virtio(config);
        } catch (IllegalArgumentException ex) {
            throw new SnapshotException("the snapshot has " + ex.getMessage().replace("at most", "more than"));
        }
        for (var slot : slots) {
            if (snapshot.hasSection(slot.section()))
                devices.put(
                        slot.section(),
                        DeviceTable.VIRTIO_CODEC.decode(snapshot.section(slot.section()), format, slot.section()));
        }
        return new LoadedSnapshot(
                dir,
                snapshot,
                config,
                xsaveSize,
                List.copyOf(vcpuStates),
                vmState,
                new DeviceTable.States(devices),
                descriptors.clone(),
                diskDescriptors.stream().mapToInt(Integer::intValue).toArray(),
                chain);
    }

    private static Map<String, Object> identityEntry(FileIdentity id) {
        return Json.object(
                "device",
                id.device(),
                "inode",
                id.inode(),
                "size",
                id.size(),
                "mtimeNanos",
                id.mtimeNanos(),
                "ctimeNanos",
                id.ctimeNanos());
    }

    /** Refuses a disk file that is missing or changed since the snapshot (another file, size, or times). */
    private static void checkDisk(Path file, Map<String, Object> saved) {
        if (!Files.exists(file)) throw new SnapshotException("the snapshot's disk " + file + " is missing");
        var then = new FileIdentity(
                number(saved, "device"),
                number(saved, "inode"),
                number(saved, "size"),
                number(saved, "mtimeNanos"),
                number(saved, "ctimeNanos"));
        String diff = then.difference(OpenDisk.identity(file));
        if (diff != null)
            throw new SnapshotException(
                    "refusing to restore: the disk " + file + " does not match the snapshot (" + diff + ")");
    }

    /** Builds a paused VM from a snapshot; {@link Vm#start()} runs it. The guest continues in its memory file. */
    public static Vm restore(Kvm kvm, Path dir, OutputStream console, VmListener listener) {
        return restore(kvm, dir, MemoryLoad.MAPPED, console, listener);
    }

    /** As {@link #restore(Kvm, Path, OutputStream, VmListener)}, with the snapshot's own RAM brought in as {@code load} says. */
    public static Vm restore(Kvm kvm, Path dir, MemoryLoad load, OutputStream console, VmListener listener) {
        return VmBuilder.fromSnapshot(kvm, load(dir), VmBuilder.Mode.CONTINUE, load, console, listener);
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
            throw new SnapshotException("cannot check memory file " + e.file() + ": " + IoErrors.reason(ex));
        }
        String diff = e.identity().difference(now);
        if (diff != null) {
            throw new SnapshotException(
                    "refusing to restore: the memory file " + e.file() + " does not match the snapshot (" + diff + ")");
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
