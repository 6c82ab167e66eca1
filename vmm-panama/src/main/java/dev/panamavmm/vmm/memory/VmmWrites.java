package dev.panamavmm.vmm.memory;

import java.util.List;
import java.util.concurrent.atomic.AtomicLongArray;

/**
 * Guest pages the VMM itself may have written (virtio devices through their view of guest RAM,
 * the VMM's own writes), one bit per page and block. KVM's dirty log sees only the guest's
 * writes, so a diff or live snapshot adds these ({@link DirtyLog#take}). A range is marked when a
 * device takes it, before it can write it: conservative (a buffer only read is marked too), and
 * never late. Always on: a few atomic ORs per request.
 */
public final class VmmWrites {
    private final List<RamBlock> blocks;
    private final AtomicLongArray[] bits;

    VmmWrites(List<RamBlock> blocks) {
        this.blocks = blocks;
        bits = new AtomicLongArray[blocks.size()];
        for (int i = 0; i < bits.length; i++)
            bits[i] = new AtomicLongArray(DirtyLog.words(blocks.get(i).size()));
    }

    /** Marks {@code [gpa, gpa + length)} as possibly written by the VMM. */
    public void mark(long gpa, long length) {
        if (length <= 0) return;
        for (int i = 0; i < bits.length; i++) {
            var b = blocks.get(i);
            long from = Math.max(gpa, b.guestAddress()), to = Math.min(gpa + length, b.guestEnd());
            if (from >= to) continue;
            var words = bits[i];
            for (long p = (from - b.guestAddress()) / GuestMemory.PAGE,
                            last = (to - 1 - b.guestAddress()) / GuestMemory.PAGE;
                    p <= last;
                    p++) {
                long bit = 1L << (p & 63);
                int w = (int) (p >>> 6);
                if ((words.get(w) & bit) == 0) words.getAndAccumulate(w, bit, (x, y) -> x | y);
            }
        }
    }

    /** ORs block {@code i}'s marks into {@code into}; with {@code reset}, clears them (no device holds a buffer). */
    void addTo(int i, long[] into, boolean reset) {
        var words = bits[i];
        for (int w = 0; w < into.length; w++) into[w] |= reset ? words.getAndSet(w, 0) : words.get(w);
    }
}
