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
 * @param overlaid     the ranges (within the block, {@code [start, end)}, ascending) mapped
 *                     copy-on-write over the backing file from layer files (a diff snapshot's layers
 *                     or a chained template's): a private block's data beyond its file's and its
 *                     copied pages
 */
public record RamBlock(
        String id,
        long guestAddress,
        MemorySegment segment,
        Backing backing,
        long fileOffset,
        int fd,
        boolean shared,
        long[][] overlaid) {

    public RamBlock(
            String id,
            long guestAddress,
            MemorySegment segment,
            Backing backing,
            long fileOffset,
            int fd,
            boolean shared) {
        this(id, guestAddress, segment, backing, fileOffset, fd, shared, new long[0][]);
    }

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
     * within the block, ascending; the rest is certainly zero and is never read (see
     * {@link DataExtents}: reading a hole of a tmpfs mapping allocates it). Shared mappings: the
     * backing file's data extents; private ones: those, the layers mapped over it and the pages
     * copied on write.
     */
    public long[][] dataExtents() {
        return DataExtents.of(this);
    }

    /**
     * The pages of a private block written since it was mapped (its copied-on-write pages, from
     * /proc/self/pagemap), as {@code [start, end)} byte ranges; none for a shared block.
     */
    public long[][] copiedOnWrite() {
        if (!(backing instanceof Backing.PrivateFile)) return new long[0][];
        return DataExtents.anonymousPages(segment).toArray(long[][]::new);
    }
}
