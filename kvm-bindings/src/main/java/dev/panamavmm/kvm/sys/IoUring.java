package dev.panamavmm.kvm.sys;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.IoCqringOffsets;
import dev.panamavmm.kvm.bindings.IoSqringOffsets;
import dev.panamavmm.kvm.bindings.IoUringCqe;
import dev.panamavmm.kvm.bindings.IoUringParams;
import dev.panamavmm.kvm.bindings.IoUringRestriction;
import dev.panamavmm.kvm.bindings.IoUringSqe;
import dev.panamavmm.kvm.bindings.LibcConstants;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;

/**
 * An io_uring (io_uring(7)) that can do one thing: {@code readv} and {@code writev} on one file,
 * never waiting (a request that would wait fails with EAGAIN, as on a non-blocking descriptor).
 * A device queue's thread prepares a batch of them and submits the batch with one system call
 * where {@code writev} would cost one call each (a system call's entry and exit cost more than a
 * small frame's copy on some hosts; docs/benchmarks.md).
 *
 * <p>io_uring's operations do not pass through seccomp, so the ring bounds itself: it is created
 * disabled, its one file is registered, and restrictions (IORING_REGISTER_RESTRICTIONS) allow
 * only READV and WRITEV on registered files before it is enabled; nothing can be registered
 * after. A thread that holds it can read and write that file and nothing else.
 *
 * <p>Used by one thread at a time (a queue's); {@link #close} from any thread once that thread is
 * done. Every request of a batch has completed when {@link #submit} returns.
 */
public final class IoUring implements AutoCloseable {
    private final int ringFd;
    private final int capacity;
    private final MemorySegment sqRing, cqRing, sqes;
    private final long sqTailAt, cqHeadAt, cqTailAt, cqesAt;
    private final int cqMask;
    private final MemorySegment capture = LibC.errnoCapture(Arena.ofAuto());
    /** The submission queue's tail and the completion queue's head as this side last wrote them. */
    private int sqTail, cqHead;

    private int prepared;

    private IoUring(int ringFd, MemorySegment params, MemorySegment sqRing, MemorySegment cqRing, MemorySegment sqes) {
        this.ringFd = ringFd;
        this.sqRing = sqRing;
        this.cqRing = cqRing;
        this.sqes = sqes;
        var sq = IoUringParams.sqOff(params);
        var cq = IoUringParams.cqOff(params);
        this.capacity = IoUringParams.sqEntries(params);
        this.sqTailAt = IoSqringOffsets.tail(sq);
        this.cqHeadAt = IoCqringOffsets.head(cq);
        this.cqTailAt = IoCqringOffsets.tail(cq);
        this.cqesAt = IoCqringOffsets.cqes(cq);
        this.cqMask = cqRing.get(JAVA_INT, IoCqringOffsets.ringMask(cq));
        this.sqTail = sqRing.get(JAVA_INT, sqTailAt);
        this.cqHead = cqRing.get(JAVA_INT, cqHeadAt);
        // Submission slot i always holds the entry at index i: the indirection array is the identity.
        long array = IoSqringOffsets.array(sq);
        for (int i = 0; i < capacity; i++) sqRing.set(JAVA_INT, array + 4L * i, i);
    }

    /**
     * A ring of at least {@code entries} (a power of two) for {@code fd}, which the caller keeps
     * open while the ring is used. Throws {@link KvmException} when this kernel or its policy
     * gives none (ENOSYS: no io_uring; EPERM: disabled by sysctl or a container's filter;
     * EINVAL: older than 5.10, no restrictions): the caller does without.
     */
    public static IoUring open(int fd, int entries) {
        var arena = Arena.ofAuto(); // the mappings go when the ring is unreachable (a late submit fails cleanly)
        var params = arena.allocate(IoUringParams.LAYOUT);
        IoUringParams.flags(params, LibcConstants.IORING_SETUP_R_DISABLED);
        int ringFd = LibC.ioUringSetup(entries, params);
        try {
            if ((IoUringParams.features(params) & LibcConstants.IORING_FEAT_SINGLE_MMAP) == 0)
                throw new KvmException("io_uring_setup (no IORING_FEAT_SINGLE_MMAP)", LibcConstants.EINVAL);
            var sq = IoUringParams.sqOff(params);
            var cq = IoUringParams.cqOff(params);
            long sqBytes = IoSqringOffsets.array(sq) + 4L * IoUringParams.sqEntries(params);
            long cqBytes = IoCqringOffsets.cqes(cq) + IoUringCqe.BYTE_SIZE * IoUringParams.cqEntries(params);
            int shared = LibcConstants.MAP_SHARED | LibcConstants.MAP_POPULATE;
            int rw = LibcConstants.PROT_READ | LibcConstants.PROT_WRITE;
            var rings = LibC.mapInto(
                    arena, Math.max(sqBytes, cqBytes), rw, shared, ringFd, LibcConstants.IORING_OFF_SQ_RING);
            var sqes = LibC.mapInto(
                    arena,
                    IoUringSqe.BYTE_SIZE * IoUringParams.sqEntries(params),
                    rw,
                    shared,
                    ringFd,
                    LibcConstants.IORING_OFF_SQES);
            var files = arena.allocate(JAVA_INT);
            files.set(JAVA_INT, 0, fd);
            LibC.ioUringRegister(ringFd, LibcConstants.IORING_REGISTER_FILES, files, 1);
            var rules = arena.allocate(IoUringRestriction.LAYOUT, 3);
            restrict(rules, 0, LibcConstants.IORING_RESTRICTION_SQE_OP, LibcConstants.IORING_OP_READV);
            restrict(rules, 1, LibcConstants.IORING_RESTRICTION_SQE_OP, LibcConstants.IORING_OP_WRITEV);
            restrict(rules, 2, LibcConstants.IORING_RESTRICTION_SQE_FLAGS_REQUIRED, LibcConstants.IOSQE_FIXED_FILE);
            LibC.ioUringRegister(ringFd, LibcConstants.IORING_REGISTER_RESTRICTIONS, rules, 3);
            LibC.ioUringRegister(ringFd, LibcConstants.IORING_REGISTER_ENABLE_RINGS, MemorySegment.NULL, 0);
            return new IoUring(ringFd, params, rings, rings, sqes);
        } catch (RuntimeException e) {
            LibC.close(ringFd);
            throw e;
        }
    }

    private static void restrict(MemorySegment rules, int index, int opcode, int value) {
        var rule = rules.asSlice(index * IoUringRestriction.BYTE_SIZE, IoUringRestriction.BYTE_SIZE);
        IoUringRestriction.opcode(rule, opcode);
        IoUringRestriction.sqeOp(rule, value); // one byte, shared by sqe_op and sqe_flags
    }

    /** The most requests one {@link #submit} takes. */
    public int capacity() {
        return capacity;
    }

    /** Requests prepared since the last {@link #submit}. */
    public int prepared() {
        return prepared;
    }

    /**
     * Prepares a {@code writev} of the {@code count} iovecs at {@code iov} (an address the caller
     * keeps valid until {@link #submit} returns); its result is {@code results[prepared()]} then.
     * At most {@link #capacity} per submission.
     */
    public void prepareWritev(long iov, int count) {
        prepare(LibcConstants.IORING_OP_WRITEV, iov, count);
    }

    /** As {@link #prepareWritev}, a {@code readv} into the iovecs. */
    public void prepareReadv(long iov, int count) {
        prepare(LibcConstants.IORING_OP_READV, iov, count);
    }

    private void prepare(int opcode, long iov, int count) {
        if (prepared == capacity)
            throw new IllegalStateException("the ring's " + capacity + " entries are all prepared");
        int index = (sqTail + prepared) & (capacity - 1);
        long at = index * IoUringSqe.BYTE_SIZE;
        // Five 8-byte stores: opcode, flags (fixed file), ioprio 0, fd (file index 0); the offset
        // -1 (the file's position: a stream); the iovecs; their count and RWF_NOWAIT; user data.
        // RWF_NOWAIT: a file that can wait (a tap) fails with EAGAIN instead; without it io_uring
        // would wait for the file to be ready, O_NONBLOCK or not, and submit() with it.
        sqes.set(JAVA_LONG, at, opcode | (long) LibcConstants.IOSQE_FIXED_FILE << 8);
        sqes.set(JAVA_LONG, at + IoUringSqe.OFF, -1L);
        sqes.set(JAVA_LONG, at + IoUringSqe.ADDR, iov);
        sqes.set(JAVA_LONG, at + IoUringSqe.LEN, Integer.toUnsignedLong(count) | (long) LibcConstants.RWF_NOWAIT << 32);
        sqes.set(JAVA_LONG, at + IoUringSqe.USER_DATA, prepared);
        prepared++;
    }

    /**
     * Submits the prepared requests and waits until each has completed: {@code results[i]} is
     * request i's result (bytes moved, or -errno). Throws {@link KvmException} when the ring
     * itself fails (closed, out of memory); the requests not yet submitted are then dropped.
     */
    public void submit(int[] results) {
        int n = prepared;
        if (n == 0) return;
        prepared = 0;
        sqTail += n;
        VarHandle.releaseFence(); // the entries before the tail that publishes them
        sqRing.set(JAVA_INT, sqTailAt, sqTail);
        int submitted = 0, reaped = 0;
        while (reaped < n) {
            long r =
                    LibC.ioUringEnter(capture, ringFd, n - submitted, n - reaped, LibcConstants.IORING_ENTER_GETEVENTS);
            if (r < 0) {
                if (r == -LibcConstants.EINTR) continue;
                if (submitted < n) sqTail -= n - submitted; // withdrawn: the kernel did not take them
                sqRing.set(JAVA_INT, sqTailAt, sqTail);
                throw new KvmException("io_uring_enter", (int) -r);
            }
            submitted += (int) r;
            reaped += reap(results);
        }
    }

    private int reap(int[] results) {
        int tail = cqRing.get(JAVA_INT, cqTailAt);
        VarHandle.acquireFence(); // the entries after the tail that published them
        int count = 0;
        for (; cqHead != tail; cqHead++, count++) {
            long at = cqesAt + (long) (cqHead & cqMask) * IoUringCqe.BYTE_SIZE;
            int request = (int) cqRing.get(JAVA_LONG, at + IoUringCqe.USER_DATA);
            results[request] = cqRing.get(JAVA_INT, at + IoUringCqe.RES);
        }
        VarHandle.releaseFence(); // the entries read before the head that frees them
        cqRing.set(JAVA_INT, cqHeadAt, cqHead);
        return count;
    }

    /** Closes the ring's descriptor; its mappings go when it is no longer reachable. */
    @Override
    public void close() {
        LibC.close(ringFd);
    }
}
