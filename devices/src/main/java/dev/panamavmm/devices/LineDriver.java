package dev.panamavmm.devices;

import java.util.Objects;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Sends the levels a device computes under its own lock to an {@link InterruptLine} after that
 * lock is released, holding no lock at all while the line runs: the line may block, wait for
 * another thread that uses the device, or re-enter the device. Two threads delivering at once
 * could leave a stale level on the line, so each change gets a sequence number while the device
 * lock is held and one thread at a time delivers: a thread that finds another delivering leaves
 * its level for that thread, which sends the newest level before it stops.
 */
final class LineDriver {
    /** What {@link #stamp} returns when the level did not change: nothing to deliver. */
    static final long NO_CHANGE = 0;

    private static final int UNKNOWN = -1;

    private final InterruptLine line;

    // Guarded by the owning device's lock.
    private long issued;
    private int lastStamped = UNKNOWN;

    // A stamp is sequence << 1 | level, so the largest stamp is the newest level.
    private final AtomicLong newest = new AtomicLong(NO_CHANGE);
    private final AtomicLong delivered = new AtomicLong(NO_CHANGE);
    private final AtomicBoolean delivering = new AtomicBoolean();

    LineDriver(InterruptLine line) {
        this.line = Objects.requireNonNull(line, "line");
    }

    /**
     * Records the level the device computed; call with the device lock held. Returns the stamp to
     * pass to {@link #deliver} after releasing that lock, or {@link #NO_CHANGE}.
     */
    long stamp(boolean asserted) {
        int level = asserted ? 1 : 0;
        if (level == lastStamped) {
            return NO_CHANGE;
        }
        lastStamped = level;
        return ++issued << 1 | level;
    }

    /**
     * Sends a stamped level, or leaves it to the thread delivering now; call without the device
     * lock. An exception from the line reaches whichever thread was delivering.
     */
    void deliver(long stamp) {
        if (stamp == NO_CHANGE) {
            return;
        }
        newest.accumulateAndGet(stamp, Math::max);
        // Deliver until nothing newer is left; re-check after letting go, in case a level was
        // published between the last check and the release.
        while (newest.get() > delivered.get() && delivering.compareAndSet(false, true)) {
            try {
                long s;
                while ((s = newest.get()) > delivered.get()) {
                    delivered.set(s);
                    line.set((s & 1) != 0);
                }
            } finally {
                delivering.set(false);
            }
        }
    }
}
