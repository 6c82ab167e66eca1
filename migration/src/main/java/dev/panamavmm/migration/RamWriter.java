package dev.panamavmm.migration;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;

/**
 * Writes a RAM block's pages into a file straight from the block's {@link MemorySegment}: the
 * segment is handed to the channel as a direct buffer, so no byte goes through the Java heap.
 * Zero pages are skipped and become holes in the file (sparse), so an idle 4 GiB guest costs what
 * it touched.
 */
public final class RamWriter {
    private RamWriter() {}

    /** Longest run of pages written in one call (a ByteBuffer holds at most 2 GiB). */
    static final long MAX_RUN = 64L << 20;
    private static final MemorySegment ZERO_PAGE = Arena.global().allocate(SnapshotFormat.PAGE);

    /** Reports bytes of guest RAM processed (written or found zero). */
    @FunctionalInterface
    public interface Progress {
        void advance(long bytes);

        Progress NONE = bytes -> { };
    }

    /** Writes the non-zero pages of {@code block} at {@code fileOffset + pageOffset}; returns how many. */
    public static long write(FileChannel channel, long fileOffset, MemorySegment block, Progress progress) throws IOException {
        long page = SnapshotFormat.PAGE;
        long pages = block.byteSize() / page;
        long written = 0;
        long runStart = -1;
        for (long p = 0; p <= pages; p++) {
            boolean data = p < pages && !isZero(block, p * page);
            if (data && runStart < 0) runStart = p;
            boolean flush = runStart >= 0 && (!data || (p - runStart) * page >= MAX_RUN);
            if (flush) {
                long from = runStart * page;
                long length = (p - runStart) * page;
                var buffer = block.asSlice(from, length).asByteBuffer();
                long at = fileOffset + from;
                while (buffer.hasRemaining()) at += channel.write(buffer, at);
                written += p - runStart;
                progress.advance(length);
                runStart = data ? p : -1;
            }
            if (!data && p < pages) progress.advance(page);
        }
        return written;
    }

    private static boolean isZero(MemorySegment block, long offset) {
        return MemorySegment.mismatch(block, offset, offset + SnapshotFormat.PAGE, ZERO_PAGE, 0, SnapshotFormat.PAGE) < 0;
    }
}
