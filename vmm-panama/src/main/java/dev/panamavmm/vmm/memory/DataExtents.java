package dev.panamavmm.vmm.memory;

import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;

/**
 * Where a RAM block may hold non-zero bytes, found without reading its holes: a read of a hole
 * through a tmpfs mapping, shared or private, allocates a page for it (measured: every page of a
 * sparse 1 GiB file read, Shmem up by 1 GiB), so a save that scanned a sparse 64 GiB guest would
 * fill 64 GiB. Ranges are {@code [start, end)} byte offsets within the block, ascending.
 */
final class DataExtents {
    private DataExtents() {}

    static final long PAGE = 4096;
    /** /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst). */
    private static final long PRESENT = 1L << 63, SWAPPED = 1L << 62, FILE_OR_SHARED = 1L << 61;

    private static final Path PAGEMAP = Path.of("/proc/self/pagemap");
    /** Pagemap entries read at a time (8 bytes each). */
    private static final int CHUNK = 64 * 1024;

    static long[][] of(RamBlock block) {
        var file = fileData(block.fd(), block.fileOffset(), block.size());
        // A shared mapping's bytes are the file's. A private one's written pages are anonymous
        // copies that the file does not show: add every anonymous page, resident or swapped.
        if (!(block.backing() instanceof Backing.PrivateFile)) return file.toArray(long[][]::new);
        // Layers mapped over the file (diff snapshots', chained templates') are pages of other files:
        // pagemap shows them as neither.
        var data = union(file, anonymousPages(block.segment()));
        if (block.overlaid().length > 0) data = union(data, List.of(block.overlaid()));
        return data.toArray(long[][]::new);
    }

    /** The data extents of {@code fd} in {@code [offset, offset + size)} (SEEK_DATA / SEEK_HOLE), relative to {@code offset}. */
    static List<long[]> fileData(int fd, long offset, long size) {
        var extents = new ArrayList<long[]>();
        long end = offset + size;
        for (long at = offset; at < end; ) {
            long data = LibC.seek(fd, at, LibcConstants.SEEK_DATA);
            if (data < 0 || data >= end) break;
            long hole = Math.min(end, LibC.seek(fd, data, LibcConstants.SEEK_HOLE));
            extents.add(new long[] {data - offset, hole - offset});
            at = hole;
        }
        return extents;
    }

    /** Runs of this process's anonymous pages (present or swapped) in {@code mapping}, relative to its start. */
    static List<long[]> anonymousPages(MemorySegment mapping) {
        var runs = new ArrayList<long[]>();
        long pages = mapping.byteSize() / PAGE;
        long firstEntry = mapping.address() / PAGE;
        var buf = ByteBuffer.allocateDirect(CHUNK * 8).order(ByteOrder.nativeOrder());
        try (var pagemap = FileChannel.open(PAGEMAP, StandardOpenOption.READ)) {
            long runStart = -1;
            for (long p = 0; p < pages; ) {
                int n = (int) Math.min(CHUNK, pages - p);
                buf.clear().limit(n * 8);
                long at = (firstEntry + p) * 8;
                while (buf.hasRemaining()) {
                    if (pagemap.read(buf, at + buf.position()) < 0) throw new IOException("pagemap ended early");
                }
                for (int i = 0; i < n; i++, p++) {
                    long e = buf.getLong(i * 8);
                    boolean anonymous = (e & (PRESENT | SWAPPED)) != 0 && (e & FILE_OR_SHARED) == 0;
                    if (anonymous && runStart < 0) runStart = p;
                    if (!anonymous && runStart >= 0) {
                        runs.add(new long[] {runStart * PAGE, p * PAGE});
                        runStart = -1;
                    }
                }
            }
            if (runStart >= 0) runs.add(new long[] {runStart * PAGE, pages * PAGE});
        } catch (IOException e) {
            throw new UncheckedIOException("reading " + PAGEMAP + ": " + e.getMessage(), e);
        }
        return runs;
    }

    /** The union of two ascending lists of ranges, ascending and merged. */
    static List<long[]> union(List<long[]> a, List<long[]> b) {
        var all = new ArrayList<long[]>(a.size() + b.size());
        all.addAll(a);
        all.addAll(b);
        all.sort((x, y) -> Long.compare(x[0], y[0]));
        var merged = new ArrayList<long[]>();
        for (long[] r : all) {
            var last = merged.isEmpty() ? null : merged.getLast();
            if (last != null && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
            else merged.add(new long[] {r[0], r[1]});
        }
        return merged;
    }
}
