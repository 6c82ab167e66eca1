package dev.panamavmm.devices.virtio;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * The file or block device behind a {@link VirtioBlock}. Buffers are segments of guest RAM: an
 * implementation moves bytes between them and the file directly (the VMM's uses {@code preadv}
 * and {@code pwritev} with the segments as the iovec). Called from several I/O threads at once.
 */
public interface BlockBackend {

    /** The size in bytes, fixed while the device exists. */
    long size();

    /** Fills {@code buffers} from {@code offset}; returns the bytes read (fewer only at the end of the file). */
    long read(long offset, List<MemorySegment> buffers) throws IOException;

    /** Writes {@code buffers} at {@code offset}; returns the bytes written. */
    long write(long offset, List<MemorySegment> buffers) throws IOException;

    /** Makes completed writes durable (fdatasync). */
    void flush() throws IOException;

    /** Deallocates a range (reads return zeros afterwards). */
    void discard(long offset, long length) throws IOException;

    /** Zeroes a range, deallocating it when {@code unmap} allows. */
    void writeZeroes(long offset, long length, boolean unmap) throws IOException;
}
