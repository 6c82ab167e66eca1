package dev.panamavmm.devices.virtio;

import java.lang.foreign.MemorySegment;

/** Guest RAM for tests: one heap segment at guest address {@code base}. */
record HeapRam(long base, MemorySegment segment) implements GuestRam {
    HeapRam(long base, int size) {
        this(base, MemorySegment.ofArray(new byte[size]));
    }

    @Override
    public MemorySegment slice(long address, long length) {
        long offset = address - base;
        if (length < 0 || offset < 0 || offset > segment.byteSize() || length > segment.byteSize() - offset)
            return null;
        return segment.asSlice(offset, length);
    }
}
