package dev.panamavmm.devices.virtio;

import java.lang.foreign.MemorySegment;
import java.util.List;

/** Copies between a descriptor chain's buffers, taken as one run of bytes, and one segment or another chain's buffers. */
final class Buffers {
    private Buffers() {}

    /** Copies {@code into.byteSize()} bytes from {@code offset} of the buffers into {@code into}, as far as they reach. */
    static void gather(List<MemorySegment> buffers, long offset, MemorySegment into) {
        copy(buffers, offset, into, false);
    }

    /** Copies {@code from} into the buffers at {@code offset}, as far as they reach. */
    static void scatter(List<MemorySegment> buffers, long offset, MemorySegment from) {
        copy(buffers, offset, from, true);
    }

    /** Copies the first {@code length} bytes of {@code from} into {@code to}, as far as they reach. */
    static void copy(List<MemorySegment> from, int length, List<MemorySegment> to) {
        var bytes = MemorySegment.ofArray(new byte[length]); // rare (a frame moved forward): no pooling
        gather(from, 0, bytes);
        scatter(to, 0, bytes);
    }

    private static void copy(List<MemorySegment> buffers, long offset, MemorySegment other, boolean toBuffers) {
        long want = other.byteSize(), done = 0, skip = offset;
        for (var b : buffers) {
            if (done == want) return;
            if (skip >= b.byteSize()) {
                skip -= b.byteSize();
                continue;
            }
            long n = Math.min(b.byteSize() - skip, want - done);
            if (toBuffers) MemorySegment.copy(other, done, b, skip, n);
            else MemorySegment.copy(b, skip, other, done, n);
            done += n;
            skip = 0;
        }
    }
}
