package dev.panamavmm.vmm;

import static java.lang.foreign.ValueLayout.JAVA_LONG;

import dev.panamavmm.devices.virtio.BlockBackend;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.Iovec;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * A disk through {@code preadv}/{@code pwritev} straight between the file and guest RAM: the
 * request's segments of guest memory are the iovec, so no byte is copied in the VMM. Each I/O
 * thread has its own iovec array. Host errors become IOException (the request's IOERR).
 */
public final class PosixBlockBackend implements BlockBackend {
    /** The kernel's IOV_MAX; virtio-blk's seg_max keeps requests far below it. */
    private static final int IOV_MAX = 1024;

    private static final ThreadLocal<MemorySegment> IOV =
            ThreadLocal.withInitial(() -> Arena.ofAuto().allocate(Iovec.LAYOUT, IOV_MAX));

    /** O_DIRECT wants buffers aligned to the device's logical block; 4 KiB covers every device here. */
    private static final int DIRECT_ALIGNMENT = 4096;
    /** Per I/O thread: an aligned copy for a direct request whose guest buffers are not aligned. */
    private static final ThreadLocal<MemorySegment[]> BOUNCE = ThreadLocal.withInitial(() -> new MemorySegment[1]);
    /** Zeros for WRITE_ZEROES where the file system cannot zero a range itself. */
    private static final MemorySegment ZEROS = Arena.global().allocate(1 << 16, DIRECT_ALIGNMENT);

    private final int fd;
    private final long size;
    private final boolean direct;

    public PosixBlockBackend(int fd, long size) {
        this(fd, size, false);
    }

    /** With {@code direct}, {@code fd} was opened with O_DIRECT: unaligned guest buffers go through an aligned copy. */
    PosixBlockBackend(int fd, long size, boolean direct) {
        this.fd = fd;
        this.size = size;
        this.direct = direct;
    }

    @Override
    public long size() {
        return size;
    }

    @Override
    public long read(long offset, List<MemorySegment> buffers) throws IOException {
        return transfer(false, offset, buffers);
    }

    @Override
    public long write(long offset, List<MemorySegment> buffers) throws IOException {
        return transfer(true, offset, buffers);
    }

    /** Moves every byte of {@code buffers}, continuing after short transfers; stops early only at the end of the file. */
    private long transfer(boolean write, long offset, List<MemorySegment> buffers) throws IOException {
        if (direct && !aligned(buffers)) return bounced(write, offset, buffers);
        return transferDirectly(write, offset, buffers);
    }

    private static boolean aligned(List<MemorySegment> buffers) {
        for (var b : buffers) if (b.address() % DIRECT_ALIGNMENT != 0 || b.byteSize() % 512 != 0) return false;
        return true;
    }

    /** A direct request through one aligned buffer (a guest's buffers rarely need it: Linux aligns them). */
    private long bounced(boolean write, long offset, List<MemorySegment> buffers) throws IOException {
        long want = 0;
        for (var b : buffers) want += b.byteSize();
        var holder = BOUNCE.get();
        if (holder[0] == null || holder[0].byteSize() < want)
            holder[0] = Arena.ofAuto().allocate(Math.max(want, 1 << 16), DIRECT_ALIGNMENT);
        var bounce = holder[0].asSlice(0, want);
        long at = 0;
        if (write) {
            for (var b : buffers) {
                MemorySegment.copy(b, 0, bounce, at, b.byteSize());
                at += b.byteSize();
            }
            return transferDirectly(true, offset, List.of(bounce));
        }
        long n = transferDirectly(false, offset, List.of(bounce));
        for (var b : buffers) {
            if (at >= n) break;
            long part = Math.min(b.byteSize(), n - at);
            MemorySegment.copy(bounce, at, b, 0, part);
            at += part;
        }
        return n;
    }

    private long transferDirectly(boolean write, long offset, List<MemorySegment> buffers) throws IOException {
        long want = 0;
        for (var b : buffers) want += b.byteSize();
        long done = 0;
        var iov = IOV.get();
        try {
            while (done < want) {
                int count = 0;
                long skip = done;
                for (var b : buffers) {
                    if (skip >= b.byteSize()) {
                        skip -= b.byteSize();
                        continue;
                    }
                    if (count == IOV_MAX) break;
                    long at = Iovec.BYTE_SIZE * count++;
                    iov.set(JAVA_LONG, at + Iovec.IOV_BASE, b.address() + skip);
                    iov.set(JAVA_LONG, at + Iovec.IOV_LEN, b.byteSize() - skip);
                    skip = 0;
                }
                long n = write
                        ? LibC.pwritev(fd, iov, count, offset + done)
                        : LibC.preadv(fd, iov, count, offset + done);
                if (n == 0) break; // end of file
                done += n;
            }
        } catch (KvmException e) {
            throw new IOException(e.getMessage());
        }
        return done;
    }

    @Override
    public void flush() throws IOException {
        try {
            LibC.fdatasync(fd);
        } catch (KvmException e) {
            throw new IOException(e.getMessage());
        }
    }

    @Override
    public void discard(long offset, long length) throws IOException {
        try {
            LibC.fallocate(fd, LibcConstants.FALLOC_FL_PUNCH_HOLE | LibcConstants.FALLOC_FL_KEEP_SIZE, offset, length);
        } catch (KvmException e) {
            throw new IOException(e.getMessage());
        }
    }

    @Override
    public void writeZeroes(long offset, long length, boolean unmap) throws IOException {
        int mode = (unmap ? LibcConstants.FALLOC_FL_PUNCH_HOLE : LibcConstants.FALLOC_FL_ZERO_RANGE)
                | LibcConstants.FALLOC_FL_KEEP_SIZE;
        try {
            LibC.fallocate(fd, mode, offset, length);
            return;
        } catch (KvmException e) {
            if (e.errno() != LibcConstants.EOPNOTSUPP) throw new IOException(e.getMessage());
        }
        // A file system without either mode (or a device without it): write the zeros.
        for (long done = 0; done < length; ) {
            long n = Math.min(ZEROS.byteSize(), length - done);
            long w = write(offset + done, List.of(ZEROS.asSlice(0, n)));
            if (w != n) throw new IOException("short write of zeros");
            done += n;
        }
    }
}
