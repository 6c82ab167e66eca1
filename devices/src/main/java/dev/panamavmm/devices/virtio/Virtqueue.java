package dev.panamavmm.devices.virtio;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.util.ArrayList;

/**
 * The device side of one split virtqueue (virtio 1.2, 2.7): the descriptor table, the driver's
 * available ring and the device's used ring in guest RAM. Every value read from the guest is
 * checked before it is used; a driver error throws {@link VirtioException}, which the transport
 * turns into NEEDS_RESET. Not thread-safe: the transport calls it under its lock.
 *
 * <p>Memory ordering with the driver (running on other CPUs): an acquire fence after reading the
 * available index (the ring entries and descriptors it covers are read after it), a release fence
 * before publishing the used index, and a full fence before reading what the driver wants to be
 * told (the used-event index or the no-interrupt flag), as Linux's {@code virtio_mb}.
 *
 * <p>Notification suppression (2.7.7): while the device's thread is taking from the ring anyway
 * ({@link #quiet}), it asks the driver not to notify, so a driver that adds requests meanwhile
 * does not exit to the host for each batch; {@link #listen} asks again and says whether requests
 * came in between.
 */
final class Virtqueue {
    static final int DESC_F_NEXT = 1, DESC_F_WRITE = 2, DESC_F_INDIRECT = 4;
    static final int AVAIL_F_NO_INTERRUPT = 1;
    static final int USED_F_NO_NOTIFY = 1;
    static final int DESCRIPTOR_BYTES = 16;
    /** The largest split queue the spec allows. */
    static final int MAX_SIZE = 32768;
    /**
     * The most entries of an indirect table: a chain becomes one object per buffer, so a guest
     * with 32768-entry tables on every ring entry could fill the VMM's heap. Linux's largest
     * tables hold seg_max + 2 entries (256 here).
     */
    static final int MAX_INDIRECT = 1024;

    private static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED;

    private final GuestRam ram;
    private final int size;
    private final boolean indirect;
    private final boolean eventIdx;
    private final MemorySegment desc, avail, used;
    private int lastAvail, usedIdx;
    /** The driver was asked not to notify: {@link #pop} leaves avail_event behind. */
    private boolean quiet;

    /**
     * The queue at these addresses, continuing from {@code lastAvail} and {@code usedIdx}. Throws
     * when a ring is not in RAM or misaligned, or the size is not a power of two up to
     * {@link #MAX_SIZE}.
     */
    Virtqueue(
            GuestRam ram,
            int size,
            long descAddr,
            long availAddr,
            long usedAddr,
            boolean indirect,
            boolean eventIdx,
            int lastAvail,
            int usedIdx) {
        if (!validSize(size, MAX_SIZE)) throw new VirtioException("queue size " + size + " is not a power of two");
        if ((descAddr & 15) != 0 || (availAddr & 1) != 0 || (usedAddr & 3) != 0)
            throw new VirtioException("a ring of the queue is misaligned");
        this.ram = ram;
        this.size = size;
        this.indirect = indirect;
        this.eventIdx = eventIdx;
        this.desc = ring(ram, descAddr, (long) DESCRIPTOR_BYTES * size);
        this.avail = ring(ram, availAddr, 6 + 2L * size);
        this.used = ring(ram, usedAddr, 6 + 8L * size);
        this.lastAvail = lastAvail & 0xFFFF;
        this.usedIdx = usedIdx & 0xFFFF;
    }

    static boolean validSize(int size, int max) {
        return size > 0 && size <= max && Integer.bitCount(size) == 1;
    }

    private static MemorySegment ring(GuestRam ram, long address, long length) {
        var s = ram.slice(address, length);
        if (s == null) throw new VirtioException(String.format("a ring at 0x%x is outside guest RAM", address));
        return s;
    }

    int lastAvail() {
        return lastAvail;
    }

    int usedIdx() {
        return usedIdx;
    }

    /** Whether the driver has made a chain available that {@link #pop} has not taken. */
    boolean hasAvailable() {
        return availIdx() != lastAvail;
    }

    private int availIdx() {
        int idx = Short.toUnsignedInt(avail.get(U16, 2));
        VarHandle.acquireFence();
        int pending = (idx - lastAvail) & 0xFFFF;
        if (pending > size)
            throw new VirtioException("the available index ran " + pending + " ahead on a queue of " + size);
        return idx;
    }

    /** The next available chain, checked and resolved, or null when there is none. */
    DescriptorChain pop() {
        if (availIdx() == lastAvail) return null;
        int head = Short.toUnsignedInt(avail.get(U16, 4 + 2L * (lastAvail & (size - 1))));
        lastAvail = (lastAvail + 1) & 0xFFFF;
        if (eventIdx && !quiet) used.set(U16, 4 + 8L * size, (short) lastAvail); // avail_event: notify me from here on
        return walk(head);
    }

    /**
     * Asks the driver not to notify: the used ring's NO_NOTIFY flag, or with EVENT_IDX an
     * avail_event that {@link #pop} no longer moves (the driver notifies only when its index
     * passes it).
     */
    void quiet() {
        quiet = true;
        if (!eventIdx) used.set(U16, 0, (short) USED_F_NO_NOTIFY);
    }

    /**
     * Asks the driver to notify again; true when it made chains available meanwhile, which it may
     * not have notified (the caller takes them). The full fence pairs with the driver's between
     * publishing its index and reading the flag or avail_event.
     */
    boolean listen() {
        quiet = false;
        if (eventIdx) used.set(U16, 4 + 8L * size, (short) lastAvail);
        else used.set(U16, 0, (short) 0);
        VarHandle.fullFence();
        return hasAvailable();
    }

    /**
     * Gives back the chain {@link #pop} returned last, untouched: it is the next available one
     * again (a device whose backend had nothing to put in it).
     */
    void unpop() {
        unpop(1);
    }

    /** Gives back the last {@code count} chains {@link #pop} returned, untouched, as {@link #unpop()}. */
    void unpop(int count) {
        lastAvail = (lastAvail - count) & 0xFFFF;
        if (eventIdx && !quiet) used.set(U16, 4 + 8L * size, (short) lastAvail);
    }

    /** A chain's buffers while {@link #walk} collects them: reused, so a request's only lists are the chain's own. */
    private final ArrayList<MemorySegment> readable = new ArrayList<>(), writables = new ArrayList<>();

    private DescriptorChain walk(int head) {
        if (head >= size) throw new VirtioException("chain head " + head + " is outside a queue of " + size);
        readable.clear();
        writables.clear();
        MemorySegment table = desc;
        int tableSize = size;
        boolean inIndirect = false;
        int index = head;
        int seen = 0;
        long total = 0;
        while (true) {
            // A chain that visits more descriptors than its table holds has a loop.
            if (++seen > tableSize) throw new VirtioException("a descriptor chain is longer than its table (a loop?)");
            long at = (long) index * DESCRIPTOR_BYTES;
            // Two reads, not four: every access through a segment costs on the device's hot path.
            long addr = table.get(U64, at);
            long rest = table.get(U64, at + 8); // len (32 bits), flags (16), next (16), little-endian
            long len = rest & 0xFFFF_FFFFL;
            int flags = (int) (rest >>> 32) & 0xFFFF;
            int next = (int) (rest >>> 48);
            if ((flags & DESC_F_INDIRECT) != 0) {
                if (!indirect) throw new VirtioException("an indirect descriptor without the negotiated feature");
                if (inIndirect) throw new VirtioException("an indirect descriptor inside an indirect table");
                if ((flags & DESC_F_NEXT) != 0) throw new VirtioException("an indirect descriptor with NEXT set");
                if (len == 0 || len % DESCRIPTOR_BYTES != 0 || len / DESCRIPTOR_BYTES > MAX_INDIRECT)
                    throw new VirtioException("an indirect table of " + len + " bytes");
                table = ram.slice(addr, len);
                if (table == null)
                    throw new VirtioException(String.format("an indirect table at 0x%x is outside guest RAM", addr));
                tableSize = (int) (len / DESCRIPTOR_BYTES);
                inIndirect = true;
                index = 0;
                seen = 0;
                continue;
            }
            total += len;
            // Used lengths are 32 bits; no request of a sane driver comes near.
            if (total > 0xFFFF_FFFFL) throw new VirtioException("a descriptor chain of more than 4 GiB");
            boolean writable = (flags & DESC_F_WRITE) != 0;
            var buffer = writable ? ram.slice(addr, len) : ram.readSlice(addr, len);
            if (buffer == null)
                throw new VirtioException(String.format("a buffer at 0x%x (%d bytes) is outside guest RAM", addr, len));
            if (writable) {
                writables.add(buffer);
            } else {
                if (!writables.isEmpty()) throw new VirtioException("a readable buffer after a writable one");
                readable.add(buffer);
            }
            if ((flags & DESC_F_NEXT) == 0) return new DescriptorChain(head, readable, writables);
            if (next >= tableSize) throw new VirtioException("descriptor " + next + " is outside its table");
            index = next;
        }
    }

    /** Puts a finished chain on the used ring: its head and the bytes written into its buffers. */
    void addUsed(int head, int written) {
        putUsed(head, written);
        publishUsed();
    }

    /** Writes a used element that the driver sees at the next {@link #publishUsed}. */
    void putUsed(int head, int written) {
        long slot = 4 + 8L * (usedIdx & (size - 1));
        used.set(U64, slot, Integer.toUnsignedLong(head) | (long) written << 32); // id, then len: one write
        usedIdx = (usedIdx + 1) & 0xFFFF;
    }

    /** Publishes the used elements written so far: the driver may read them once it sees the index. */
    void publishUsed() {
        VarHandle.releaseFence();
        used.set(U16, 2, (short) usedIdx);
    }

    /** Whether the driver wants an interrupt for the used entries added since {@code usedBefore}. */
    boolean needsInterrupt(int usedBefore) {
        VarHandle.fullFence();
        if (eventIdx) {
            int usedEvent = Short.toUnsignedInt(avail.get(U16, 4 + 2L * size));
            // vring_need_event: did the index pass used_event with these entries?
            return ((usedIdx - usedEvent - 1) & 0xFFFF) < ((usedIdx - usedBefore) & 0xFFFF);
        }
        return (avail.get(U16, 0) & AVAIL_F_NO_INTERRUPT) == 0;
    }
}
