package dev.panamavmm.migration;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;

/**
 * Which pages of a RAM block a diff layer holds: section {@value #SECTION_PREFIX}ID, a u32 page
 * size (4096), a u32 count, then per run a u64 first page and a u64 page count, ascending and not
 * touching (docs/snapshot-format.md). A page of the layer that reads as zero is zero in the guest;
 * a page outside the runs comes from the layer's base.
 */
public final class LayerPages {
    private LayerPages() {}

    public static final String SECTION_PREFIX = "ram-pages/";
    /** Runs a reader accepts per block: more than a 64 GiB block of alternate pages would need. */
    static final int MAX_RUNS = 1 << 23;

    public static String section(String blockId) {
        return SECTION_PREFIX + blockId;
    }

    /** Encodes {@code runs} ({@code [start, end)} byte ranges of the block, page-aligned, ascending). */
    static byte[] encode(long[][] runs) {
        var b = ByteBuffer.allocate(8 + 16 * runs.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt((int) SnapshotFormat.PAGE).putInt(runs.length);
        for (long[] r : runs) b.putLong(r[0] / SnapshotFormat.PAGE).putLong((r[1] - r[0]) / SnapshotFormat.PAGE);
        return b.array();
    }

    /** The runs as byte ranges of the block; every bound is checked against the block's size. */
    static long[][] decode(byte[] payload, long blockSize, String blockId, Path file) {
        var b = ByteBuffer.wrap(payload).order(ByteOrder.LITTLE_ENDIAN);
        if (payload.length < 8 || b.getInt() != SnapshotFormat.PAGE)
            throw RamChecksums.corrupt(file, "RAM block " + blockId + " has a bad page table");
        int count = b.getInt();
        if (count < 0 || count > MAX_RUNS || payload.length != 8 + 16L * count)
            throw RamChecksums.corrupt(file, "RAM block " + blockId + " has a page table of the wrong length");
        long pages = blockSize / SnapshotFormat.PAGE, next = 0;
        var runs = new long[count][];
        for (int i = 0; i < count; i++) {
            long first = b.getLong(), n = b.getLong();
            if (first < next || n <= 0 || n > pages - first)
                throw RamChecksums.corrupt(file, "RAM block " + blockId + " has a page run outside the block");
            runs[i] = new long[] {first * SnapshotFormat.PAGE, (first + n) * SnapshotFormat.PAGE};
            next = first + n + 1;
        }
        return runs;
    }

    /** Whether {@code runs} cover the whole block (the layer then needs no base for it). */
    public static boolean whole(long[][] runs, long blockSize) {
        return runs.length == 1 && runs[0][0] == 0 && runs[0][1] == blockSize;
    }

    /** Bytes the runs cover. */
    public static long bytes(long[][] runs) {
        long n = 0;
        for (long[] r : runs) n += r[1] - r[0];
        return n;
    }
}
