package dev.panamavmm.migration;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.util.zip.CRC32C;

/**
 * The CRC32C of every fixed-size chunk of a RAM block stored in a snapshot (format v2): chunk
 * {@code i} covers bytes {@code [i * chunk, min((i + 1) * chunk, size))} of the block as stored,
 * holes and omitted zero pages read as zeros, so a hole that became data is caught as surely as
 * a flipped bit. One section per stored block ({@value #SECTION_PREFIX}ID, see
 * docs/snapshot-format.md): a u32 chunk size, a u32 count, then the count CRCs.
 */
public final class RamChecksums {
    private RamChecksums() {}

    /** The chunk size this VMM writes: 2 MiB, 4 bytes of table per 2 MiB of guest RAM. */
    public static final int CHUNK = 2 << 20;

    public static final String SECTION_PREFIX = "ram-crc/";
    /** Chunk sizes a reader accepts: powers of two from a page to 1 GiB. */
    static final int MIN_CHUNK = (int) SnapshotFormat.PAGE, MAX_CHUNK = 1 << 30;

    private static final byte[] ZEROS = new byte[64 << 10];
    private static volatile int zeroChunkCrc;

    public static String section(String blockId) {
        return SECTION_PREFIX + blockId;
    }

    static int chunks(long blockSize, int chunk) {
        return Math.toIntExact((blockSize + chunk - 1) / chunk);
    }

    static byte[] encode(int chunk, int[] crcs) {
        var b = ByteBuffer.allocate(8 + 4 * crcs.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(chunk).putInt(crcs.length);
        for (int c : crcs) b.putInt(c);
        return b.array();
    }

    /** A block's checksum table as read back. */
    record Table(int chunk, int[] crcs) {
        static Table decode(byte[] payload, long blockSize, String blockId, Path file) {
            if (payload.length < 8) throw corrupt(file, "RAM block " + blockId + " has a short checksum table");
            var b = ByteBuffer.wrap(payload).order(ByteOrder.LITTLE_ENDIAN);
            int chunk = b.getInt(), count = b.getInt();
            if (chunk < MIN_CHUNK || chunk > MAX_CHUNK || Integer.bitCount(chunk) != 1) {
                throw corrupt(
                        file,
                        "RAM block " + blockId + " has an impossible checksum chunk size "
                                + Integer.toUnsignedString(chunk));
            }
            if (count != chunks(blockSize, chunk) || payload.length != 8 + 4L * count) {
                throw corrupt(file, "RAM block " + blockId + " has a checksum table of the wrong length");
            }
            int[] crcs = new int[count];
            b.asIntBuffer().get(crcs);
            return new Table(chunk, crcs);
        }
    }

    static SnapshotException corrupt(Path file, String why) {
        return new SnapshotException("snapshot " + file + " is corrupt (" + why + ")");
    }

    /** CRC32C of {@code length} zero bytes; a whole chunk's is computed once. */
    static int zeroCrc(long length) {
        if (length == CHUNK) {
            int c = zeroChunkCrc;
            if (c == 0) zeroChunkCrc = c = computeZeroCrc(CHUNK); // 0 is not the CRC of 2 MiB of zeros
            return c;
        }
        return computeZeroCrc(length);
    }

    private static int computeZeroCrc(long length) {
        var crc = new CRC32C();
        updateZeros(crc, length);
        return (int) crc.getValue();
    }

    private static void updateZeros(CRC32C crc, long length) {
        while (length > 0) {
            int n = (int) Math.min(length, ZEROS.length);
            crc.update(ZEROS, 0, n);
            length -= n;
        }
    }

    /**
     * A block's table computed from what is in the file at {@code offset}: chunks that no range of
     * {@code touched} reaches are holes (their CRC is a constant), the others are read back.
     */
    static int[] fromFile(FileChannel channel, long offset, long size, long[][] touched) throws IOException {
        int[] crcs = new int[chunks(size, CHUNK)];
        var read = new boolean[crcs.length];
        for (long[] r : touched) for (long c = r[0] / CHUNK; c * CHUNK < r[1]; c++) read[(int) c] = true;
        var buffer = ByteBuffer.allocateDirect(CHUNK);
        var crc = new CRC32C();
        for (int i = 0; i < crcs.length; i++) {
            long length = Math.min(CHUNK, size - (long) i * CHUNK);
            if (!read[i]) {
                crcs[i] = zeroCrc(length);
                continue;
            }
            buffer.clear().limit((int) length);
            long at = offset + (long) i * CHUNK;
            while (buffer.hasRemaining()) {
                int n = channel.read(buffer, at + buffer.position());
                if (n < 0) break; // past the end: the rest of the chunk is zero
            }
            while (buffer.hasRemaining()) buffer.put((byte) 0);
            crc.reset();
            crc.update(buffer.flip());
            crcs[i] = (int) crc.getValue();
        }
        return crcs;
    }

    /**
     * Builds a block's table while {@link RamWriter} writes it: it is handed each non-zero page,
     * in ascending order, right after the zero test has read it (so it is still in the cache);
     * everything it is not handed is zero. A chunk that is zero throughout costs nothing.
     */
    static final class Accumulator {
        /** Pages are checksummed through a direct buffer over at most this much of the block (a ByteBuffer holds < 2 GiB). */
        private static final long WINDOW = 1L << 30;

        private final MemorySegment block;
        private final long size;
        private final int chunk;
        private final int[] crcs;
        private final CRC32C crc = new CRC32C();
        private int index;
        private long chunkEnd, position, pendingZeros;
        private boolean data;
        private ByteBuffer window;
        private long windowStart = -1;

        Accumulator(MemorySegment block, int chunk) {
            this.block = block;
            this.size = block.byteSize();
            this.chunk = chunk;
            this.crcs = new int[chunks(size, chunk)];
            this.chunkEnd = Math.min(size, chunk);
        }

        /** Non-zero bytes {@code [offset, offset + length)} of the block, inside one chunk, after everything handed before. */
        void data(long offset, long length) {
            zerosUpTo(offset);
            if (pendingZeros > 0) {
                updateZeros(crc, pendingZeros);
                pendingZeros = 0;
            }
            crc.update(view(offset, length));
            data = true;
            position = offset + length;
            if (position == chunkEnd) closeChunk();
        }

        /** The table, once the whole block has been written (the rest of it is zero). */
        int[] finish() {
            zerosUpTo(size);
            return crcs;
        }

        private void zerosUpTo(long end) {
            while (position < end) {
                long step = Math.min(end, chunkEnd) - position;
                pendingZeros += step; // fed only if data follows in this chunk: an all-zero chunk's CRC is a constant
                position += step;
                if (position == chunkEnd) closeChunk();
            }
        }

        private void closeChunk() {
            long length = chunkEnd - (long) index * chunk;
            if (data) {
                updateZeros(crc, pendingZeros);
                crcs[index] = (int) crc.getValue();
                crc.reset();
            } else {
                crcs[index] = zeroCrc(length);
            }
            data = false;
            pendingZeros = 0;
            index++;
            chunkEnd = Math.min(size, chunkEnd + chunk);
        }

        private ByteBuffer view(long offset, long length) {
            long start = offset - offset % WINDOW;
            if (start != windowStart) {
                window = block.asSlice(start, Math.min(WINDOW, size - start)).asByteBuffer();
                windowStart = start;
            }
            int at = (int) (offset - start);
            return window.clear().position(at).limit(at + (int) length);
        }
    }
}
