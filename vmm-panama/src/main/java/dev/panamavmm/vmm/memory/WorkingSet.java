package dev.panamavmm.vmm.memory;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.zip.CRC32C;

/**
 * The pages a lazily restored guest touched first, in the order it touched them, kept beside its
 * snapshot ({@code DIR/working-set}) so that the next lazy restore loads them before the guest
 * runs. The file is tied to one snapshot by the snapshot header's creation time, CRC and file
 * length: a snapshot written again makes it stale. Format in docs/snapshot-format.md.
 *
 * @param snapshot     the snapshot it belongs to
 * @param guestPages   guest-physical addresses of the chunks faulted, in fault order
 */
public record WorkingSet(SnapshotKey snapshot, long[] guestPages) {
    static final String FILE_NAME = "working-set";
    static final byte[] MAGIC = {'P', 'V', 'M', 'W', 'S', 'E', 'T', 0};
    static final int VERSION = 1;
    static final int HEADER = 40;
    /** A working set longer than this (1 TiB of 4 KiB pages) is corrupt, not read. */
    static final int MAX_PAGES = 1 << 28;

    /**
     * What ties a working set to its snapshot: fields of the snapshot's header.
     *
     * @param createdAt  the header's creation time (ms)
     * @param headerCrc  the header's own CRC32C
     * @param fileLength the snapshot file's length
     */
    public record SnapshotKey(long createdAt, int headerCrc, long fileLength) {
        /**
         * The key of the snapshot file {@code file} as it is now; a file shorter than its header
         * says (truncated since the restore read it) is an error.
         */
        static SnapshotKey of(Path file) throws IOException {
            try (var ch = FileChannel.open(file, StandardOpenOption.READ)) {
                var header = ByteBuffer.allocate(64).order(ByteOrder.LITTLE_ENDIAN);
                while (header.hasRemaining() && ch.read(header, header.position()) > 0) {}
                if (header.hasRemaining()) throw new IOException("the snapshot header is short");
                long length = ch.size(), written = header.getLong(48);
                if (length < written)
                    throw new IOException(
                            "it holds " + length + " bytes, its header says " + written + ": it was truncated");
                return new SnapshotKey(header.getLong(16), header.getInt(60), length);
            }
        }
    }

    static Path pathFor(Path snapshotFile) {
        return snapshotFile.resolveSibling(FILE_NAME);
    }

    /** Reads the working set beside {@code snapshotFile}; throws with a one-line reason when it is corrupt or stale. */
    static WorkingSet read(Path snapshotFile, SnapshotKey current) throws IOException {
        var path = pathFor(snapshotFile);
        long size = Files.size(path);
        if (size < HEADER + 4 || size > HEADER + 4 + 8L * MAX_PAGES)
            throw new IOException("it has " + size + " bytes, no working set has that size");
        var bytes = ByteBuffer.wrap(Files.readAllBytes(path)).order(ByteOrder.LITTLE_ENDIAN);
        var crc = new CRC32C();
        crc.update(bytes.array(), 0, bytes.capacity() - 4);
        if ((int) crc.getValue() != bytes.getInt(bytes.capacity() - 4)) throw new IOException("checksum mismatch");
        for (int i = 0; i < MAGIC.length; i++)
            if (bytes.get(i) != MAGIC[i]) throw new IOException("it is not a working-set file");
        int version = bytes.getInt(8);
        if (version != VERSION) throw new IOException("version " + version + ", this VMM reads " + VERSION);
        var key = new SnapshotKey(bytes.getLong(16), bytes.getInt(24), bytes.getLong(32));
        int count = bytes.getInt(28);
        if ((long) HEADER + 8L * count + 4 != bytes.capacity()) throw new IOException("its page count is wrong");
        if (!key.equals(current)) throw new IOException("stale: the snapshot was written again since");
        var pages = new long[count];
        for (int i = 0; i < count; i++) pages[i] = bytes.getLong(HEADER + 8 * i);
        return new WorkingSet(key, pages);
    }

    /** Writes this working set beside {@code snapshotFile} atomically (temporary file, rename). */
    void write(Path snapshotFile, int chunkSize) throws IOException {
        var bytes = ByteBuffer.allocate(HEADER + 8 * guestPages.length + 4).order(ByteOrder.LITTLE_ENDIAN);
        bytes.put(MAGIC).putInt(VERSION).putInt(chunkSize).putLong(snapshot.createdAt());
        bytes.putInt(snapshot.headerCrc()).putInt(guestPages.length).putLong(snapshot.fileLength());
        for (long page : guestPages) bytes.putLong(page);
        var crc = new CRC32C();
        crc.update(bytes.array(), 0, bytes.position());
        bytes.putInt((int) crc.getValue());
        var path = pathFor(snapshotFile);
        var tmp = path.resolveSibling(
                "." + FILE_NAME + ".tmp-" + ProcessHandle.current().pid());
        try {
            Files.write(tmp, bytes.array());
            Files.move(tmp, path, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }
}
