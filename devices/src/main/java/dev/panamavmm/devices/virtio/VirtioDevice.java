package dev.panamavmm.devices.virtio;

import java.util.List;

/**
 * What a virtio device type adds to the transport: its id, features, queues, configuration
 * space and how it serves a request. {@link #handle} and {@link #batchEnd} run on the queue's
 * thread (the device's), outside the transport's lock: a device may do slow work there, but
 * while it does, the queue's later requests wait, so {@link #handle} should hand slow work to
 * other threads and only {@link #batchEnd} do it in place.
 */
public interface VirtioDevice {

    /** The virtio device id (2 block, 4 entropy). */
    int deviceId();

    /** A short name for messages and thread names, e.g. {@code virtio-blk0}. */
    String name();

    /** Device-specific feature bits it offers (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX). */
    long features();

    int queueCount();

    /** The largest size of each queue (a power of two). */
    int queueMaxSize();

    /** The configuration space as the guest first sees it (little-endian, read-only here). */
    byte[] initialConfig();

    /**
     * Serves one request. Call {@code done} exactly once with the bytes written into the chain's
     * writable buffers, now or later from another thread; the transport ignores a completion of a
     * request from before a reset. A guest error in the request is a status the device writes,
     * never an exception; an exception means the device itself failed (NEEDS_RESET).
     */
    void handle(int queue, DescriptorChain chain, Completion done);

    /**
     * Whether the device fills {@code queue}'s buffers from its backend as data arrives
     * ({@link #fill}) instead of serving them as requests ({@link #handle}): network receive. The
     * transport then takes its buffers one at a time on the queue's thread, and puts back the
     * one the backend had nothing for, so no data waits between two threads.
     */
    default boolean fills(int queue) {
        return false;
    }

    /**
     * Fills {@code chain} from the backend, on the queue's thread, for a queue that {@link #fills}:
     * the bytes written, or -1 when the backend has nothing now (the chain goes back to the
     * available ring, as the driver left it). The device {@linkplain Context#kick kicks} the queue
     * when its backend has data again.
     */
    default int fill(int queue, DescriptorChain chain) {
        throw new UnsupportedOperationException(name() + " does not fill queue " + queue);
    }

    /**
     * How many buffers the transport offers {@link #fillAll} at once next on a queue that
     * {@link #fills}: 1 (one {@link #fill} at a time) unless the device reads its backend in
     * batches. The buffers it does not use go back, so a device asks for about what it expects.
     */
    default int fillBatch(int queue) {
        return 1;
    }

    /**
     * Fills the leading {@code chains} from the backend, on the queue's thread: returns how many
     * of them it used (the first ones, in the order the driver sees them used), {@code
     * written[i]} bytes into chain i; the rest go back to the available ring. By default one
     * {@link #fill} each until the backend has nothing.
     */
    default int fillAll(int queue, List<DescriptorChain> chains, int[] written) {
        for (int i = 0; i < chains.size(); i++) {
            int n = fill(queue, chains.get(i));
            if (n < 0) return i;
            written[i] = n;
        }
        return chains.size();
    }

    /**
     * The requests handed over by {@link #handle} since the last call are all there are for now: a
     * device that kept one back to serve on this thread (no hand-off to a pool at queue depth 1)
     * serves it now.
     */
    default void batchEnd(int queue) {}

    /**
     * The driver's features are settled: {@code features} were accepted at FEATURES_OK, or came
     * back with a restored state past that point (0 after a reset). A device whose backend must
     * match them (a tap's offloads) sets it up here, and one whose queues change roles with them
     * (the balloon's statistics and reporting queues) decides them. Called with the transport's
     * lock held, before any request: must be quick and must not block.
     */
    default void driverFeatures(long features) {}

    /** The driver reset the device: forget anything per-driver (requests in flight still complete). */
    default void reset() {}

    /**
     * How many more requests the transport may take from {@code queue} now; the rest stay in the
     * available ring, where a snapshot finds them. A device that can only fill a buffer when its
     * backend has data (vsock receive: a packet waiting) says how many it can fill, and
     * {@linkplain Context#kick kicks} the queue when more arrives. Called with the transport's
     * lock held: must be quick and must not block.
     */
    default int takeLimit(int queue) {
        return Integer.MAX_VALUE;
    }

    /**
     * Whether the driver may write {@code size} bytes at {@code offset} of the configuration
     * space (the spaces are read-only unless a device says otherwise, e.g. the balloon's
     * {@code actual}). An accepted write is stored, then {@link #configWritten} is called.
     */
    default boolean configWritable(int offset, int size) {
        return false;
    }

    /** The driver wrote {@code value} ({@code size} bytes) at {@code offset}; called with the lock held, must not block. */
    default void configWritten(int offset, int size, long value) {}

    /**
     * Starts the device's own work beside its queues (a thread reading a tap or sockets), which
     * reaches the transport through {@code context}. Called once, before the first request.
     */
    default void start(Context context) {}

    /**
     * The transport pauses (a save or live update follows): the device's own work stops touching
     * its backend, so the state {@link #saveState} takes next stays true (a live update hands the
     * backend to another process). Called before requests in flight are waited for.
     */
    default void pause() {}

    /** The transport takes requests again after {@link #pause} (the save is done, or failed). */
    default void resume() {}

    /** Stops what {@link #start} started; called once, at close. */
    default void stop() {}

    /**
     * The device's own state beyond the transport's (connections, a frame half delivered), for
     * a snapshot or live update; empty for a device that has none. Called while the transport is
     * paused.
     */
    default byte[] saveState() {
        return new byte[0];
    }

    /**
     * Takes back what {@link #saveState} returned (empty: the device as new), before the first
     * request. Throws IllegalArgumentException for bytes it cannot accept: a restore is refused.
     */
    default void restoreState(byte[] state) {
        if (state.length != 0)
            throw new IllegalArgumentException(name() + " keeps no state, but " + state.length + " bytes were saved");
    }

    /** What a device's own threads may ask of its transport. */
    interface Context {
        /** Gets {@code queue} processed soon on its thread (more data arrived for its buffers). */
        void kick(int queue);

        /**
         * Changes {@code bytes.length} bytes of the configuration space at {@code offset} on the
         * device's side (a balloon's new target): the generation counter moves and a driver that
         * is running gets a configuration-change interrupt.
         */
        void updateConfig(int offset, byte[] bytes);
    }

    /** Completes one request; {@code writtenBytes} is unsigned, and a second call is ignored. */
    @FunctionalInterface
    interface Completion {
        void complete(int writtenBytes);
    }
}
