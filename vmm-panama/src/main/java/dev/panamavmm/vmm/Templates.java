package dev.panamavmm.vmm;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.FileIdentity;
import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.LayerFile;
import dev.panamavmm.migration.RamBlockEntry;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.migration.SnapshotFormat;
import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.MemoryFileLocks;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * VM templates: a guest booted once with its RAM in a shared memory file, saved with
 * bypass-shared-memory at its ready point; clones map the file copy-on-write and restore the
 * state, so each starts where the template stopped and pays only for the pages it writes.
 *
 * <p>A template directory holds {@code snapshot.pvm} (state; it refers to the memory file) and
 * {@code memory.ram}, a symbolic link to the memory file (on /dev/shm by default). Once created it
 * is read-only: files 0444, directory 0555. While it is being created, {@code .creating} holds
 * the creating process's pid, so a clone from an unfinished template is refused.
 *
 * <p>A <em>chained</em> template is made from a running clone ({@link #createFromClone}): the
 * pages the clone wrote go into {@code layer.pvl} in its directory, {@code chain.json} names its
 * parent and every layer from the root's up (path and identity), and its snapshot refers to the
 * root template's memory file, as the root's does. A clone of it maps the root's file and each
 * layer's runs copy-on-write over it. Each template's {@code children} directory holds a link to
 * every template made from one of its clones, so that removing it can be refused while one exists.
 */
public final class Templates {
    private Templates() {}

    public static final String MEMORY_LINK = TemplateGuard.MEMORY_LINK;
    static final String CREATING = TemplateGuard.CREATING;
    /** A chained template's parent and layers (absent in a root template). */
    public static final String CHAIN = "chain.json";
    /** Links to the templates made from this one's clones. */
    public static final String CHILDREN = "children";
    /**
     * The deepest chain: a root template and at most seven layers. Each layer adds one mapping per
     * run to every clone (and a file to open and check per clone); a clone of a clone of ... is
     * rarely worth more than a few levels.
     */
    public static final int MAX_DEPTH = 8;
    /** Gaps of at most this many bytes between a clone's written runs are stored too: fewer runs, fewer mappings. */
    static final long GAP_FILLED = 8 * 4096;

    /** What a template creation did. */
    public record Created(Path dir, Path memoryFile, long saveMillis, long bootMillis) {}

    /**
     * Boots {@code config} (its backing replaced by a new shared file in {@code memDir}), waits for
     * the guest's ready point (or {@code readySignal} completing, e.g. the API's stop), saves it
     * into {@code dir} and ends the VM.
     */
    public static Created create(
            Kvm kvm,
            Path dir,
            MachineConfig config,
            Path memDir,
            OutputStream console,
            CompletableFuture<Void> readySignal,
            long timeoutSeconds)
            throws Exception {
        return create(kvm, dir, config, memDir, console, readySignal, new CompletableFuture<>(), timeoutSeconds);
    }

    /** As above; completing {@code cancel} ends the booting VM and the creation fails, leaving nothing behind. */
    public static Created create(
            Kvm kvm,
            Path dir,
            MachineConfig config,
            Path memDir,
            OutputStream console,
            CompletableFuture<Void> readySignal,
            CompletableFuture<String> cancel,
            long timeoutSeconds)
            throws Exception {
        if (Files.exists(dir.resolve(SnapshotFormat.FILE_NAME)) || Files.exists(dir.resolve(CREATING))) {
            throw new SnapshotException("template directory " + dir + " is not empty: a template is created once");
        }
        if (!Files.isDirectory(memDir)) throw new SnapshotException("memory directory " + memDir + " does not exist");
        Files.createDirectories(dir);
        Path marker = markCreating(dir);
        Path memory = memDir.resolve("panama-template-" + dir.toAbsolutePath().getFileName() + "-"
                        + Long.toHexString(System.nanoTime()) + ".ram")
                .toAbsolutePath();
        boolean done = false;
        try {
            var ready = new CompletableFuture<Void>();
            readySignal.whenComplete((v, t) -> ready.complete(null));
            var shared = config.withBacking(new Backing.SharedFile(memory));
            long start = System.nanoTime();
            try (var vm = VmBuilder.boot(kvm, shared, console, new VmListener() {
                @Override
                public void ready() {
                    ready.complete(null);
                }
            })) {
                cancel.thenAccept(why -> vm.end(new VmExitReason.Stopped(why)));
                vm.start();
                var first = CompletableFuture.anyOf(ready, vm.termination()).get(timeoutSeconds, TimeUnit.SECONDS);
                if (first instanceof VmExitReason reason) {
                    throw new SnapshotException(
                            "the template's guest ended before its ready point: " + reason.describe());
                }
                long bootMillis = (System.nanoTime() - start) / 1_000_000;
                vm.pause();
                // Read-only before the save records the file's identity (a chmod changes its ctime).
                Files.setPosixFilePermissions(memory, READ_ONLY);
                var saved = VmSnapshots.save(vm, dir, true, false, RamWriter.Progress.NONE);
                Files.createSymbolicLink(dir.resolve(MEMORY_LINK), memory);
                Files.setPosixFilePermissions(dir.resolve(SnapshotFormat.FILE_NAME), READ_ONLY);
                Files.createDirectory(dir.resolve(CHILDREN));
                Files.delete(marker);
                Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("r-xr-xr-x"));
                done = true;
                return new Created(dir, memory, saved.millis(), bootMillis);
            } catch (TimeoutException e) {
                throw new SnapshotException(
                        "the template's guest did not reach its ready point within " + timeoutSeconds + " s");
            }
        } finally {
            if (!done) {
                Files.deleteIfExists(marker);
                Files.deleteIfExists(memory);
                Files.deleteIfExists(dir.resolve(SnapshotFormat.FILE_NAME));
                Files.deleteIfExists(dir.resolve(CHILDREN));
            }
        }
    }

    private static final Set<PosixFilePermission> READ_ONLY = PosixFilePermissions.fromString("r--r--r--");

    /**
     * Writes the marker of a template being created in {@code dir}: this process's pid, whole from
     * the moment the marker exists (written aside and renamed), so that a clone or remove that finds
     * it never reads it empty and calls a template being created incomplete.
     */
    private static Path markCreating(Path dir) throws IOException {
        Path marker = dir.resolve(CREATING);
        Path aside = Files.createTempFile(dir, CREATING + "-", ".tmp");
        try {
            Files.writeString(aside, Long.toString(ProcessHandle.current().pid()));
            Files.move(aside, marker, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(aside);
        }
        return marker;
    }

    /** The live process creating a template, by its marker: its pid, or 0 when it is gone or the marker is not one. */
    private static long creator(Path marker) {
        try {
            String pid = Files.readString(marker).strip();
            if (pid.isEmpty() || pid.length() > 18 || !pid.chars().allMatch(Character::isDigit)) return 0;
            long p = Long.parseLong(pid);
            return ProcessHandle.of(p).map(ProcessHandle::isAlive).orElse(false) ? p : 0;
        } catch (IOException e) {
            return 0; // the marker vanished: creation just finished or failed
        }
    }

    /** Opens a template for cloning: refuses an unfinished one, then loads and checks its snapshot. */
    public static LoadedSnapshot open(Path dir) {
        if (!Files.isDirectory(dir)) throw new SnapshotException("no template directory " + dir);
        Path marker = dir.resolve(CREATING);
        if (Files.exists(marker)) {
            long pid = creator(marker);
            throw new SnapshotException(
                    pid > 0
                            ? "template " + dir + " is still being created (process " + pid + " is running)"
                            : "template " + dir + " is incomplete: its creation did not finish");
        }
        if (!Files.exists(dir.resolve(SnapshotFormat.FILE_NAME)))
            throw new SnapshotException(dir + " is not a template (no snapshot.pvm)");
        var loaded = VmSnapshots.load(dir);
        if (loaded.snapshot().ram().stream().noneMatch(e -> e.byReference())) {
            throw new SnapshotException(dir + " is a snapshot, not a template: its RAM is not in a shared memory file");
        }
        var chain = chain(dir);
        if (chain.layers().isEmpty()) return loaded;
        var layers = new ArrayList<GuestMemory.Layer>();
        long runs = 0;
        for (var ref : chain.layers()) {
            var layer = checkedLayer(dir, ref);
            if (layer.memorySize() != loaded.config().memoryBytes())
                throw new SnapshotException("the layer file " + ref.file() + " covers " + layer.memorySize()
                        + " bytes of memory, the template has "
                        + loaded.config().memoryBytes());
            layers.add(new GuestMemory.Layer(
                    ref.file(),
                    layer.runs().stream()
                            .map(r -> new long[] {r.memoryOffset(), r.length(), r.fileOffset()})
                            .toArray(long[][]::new)));
            runs += layer.runs().size();
        }
        long limit = maxMapCount();
        if (2 * runs + 64 > limit / 2)
            throw new SnapshotException("a clone of " + dir + " would need up to " + (2 * runs)
                    + " memory mappings for its " + runs + " layer runs; vm.max_map_count is " + limit);
        return loaded.withLayers(layers);
    }

    /** A template's place in a chain: depth 1 and no parent for a root template; layers root first. */
    public record Chain(int depth, Path parent, List<LayerRef> layers) {}

    /** One layer file of a chain as its child recorded it: path and identity, bytes of pages and runs. */
    public record LayerRef(Path file, FileIdentity identity, long dataBytes, long runs) {}

    /** The chain of template {@code dir}, from its {@value #CHAIN} (a root template has none). */
    public static Chain chain(Path dir) {
        Path file = dir.resolve(CHAIN);
        if (!Files.exists(file)) return new Chain(1, null, List.of());
        try {
            var m = Json.asObject(Json.parse(Files.readString(file)), "chain");
            var layers = new ArrayList<LayerRef>();
            for (var item : Json.asList(m.get("layers"), "layers")) {
                var l = Json.asObject(item, "layer");
                layers.add(new LayerRef(
                        Path.of((String) l.get("file")),
                        FileIdentity.fromJson(Json.asObject(l.get("identity"), "identity")),
                        (Long) l.get("bytes"),
                        (Long) l.get("runs")));
            }
            int depth = (int) (long) (Long) m.get("depth");
            if (depth != layers.size() + 1 || depth > MAX_DEPTH)
                throw new SnapshotException(
                        file + " is corrupt: depth " + depth + " with " + layers.size() + " layers");
            return new Chain(depth, Path.of((String) m.get("parent")), List.copyOf(layers));
        } catch (IOException e) {
            throw new SnapshotException("cannot read " + file + ": " + IoErrors.reason(e));
        } catch (Json.JsonException | ClassCastException | NullPointerException e) {
            throw new SnapshotException(file + " is corrupt: " + e.getMessage());
        }
    }

    /** A layer of {@code dir}'s chain read, after checking that its file is the one the chain recorded. */
    private static LayerFile.Layer checkedLayer(Path dir, LayerRef ref) {
        if (!Files.exists(ref.file()))
            throw new SnapshotException("the layer file " + ref.file() + " of template " + dir + " is missing");
        String diff;
        try {
            diff = ref.identity().difference(FileIdentity.of(ref.file()));
        } catch (IOException e) {
            throw new SnapshotException("cannot check layer file " + ref.file() + ": " + IoErrors.reason(e));
        }
        if (diff != null)
            throw new SnapshotException("refusing to clone " + dir + ": its chain's layer file " + ref.file()
                    + " does not match the template (" + diff + ")");
        return LayerFile.read(ref.file());
    }

    /** vm.max_map_count: the mappings a process may have (65530 by default). */
    static long maxMapCount() {
        try (var in = Files.newBufferedReader(Path.of("/proc/sys/vm/max_map_count"))) {
            return Long.parseLong(in.readLine().strip());
        } catch (IOException | RuntimeException e) {
            return 65530;
        }
    }

    /** What {@link #createFromClone} made: the new template, its parent, depth, layer and how long the clone was paused. */
    public record ChainCreated(Path dir, Path parent, int depth, long layerBytes, int layerRuns, long pausedMillis) {}

    /**
     * Makes a chained template in {@code dir} out of {@code vm}, a clone of a template running in
     * this process: pauses it (if it runs), writes the pages it wrote (its anonymous copy-on-write
     * pages, found in /proc/self/pagemap as a full save finds them) into a layer file and its state
     * into a snapshot that refers to the root template's memory file, then lets it run on. The
     * parent and every ancestor stay as they are (their directories get a link in {@value #CHILDREN}).
     */
    public static ChainCreated createFromClone(Vm vm, Path dir) throws InterruptedException, IOException {
        if (!(vm.config().backing() instanceof Backing.PrivateFile clone) || !isTemplate(clone.path()))
            throw new SnapshotException(
                    "this VM is not a clone of a template: only a clone (vmm clone, serve, host) becomes a chained template");
        Path parent = clone.path().toAbsolutePath().normalize();
        dir = dir.toAbsolutePath().normalize();
        if (vm.disks().stream().anyMatch(d -> !d.config().readOnly()))
            throw new SnapshotException(
                    "a clone with a writable disk cannot become a template: its disk is an overlay of the template's");
        var parentChain = chain(parent);
        if (parentChain.depth() >= MAX_DEPTH)
            throw new SnapshotException("template " + parent + " is at depth " + parentChain.depth()
                    + ", the deepest a chain goes (" + MAX_DEPTH + "): its clones cannot become templates");
        for (var ref : parentChain.layers()) checkedLayer(parent, ref);
        // The root's memory file, as the parent's snapshot refers to it; the clone must map exactly that.
        var root = new LinkedHashMap<String, RamBlockEntry>();
        for (var e : SnapshotReader.open(parent).ram()) if (e.byReference()) root.put(e.id(), e);
        for (var block : vm.memory().blocks()) {
            var entry = root.get(block.id());
            if (entry == null
                    || !(block.backing() instanceof Backing.PrivateFile f)
                    || !f.path().equals(entry.file()))
                throw new SnapshotException("this VM's memory is not a copy-on-write view of template " + parent
                        + "'s memory file (was it restored or moved since it was cloned?)");
        }
        if (Files.exists(dir.resolve(SnapshotFormat.FILE_NAME)) || Files.exists(dir.resolve(CREATING)))
            throw new SnapshotException("template directory " + dir + " is not empty: a template is created once");
        if (dir.startsWith(parent))
            throw new SnapshotException("a chained template cannot be inside its parent " + parent);
        Files.createDirectories(dir);
        Path marker = markCreating(dir);
        Path layerPath = dir.resolve(LayerFile.FILE_NAME);
        Path link = dir.resolve(MEMORY_LINK);
        boolean wasPaused = vm.isPaused();
        boolean done = false;
        long pausedAt = System.nanoTime();
        try {
            vm.pause();
            pausedAt = System.nanoTime();
            var sources = new ArrayList<LayerFile.Source>();
            for (var block : vm.memory().blocks()) {
                for (long[] r : fillGaps(block.copiedOnWrite())) {
                    sources.add(new LayerFile.Source(
                            block.fileOffset() + r[0], block.segment().asSlice(r[0], r[1] - r[0])));
                }
            }
            var layer = LayerFile.write(layerPath, vm.memory().size(), sources);
            // Read-only before its identity is taken (a chmod changes the ctime), as the root's memory file.
            Files.setPosixFilePermissions(layerPath, READ_ONLY);
            var identity = FileIdentity.of(layerPath);
            VmSnapshots.save(
                    vm,
                    dir,
                    VmSnapshots.Request.of(true, VmSnapshots.After.STAY_PAUSED),
                    RamWriter.Progress.NONE,
                    root);
            Files.setPosixFilePermissions(dir.resolve(SnapshotFormat.FILE_NAME), READ_ONLY);
            var layers = new ArrayList<>(parentChain.layers());
            layers.add(new LayerRef(
                    layerPath, identity, layer.dataBytes(), layer.runs().size()));
            writeChain(dir, parent, layers);
            Files.createSymbolicLink(link, root.firstEntry().getValue().file());
            Files.createDirectory(dir.resolve(CHILDREN));
            register(parent, dir);
            Files.delete(marker);
            Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("r-xr-xr-x"));
            done = true;
            return new ChainCreated(
                    dir,
                    parent,
                    layers.size() + 1,
                    layer.dataBytes(),
                    layer.runs().size(),
                    (System.nanoTime() - pausedAt) / 1_000_000);
        } finally {
            if (!done) {
                for (var f : List.of(layerPath, dir.resolve(SnapshotFormat.FILE_NAME), dir.resolve(CHAIN), link))
                    Files.deleteIfExists(f);
                Files.deleteIfExists(dir.resolve(CHILDREN));
                Files.deleteIfExists(marker);
            }
            if (!wasPaused) VmSnapshots.giveBack(vm);
        }
    }

    /** Ranges merged where the gap between them is at most {@link #GAP_FILLED} bytes. */
    static List<long[]> fillGaps(long[][] ranges) {
        var merged = new ArrayList<long[]>();
        for (long[] r : ranges) {
            var last = merged.isEmpty() ? null : merged.getLast();
            if (last != null && r[0] - last[1] <= GAP_FILLED) last[1] = Math.max(last[1], r[1]);
            else merged.add(new long[] {r[0], r[1]});
        }
        return merged;
    }

    private static void writeChain(Path dir, Path parent, List<LayerRef> layers) throws IOException {
        var list = new ArrayList<Object>();
        for (var l : layers)
            list.add(Json.object(
                    "file",
                    l.file().toString(),
                    "identity",
                    l.identity().toJson(),
                    "bytes",
                    l.dataBytes(),
                    "runs",
                    l.runs()));
        Path file = dir.resolve(CHAIN);
        Files.writeString(
                file,
                Json.write(Json.object("depth", (long) layers.size() + 1, "parent", parent.toString(), "layers", list))
                        + "\n");
        Files.setPosixFilePermissions(file, READ_ONLY);
    }

    /**
     * Records {@code child} in {@code parent}'s {@value #CHILDREN} directory. A template made before
     * chains existed has none: it is made, the parent directory writable for that moment.
     */
    private static void register(Path parent, Path child) throws IOException {
        Path children = parent.resolve(CHILDREN);
        if (!Files.isDirectory(children)) {
            var mode = Files.getPosixFilePermissions(parent);
            Files.setPosixFilePermissions(parent, PosixFilePermissions.fromString("rwxr-xr-x"));
            try {
                Files.createDirectories(children);
            } finally {
                Files.setPosixFilePermissions(parent, mode);
            }
        }
        Files.createSymbolicLink(children.resolve(childName(child)), child);
    }

    private static String childName(Path child) {
        return child.getFileName() + "-" + Integer.toHexString(child.toString().hashCode());
    }

    /** The templates made from clones of {@code dir} that exist now (links to removed ones are not counted). */
    public static List<Path> children(Path dir) throws IOException {
        Path children = dir.resolve(CHILDREN);
        var found = new ArrayList<Path>();
        if (!Files.isDirectory(children)) return found;
        Path self = dir.toAbsolutePath().normalize();
        try (var links = Files.list(children)) {
            for (var l : links.sorted().toList()) {
                if (!Files.isSymbolicLink(l)) continue;
                Path child = Files.readSymbolicLink(l);
                try {
                    if (Files.exists(child.resolve(CHAIN))
                            && self.equals(chain(child).parent())) found.add(child);
                } catch (SnapshotException e) {
                    found.add(child); // unreadable, but it names this template: keep it safe
                }
            }
        }
        return found;
    }

    /** Whether {@code dir} is a template directory (finished or being created), not a plain snapshot. */
    public static boolean isTemplate(Path dir) {
        return TemplateGuard.isTemplate(dir);
    }

    /** See {@link TemplateGuard#refuseTemplate}. */
    public static void refuseTemplate(LoadedSnapshot loaded) {
        TemplateGuard.refuseTemplate(loaded);
    }

    /** A template found by {@link #list}: its directory, memory file, guest RAM, creation time and the clones that map it. */
    public record Listed(
            Path dir, Path memoryFile, long memoryBytes, int cpus, long createdAtMillis, int users, int depth) {}

    /** The finished templates in {@code dir} (itself, or its immediate subdirectories), by directory name. */
    public static List<Listed> list(Path dir) throws IOException {
        if (!Files.isDirectory(dir)) throw new SnapshotException("no directory " + dir);
        var candidates = new ArrayList<Path>();
        if (isTemplate(dir)) candidates.add(dir);
        else
            try (var children = Files.list(dir)) {
                children.filter(Files::isDirectory).sorted().forEach(candidates::add);
            }
        var found = new ArrayList<Listed>();
        for (var d : candidates) {
            if (!Files.isSymbolicLink(d.resolve(MEMORY_LINK)) || Files.exists(d.resolve(CREATING))) continue;
            try {
                var snapshot = SnapshotReader.open(d);
                var machine = Json.asObject(snapshot.metadata().get("machine"), "machine");
                Path memory = Files.readSymbolicLink(d.resolve(MEMORY_LINK));
                var chain = chain(d);
                // A chained template's own clones are those that map its layer (every clone in a chain maps the root).
                Path mine = chain.layers().isEmpty()
                        ? memory
                        : chain.layers().getLast().file();
                int users = Files.exists(mine) ? MemoryFileLocks.holders(mine).size() : 0;
                found.add(new Listed(
                        d,
                        memory,
                        (Long) machine.get("memory"),
                        (int) (long) (Long) machine.get("cpus"),
                        snapshot.createdAtMillis(),
                        users,
                        chain.depth()));
            } catch (RuntimeException | IOException e) {
                // not readable as a template: list shows templates, inspect says what is wrong with the rest
            }
        }
        return found;
    }

    /**
     * What {@link #remove} did: the memory file it deleted (for a chained template its layer file;
     * null if it was already gone) and how many clones still map it.
     */
    public record Removed(Path dir, Path memoryFile, int runningClones, boolean otherFilesKept, boolean chained) {}

    /**
     * Removes a template: its memory file (a chained template: its layer file; the root's memory
     * file stays), its snapshot and link, and the directory unless it holds other files. Running
     * clones keep their private copy-on-write mapping (the kernel frees it when the last one ends).
     * Refuses a directory that is not a template, one that is still being created and one with
     * chained templates made from its clones (their references must not dangle).
     */
    public static Removed remove(Path dir) throws IOException {
        if (!Files.isDirectory(dir)) throw new SnapshotException("no template directory " + dir);
        Path link = dir.resolve(MEMORY_LINK);
        Path marker = dir.resolve(CREATING);
        if (!isTemplate(dir)) {
            throw new SnapshotException(dir + " is not a template (no " + MEMORY_LINK + " link): nothing removed");
        }
        if (Files.exists(marker)) {
            long pid = creator(marker);
            if (pid > 0)
                throw new SnapshotException("template " + dir + " is still being created (process " + pid
                        + " is running): nothing removed");
        }
        var children = children(dir);
        if (!children.isEmpty()) {
            throw new SnapshotException("template " + dir + " has " + children.size()
                    + " chained template(s) made from its clones (" + children.getFirst()
                    + (children.size() > 1 ? ", ..." : "") + "): remove them first; nothing removed");
        }
        var chain = Files.exists(dir.resolve(CHAIN)) ? chain(dir) : new Chain(1, null, List.of());
        boolean chained = chain.depth() > 1;
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxr-xr-x")); // created 0555
        // A chained template owns its layer; the memory file behind its link is the root's.
        Path memory = chained
                ? dir.resolve(LayerFile.FILE_NAME)
                : Files.isSymbolicLink(link) ? Files.readSymbolicLink(link) : null;
        int clones = 0;
        if (memory != null && Files.isRegularFile(memory)) {
            clones = MemoryFileLocks.holders(memory).size();
            Files.delete(memory);
        } else {
            memory = null;
        }
        Files.deleteIfExists(link);
        Files.deleteIfExists(dir.resolve(SnapshotFormat.FILE_NAME));
        Files.deleteIfExists(dir.resolve(CHAIN));
        Files.deleteIfExists(marker);
        Path childLinks = dir.resolve(CHILDREN);
        if (Files.isDirectory(childLinks)) {
            try (var stale = Files.list(childLinks)) { // links to templates removed before: nothing to keep
                for (var l : stale.toList()) if (Files.isSymbolicLink(l)) Files.delete(l);
            }
            try (var rest = Files.list(childLinks)) {
                if (rest.findAny().isEmpty()) Files.delete(childLinks);
            }
        }
        if (chained)
            Files.deleteIfExists(chain.parent()
                    .resolve(CHILDREN)
                    .resolve(childName(dir.toAbsolutePath().normalize())));
        boolean others;
        try (var rest = Files.list(dir)) {
            others = rest.findAny().isPresent();
        }
        if (!others) Files.delete(dir);
        return new Removed(dir, memory, clones, others, chained);
    }

    /** A clone of a loaded template, paused until started, with a fresh random generation id. */
    public static Vm clone(Kvm kvm, LoadedSnapshot template, OutputStream console, VmListener listener) {
        return clone(kvm, template, List.of(), console, listener);
    }

    /** As above, the clone's private disks made at {@code disks} (in the order of the template's writable disks; the rest beside the template's). */
    public static Vm clone(
            Kvm kvm, LoadedSnapshot template, List<Path> disks, OutputStream console, VmListener listener) {
        var vm = VmBuilder.fromSnapshot(kvm, template, VmBuilder.Mode.CLONE, disks, console, listener);
        vm.vmmPort().setGenerationId(newGenerationId());
        return vm;
    }

    private static final SecureRandom RANDOM = new SecureRandom();

    /** A non-zero random 64-bit generation id (0 means "never cloned"). */
    static long newGenerationId() {
        long id;
        do {
            id = RANDOM.nextLong();
        } while (id == 0);
        return id;
    }
}
