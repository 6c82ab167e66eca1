package dev.panamavmm.devices.virtio;

/**
 * What a virtio device type adds to the transport: its id, features, queues, configuration
 * space and how it serves a request. Called by {@link VirtioMmio} under the transport's lock:
 * {@link #handle} must not block (a device with slow work hands it to its own threads and
 * completes later, from any thread).
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

    /** The driver reset the device: forget anything per-driver (requests in flight still complete). */
    default void reset() {}

    /** Completes one request. */
    @FunctionalInterface
    interface Completion {
        void complete(int writtenBytes);
    }
}
