package dev.panamavmm.migration;

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
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.zip.CRC32C;

/**
 * Writes one snapshot atomically: everything goes to a temporary file in the snapshot directory,
 * which {@link #commit} fsyncs and renames into place (and fsyncs the directory). Closing without
 * a commit deletes the temporary file, so a failed save never leaves a partial snapshot, and an
 * earlier snapshot in the same directory stays intact until the new one is complete.
 */
public final class SnapshotWriter implements AutoCloseable {
    private final Path dir;
    private final Path temp;
    private final FileChannel channel;
    private final Map<String, byte[]> sections = new LinkedHashMap<>();
    private final List<RamBlockEntry> ram = new ArrayList<>();
    private long nextData = SnapshotFormat.DATA_START;
    private boolean committed;

    private SnapshotWriter(Path dir, Path temp, FileChannel channel) {
        this.dir = dir;
        this.temp = temp;
        this.channel = channel;
    }

    /** Starts a snapshot in {@code dir} (created if missing). */
    public static SnapshotWriter create(Path dir) {
        try {
            Files.createDirectories(dir);
            Path temp = dir.resolve("." + SnapshotFormat.FILE_NAME + ".tmp-" + ProcessHandle.current().pid() + "-" + System.nanoTime());
            var channel = FileChannel.open(temp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE, StandardOpenOption.READ);
            return new SnapshotWriter(dir, temp, channel);
        } catch (IOException e) {
            String why = Files.exists(dir) && !Files.isDirectory(dir) ? "it is not a directory" : IoErrors.reason(e);
            throw new SnapshotException("cannot write a snapshot in " + dir + ": " + why, e);
        }
    }

    /** Adds a named section (vCPU, VM or device state). Kept in memory until commit: they are small. */
    public void section(String name, byte[] payload) {
        if (name.equals("metadata") || sections.containsKey(name)) throw new IllegalArgumentException("section " + name + " twice");
        if (name.getBytes(StandardCharsets.UTF_8).length > SnapshotFormat.MAX_NAME) throw new IllegalArgumentException("section name too long");
        sections.put(name, payload.clone());
    }

    /** Records a block stored by reference to its shared memory file or to a passed descriptor (nothing of it is written). */
    public void ramByReference(RamBlockEntry entry) {
        if (!entry.byReference() && !entry.byDescriptor()) throw new IllegalArgumentException("not a reference");
        ram.add(entry);
    }

    /** Writes a block's non-zero pages into the snapshot and records it. */
    public RamBlockEntry ramWithData(String id, long guestAddress, String kind, boolean shared, MemorySegment data,
                                     RamWriter.Progress progress) {
        return ramWithData(id, guestAddress, kind, shared, data, new long[][] {{0, data.byteSize()}}, progress);
    }

    /** As {@link #ramWithData(String, long, String, boolean, MemorySegment, RamWriter.Progress)}, reading only inside {@code extents} (the rest is zero). */
    public RamBlockEntry ramWithData(String id, long guestAddress, String kind, boolean shared, MemorySegment data,
                                     long[][] extents, RamWriter.Progress progress) {
        long offset = nextData;
        try {
            long pages = RamWriter.write(channel, offset, data, extents, progress);
            nextData = offset + align(data.byteSize());
            var entry = RamBlockEntry.withData(id, guestAddress, data.byteSize(), kind, shared, offset, pages);
            ram.add(entry);
            return entry;
        } catch (IOException e) {
            throw new SnapshotException("writing RAM block " + id + " failed: " + e.getMessage(), e);
        }
    }

    private static long align(long v) {
        return (v + SnapshotFormat.PAGE - 1) & -SnapshotFormat.PAGE;
    }

    /**
     * Writes the metadata (with the RAM block table added as {@code "ram"}), the section table and
     * the header, then makes the snapshot durable and visible in one rename.
     */
    public Path commit(Map<String, Object> metadata, String flavour, boolean bypass) {
        try {
            var meta = new LinkedHashMap<>(metadata);
            meta.put("ram", ram.stream().map(RamBlockEntry::toJson).toList());
            var all = new LinkedHashMap<String, byte[]>();
            all.put("metadata", Json.write(meta).getBytes(StandardCharsets.UTF_8));
            all.putAll(sections);

            long tableOffset = nextData;
            var table = new java.io.ByteArrayOutputStream();
            for (var e : all.entrySet()) {
                byte[] name = e.getKey().getBytes(StandardCharsets.UTF_8);
                var head = ByteBuffer.allocate(2 + name.length + 8 + 4).order(ByteOrder.LITTLE_ENDIAN);
                head.putShort((short) name.length).put(name).putLong(e.getValue().length).putInt(crc(e.getValue()));
                table.writeBytes(head.array());
                table.writeBytes(e.getValue());
            }
            byte[] tableBytes = table.toByteArray();
            writeFully(ByteBuffer.wrap(tableBytes), tableOffset);
            long fileLength = tableOffset + tableBytes.length;

            var header = ByteBuffer.allocate(SnapshotFormat.HEADER_SIZE).order(ByteOrder.LITTLE_ENDIAN);
            header.put(SnapshotFormat.MAGIC);
            header.putInt(SnapshotFormat.OFF_VERSION, SnapshotFormat.VERSION);
            header.putInt(SnapshotFormat.OFF_FLAVOUR, SnapshotFormat.flavourCode(flavour));
            header.putLong(SnapshotFormat.OFF_CREATED, System.currentTimeMillis());
            header.putLong(SnapshotFormat.OFF_TABLE, tableOffset);
            header.putLong(SnapshotFormat.OFF_TABLE_LENGTH, tableBytes.length);
            header.putInt(SnapshotFormat.OFF_TABLE_CRC, crc(tableBytes));
            header.putInt(SnapshotFormat.OFF_FLAGS, bypass ? SnapshotFormat.FLAG_BYPASS : 0);
            header.putLong(SnapshotFormat.OFF_FILE_LENGTH, fileLength);
            header.putInt(SnapshotFormat.OFF_HEADER_CRC, crc(header.array(), SnapshotFormat.OFF_HEADER_CRC));
            writeFully(header.clear(), 0);

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
        if (committed) return;
        try {
            channel.close();
            Files.deleteIfExists(temp);
        } catch (IOException e) {
            // best effort: a stale temp file is named as such and ignored by readers
        }
    }
}
