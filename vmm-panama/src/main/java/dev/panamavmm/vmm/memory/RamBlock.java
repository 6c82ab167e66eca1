package dev.panamavmm.vmm.memory;

import java.lang.foreign.MemorySegment;

/**
 * A contiguous range of guest-physical RAM backed by one host mapping.
 *
 * @param id           stable name used in snapshots ({@code ram-low}, {@code ram-high})
 * @param guestAddress guest-physical address of the first byte
 * @param segment      the host mapping, {@code size} bytes
 * @param backing      where the bytes live
 * @param fileOffset   offset of this block in the backing file or memfd
 * @param fd           the open backing fd (memfd or file), owned by {@link GuestMemory}
 * @param shared       the backing outlives the process and already holds the guest's memory,
 *                     so a save or local migration can skip copying this block
 */
public record RamBlock(String id, long guestAddress, MemorySegment segment, Backing backing,
                       long fileOffset, int fd, boolean shared) {

    public long size() {
        return segment.byteSize();
    }

    public long guestEnd() {
        return guestAddress + segment.byteSize();
    }

    public boolean contains(long gpa, long length) {
        return gpa >= guestAddress && length >= 0 && gpa + length <= guestEnd() && gpa + length >= gpa;
    }

    /**
     * The parts of this block that may hold non-zero bytes, as {@code [start, end)} byte ranges
     * within the block; the rest is certainly zero. For a shared mapping (memfd or shared file)
     * these are the backing file's data extents (SEEK_DATA / SEEK_HOLE), so a save never reads a
     * hole: reading a hole through a shared tmpfs mapping would allocate a page for it, and a full
     * save of a sparse 64 GiB guest would fill 64 GiB. A private mapping's written pages live
     * outside the file, so it is one range, the whole block.
     */
    public long[][] dataExtents() {
        if (backing instanceof Backing.PrivateFile) return new long[][] {{0, size()}};
        var extents = new java.util.ArrayList<long[]>();
        long end = fileOffset + size();
        for (long at = fileOffset; at < end; ) {
            long data = dev.panamavmm.kvm.sys.LibC.seek(fd, at, dev.panamavmm.kvm.bindings.LibcConstants.SEEK_DATA);
            if (data < 0 || data >= end) break;
            long hole = Math.min(end, dev.panamavmm.kvm.sys.LibC.seek(fd, data, dev.panamavmm.kvm.bindings.LibcConstants.SEEK_HOLE));
            extents.add(new long[] {data - fileOffset, hole - fileOffset});
            at = hole;
        }
        return extents.toArray(long[][]::new);
    }
}
