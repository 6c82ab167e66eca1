package dev.panamavmm.devices.virtio;

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
     * The requests handed over by {@link #handle} since the last call are all there are for now: a
     * device that kept one back to serve on this thread (no hand-off to a pool at queue depth 1)
     * serves it now.
     */
    default void batchEnd(int queue) {}

    /** The driver reset the device: forget anything per-driver (requests in flight still complete). */
    default void reset() {}

    /** Completes one request; {@code writtenBytes} is unsigned, and a second call is ignored. */
    @FunctionalInterface
    interface Completion {
        void complete(int writtenBytes);
    }
}
