package dev.panamavmm.vmm.memory;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.nio.file.attribute.PosixFilePermission;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;

/**
 * Guest RAM: an ordered list of {@link RamBlock}s. RAM up to the 32-bit hole (3 GiB-4 GiB, kept
 * free for the LAPIC, IOAPIC and device MMIO) is block {@code ram-low}; the rest starts at 4 GiB
 * as {@code ram-high}. Both map consecutive ranges of one backing (a memfd or a file), so a
 * memory file is one file however large the guest. Mappings are sparse and {@code MAP_NORESERVE}:
 * memory the guest never touches costs nothing.
 *
 * <p>The mappings belong to the arena given at creation; the caller closes it only after every
 * vCPU has stopped and the memslots are removed (KVM keeps using the addresses).
 */
public final class GuestMemory implements AutoCloseable {
    public static final long MIB = 1L << 20;
    public static final long GIB = 1L << 30;
    public static final long MIN_SIZE = 16 * MIB;
    public static final long MAX_SIZE = 1L << 40;
    /** Start of the 32-bit hole: RAM above this guest address moves to {@link #HIGH_RAM_START}. */
    public static final long LOW_RAM_END = 3 * GIB;

    public static final long HIGH_RAM_START = 4 * GIB;
    static final long PAGE = 4096;

    private final List<RamBlock> blocks;
    private final long size;
    private final int[] fds;
    private final VmmWrites vmmWrites;
    /** While layers are being mapped: every fd opened so far, closed if the mapping fails. */
    private int[] fdsWithLayers;

    private RamLoader loader; // set once by map, before the memory is shared
    private volatile MemoryFill fill; // the loader, or a post-copy destination; null once the memory is complete
    private boolean closed;

    private GuestMemory(List<RamBlock> blocks, int... fds) {
        this.blocks = List.copyOf(blocks);
        this.size = blocks.stream().mapToLong(RamBlock::size).sum();
        this.fds = fds;
        this.fdsWithLayers = fds;
        this.vmmWrites = new VmmWrites(this.blocks);
    }

    /** RAM of {@code size} bytes in an anonymous memfd (the default backing). */
    public static GuestMemory create(long size, Arena arena) {
        return create(size, new Backing.Memfd(), arena);
    }

    /**
     * RAM of {@code size} bytes with the given backing. A {@link Backing.SharedFile} is created if
     * missing and grown to {@code size}; a {@link Backing.PrivateFile} must exist and hold at
     * least {@code size} bytes (it is a template's memory and is never written).
     */
    public static GuestMemory create(long size, Backing backing, Arena arena) {
        validateSize(size);
        int fd = openBacking(size, backing);
        try {
            var blocks = new ArrayList<RamBlock>(2);
            long low = Math.min(size, LOW_RAM_END);
            blocks.add(map("ram-low", 0, low, 0, backing, fd, arena));
            if (size > low) blocks.add(map("ram-high", HIGH_RAM_START, size - low, low, backing, fd, arena));
            return new GuestMemory(blocks, fd);
        } catch (RuntimeException e) {
            LibC.close(fd);
            throw e;
        }
    }

    static void validateSize(long size) {
        if (size < MIN_SIZE) throw new MemoryException("memory size " + size + " is below the minimum of 16 MiB");
        if (size > MAX_SIZE) throw new MemoryException("memory size " + size + " is above the maximum of 1 TiB");
        if (size % PAGE != 0) throw new MemoryException("memory size " + size + " is not a multiple of 4 KiB");
    }

    private static int openBacking(long size, Backing backing) {
        try {
            return switch (backing) {
                case Backing.Memfd m -> {
                    int memfd = LibC.memfdCreate("panama-vmm-ram", LibcConstants.MFD_CLOEXEC);
                    try {
                        LibC.ftruncate(memfd, size);
                    } catch (RuntimeException e) {
                        LibC.close(memfd);
                        throw e;
                    }
                    yield memfd;
                }
                case Backing.SharedFile f -> {
                    // Root may open a 0444 file for writing; a read-only memory file is a template's.
                    if (Files.exists(f.path())
                            && !Files.getPosixFilePermissions(f.path()).contains(PosixFilePermission.OWNER_WRITE)) {
                        throw new MemoryException("memory file " + f.path() + " is read-only (a template's memory is):"
                                + " a guest runs in it only if it is writable");
                    }
                    int file = LibC.open(
                            f.path().toString(),
                            LibcConstants.O_RDWR | LibcConstants.O_CREAT | LibcConstants.O_CLOEXEC,
                            0600);
                    try {
                        MemoryFileLocks.lock(file, f.path(), true);
                    } catch (RuntimeException e) {
                        LibC.close(file);
                        throw e;
                    }
                    try {
                        if (Files.size(f.path()) < size) LibC.ftruncate(file, size);
                    } catch (IOException | RuntimeException e) {
                        LibC.close(file);
                        throw new MemoryException("cannot size memory file " + f.path() + ": " + e.getMessage(), e);
                    }
                    yield file;
                }
                case Backing.PrivateFile f -> {
                    int file = LibC.open(f.path().toString(), LibcConstants.O_RDONLY | LibcConstants.O_CLOEXEC, 0);
                    long have;
                    try {
                        MemoryFileLocks.lock(file, f.path(), false);
                        have = Files.size(f.path());
                    } catch (IOException e) {
                        LibC.close(file);
                        throw new MemoryException("cannot read memory file " + f.path() + ": " + e.getMessage(), e);
                    } catch (RuntimeException e) {
                        LibC.close(file);
                        throw e;
                    }
                    if (have < size) {
                        LibC.close(file);
                        throw new MemoryException(
                                "memory file " + f.path() + " holds " + have + " bytes, the guest needs " + size);
                    }
                    yield file;
                }
            };
        } catch (KvmException e) {
            throw new MemoryException("cannot open guest memory backing: " + e.getMessage(), e);
        } catch (IOException e) {
            throw new MemoryException("cannot read memory file " + backing.file() + ": " + e.getMessage(), e);
        }
    }

    /**
     * Where one block's bytes are when guest memory is rebuilt from a snapshot: a range of a
     * shared memory file (mapped shared: the guest goes on in it) or of the snapshot file itself
     * (mapped private: pages load lazily on first touch, and the snapshot never changes).
     */
    public record BlockSource(
            String id, long guestAddress, long size, Backing backing, long fileOffset, int fd, List<Overlay> overlays) {
        public BlockSource(String id, long guestAddress, long size, Backing backing, long fileOffset, int fd) {
            this(id, guestAddress, size, backing, fileOffset, fd, List.of());
        }

        /** A block mapped from a file, opened here. */
        public BlockSource(String id, long guestAddress, long size, Backing backing, long fileOffset) {
            this(id, guestAddress, size, backing, fileOffset, -1);
        }
    }

    /**
     * Pages of a diff layer laid over a block: {@code runs} ({@code [start, end)} byte ranges of the
     * block) are at {@code fileOffset + start} in {@code file}.
     */
    public record Overlay(Path file, long fileOffset, long[][] runs) {}

    /**
     * Runs mapped one by one over a private block at most; beyond, the layers' pages are copied in
     * instead (each run is a mapping, and a process has at most vm.max_map_count of them).
     */
    static final int MAX_OVERLAY_MAPPINGS = 16_384;

    /** Maps each block from its own file range; nothing here reads or copies guest RAM. */
    public static GuestMemory map(List<BlockSource> sources, Arena arena) {
        return map(sources, arena, MemoryLoad.MAPPED);
    }

    /**
     * A layer of a chained template: runs of the memory file's pages held in {@code file}, each
     * row {@code {memoryOffset, length, fileOffset}} (page-aligned, ascending).
     */
    public record Layer(Path file, long[][] runs) {}

    /**
     * As {@link #map(List, Arena)}, then each layer's runs mapped copy-on-write over the private
     * blocks ({@code MAP_PRIVATE|MAP_FIXED}), from the first layer to the last: a page comes from
     * the newest layer that holds it, else from the block's file. Nothing is read or copied, so
     * pages stay shared by every clone that does not write them. Each run is one more mapping.
     */
    public static GuestMemory map(List<BlockSource> sources, Arena arena, List<Layer> layers) {
        var memory = map(sources, arena, MemoryLoad.MAPPED);
        if (layers.isEmpty()) return memory;
        try {
            var fds = Arrays.copyOf(memory.fds, memory.fds.length + layers.size());
            var layered = new HashMap<String, List<long[]>>();
            int next = memory.fds.length;
            for (var layer : layers) {
                int fd;
                try {
                    fd = LibC.open(layer.file().toString(), LibcConstants.O_RDONLY | LibcConstants.O_CLOEXEC, 0);
                } catch (KvmException e) {
                    throw new MemoryException("cannot open layer file " + layer.file() + ": " + e.getMessage(), e);
                }
                fds[next++] = fd;
                memory.fdsWithLayers = Arrays.copyOf(fds, next);
                MemoryFileLocks.lock(fd, layer.file(), false);
                for (long[] run : layer.runs()) {
                    var block = memory.blockAtFileOffset(run[0], run[1]);
                    long at = run[0] - block.fileOffset();
                    try {
                        mapOver(block.segment().asSlice(at, run[1]), fd, run[2]);
                    } catch (KvmException e) {
                        throw new MemoryException(
                                "cannot map layer " + layer.file() + " over guest memory: " + e.getMessage()
                                        + " (each run is a mapping: see vm.max_map_count)",
                                e);
                    }
                    layered.computeIfAbsent(block.id(), id -> new ArrayList<>()).add(new long[] {at, at + run[1]});
                }
            }
            var blocks = new ArrayList<RamBlock>();
            for (var b : memory.blocks) {
                var ranges = layered.getOrDefault(b.id(), List.of());
                blocks.add(new RamBlock(
                        b.id(),
                        b.guestAddress(),
                        b.segment(),
                        b.backing(),
                        b.fileOffset(),
                        b.fd(),
                        b.shared(),
                        DataExtents.union(ranges, List.of(b.overlaid())).toArray(long[][]::new)));
            }
            return new GuestMemory(blocks, fds);
        } catch (RuntimeException e) {
            memory.close();
            throw e;
        }
    }

    /** The private block holding memory-file range {@code [offset, offset + length)}, where a layer's run goes. */
    private RamBlock blockAtFileOffset(long offset, long length) {
        for (var b : blocks) {
            if (offset >= b.fileOffset() && offset + length <= b.fileOffset() + b.size() && length > 0) {
                if (!(b.backing() instanceof Backing.PrivateFile))
                    throw new IllegalArgumentException("a layer over a block that is not copy-on-write");
                return b;
            }
        }
        throw new MemoryException(
                String.format("a layer run at 0x%x+0x%x is not within one block of guest memory", offset, length));
    }

    /**
     * As {@link #map(List, Arena)}, with the blocks of a {@link Backing.PrivateFile} (a snapshot's
     * own pages) brought in as {@code load} says: mapped private from the file, or copied into
     * one new memfd, eagerly before this returns or lazily through userfaultfd ({@link RamLoader};
     * this returns once the guest may run).
     */
    public static GuestMemory map(List<BlockSource> sources, Arena arena, MemoryLoad load) {
        var blocks = new ArrayList<RamBlock>();
        var fds = new int[sources.size() + 1];
        var openedFiles = new HashMap<Backing, Integer>();
        int opened = 0;
        var regions = new ArrayList<RamLoader.Region>();
        Path loadFrom = null;
        RamLoader loader = null;
        var overlaid = new ArrayList<Map.Entry<RamBlock, List<Overlay>>>();
        long overlayRuns = 0;
        for (var s : sources) for (var o : s.overlays()) overlayRuns += o.runs().length;
        try {
            if (load == MemoryLoad.LAZY && overlayRuns > 0)
                throw new MemoryException("a diff snapshot cannot be restored lazily: use --memory-load mapped or eager"
                        + " (or merge its chain into a full snapshot first)");
            if (load != MemoryLoad.MAPPED) {
                long loadedBytes = 0;
                for (var s : sources)
                    if (s.fd() < 0 && s.backing() instanceof Backing.PrivateFile f) {
                        if (loadFrom != null && !loadFrom.equals(f.path()))
                            throw new IllegalArgumentException("blocks loaded from two files");
                        loadFrom = f.path();
                        loadedBytes += s.size();
                    }
                if (loadFrom != null) {
                    fds[opened++] = newMemfd(loadedBytes);
                }
            }
            long memfdOffset = 0;
            for (var s : sources) {
                if (loadFrom != null && s.fd() < 0 && s.backing() instanceof Backing.PrivateFile) {
                    var block =
                            map(s.id(), s.guestAddress(), s.size(), memfdOffset, new Backing.Memfd(), fds[0], arena);
                    blocks.add(block);
                    if (!s.overlays().isEmpty()) overlaid.add(Map.entry(block, s.overlays()));
                    regions.add(new RamLoader.Region(s.guestAddress(), block.segment(), s.fileOffset()));
                    memfdOffset += s.size();
                    continue;
                }
                if (s.fd() >= 0) { // a descriptor handed over (a memfd from a migrating VMM): now owned here
                    boolean seen = false;
                    for (int i = 0; i < opened; i++) seen |= fds[i] == s.fd();
                    if (!seen) fds[opened++] = s.fd();
                    blocks.add(map(s.id(), s.guestAddress(), s.size(), s.fileOffset(), s.backing(), s.fd(), arena));
                    continue;
                }
                if (s.backing() instanceof Backing.Memfd)
                    throw new IllegalArgumentException("a memfd block has no file to map");
                boolean shared = s.backing() instanceof Backing.SharedFile;
                // Blocks of one file share one open (and one lock: two opens' locks would conflict).
                Integer fd = openedFiles.get(s.backing());
                if (fd == null) {
                    try {
                        fd = LibC.open(
                                s.backing().file().toString(),
                                (shared ? LibcConstants.O_RDWR : LibcConstants.O_RDONLY) | LibcConstants.O_CLOEXEC,
                                0);
                    } catch (KvmException e) {
                        throw new MemoryException("cannot open " + s.backing().file() + ": " + e.getMessage(), e);
                    }
                    fds[opened++] = fd;
                    openedFiles.put(s.backing(), fd);
                    MemoryFileLocks.lock(fd, s.backing().file(), shared);
                }
                var block = map(s.id(), s.guestAddress(), s.size(), s.fileOffset(), s.backing(), fd, arena);
                if (!s.overlays().isEmpty()) {
                    if (shared) throw new IllegalArgumentException("diff layers over a shared block");
                    block = withOverlays(block, s.overlays(), overlayRuns > MAX_OVERLAY_MAPPINGS);
                }
                blocks.add(block);
            }
            if (load == MemoryLoad.EAGER && loadFrom != null) RamLoader.eager(loadFrom, regions);
            for (var e : overlaid) withOverlays(e.getKey(), e.getValue(), true); // into the memfd, once loaded
            if (load == MemoryLoad.LAZY && loadFrom != null) loader = RamLoader.lazy(loadFrom, regions);
            var memory = new GuestMemory(blocks, Arrays.copyOf(fds, opened));
            memory.loader = loader;
            memory.fill = loader;
            return memory;
        } catch (RuntimeException e) {
            if (loader != null) loader.close();
            for (int i = 0; i < opened; i++) LibC.close(fds[i]);
            throw e;
        }
    }

    /**
     * Lays the pages of diff layers over {@code block}, oldest first (a newer layer's page wins):
     * each run mapped private from its layer file over the block's mapping ({@code MAP_FIXED}),
     * so nothing is read before the guest touches it; or, with {@code copy}, read into the block.
     */
    private static RamBlock withOverlays(RamBlock block, List<Overlay> overlays, boolean copy) {
        List<long[]> all = new ArrayList<>();
        for (var o : overlays) {
            try (var ch = java.nio.channels.FileChannel.open(o.file(), java.nio.file.StandardOpenOption.READ)) {
                int fd =
                        copy ? -1 : LibC.open(o.file().toString(), LibcConstants.O_RDONLY | LibcConstants.O_CLOEXEC, 0);
                try {
                    for (long[] r : o.runs()) {
                        var target = block.segment().asSlice(r[0], r[1] - r[0]);
                        if (copy) {
                            var buffer = target.asByteBuffer();
                            long at = o.fileOffset() + r[0];
                            while (buffer.hasRemaining()) {
                                int n = ch.read(buffer, at + buffer.position());
                                if (n < 0) throw new java.io.EOFException("the layer file ends inside its RAM");
                            }
                        } else {
                            mapOver(target, fd, o.fileOffset() + r[0]);
                        }
                    }
                } finally {
                    if (fd >= 0) LibC.close(fd); // a mapping keeps its file open
                }
            } catch (IOException | KvmException e) {
                throw new MemoryException(
                        "cannot lay the diff layer " + o.file() + " over guest memory: " + e.getMessage(), e);
            }
            all = DataExtents.union(all, List.of(o.runs()));
        }
        return new RamBlock(
                block.id(),
                block.guestAddress(),
                block.segment(),
                block.backing(),
                block.fileOffset(),
                block.fd(),
                block.shared(),
                all.toArray(long[][]::new));
    }

    /**
     * Maps {@code fd} at {@code fileOffset} copy-on-write over {@code target}, part of a private
     * block: how a layer's run (a diff snapshot's or a chained template's) replaces the pages under it.
     */
    private static void mapOver(MemorySegment target, int fd, long fileOffset) {
        LibC.mmapFixed(
                target,
                LibcConstants.PROT_READ | LibcConstants.PROT_WRITE,
                LibcConstants.MAP_PRIVATE | LibcConstants.MAP_NORESERVE,
                fd,
                fileOffset);
    }

    private static int newMemfd(long size) {
        try {
            int memfd = LibC.memfdCreate("panama-vmm-ram", LibcConstants.MFD_CLOEXEC);
            try {
                LibC.ftruncate(memfd, size);
            } catch (RuntimeException e) {
                LibC.close(memfd);
                throw e;
            }
            return memfd;
        } catch (KvmException e) {
            throw new MemoryException("cannot create guest memory: " + e.getMessage(), e);
        }
    }

    /**
     * Marks a shared memory file as taken by a running guest: its modification (and status-change)
     * time moves to now. Writes through a shared mapping do not update the times on tmpfs, so
     * without this a snapshot that refers to the file could not tell that a guest ran on in it.
     */
    static void claim(Path file) {
        try {
            Files.setLastModifiedTime(file, FileTime.from(Instant.now()));
        } catch (IOException e) {
            throw new MemoryException("cannot claim memory file " + file + ": " + e.getMessage(), e);
        }
    }

    private static RamBlock map(String id, long gpa, long length, long offset, Backing backing, int fd, Arena arena) {
        if (backing instanceof Backing.SharedFile f) claim(f.path());
        int prot = LibcConstants.PROT_READ | LibcConstants.PROT_WRITE;
        int flags = (backing instanceof Backing.PrivateFile ? LibcConstants.MAP_PRIVATE : LibcConstants.MAP_SHARED)
                | LibcConstants.MAP_NORESERVE;
        MemorySegment segment;
        try {
            segment = LibC.mapInto(arena, length, prot, flags, fd, offset);
        } catch (KvmException e) {
            throw new MemoryException("cannot map " + (length / MIB) + " MiB of guest memory: " + e.getMessage(), e);
        }
        return new RamBlock(id, gpa, segment, backing, offset, fd, backing instanceof Backing.SharedFile);
    }

    public List<RamBlock> blocks() {
        return blocks;
    }

    /**
     * How many mappings the kernel keeps for guest RAM now (/proc/self/maps): one per block, plus
     * for a chained template's layers at most two per run (a run over the middle of an earlier
     * mapping splits it in three; adjacent runs of one file merge). They count against vm.max_map_count.
     */
    public int mappings() {
        int count = 0;
        try {
            for (var line : Files.readAllLines(Path.of("/proc/self/maps"))) {
                int dash = line.indexOf('-'), space = line.indexOf(' ');
                long start = Long.parseUnsignedLong(line, 0, dash, 16);
                long end = Long.parseUnsignedLong(line, dash + 1, space, 16);
                for (var b : blocks) {
                    long from = b.segment().address(), to = from + b.size();
                    if (start < to && end > from) count++;
                }
            }
        } catch (IOException e) {
            throw new MemoryException("cannot read /proc/self/maps: " + e.getMessage(), e);
        }
        return count;
    }

    /** Total guest RAM in bytes (without the hole). */
    public long size() {
        return size;
    }

    /** The block holding {@code [gpa, gpa + length)}, or null when the range is not all RAM of one block. */
    public RamBlock blockAt(long gpa, long length) {
        // Indexed, not for-each: it runs for every buffer of every virtio request, and an iterator is garbage.
        for (int i = 0; i < blocks.size(); i++) {
            var b = blocks.get(i);
            if (b.contains(gpa, length)) return b;
        }
        return null;
    }

    /** A view of guest RAM at {@code gpa}; the range must lie within one block. */
    public MemorySegment slice(long gpa, long length) {
        var b = blockAt(gpa, length);
        if (b == null) {
            throw new MemoryException(String.format("guest range 0x%x+0x%x is not RAM", gpa, length));
        }
        awaitPresent(gpa, length);
        return b.segment().asSlice(gpa - b.guestAddress(), length);
    }

    /**
     * Guest RAM filled while the guest runs from now on ({@link MemoryFill}: a post-copy
     * migration's destination): set before any device or vCPU touches the memory. One at a time.
     */
    public void fillWith(MemoryFill fill) {
        if (this.fill != null) throw new IllegalStateException("guest memory is already being filled");
        this.fill = fill;
    }

    /** Returns once {@code [gpa, gpa + length)} is present, so that a VMM thread never faults on a missing page. */
    private void awaitPresent(long gpa, long length) {
        var f = fill;
        if (f != null) f.awaitPresent(gpa, length);
    }

    /** The pages the VMM (its devices) may have written: KVM's dirty log does not see them. */
    public VmmWrites vmmWrites() {
        return vmmWrites;
    }

    /**
     * A view of guest RAM for a device, which may write it: the range is marked in
     * {@link #vmmWrites} first. Null when the range is not all RAM of one block.
     */
    public MemorySegment deviceSlice(long gpa, long length) {
        var b = blockAt(gpa, length);
        if (b == null) return null;
        vmmWrites.mark(gpa, length);
        awaitPresent(gpa, length);
        return b.segment().asSlice(gpa - b.guestAddress(), length);
    }

    /**
     * A read-only view of guest RAM for a device (a buffer it only reads): not marked in
     * {@link #vmmWrites}, as nothing can write through it. Null when the range is not all RAM of one block.
     */
    public MemorySegment deviceReadSlice(long gpa, long length) {
        var b = blockAt(gpa, length);
        if (b == null) return null;
        awaitPresent(gpa, length);
        return b.segment().asSlice(gpa - b.guestAddress(), length).asReadOnly();
    }

    /** Copies {@code data} into guest RAM at {@code gpa}. */
    public void write(long gpa, byte[] data) {
        vmmWrites.mark(gpa, data.length);
        MemorySegment.copy(MemorySegment.ofArray(data), 0, slice(gpa, data.length), 0, data.length);
    }

    /** Reads {@code length} bytes of guest RAM at {@code gpa}. */
    public byte[] read(long gpa, int length) {
        return slice(gpa, length).toArray(ValueLayout.JAVA_BYTE);
    }

    /**
     * Gives up the locks on the shared memory files: for a guest that has ended and will never run
     * again (saved and stopped), so that a restore can take the file while this process winds
     * down. The lock belongs to the open file description: a live update's destination that
     * received it loses it too, so this is never for a guest that moved.
     */
    public void unlockSharedFiles() {
        for (var b : blocks) {
            if (b.backing() instanceof Backing.SharedFile && !closed) LibC.flock(b.fd(), LibcConstants.LOCK_UN);
        }
    }

    /**
     * Waits until a lazy load (or a post-copy migration) has brought in every page (at once when
     * RAM is complete): a save, or a migration that hands the memfd on, needs all of it there.
     */
    public void awaitLoaded() throws InterruptedException {
        var f = fill;
        if (f != null) f.awaitLoaded();
    }

    /** Whom to tell, with a one-line reason, when a lazy load (or a post-copy fill) fails for good (the VM then has to end). */
    public void onLoadFailure(Consumer<String> callback) {
        var f = fill;
        if (f != null) f.onFailure(callback);
    }

    /** What the lazy load has done so far; null when RAM was not loaded lazily. */
    public RamLoader.Stats loadStats() {
        return loader == null ? null : loader.stats();
    }

    /**
     * Stops a lazy load (or a post-copy fill) and wakes every thread waiting on a missing page (it reads zeros): called
     * when the VM ends, before its vCPU threads are joined, so that none of them waits for ever.
     */
    public void stopLoading() {
        var f = fill;
        if (f != null) f.close();
    }

    /** Closes the backing fds. The mappings stay valid until their arena closes (and keep a file's lock until then). */
    @Override
    public void close() {
        if (!closed) {
            stopLoading();
            closed = true;
            for (int fd : fdsWithLayers) LibC.close(fd);
        }
    }
}
