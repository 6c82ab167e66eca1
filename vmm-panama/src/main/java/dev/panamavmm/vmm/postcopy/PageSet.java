package dev.panamavmm.vmm.postcopy;

import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.RamBlock;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicLongArray;

/**
 * Pages not yet on the destination: per RAM block of a {@link GuestMemory}, one bit per 4 KiB
 * page, addressed by guest-physical address. Thread-safe: each bit changes atomically, and
 * {@link #set}/{@link #clear} say whether they changed it, so two threads never both take a page.
 */
public final class PageSet {
    public static final int PAGE = 4096;

    private final long[] starts, sizes;
    private final AtomicLongArray[] bits;
    private final AtomicLong count = new AtomicLong();

    private PageSet(List<RamBlock> blocks) {
        starts = new long[blocks.size()];
        sizes = new long[blocks.size()];
        bits = new AtomicLongArray[blocks.size()];
        for (int i = 0; i < blocks.size(); i++) {
            starts[i] = blocks.get(i).guestAddress();
            sizes[i] = blocks.get(i).size();
            bits[i] = new AtomicLongArray((int) ((pages(i) + 63) / 64));
        }
    }

    /** No page of {@code memory}. */
    public static PageSet of(GuestMemory memory) {
        return new PageSet(memory.blocks());
    }

    /** Every page of {@code memory}. */
    public static PageSet all(GuestMemory memory) {
        var set = of(memory);
        for (int i = 0; i < set.bits.length; i++) set.addRange(set.starts[i], set.sizes[i]);
        return set;
    }

    /** A copy of this set (a snapshot of its bits, each read atomically). */
    public PageSet copy() {
        return new PageSet(this);
    }

    private PageSet(PageSet other) {
        starts = other.starts.clone();
        sizes = other.sizes.clone();
        bits = new AtomicLongArray[other.bits.length];
        long n = 0;
        for (int i = 0; i < bits.length; i++) {
            bits[i] = new AtomicLongArray(other.bits[i].length());
            for (int w = 0; w < bits[i].length(); w++) {
                long v = other.bits[i].get(w);
                bits[i].set(w, v);
                n += Long.bitCount(v);
            }
        }
        count.set(n);
    }

    int blocks() {
        return bits.length;
    }

    long blockStart(int block) {
        return starts[block];
    }

    long blockSize(int block) {
        return sizes[block];
    }

    long pages(int block) {
        return sizes[block] / PAGE;
    }

    /** The block holding page-aligned {@code gpa}, or -1 when it is not RAM of this set or not aligned. */
    int blockOf(long gpa) {
        if ((gpa & (PAGE - 1)) != 0) return -1;
        for (int i = 0; i < starts.length; i++) if (gpa >= starts[i] && gpa - starts[i] < sizes[i]) return i;
        return -1;
    }

    /** Whether {@code [gpa, gpa + pages * 4 KiB)} is all RAM of this set, in one block, page-aligned. */
    public boolean isRam(long gpa, long pages) {
        int b = blockOf(gpa);
        return b >= 0 && pages >= 0 && pages <= (starts[b] + sizes[b] - gpa) / PAGE;
    }

    private int block(long gpa) {
        int b = blockOf(gpa);
        if (b < 0) throw new IllegalArgumentException(String.format("0x%x is not a page of guest RAM", gpa));
        return b;
    }

    /** Adds the page at {@code gpa}; true when it was not in the set. */
    public boolean set(long gpa) {
        int b = block(gpa);
        long p = (gpa - starts[b]) / PAGE;
        return or(b, (int) (p >>> 6), 1L << (p & 63)) == 1;
    }

    /**
     * Adds the pages of {@code [gpa, gpa + bytes)}, page-aligned and in one block, a word of the
     * bitmap at a time (a migration's sets are built in its downtime: a bit at a time took tens of
     * ms for a GiB); returns how many were not in the set.
     */
    public long addRange(long gpa, long bytes) {
        if (bytes == 0) return 0;
        if (bytes < 0 || (bytes & (PAGE - 1)) != 0 || !isRam(gpa, bytes / PAGE))
            throw new IllegalArgumentException(
                    String.format("0x%x + 0x%x is not a run of pages in one block of guest RAM", gpa, bytes));
        int b = block(gpa);
        long first = (gpa - starts[b]) / PAGE, end = first + bytes / PAGE, added = 0;
        for (long p = first; p < end; ) {
            long wordEnd = Math.min(end, ((p >>> 6) + 1) << 6);
            int n = (int) (wordEnd - p);
            long mask = (n == 64 ? -1L : (1L << n) - 1) << (p & 63);
            added += or(b, (int) (p >>> 6), mask);
            p = wordEnd;
        }
        return added;
    }

    /**
     * Adds the pages of block {@code block} whose bits are set in {@code words} (bit i of word w:
     * page 64 w + i; exactly the block's words, no bit past its last page); returns how many were
     * not in the set.
     */
    public long addAll(int block, long[] words) {
        long pages = pages(block);
        if (words.length != bits[block].length()
                || (pages % 64 != 0 && words.length > 0 && (words[words.length - 1] >>> (pages % 64)) != 0))
            throw new IllegalArgumentException("a bitmap that does not fit block " + block);
        long added = 0;
        for (int w = 0; w < words.length; w++) if (words[w] != 0) added += or(block, w, words[w]);
        return added;
    }

    private long or(int block, int word, long mask) {
        var words = bits[block];
        long old;
        do old = words.get(word);
        while (!words.compareAndSet(word, old, old | mask));
        long added = Long.bitCount(mask & ~old);
        if (added != 0) count.addAndGet(added);
        return added;
    }

    /** Removes the page at {@code gpa}; true when it was in the set (the caller took it). */
    public boolean clear(long gpa) {
        int b = block(gpa);
        long p = (gpa - starts[b]) / PAGE, bit = 1L << (p & 63);
        long old = bits[b].getAndAccumulate((int) (p >>> 6), ~bit, (x, y) -> x & y);
        if ((old & bit) == 0) return false;
        count.decrementAndGet();
        return true;
    }

    public boolean contains(long gpa) {
        int b = block(gpa);
        long p = (gpa - starts[b]) / PAGE;
        return (bits[b].get((int) (p >>> 6)) & (1L << (p & 63))) != 0;
    }

    /** Pages in the set. */
    public long count() {
        return count.get();
    }

    /** The lowest page in the set at or after {@code gpa} (any address), or -1 when there is none. */
    public long nextSet(long gpa) {
        for (int b = 0; b < starts.length; b++) {
            long end = starts[b] + sizes[b];
            if (gpa >= end) continue;
            long p = Math.max(0, (Math.max(gpa, starts[b]) - starts[b] + PAGE - 1) / PAGE);
            long pages = pages(b);
            var words = bits[b];
            while (p < pages) {
                int w = (int) (p >>> 6);
                long word = words.get(w) & (-1L << (p & 63));
                if (word != 0) {
                    long found = ((long) w << 6) + Long.numberOfTrailingZeros(word);
                    return found < pages ? starts[b] + found * PAGE : -1;
                }
                p = (long) (w + 1) << 6;
            }
        }
        return -1;
    }

    /** The words of block {@code block}'s bitmap (bit i of word w: page 64 w + i), read atomically one by one. */
    long[] words(int block) {
        var out = new long[bits[block].length()];
        for (int w = 0; w < out.length; w++) out[w] = bits[block].get(w);
        return out;
    }

    /** Makes block {@code block} hold exactly the pages of {@code words} that are also in {@code within}. */
    void replace(int block, long[] words, PageSet within) {
        long delta = 0;
        for (int w = 0; w < words.length; w++) {
            long v = words[w] & within.bits[block].get(w);
            long old = bits[block].getAndSet(w, v);
            delta += Long.bitCount(v) - Long.bitCount(old);
        }
        count.addAndGet(delta);
    }
}
