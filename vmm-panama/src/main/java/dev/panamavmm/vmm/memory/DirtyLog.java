package dev.panamavmm.vmm.memory;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.kvm.bindings.KvmConstants;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Which guest pages changed: KVM's dirty log on every RAM memslot ({@code KVM_MEM_LOG_DIRTY_PAGES},
 * read with {@code KVM_GET_DIRTY_LOG}; with {@code KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2} the read
 * does not reset it, {@code KVM_CLEAR_DIRTY_LOG} does) together with the pages the VMM itself
 * wrote, which KVM never sees ({@link GuestMemory#vmmWrites}: virtio devices writing guest RAM).
 * Used by diff and live snapshots; pre-copy migration can take pages the same way.
 *
 * <p>Slot {@code i} is block {@code i} of the memory, as the VM builder registers them. The
 * dirty ring ({@code KVM_CAP_DIRTY_LOG_RING}) is not used: with it enabled the bitmap ioctls fail.
 */
public final class DirtyLog implements AutoCloseable {
    private final VmFd vmFd;
    private final GuestMemory memory;
    private final boolean manualProtect;
    private final Arena arena = Arena.ofShared();
    private final MemorySegment[] bitmaps;
    /** Pages changed since the last {@link #rebase}, per block, one bit per page. */
    private final long[][] sinceBase;

    private boolean closed;

    private DirtyLog(VmFd vmFd, GuestMemory memory, boolean manualProtect) {
        this.vmFd = vmFd;
        this.memory = memory;
        this.manualProtect = manualProtect;
        var blocks = memory.blocks();
        bitmaps = new MemorySegment[blocks.size()];
        sinceBase = new long[blocks.size()][];
        for (int i = 0; i < bitmaps.length; i++) {
            int words = words(blocks.get(i).size());
            bitmaps[i] = arena.allocate(8L * words, 8);
            sinceBase[i] = new long[words];
        }
    }

    static int words(long blockSize) {
        return Math.toIntExact((blockSize / GuestMemory.PAGE + 63) / 64);
    }

    /**
     * Turns dirty logging on for every block of {@code memory} (registered as slots 0..n-1 of
     * {@code vmFd}): from here on every guest write is logged. Safe while the guest runs: a page
     * written before is caught by the caller's first full pass, which starts after this.
     */
    public static DirtyLog enable(VmFd vmFd, GuestMemory memory) {
        boolean manual = vmFd.checkExtension(KvmConstants.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) != 0
                && System.getenv("PANAMA_VMM_NO_MANUAL_DIRTY_LOG") == null;
        try {
            if (manual)
                vmFd.enableCap(
                        KvmConstants.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                        KvmConstants.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
            var log = new DirtyLog(vmFd, memory, manual);
            log.setLogging(true);
            return log;
        } catch (KvmException e) {
            throw new MemoryException("cannot turn on dirty logging: " + e.getMessage(), e);
        }
    }

    /** Whether the kernel leaves the log to {@code KVM_CLEAR_DIRTY_LOG} (manual protection). */
    public boolean manualProtect() {
        return manualProtect;
    }

    private void setLogging(boolean on) {
        int slot = 0;
        for (var b : memory.blocks())
            vmFd.setUserMemoryRegion(
                    slot++, on ? KvmConstants.KVM_MEM_LOG_DIRTY_PAGES : 0, b.guestAddress(), b.segment());
    }

    /**
     * The pages changed since the last call (per block, one bit per page), which are also added to
     * {@link #sinceBase}. KVM's log is read and reset. VMM writes are added too; only when
     * {@code devicesPaused} are they reset as well: a device may hold a buffer it took (and
     * marked) before this call and write it after, so the marks of a running device stay until a
     * pause, when no request is in flight.
     */
    public synchronized long[][] take(boolean devicesPaused) {
        var blocks = memory.blocks();
        var taken = new long[blocks.size()][];
        for (int i = 0; i < taken.length; i++) {
            var bitmap = bitmaps[i];
            int words = sinceBase[i].length;
            try {
                vmFd.getDirtyLog(i, bitmap);
                if (manualProtect) {
                    // Clear in 2^31-page pieces at most (num_pages is a u32, first_page a multiple of 64).
                    long pages = blocks.get(i).size() / GuestMemory.PAGE;
                    for (long first = 0; first < pages; first += 1L << 30) {
                        int n = (int) Math.min(1L << 30, pages - first);
                        vmFd.clearDirtyLog(i, first, n, bitmap.asSlice(first / 8, ((n + 63) / 64) * 8L));
                    }
                }
            } catch (KvmException e) {
                throw new MemoryException("reading the dirty log failed: " + e.getMessage(), e);
            }
            long[] bits = bitmap.asSlice(0, 8L * words).toArray(ValueLayout.JAVA_LONG);
            memory.vmmWrites().addTo(i, bits, devicesPaused);
            for (int w = 0; w < words; w++) sinceBase[i][w] |= bits[w];
            taken[i] = bits;
        }
        return taken;
    }

    /** Every page changed since the last {@link #rebase} (after a {@link #take}, which brings it up to date). */
    public synchronized long[][] sinceBase() {
        var copy = new long[sinceBase.length][];
        for (int i = 0; i < copy.length; i++) copy[i] = sinceBase[i].clone();
        return copy;
    }

    /** The guest's memory is now the base (a snapshot of it was committed): forgets what changed before. */
    public synchronized void rebase() {
        for (long[] bits : sinceBase) java.util.Arrays.fill(bits, 0);
    }

    /** Pages set in {@code bits}, as {@code [start, end)} byte ranges of the block, ascending and merged. */
    public static long[][] runs(long[] bits) {
        var runs = new java.util.ArrayList<long[]>();
        long start = -1;
        long pages = 64L * bits.length;
        for (long p = 0; p <= pages; p++) {
            boolean set = p < pages && (bits[(int) (p >>> 6)] & (1L << (p & 63))) != 0;
            if (set && start < 0) start = p;
            if (!set && start >= 0) {
                runs.add(new long[] {start * GuestMemory.PAGE, p * GuestMemory.PAGE});
                start = -1;
            }
            if (!set && p < pages && bits[(int) (p >>> 6)] == 0 && (p & 63) == 0) p += 63; // a whole clean word
        }
        return runs.toArray(long[][]::new);
    }

    /** Number of pages set in {@code bits}. */
    public static long pages(long[][] bits) {
        long n = 0;
        for (long[] b : bits) for (long w : b) n += Long.bitCount(w);
        return n;
    }

    /** Turns dirty logging off (writes stop costing a fault each) and frees the bitmaps. */
    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        try {
            setLogging(false);
        } catch (KvmException e) {
            // the VM is going away
        }
        arena.close();
    }
}
