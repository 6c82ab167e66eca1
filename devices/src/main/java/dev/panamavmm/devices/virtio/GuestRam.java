package dev.panamavmm.devices.virtio;

import java.lang.foreign.MemorySegment;

/**
 * Guest RAM as a virtio device sees it: guest-physical ranges turned into segments. The VMM
 * implements it over its RAM blocks; a device reads and writes the returned segment directly (no
 * copy), so a disk's {@code preadv} lands in the guest's buffer.
 */
@FunctionalInterface
public interface GuestRam {

    /**
     * The {@code length} bytes at guest-physical {@code address}, within one RAM block, or null when
     * any of them is not RAM (the hole below 4 GiB, beyond the end, an overflowing sum). A length of
     * 0 at any address inside RAM is an empty segment.
     */
    MemorySegment slice(long address, long length);

    /**
     * As {@link #slice}, for a buffer the device only reads (a driver-to-device buffer): read-only,
     * so the VMM need not count it among the pages its devices may have written.
     */
    default MemorySegment readSlice(long address, long length) {
        var s = slice(address, length);
        return s == null ? null : s.asReadOnly();
    }
}
