package dev.panamavmm.devices.virtio;

import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

/**
 * virtio-balloon (virtio 1.2, 5.5): the guest gives pages back to the host and says how its
 * memory is used. Queues, in the order the features place them: inflateq (0) and deflateq (1)
 * carry arrays of 32-bit page frame numbers (4 KiB pages); statsq (2, with {@link #F_STATS_VQ})
 * holds one buffer of statistics the device takes once per interval; reporting_vq (after statsq if
 * that was negotiated, else 2; with {@link #F_REPORTING}) carries ranges of free pages as buffers.
 * The configuration space is {@code num_pages} (the host's target, set through {@link
 * VirtioMmio#updateConfig}), {@code actual} (the driver's, the only byte range it may write),
 * {@code free_page_hint_cmd_id} and {@code poison_val} (unused: FREE_PAGE_HINT and PAGE_POISON
 * are not offered).
 *
 * <p>A page the guest inflates or reports is given back through {@link BalloonMemory} before the
 * buffer is used, on the queue's thread: once the transport is {@linkplain VirtioMmio#pause
 * paused} no release is running or pending, so a snapshot sees every page either given back (its
 * buffer used) or not yet (its buffer still available). Every frame number and range is checked:
 * one outside RAM, unaligned or over the VMM's own pages is skipped and counted, never trusted.
 */
public final class VirtioBalloon implements VirtioDevice {
    public static final int DEVICE_ID = 5;
    public static final long F_STATS_VQ = 1L << 1, F_DEFLATE_ON_OOM = 1L << 2, F_REPORTING = 1L << 5;
    public static final int PAGE = 4096;
    /** Configuration offsets: the target and the driver's count, in pages. */
    public static final int CONFIG_NUM_PAGES = 0, CONFIG_ACTUAL = 4;

    static final int CONFIG_SIZE = 16;
    static final int QUEUE_SIZE = 256;
    static final int INFLATE = 0, DEFLATE = 1;
    /** The statistics tags of virtio 1.2 (5.5.6.3): swap-in, swap-out, major and minor faults, free, total, available, caches, hugetlb allocations and failures. */
    public static final String[] STAT_NAMES = {
        "swap-in",
        "swap-out",
        "major-faults",
        "minor-faults",
        "free-memory",
        "total-memory",
        "available-memory",
        "disk-caches",
        "hugetlb-allocations",
        "hugetlb-failures"
    };

    private static final int STATE_VERSION = 1;
    private static final int STATE_BYTES = 4 + 8 * 7 + 4 + 8 * STAT_NAMES.length;

    private final String name;
    private final BalloonMemory memory;
    private final long offered;
    private final Duration statsInterval;

    /** Queue roles under the negotiated features; -1 where the driver has none. */
    private volatile int statsQueue = -1, reportingQueue = -1;

    private final AtomicLong inflated = new AtomicLong(),
            deflated = new AtomicLong(),
            reported = new AtomicLong(),
            returned = new AtomicLong(),
            ignored = new AtomicLong(),
            kept = new AtomicLong(),
            statsUpdates = new AtomicLong();
    private final long[] stats = new long[STAT_NAMES.length];
    private int statsPresent; // a bit per tag the driver has sent; guarded by stats
    /** The device wants the statistics buffer (the interval passed): the transport may take it. */
    private final AtomicBoolean statsWanted = new AtomicBoolean(true);

    private volatile Thread ticker;

    /**
     * A balloon named {@code name} over {@code memory}; it offers DEFLATE_ON_OOM, statistics every
     * {@code statsInterval} (null: none) and free page reporting as asked.
     */
    public VirtioBalloon(
            String name, BalloonMemory memory, boolean deflateOnOom, Duration statsInterval, boolean reporting) {
        this.name = Objects.requireNonNull(name);
        this.memory = Objects.requireNonNull(memory);
        if (statsInterval != null && (statsInterval.isNegative() || statsInterval.isZero()))
            throw new IllegalArgumentException("a statistics interval must be positive");
        this.statsInterval = statsInterval;
        this.offered = (deflateOnOom ? F_DEFLATE_ON_OOM : 0)
                | (statsInterval != null ? F_STATS_VQ : 0)
                | (reporting ? F_REPORTING : 0);
    }

    @Override
    public int deviceId() {
        return DEVICE_ID;
    }

    @Override
    public String name() {
        return name;
    }

    @Override
    public long features() {
        return offered;
    }

    /** inflateq and deflateq, and one queue for each of statistics and reporting offered. */
    @Override
    public int queueCount() {
        return 2 + Long.bitCount(offered & (F_STATS_VQ | F_REPORTING));
    }

    @Override
    public int queueMaxSize() {
        return QUEUE_SIZE;
    }

    @Override
    public byte[] initialConfig() {
        return new byte[CONFIG_SIZE];
    }

    @Override
    public void driverFeatures(long features) {
        int next = 2;
        statsQueue = (features & F_STATS_VQ) != 0 ? next++ : -1;
        reportingQueue = (features & F_REPORTING) != 0 ? next : -1;
        statsWanted.set(true);
    }

    @Override
    public boolean configWritable(int offset, int size) {
        return offset == CONFIG_ACTUAL && size == 4;
    }

    @Override
    public int takeLimit(int queue) {
        // The statistics buffer stays with the driver (in the available ring) until the interval passes.
        return queue == statsQueue && !statsWanted.get() ? 0 : Integer.MAX_VALUE;
    }

    @Override
    public void handle(int queue, DescriptorChain chain, Completion done) {
        if (queue == INFLATE) frames(chain, true);
        else if (queue == DEFLATE) frames(chain, false);
        else if (queue == statsQueue) statistics(chain);
        else if (queue == reportingQueue) report(chain);
        else ignored.incrementAndGet(); // a queue the negotiated features give no role
        done.complete(0);
    }

    /** An inflate (pages given up) or deflate (pages taken back) request: 32-bit frame numbers. */
    private void frames(DescriptorChain chain, boolean inflate) {
        for (var buffer : chain.readable()) {
            long n = buffer.byteSize() / 4;
            long runStart = -1, runPages = 0;
            for (long i = 0; i < n; i++) {
                long pfn = Integer.toUnsignedLong(buffer.get(ValueLayout.JAVA_INT_UNALIGNED, i * 4));
                if (runPages > 0 && pfn == runStart + runPages && runPages < 512) {
                    runPages++;
                    continue;
                }
                if (runPages > 0) frameRun(runStart, runPages, inflate);
                runStart = pfn;
                runPages = 1;
            }
            if (runPages > 0) frameRun(runStart, runPages, inflate);
        }
    }

    private void frameRun(long pfn, long pages, boolean inflate) {
        if (!inflate) {
            deflated.addAndGet(pages); // nothing to do: a page comes back when the guest touches it
            return;
        }
        var outcome = memory.release(pfn * PAGE, pages * PAGE);
        if ((outcome == BalloonMemory.Outcome.NOT_RAM || outcome == BalloonMemory.Outcome.PROTECTED) && pages > 1) {
            for (long p = 0; p < pages; p++) frameRun(pfn + p, 1, true); // sort the good pages from the bad
            return;
        }
        count(outcome, pages, inflated);
    }

    /** A free page report: each buffer is a range of free guest memory. */
    private void report(DescriptorChain chain) {
        for (var list : List.of(chain.readable(), chain.writable())) {
            for (var buffer : list) {
                long address = memory.guestAddress(buffer);
                long length = buffer.byteSize();
                if (address < 0 || address % PAGE != 0 || length % PAGE != 0) {
                    ignored.addAndGet(Math.max(1, length / PAGE));
                    continue;
                }
                if (length == 0) continue;
                count(memory.release(address, length), length / PAGE, reported);
            }
        }
    }

    private void count(BalloonMemory.Outcome outcome, long pages, AtomicLong accepted) {
        switch (outcome) {
            case RETURNED -> {
                accepted.addAndGet(pages);
                returned.addAndGet(pages);
            }
            case KEPT -> {
                accepted.addAndGet(pages);
                kept.addAndGet(pages);
            }
            case NOT_RAM, PROTECTED -> ignored.addAndGet(pages);
        }
    }

    /** The statistics buffer: 10-byte entries (le16 tag, le64 value); unknown tags are skipped. */
    private void statistics(DescriptorChain chain) {
        statsWanted.set(false);
        long total = chain.readableBytes();
        if (total > 64 * 1024) { // far more than the ten tags there are: not read
            ignored.incrementAndGet();
            return;
        }
        var bytes = ByteBuffer.allocate((int) total).order(ByteOrder.LITTLE_ENDIAN);
        for (var buffer : chain.readable()) bytes.put(buffer.asByteBuffer());
        bytes.flip();
        synchronized (stats) {
            while (bytes.remaining() >= 10) {
                int tag = Short.toUnsignedInt(bytes.getShort());
                long value = bytes.getLong();
                if (tag < stats.length) {
                    stats[tag] = value;
                    statsPresent |= 1 << tag;
                }
            }
        }
        statsUpdates.incrementAndGet();
    }

    /** Starts the interval timer that lets the driver's statistics buffer be taken. */
    @Override
    public void start(Context context) {
        if (statsInterval == null) return;
        var t = Thread.ofPlatform().daemon().name(name + "-stats").unstarted(() -> {
            try {
                while (!Thread.currentThread().isInterrupted()) {
                    Thread.sleep(statsInterval);
                    int queue = statsQueue;
                    if (queue >= 0 && !statsWanted.getAndSet(true)) context.kick(queue);
                }
            } catch (InterruptedException e) {
                // stopped
            }
        });
        ticker = t;
        t.start();
    }

    @Override
    public void stop() {
        var t = ticker;
        if (t == null) return;
        t.interrupt();
        try {
            t.join(5_000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /**
     * What the device has done, in pages: inflated (given up by inflateq), deflated, reported free,
     * returned to the host (of the inflated and reported), kept (accepted, but the host could not
     * take them then), ignored (outside RAM, unaligned, over the VMM's own pages, or malformed).
     */
    public record Counters(
            long inflated, long deflated, long reported, long returned, long kept, long ignored, long statsUpdates) {}

    public Counters counters() {
        return new Counters(
                inflated.get(),
                deflated.get(),
                reported.get(),
                returned.get(),
                kept.get(),
                ignored.get(),
                statsUpdates.get());
    }

    /** The driver's latest statistics by {@link #STAT_NAMES} name, only the tags it sent. */
    public Map<String, Long> statistics() {
        var m = new LinkedHashMap<String, Long>();
        synchronized (stats) {
            for (int tag = 0; tag < stats.length; tag++)
                if ((statsPresent & (1 << tag)) != 0) m.put(STAT_NAMES[tag], stats[tag]);
        }
        return m;
    }

    /** Whether statistics were offered (the device has a statistics interval). */
    public boolean statisticsOffered() {
        return statsInterval != null;
    }

    @Override
    public byte[] saveState() {
        var b = ByteBuffer.allocate(STATE_BYTES).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(STATE_VERSION);
        var c = counters();
        b.putLong(c.inflated()).putLong(c.deflated()).putLong(c.reported()).putLong(c.returned());
        b.putLong(c.kept()).putLong(c.ignored()).putLong(c.statsUpdates());
        synchronized (stats) {
            b.putInt(statsPresent);
            for (long v : stats) b.putLong(v);
        }
        return b.array();
    }

    @Override
    public void restoreState(byte[] state) {
        if (state.length == 0) return;
        if (state.length != STATE_BYTES)
            throw new IllegalArgumentException(
                    name + ": a saved state of " + state.length + " bytes, not " + STATE_BYTES);
        var b = ByteBuffer.wrap(state).order(ByteOrder.LITTLE_ENDIAN);
        int version = b.getInt();
        if (version != STATE_VERSION)
            throw new IllegalArgumentException(name + ": saved state version " + version + ", not " + STATE_VERSION);
        inflated.set(b.getLong());
        deflated.set(b.getLong());
        reported.set(b.getLong());
        returned.set(b.getLong());
        kept.set(b.getLong());
        ignored.set(b.getLong());
        statsUpdates.set(b.getLong());
        synchronized (stats) {
            statsPresent = b.getInt() & ((1 << STAT_NAMES.length) - 1);
            for (int i = 0; i < stats.length; i++) stats[i] = b.getLong();
        }
    }

    /** Little-endian {@code pages}, as {@code num_pages} is written into the configuration space. */
    public static byte[] numPages(long pages) {
        return ByteBuffer.allocate(4)
                .order(ByteOrder.LITTLE_ENDIAN)
                .putInt((int) pages)
                .array();
    }
}
