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

        Progress NONE = bytes -> {};
    }

    /** Writes the non-zero pages of {@code block} at {@code fileOffset + pageOffset}; returns how many. */
    public static long write(FileChannel channel, long fileOffset, MemorySegment block, Progress progress)
            throws IOException {
        return write(channel, fileOffset, block, new long[][] {{0, block.byteSize()}}, progress);
    }

    /**
     * As {@link #write(FileChannel, long, MemorySegment, Progress)}, reading only inside
     * {@code extents} ({@code [start, end)} byte ranges of the block, ascending, not overlapping):
     * the caller knows everything else is zero (a sparse file's holes), and it is not touched.
     */
    public static long write(
            FileChannel channel, long fileOffset, MemorySegment block, long[][] extents, Progress progress)
            throws IOException {
        return write(channel, fileOffset, block, extents, progress, null);
    }

    /**
     * As {@link #write(FileChannel, long, MemorySegment, long[][], Progress)}, handing every
     * non-zero page to {@code checksums} (when not null) as soon as the zero test has read it.
     */
    static long write(
            FileChannel channel,
            long fileOffset,
            MemorySegment block,
            long[][] extents,
            Progress progress,
            RamChecksums.Accumulator checksums)
            throws IOException {
        long page = SnapshotFormat.PAGE;
        long written = 0, covered = 0;
        for (long[] extent : extents) {
            // Whole pages: an extent's partial first or last page is read whole (and shared with a neighbour at most
            // once).
            long first = Math.max(extent[0] / page, covered / page),
                    end = Math.min(block.byteSize(), extent[1] + page - 1) / page;
            if (end <= first) continue;
            progress.advance(first * page - covered); // the hole before it: zero, skipped unread
            written += writeRange(channel, fileOffset, block, first, end, progress, checksums);
            covered = end * page;
        }
        progress.advance(block.byteSize() - covered);
        return written;
    }

    /** Pages {@code [first, end)} of the block: non-zero runs written, zero pages skipped. */
    private static long writeRange(
            FileChannel channel,
            long fileOffset,
            MemorySegment block,
            long first,
            long end,
            Progress progress,
            RamChecksums.Accumulator checksums)
            throws IOException {
        long page = SnapshotFormat.PAGE;
        long written = 0;
        long runStart = -1;
        for (long p = first; p <= end; p++) {
            boolean data = p < end && !isZero(block, p * page);
            if (data && checksums != null) checksums.data(p * page, page);
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
            if (!data && p < end) progress.advance(page);
        }
        return written;
    }

    private static boolean isZero(MemorySegment block, long offset) {
        return MemorySegment.mismatch(block, offset, offset + SnapshotFormat.PAGE, ZERO_PAGE, 0, SnapshotFormat.PAGE)
                < 0;
    }
}
