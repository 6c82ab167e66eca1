package dev.panamavmm.migration;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.NoSuchFileException;
import java.nio.file.StandardOpenOption;
import java.util.zip.CRC32C;

/**
 * Checks the RAM stored in a snapshot against its checksum tables (format v2): every stored
 * block is read front to back in large sequential reads, holes included, and each chunk's CRC32C
 * compared. The first mismatch ends it with one sentence naming the block and the byte range.
 * Blocks stored by reference (bypass-shared-memory) are not read: their pages live in the memory
 * file, of which only the identity (device, inode, size, times) is checked, as a restore does.
 */
public final class RamVerifier {
    private RamVerifier() {}

    /** One read; a multiple of every chunk size up to 16 MiB. */
    static final int READ = 16 << 20;

    /**
     * What was checked.
     *
     * @param checksums false for a format v1 snapshot: its RAM carries no checksums, nothing was read
     */
    public record Verified(
            int blocksChecked, long bytesChecked, int blocksByReference, boolean checksums, long nanos) {}

    /** Checks every block of {@code snapshot} (already opened, so its header and sections are checked); throws on the first damage. */
    public static Verified verify(SnapshotReader snapshot) {
        long start = System.nanoTime();
        int references = 0;
        for (var e : snapshot.ram()) {
            if (e.byReference()) checkMemoryFile(snapshot, e);
            if (e.byReference() || e.byDescriptor()) references++;
        }
        if (snapshot.version() < 2) return new Verified(0, 0, references, false, System.nanoTime() - start);
        int blocks = 0;
        long bytes = 0;
        try (var channel = FileChannel.open(snapshot.file(), StandardOpenOption.READ)) {
            ByteBuffer buffer = null;
            for (var e : snapshot.ram()) {
                if (e.byReference() || e.byDescriptor()) continue;
                var table = snapshot.checksums(e);
                if (buffer == null) buffer = ByteBuffer.allocateDirect((int) Math.min(READ, e.size()));
                else if (buffer.capacity() < Math.min(READ, e.size())) buffer = ByteBuffer.allocateDirect(READ);
                verifyBlock(channel, snapshot, e, table, buffer);
                blocks++;
                bytes += e.size();
            }
        } catch (IOException e) {
            throw new SnapshotException("cannot read snapshot " + snapshot.file() + ": " + e.getMessage(), e);
        }
        return new Verified(blocks, bytes, references, true, System.nanoTime() - start);
    }

    private static void checkMemoryFile(SnapshotReader snapshot, RamBlockEntry block) {
        String what = "snapshot " + snapshot.file() + " cannot be restored: the memory file " + block.file()
                + " of RAM block " + block.id();
        FileIdentity now;
        try {
            now = FileIdentity.of(block.file());
        } catch (NoSuchFileException e) {
            throw new SnapshotException(what + " is missing");
        } catch (IOException e) {
            throw new SnapshotException(what + " cannot be read: " + e.getMessage());
        }
        String why = block.identity().difference(now);
        if (why != null) throw new SnapshotException(what + " does not match the snapshot (" + why + ")");
    }

    private static void verifyBlock(
            FileChannel channel,
            SnapshotReader snapshot,
            RamBlockEntry block,
            RamChecksums.Table table,
            ByteBuffer buffer)
            throws IOException {
        var crc = new CRC32C();
        long size = block.size(), chunk = table.chunk(), position = 0;
        int index = 0;
        while (position < size) {
            int n = (int) Math.min(buffer.capacity(), size - position);
            buffer.clear().limit(n);
            long at = block.dataOffset() + position;
            while (buffer.hasRemaining()) {
                int read = channel.read(buffer, at + buffer.position());
                if (read < 0)
                    throw new SnapshotException(
                            "snapshot " + snapshot.file() + " is truncated (RAM block " + block.id() + ")");
            }
            buffer.flip();
            while (buffer.hasRemaining()) {
                long chunkEnd = Math.min(size, (index + 1) * chunk);
                int take = (int) Math.min(buffer.remaining(), chunkEnd - position);
                buffer.limit(buffer.position() + take);
                crc.update(buffer); // consumes up to the limit
                buffer.limit(n);
                position += take;
                if (position == chunkEnd) {
                    if ((int) crc.getValue() != table.crcs()[index]) {
                        throw RamChecksums.corrupt(
                                snapshot.file(),
                                String.format(
                                        "RAM block %s, bytes 0x%x-0x%x: checksum mismatch",
                                        block.id(), index * chunk, chunkEnd - 1));
                    }
                    crc.reset();
                    index++;
                }
            }
        }
    }
}
