package dev.panamavmm.migration;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.time.Instant;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import java.util.zip.CRC32C;

/**
 * Writes one snapshot atomically: everything goes to a temporary file in the snapshot directory,
 * which {@link #commit} fsyncs and renames into place (and fsyncs the directory). Closing without
 * a commit deletes the temporary file, so a failed save never leaves a partial snapshot, and an
 * earlier snapshot in the same directory stays intact until the new one is complete.
 *
 * <p>{@link #inMemory} writes the same container into a byte array instead, for a migration that
 * sends its state over a connection: only sections and RAM by reference, nothing touches a file.
 */
public final class SnapshotWriter implements AutoCloseable {
    private final Path dir;
    private final Path temp;
    private final FileChannel channel;
    private final Map<String, byte[]> sections = new LinkedHashMap<>();
    private final List<RamBlockEntry> ram = new ArrayList<>();
    private final Map<String, byte[]> checksums = new LinkedHashMap<>();
    private long nextData = SnapshotFormat.DATA_START;
    private SnapshotIdentity base;
    private boolean committed;

    /** Null for {@link #inMemory}: its container is {@link #commitToBytes}'s result. */
    private SnapshotWriter(Path dir, Path temp, FileChannel channel) {
        this.dir = dir;
        this.temp = temp;
        this.channel = channel;
    }

    /** Temporary snapshot files: {@code .snapshot.pvm.tmp-PID-N}, PID the writer's process. */
    static final Pattern TEMP_NAME =
            Pattern.compile("\\." + Pattern.quote(SnapshotFormat.FILE_NAME) + "\\.tmp-(\\d{1,19})-(-?\\d{1,19})");

    /** Starts a snapshot in {@code dir} (created if missing), first removing temporary files of writers that died. */
    public static SnapshotWriter create(Path dir) {
        try {
            Files.createDirectories(dir);
            removeStaleTemporaries(dir);
            Path temp = dir.resolve("." + SnapshotFormat.FILE_NAME + ".tmp-"
                    + ProcessHandle.current().pid() + "-" + System.nanoTime());
            var channel = FileChannel.open(
                    temp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE, StandardOpenOption.READ);
            return new SnapshotWriter(dir, temp, channel);
        } catch (IOException e) {
            String why = Files.exists(dir) && !Files.isDirectory(dir) ? "it is not a directory" : IoErrors.reason(e);
            throw new SnapshotException("cannot write a snapshot in " + dir + ": " + why, e);
        }
    }

    /** Starts a container kept in memory: sections and RAM by reference only (a block's pages need a file). */
    public static SnapshotWriter inMemory() {
        return new SnapshotWriter(null, null, null);
    }

    private FileChannel channel() {
        if (channel == null) throw new IllegalStateException("a snapshot kept in memory holds no RAM pages");
        return channel;
    }

    /** Adds a named section (vCPU, VM or device state). Kept in memory until commit: they are small. */
    public void section(String name, byte[] payload) {
        if (name.equals("metadata")
                || name.startsWith(RamChecksums.SECTION_PREFIX)
                || name.startsWith(LayerPages.SECTION_PREFIX)
                || sections.containsKey(name)) throw new IllegalArgumentException("section " + name + " twice");
        if (name.getBytes(StandardCharsets.UTF_8).length > SnapshotFormat.MAX_NAME)
            throw new IllegalArgumentException("section name too long");
        sections.put(name, payload.clone());
    }

    /** Records a block stored by reference to its shared memory file or to a passed descriptor (nothing of it is written). */
    public void ramByReference(RamBlockEntry entry) {
        if (!entry.byReference() && !entry.byDescriptor()) throw new IllegalArgumentException("not a reference");
        ram.add(entry);
    }

    /** Writes a block's non-zero pages into the snapshot and records it. */
    public RamBlockEntry ramWithData(
            String id,
            long guestAddress,
            String kind,
            boolean shared,
            MemorySegment data,
            RamWriter.Progress progress) {
        return ramWithData(id, guestAddress, kind, shared, data, new long[][] {{0, data.byteSize()}}, progress);
    }

    /**
     * As {@link #ramWithData(String, long, String, boolean, MemorySegment, RamWriter.Progress)}, reading only inside
     * {@code extents} (the rest is zero). The block's checksum table is computed on the way and
     * written with the sections.
     */
    public RamBlockEntry ramWithData(
            String id,
            long guestAddress,
            String kind,
            boolean shared,
            MemorySegment data,
            long[][] extents,
            RamWriter.Progress progress) {
        String checksumSection = RamChecksums.section(id);
        if (checksumSection.getBytes(StandardCharsets.UTF_8).length > SnapshotFormat.MAX_NAME)
            throw new IllegalArgumentException("RAM block id too long");
        if (checksums.containsKey(checksumSection)) throw new IllegalArgumentException("RAM block " + id + " twice");
        long offset = nextData;
        try {
            var accumulator = new RamChecksums.Accumulator(data, RamChecksums.CHUNK);
            long pages = RamWriter.write(channel(), offset, data, extents, progress, accumulator);
            checksums.put(checksumSection, RamChecksums.encode(RamChecksums.CHUNK, accumulator.finish()));
            nextData = offset + align(data.byteSize());
            var entry = RamBlockEntry.withData(id, guestAddress, data.byteSize(), kind, shared, offset, pages);
            ram.add(entry);
            return entry;
        } catch (IOException e) {
            throw new SnapshotException("writing RAM block " + id + " failed: " + e.getMessage(), e);
        }
    }

    /**
     * Makes this snapshot a diff layer over {@code base}: it is written as format
     * {@value SnapshotFormat#LAYER_VERSION} and names its base; each block stored in it needs its
     * page runs ({@link #layerPages}).
     */
    public void layerOver(SnapshotIdentity base) {
        this.base = base;
    }

    /** Records which pages of block {@code id} this layer holds ({@code [start, end)} byte ranges, page-aligned, ascending). */
    public void layerPages(String id, long[][] runs) {
        String name = LayerPages.section(id);
        if (checksums.containsKey(name)) throw new IllegalArgumentException("RAM block " + id + " twice");
        checksums.put(name, LayerPages.encode(runs));
    }

    /**
     * Reserves the place of a block whose pages are written in several passes while the guest
     * runs (a live snapshot): {@link #writePages} fills it, {@link #addReserved} records it.
     * Returns its offset in the file.
     */
    public long reserve(long size) {
        channel();
        long offset = nextData;
        nextData = offset + align(size);
        return offset;
    }

    /**
     * Writes {@code runs} of {@code data} at {@code offset + run start}: zero pages skipped when
     * {@code skipZeros} (the first pass, over a hole), else every byte (a page written again may
     * have become zero).
     */
    public void writePages(long offset, MemorySegment data, long[][] runs, boolean skipZeros) {
        var channel = channel();
        try {
            if (skipZeros) {
                RamWriter.write(channel, offset, data, runs, RamWriter.Progress.NONE);
                return;
            }
            for (long[] r : runs) {
                for (long from = r[0]; from < r[1]; from += RamWriter.MAX_RUN) {
                    long length = Math.min(RamWriter.MAX_RUN, r[1] - from);
                    var buffer = data.asSlice(from, length).asByteBuffer();
                    long at = offset + from;
                    while (buffer.hasRemaining()) at += channel.write(buffer, at);
                }
            }
        } catch (IOException e) {
            throw new SnapshotException("writing RAM failed: " + IoErrors.reason(e), e);
        }
    }

    /**
     * Records a block reserved with {@link #reserve} and filled by {@link #writePages}, once its
     * pages are final: its checksum table is computed from the file (only the chunks that
     * {@code touched} reaches are read; the rest of the block is a hole).
     */
    public RamBlockEntry addReserved(
            String id, long guestAddress, String kind, boolean shared, long size, long offset, long[][] touched) {
        String checksumSection = RamChecksums.section(id);
        if (checksums.containsKey(checksumSection)) throw new IllegalArgumentException("RAM block " + id + " twice");
        try {
            checksums.put(
                    checksumSection,
                    RamChecksums.encode(RamChecksums.CHUNK, RamChecksums.fromFile(channel(), offset, size, touched)));
        } catch (IOException e) {
            throw new SnapshotException("reading back RAM block " + id + " failed: " + IoErrors.reason(e), e);
        }
        var entry = RamBlockEntry.withData(
                id, guestAddress, size, kind, shared, offset, LayerPages.bytes(touched) / SnapshotFormat.PAGE);
        ram.add(entry);
        return entry;
    }

    /**
     * Deletes the temporary snapshot files in {@code dir} whose writer no longer runs (a VMM
     * killed mid-save leaves one as large as the RAM it wrote). A file is stale when no process
     * has its pid, or the process with that pid started after the file was last written (the pid
     * was reused). Files of live writers stay. Returns how many were deleted; best effort.
     */
    static int removeStaleTemporaries(Path dir) {
        int removed = 0;
        try (var files = Files.newDirectoryStream(dir, ".*.tmp-*")) {
            for (Path f : files) {
                var m = TEMP_NAME.matcher(f.getFileName().toString());
                if (!m.matches()) continue;
                try {
                    if (writerGone(
                                    Long.parseLong(m.group(1)),
                                    Files.getLastModifiedTime(f).toInstant())
                            && Files.deleteIfExists(f)) removed++;
                } catch (IOException | NumberFormatException e) {
                    // gone meanwhile, or not ours to judge: leave it
                }
            }
        } catch (IOException e) {
            // an unreadable directory fails the save itself, with its own message
        }
        return removed;
    }

    private static boolean writerGone(long pid, Instant lastWritten) {
        var process = ProcessHandle.of(pid);
        if (process.isEmpty()) return true;
        // A process start time is known to within a second or so (the kernel's boot time is in seconds).
        return process.get()
                .info()
                .startInstant()
                .map(s -> s.isAfter(lastWritten.plusSeconds(2)))
                .orElse(false);
    }

    private static long align(long v) {
        return (v + SnapshotFormat.PAGE - 1) & -SnapshotFormat.PAGE;
    }

    /**
     * Writes the metadata (with the RAM block table added as {@code "ram"}), the section table and
     * the header, then makes the snapshot durable and visible in one rename.
     */
    public Path commit(Map<String, Object> metadata, String flavour, boolean bypass) {
        channel();
        try {
            var tail = tail(metadata, flavour, bypass);
            writeFully(ByteBuffer.wrap(tail.table()), tail.tableOffset());
            writeFully(ByteBuffer.wrap(tail.header()), 0);
            channel.force(true);
            channel.close();
            Path target = dir.resolve(SnapshotFormat.FILE_NAME);
            Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            try (var d = FileChannel.open(dir, StandardOpenOption.READ)) {
                d.force(true); // the rename itself is durable
            }
            committed = true;
            return target;
        } catch (IOException e) {
            throw new SnapshotException("writing the snapshot in " + dir + " failed: " + IoErrors.reason(e), e);
        }
    }

    /**
     * As {@link #commit}, for a writer made by {@link #inMemory}: the whole container, as the
     * file would hold it ({@link SnapshotReader#fromBytes} reads it back).
     */
    public byte[] commitToBytes(Map<String, Object> metadata, String flavour, boolean bypass) {
        if (channel != null) throw new IllegalStateException("this snapshot is written to a file");
        var tail = tail(metadata, flavour, bypass);
        byte[] container = new byte[Math.toIntExact(tail.tableOffset() + tail.table().length)];
        System.arraycopy(tail.header(), 0, container, 0, tail.header().length);
        System.arraycopy(tail.table(), 0, container, (int) tail.tableOffset(), tail.table().length);
        committed = true;
        return container;
    }

    /** The section table, at {@code tableOffset}, and the header that points to it. */
    private record Tail(byte[] header, long tableOffset, byte[] table) {}

    private Tail tail(Map<String, Object> metadata, String flavour, boolean bypass) {
        var meta = new LinkedHashMap<>(metadata);
        meta.put(
                "ram",
                ram.stream()
                        .sorted(java.util.Comparator.comparingLong(RamBlockEntry::guestAddress))
                        .map(RamBlockEntry::toJson)
                        .toList());
        if (base != null) meta.put("base", base.toJson());
        var all = new LinkedHashMap<String, byte[]>();
        all.put("metadata", Json.write(meta).getBytes(StandardCharsets.UTF_8));
        all.putAll(sections);
        all.putAll(checksums);

        long tableOffset = nextData;
        var table = new ByteArrayOutputStream();
        for (var e : all.entrySet()) {
            byte[] name = e.getKey().getBytes(StandardCharsets.UTF_8);
            var head = ByteBuffer.allocate(2 + name.length + 8 + 4).order(ByteOrder.LITTLE_ENDIAN);
            head.putShort((short) name.length)
                    .put(name)
                    .putLong(e.getValue().length)
                    .putInt(crc(e.getValue()));
            table.writeBytes(head.array());
            table.writeBytes(e.getValue());
        }
        byte[] tableBytes = table.toByteArray();
        long fileLength = tableOffset + tableBytes.length;

        var header = ByteBuffer.allocate(SnapshotFormat.HEADER_SIZE).order(ByteOrder.LITTLE_ENDIAN);
        header.put(SnapshotFormat.MAGIC);
        header.putInt(SnapshotFormat.OFF_VERSION, base != null ? SnapshotFormat.LAYER_VERSION : SnapshotFormat.VERSION);
        header.putInt(SnapshotFormat.OFF_FLAVOUR, SnapshotFormat.flavourCode(flavour));
        header.putLong(SnapshotFormat.OFF_CREATED, System.currentTimeMillis());
        header.putLong(SnapshotFormat.OFF_TABLE, tableOffset);
        header.putLong(SnapshotFormat.OFF_TABLE_LENGTH, tableBytes.length);
        header.putInt(SnapshotFormat.OFF_TABLE_CRC, crc(tableBytes));
        header.putInt(SnapshotFormat.OFF_FLAGS, bypass ? SnapshotFormat.FLAG_BYPASS : 0);
        header.putLong(SnapshotFormat.OFF_FILE_LENGTH, fileLength);
        header.putInt(SnapshotFormat.OFF_HEADER_CRC, crc(header.array(), SnapshotFormat.OFF_HEADER_CRC));
        return new Tail(header.array(), tableOffset, tableBytes);
    }

    private void writeFully(ByteBuffer b, long at) throws IOException {
        while (b.hasRemaining()) at += channel.write(b, at);
    }

    static int crc(byte[] data) {
        return crc(data, data.length);
    }

    static int crc(byte[] data, int length) {
        var c = new CRC32C();
        c.update(data, 0, length);
        return (int) c.getValue();
    }

    /** Abandons an uncommitted snapshot: the temporary file is deleted. */
    @Override
    public void close() {
        if (committed || channel == null) return;
        try {
            channel.close();
            Files.deleteIfExists(temp);
        } catch (IOException e) {
            // best effort: a stale temp file is named as such and ignored by readers
        }
    }
}
