package dev.panamavmm.devices.virtio;

import java.lang.foreign.MemorySegment;

/** A first-in first-out byte buffer of bounded size that grows as it fills (a vsock connection's bytes in transit). */
final class ByteQueue {
    private final int capacity;
    private byte[] buf = new byte[0];
    private int head, size;

    ByteQueue(int capacity) {
        this.capacity = capacity;
    }

    int size() {
        return size;
    }

    int free() {
        return capacity - size;
    }

    boolean isEmpty() {
        return size == 0;
    }

    /** Appends {@code n} bytes of {@code from} at {@code offset}; the caller has checked {@link #free}. */
    void add(MemorySegment from, long offset, int n) {
        if (n > free()) throw new IllegalStateException(n + " bytes into a queue with room for " + free());
        if (n == 0) return; // an empty queue has no array yet to take the tail's modulus of
        ensure(size + n);
        int tail = (head + size) % buf.length;
        int first = Math.min(n, buf.length - tail);
        MemorySegment.copy(from, offset, MemorySegment.ofArray(buf), tail, first);
        MemorySegment.copy(from, offset + first, MemorySegment.ofArray(buf), 0, n - first);
        size += n;
    }

    void add(byte[] bytes) {
        add(MemorySegment.ofArray(bytes), 0, bytes.length);
    }

    /** The oldest bytes that lie contiguously, at most {@code max} of them (not removed). */
    MemorySegment peek(int max) {
        int n = Math.min(max, Math.min(size, buf.length - head));
        return MemorySegment.ofArray(buf).asSlice(head, n);
    }

    void drop(int n) {
        head = (head + n) % Math.max(1, buf.length);
        size -= n;
        if (size == 0) head = 0;
    }

    /** Removes and returns up to {@code max} bytes. */
    byte[] take(int max) {
        int n = Math.min(max, size);
        byte[] out = new byte[n];
        int done = 0;
        while (done < n) {
            var chunk = peek(n - done);
            MemorySegment.copy(chunk, 0, MemorySegment.ofArray(out), done, chunk.byteSize());
            done += (int) chunk.byteSize();
            drop((int) chunk.byteSize());
        }
        return out;
    }

    /** Every byte, oldest first (not removed). */
    byte[] toArray() {
        byte[] out = new byte[size];
        for (int i = 0; i < size; i++) out[i] = buf[(head + i) % buf.length];
        return out;
    }

    private void ensure(int needed) {
        if (needed <= buf.length) return;
        int length = Math.min(capacity, Math.max(needed, Math.max(4096, buf.length * 2)));
        byte[] grown = new byte[length];
        for (int i = 0; i < size; i++) grown[i] = buf[(head + i) % buf.length];
        buf = grown;
        head = 0;
    }
}
