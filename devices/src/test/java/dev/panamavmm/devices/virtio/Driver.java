package dev.panamavmm.devices.virtio;

import static dev.panamavmm.devices.virtio.VirtioMmio.*;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * A virtio driver for tests, written from the spec the way Linux's virtio_mmio drives a device:
 * the status handshake through the registers, one split queue in {@link HeapRam}, requests put
 * on the available ring and notified. Kept plain so that tests can also break the protocol.
 */
final class Driver {
    static final long DESC = 0x1000, AVAIL = 0x3000, USED = 0x4000, DATA = 0x10000;
    static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED;
    static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED;
    static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED;

    final HeapRam ram;
    final VirtioMmio dev;
    final int size;
    int availIdx, nextDesc, usedSeen;

    Driver(HeapRam ram, VirtioMmio dev, int size) {
        this.ram = ram;
        this.dev = dev;
        this.size = size;
    }

    MemorySegment mem() {
        return ram.segment();
    }

    int reg(int offset) {
        return (int) dev.read(offset, 4);
    }

    void set(int offset, int value) {
        dev.write(offset, 4, Integer.toUnsignedLong(value));
    }

    /** The full handshake with {@code features}; returns the status read back. */
    int start(long features) {
        set(STATUS, 0);
        set(STATUS, STATUS_ACKNOWLEDGE);
        set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        set(DRIVER_FEATURES_SEL, 0);
        set(DRIVER_FEATURES, (int) features);
        set(DRIVER_FEATURES_SEL, 1);
        set(DRIVER_FEATURES, (int) (features >>> 32));
        set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        if ((reg(STATUS) & STATUS_FEATURES_OK) == 0) return reg(STATUS);
        set(QUEUE_SEL, 0);
        set(QUEUE_NUM, size);
        set(QUEUE_DESC_LOW, (int) DESC);
        set(QUEUE_DESC_HIGH, 0);
        set(QUEUE_DRIVER_LOW, (int) AVAIL);
        set(QUEUE_DRIVER_HIGH, 0);
        set(QUEUE_DEVICE_LOW, (int) USED);
        set(QUEUE_DEVICE_HIGH, 0);
        set(QUEUE_READY, 1);
        set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        return reg(STATUS);
    }

    /** Writes descriptor {@code i} of the table at {@code table}. */
    void desc(long table, int i, long addr, int len, int flags, int next) {
        long at = table - ram.base() + 16L * i;
        mem().set(U64, at, addr);
        mem().set(U32, at + 8, len);
        mem().set(U16, at + 12, (short) flags);
        mem().set(U16, at + 14, (short) next);
    }

    /** A chain of buffers (address, length, writable) from the next free descriptors; returns its head. */
    int chain(long[][] buffers) {
        int head = nextDesc;
        for (int i = 0; i < buffers.length; i++) {
            int d = (nextDesc + i) % size;
            int flags = (buffers[i][2] != 0 ? Virtqueue.DESC_F_WRITE : 0)
                    | (i + 1 < buffers.length ? Virtqueue.DESC_F_NEXT : 0);
            desc(DESC, d, buffers[i][0], (int) buffers[i][1], flags, (d + 1) % size);
        }
        nextDesc = (nextDesc + buffers.length) % size;
        return head;
    }

    /** Makes {@code head} available without notifying. */
    void offer(int head) {
        mem().set(U16, AVAIL - ram.base() + 4 + 2L * (availIdx % size), (short) head);
        availIdx = (availIdx + 1) & 0xFFFF;
        mem().set(U16, AVAIL - ram.base() + 2, (short) availIdx);
    }

    void offerAndNotify(int head) {
        offer(head);
        set(QUEUE_NOTIFY, 0);
    }

    /**
     * Makes {@code head} available and notifies only if the device asked for it (2.7.7): the
     * used ring's NO_NOTIFY flag, or with {@code eventIdx} whether the index passed avail_event
     * ({@code vring_need_event}). Returns whether it notified.
     */
    boolean offerAndNotifyIfAsked(int head, boolean eventIdx) {
        int old = availIdx;
        offer(head);
        boolean asked = eventIdx
                ? ((availIdx - availEvent() - 1) & 0xFFFF) < ((availIdx - old) & 0xFFFF)
                : (usedFlags() & Virtqueue.USED_F_NO_NOTIFY) == 0;
        if (asked) set(QUEUE_NOTIFY, 0);
        return asked;
    }

    int usedFlags() {
        return Short.toUnsignedInt(mem().get(U16, USED - ram.base()));
    }

    int usedIdx() {
        return Short.toUnsignedInt(mem().get(U16, USED - ram.base() + 2));
    }

    /** The next used element as {id, len}, or null when the device has not used one. */
    int[] nextUsed() {
        if (usedSeen == usedIdx()) return null;
        long at = USED - ram.base() + 4 + 8L * (usedSeen % size);
        usedSeen = (usedSeen + 1) & 0xFFFF;
        return new int[] {mem().get(U32, at), mem().get(U32, at + 4)};
    }

    void setUsedEvent(int value) {
        mem().set(U16, AVAIL - ram.base() + 4 + 2L * size, (short) value);
    }

    int availEvent() {
        return Short.toUnsignedInt(mem().get(U16, USED - ram.base() + 4 + 8L * size));
    }
}
