package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.BlockBackend;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.concurrent.locks.ReentrantLock;

/**
 * A clone's private copy-on-write view of its template's disk, where the file system cannot
 * share extents (no {@code FICLONE}: ext4, tmpfs): reads of a cluster the clone never wrote come
 * from the template's disk (opened read-only), everything written goes to the clone's overlay
 * file, and a bitmap says which {@value #CLUSTER}-byte clusters the overlay holds.
 *
 * <p>The overlay file is the disk's {@code size} bytes of data (sparse: only written clusters
 * take space), then, from {@link #metadataOffset}, a header ({@value #MAGIC_TEXT}, the disk size,
 * the cluster size) and the bitmap, one bit per cluster, little-endian 64-bit words. A bit is set,
 * and its word written to the file, only after the cluster's data is in the overlay, so the file
 * is consistent for any process that opens it next (a restore, a live update's destination);
 * FLUSH's {@code fdatasync} makes data and bitmap durable together (one file).
 *
 * <p>The first write to a cluster copies it up: a write that covers only part of a cluster first
 * copies the rest of it from the template's disk. Writes that touch a cluster not yet in the
 * overlay are serialised by one lock (two of them could otherwise copy up the same cluster over
 * each other's data); writes to clusters already copied, and all reads, take no lock. Discard and
 * write-zeroes leave zeros in the overlay (the template's data must not show through).
 */
final class OverlayBlockBackend implements BlockBackend {
    static final int CLUSTER = 4096;
    static final String MAGIC_TEXT = "PNMOVLY1";
    private static final long MAGIC = ByteBuffer.wrap(MAGIC_TEXT.getBytes(StandardCharsets.US_ASCII))
            .order(ByteOrder.LITTLE_ENDIAN)
            .getLong();
    private static final int HEADER = 64;

    private final PosixBlockBackend base;
    private final PosixBlockBackend overlay;
    private final long size;
    private final long bitmapOffset;
    private final AtomicLongArray bits;
    private final ReentrantLock copyUp = new ReentrantLock();
    private final MemorySegment scratch; // a cluster for copy-ups and 8 bytes for bitmap words, under copyUp
    private final MemorySegment word;
    private static final MemorySegment ZEROS = Arena.global().allocate(CLUSTER);

    private OverlayBlockBackend(int baseFd, int overlayFd, long size, long[] bitmap) {
        this.base = new PosixBlockBackend(baseFd, size);
        this.overlay = new PosixBlockBackend(overlayFd, size);
        this.size = size;
        this.bitmapOffset = metadataOffset(size) + HEADER;
        this.bits = new AtomicLongArray(bitmap);
        var arena = Arena.ofAuto();
        this.scratch = arena.allocate(CLUSTER, CLUSTER);
        this.word = arena.allocate(8, 8);
    }

    /** Where the header starts: after the data, on a cluster boundary. */
    static long metadataOffset(long size) {
        return (size + CLUSTER - 1) / CLUSTER * CLUSTER;
    }

    private static int words(long size) {
        long clusters = (size + CLUSTER - 1) / CLUSTER;
        return (int) ((clusters + 63) / 64);
    }

    /** The overlay's whole length for a disk of {@code size} bytes. */
    static long fileLength(long size) {
        return metadataOffset(size) + HEADER + 8L * words(size);
    }

    /**
     * Creates {@code path} as an empty overlay for a disk of {@code size} bytes (no cluster
     * written); refuses a file that exists.
     */
    static void create(Path path, long size) throws IOException {
        try (var ch = FileChannel.open(path, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
            var header = ByteBuffer.allocate(HEADER).order(ByteOrder.LITTLE_ENDIAN);
            header.putLong(MAGIC).putLong(size).putInt(CLUSTER);
            header.clear();
            ch.write(header, metadataOffset(size));
            var zero = ByteBuffer.allocate(8);
            ch.write(zero, fileLength(size) - 8); // the bitmap, all clear (a hole)
        }
    }

    /**
     * The view of an overlay over a base of {@code size} bytes: {@code overlayFd} read and
     * written, {@code baseFd} only read. The overlay's header must match; a file that is not an
     * overlay of this size is refused in one line.
     */
    static OverlayBlockBackend open(int baseFd, int overlayFd, long size, Path overlayName) throws IOException {
        var header = Arena.ofAuto().allocate(HEADER);
        var reader = new PosixBlockBackend(overlayFd, fileLength(size));
        if (reader.read(metadataOffset(size), List.of(header)) != HEADER
                || header.get(ValueLayout.JAVA_LONG_UNALIGNED, 0) != MAGIC)
            throw new IOException(overlayName + " is not a Panama VMM disk overlay");
        long recorded = header.get(ValueLayout.JAVA_LONG_UNALIGNED, 8);
        int cluster = header.get(ValueLayout.JAVA_INT_UNALIGNED, 16);
        if (recorded != size || cluster != CLUSTER)
            throw new IOException(overlayName + " is an overlay of a " + recorded + "-byte disk with " + cluster
                    + "-byte clusters; its base has " + size + " bytes");
        int n = words(size);
        var map = Arena.ofAuto().allocate(8L * n, 8);
        if (reader.read(metadataOffset(size) + HEADER, List.of(map)) != 8L * n)
            throw new IOException(overlayName + " is cut short (its bitmap is missing)");
        return new OverlayBlockBackend(baseFd, overlayFd, size, map.toArray(ValueLayout.JAVA_LONG));
    }

    @Override
    public long size() {
        return size;
    }

    private boolean inOverlay(long cluster) {
        return (bits.get((int) (cluster >>> 6)) & (1L << (cluster & 63))) != 0;
    }

    /** The clusters of the overlay now, for tests and statistics. */
    long clustersInOverlay() {
        long n = 0;
        for (int i = 0; i < bits.length(); i++) n += Long.bitCount(bits.get(i));
        return n;
    }

    @Override
    public long read(long offset, List<MemorySegment> buffers) throws IOException {
        long length = Math.min(total(buffers), size - Math.min(offset, size));
        long done = 0;
        while (done < length) {
            long at = offset + done;
            boolean mine = inOverlay(at / CLUSTER);
            long end = at;
            while (end < offset + length && inOverlay(end / CLUSTER) == mine) end = (end / CLUSTER + 1) * CLUSTER;
            end = Math.min(end, offset + length);
            var part = slice(buffers, done, end - at);
            long n = (mine ? overlay : base).read(at, part);
            if (n != end - at) return done + n;
            done += n;
        }
        return done;
    }

    @Override
    public long write(long offset, List<MemorySegment> buffers) throws IOException {
        long length = total(buffers);
        if (length == 0) return 0;
        long first = offset / CLUSTER, last = (offset + length - 1) / CLUSTER;
        if (allInOverlay(first, last)) return overlay.write(offset, buffers);
        copyUp.lock();
        try {
            // The edges: a cluster written only in part gets the rest of its bytes from the base first.
            if (offset % CLUSTER != 0) copyUp(first);
            if ((offset + length) % CLUSTER != 0 && offset + length < size) copyUp(last);
            long n = overlay.write(offset, buffers);
            if (n != length) return n;
            markRange(first, last);
            return n;
        } finally {
            copyUp.unlock();
        }
    }

    private boolean allInOverlay(long first, long last) {
        for (long c = first; c <= last; c++) if (!inOverlay(c)) return false;
        return true;
    }

    /** Copies cluster {@code c} from the base into the overlay, unless it is there already. Under the lock. */
    private void copyUp(long c) throws IOException {
        if (inOverlay(c)) return;
        long at = c * CLUSTER;
        long n = Math.min(CLUSTER, size - at);
        var buf = scratch.asSlice(0, n);
        if (base.read(at, List.of(buf)) != n) throw new IOException("short read of the template's disk");
        if (overlay.write(at, List.of(buf)) != n) throw new IOException("short write of the overlay");
        markRange(c, c);
    }

    /** Sets the bits of clusters {@code first..last} and writes their words to the file. Under the lock. */
    private void markRange(long first, long last) throws IOException {
        int w0 = (int) (first >>> 6), w1 = (int) (last >>> 6);
        for (int w = w0; w <= w1; w++) {
            long lo = w == w0 ? first & 63 : 0, hi = w == w1 ? last & 63 : 63;
            long mask = hi == 63 ? -1L << lo : ((1L << (hi + 1)) - 1) & (-1L << lo);
            long before = bits.get(w);
            if ((before | mask) == before) continue;
            bits.set(w, before | mask);
            word.set(ValueLayout.JAVA_LONG, 0, before | mask);
            if (overlay.write(bitmapOffset + 8L * w, List.of(word)) != 8)
                throw new IOException("short write of the overlay's bitmap");
        }
    }

    @Override
    public void flush() throws IOException {
        overlay.flush();
    }

    @Override
    public void discard(long offset, long length) throws IOException {
        writeZeroes(offset, length, true);
    }

    /** Zeros in the overlay: whole clusters as a hole (they read as zeros), partial ones written. */
    @Override
    public void writeZeroes(long offset, long length, boolean unmap) throws IOException {
        long end = Math.min(offset + length, size);
        long at = offset;
        while (at < end) {
            long clusterEnd = Math.min((at / CLUSTER + 1) * CLUSTER, end);
            if (at % CLUSTER == 0 && (clusterEnd - at == CLUSTER || clusterEnd == size)) {
                long runEnd = at;
                while (runEnd + CLUSTER <= end) runEnd += CLUSTER;
                if (runEnd == at) runEnd = clusterEnd;
                copyUp.lock();
                try {
                    overlay.writeZeroes(at, runEnd - at, true);
                    markRange(at / CLUSTER, (runEnd - 1) / CLUSTER);
                } finally {
                    copyUp.unlock();
                }
                at = runEnd;
            } else {
                long n = clusterEnd - at;
                if (write(at, List.of(ZEROS.asSlice(0, n))) != n) throw new IOException("short write of zeros");
                at = clusterEnd;
            }
        }
    }

    private static long total(List<MemorySegment> buffers) {
        long t = 0;
        for (var b : buffers) t += b.byteSize();
        return t;
    }

    /** The bytes {@code [from, from + length)} of the concatenation of {@code buffers}, as segments. */
    private static List<MemorySegment> slice(List<MemorySegment> buffers, long from, long length) {
        var out = new ArrayList<MemorySegment>();
        long skip = from;
        for (var b : buffers) {
            if (length == 0) break;
            if (skip >= b.byteSize()) {
                skip -= b.byteSize();
                continue;
            }
            long n = Math.min(b.byteSize() - skip, length);
            out.add(b.asSlice(skip, n));
            length -= n;
            skip = 0;
        }
        return out;
    }
}
