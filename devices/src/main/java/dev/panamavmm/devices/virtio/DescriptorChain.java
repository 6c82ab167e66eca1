package dev.panamavmm.devices.virtio;

import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * One request a driver made available: the head descriptor's index (what the used ring returns)
 * and its buffers, already checked against guest RAM and resolved to segments of it. Readable
 * buffers (driver to device) come first, writable ones after, as the spec requires of a driver.
 *
 * @param head the index of the chain's first descriptor in the descriptor table
 * @param readable the buffers the device reads, in order
 * @param writable the buffers the device writes, in order
 */
public record DescriptorChain(int head, List<MemorySegment> readable, List<MemorySegment> writable) {
    public DescriptorChain {
        readable = List.copyOf(readable);
        writable = List.copyOf(writable);
    }

    /** Bytes in the readable buffers. */
    public long readableBytes() {
        return total(readable);
    }

    /** Bytes in the writable buffers. */
    public long writableBytes() {
        return total(writable);
    }

    private static long total(List<MemorySegment> segments) {
        long n = 0;
        for (int i = 0; i < segments.size(); i++) n += segments.get(i).byteSize(); // no iterator per request
        return n;
    }
}
