package dev.panamavmm.kvm.sys;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.bindings.SandboxConstants;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.invoke.MethodHandle;
import java.lang.ref.Reference;

/**
 * The libc functions and system calls the VMM uses, as FFM downcalls.
 *
 * <p>System calls (ioctl, open, mmap, sockets, ...) all go through one downcall, glibc's variadic
 * {@code syscall}, with the numbers from {@code <sys/syscall.h>}: linking a downcall of a new
 * shape costs a process 10-20 ms, and a VMM start links once instead of a dozen times. Pointer
 * arguments are passed as addresses (see {@code address}). The few libc functions that are not
 * system calls (sigaction, terminal settings, strerror) keep their own downcall, each in its own
 * holder class, so a process links only what it calls. Calls that can fail capture {@code errno}
 * in a per-thread segment and throw {@link KvmException} naming the call.
 */
public final class LibC {
    private LibC() {}

    private static final Linker LINKER = Linker.nativeLinker();
    private static final StructLayout CAPTURE_LAYOUT = Linker.Option.captureStateLayout();
    private static final long ERRNO_OFFSET = CAPTURE_LAYOUT.byteOffset(MemoryLayout.PathElement.groupElement("errno"));
    private static final Linker.Option ERRNO = Linker.Option.captureCallState("errno");

    /** Per-thread errno capture segment: allocated once per thread, never on the call path. */
    private static final ThreadLocal<MemorySegment> CAPTURE =
            ThreadLocal.withInitial(() -> Arena.ofAuto().allocate(CAPTURE_LAYOUT));

    @SuppressWarnings("restricted") // native access: this module (dev.panamavmm.kvm) or the unnamed one (README)
    static MethodHandle link(String name, FunctionDescriptor fd, Linker.Option... options) {
        MemorySegment symbol =
                LINKER.defaultLookup().find(name).orElseThrow(() -> new UnsatisfiedLinkError("libc has no " + name));
        return LINKER.downcallHandle(symbol, fd, options);
    }

    static MemorySegment capture() {
        return CAPTURE.get();
    }

    /** errno of the last capturing call on this thread. */
    public static int lastErrno() {
        return CAPTURE.get().get(JAVA_INT, ERRNO_OFFSET);
    }

    private static KvmException fail(String call, MemorySegment capture) {
        return new KvmException(call, capture.get(JAVA_INT, ERRNO_OFFSET));
    }

    private static RuntimeException unexpected(Throwable t) {
        if (t instanceof RuntimeException r) return r;
        if (t instanceof Error e) throw e;
        return new IllegalStateException(t);
    }

    // ---- system calls ------------------------------------------------------------------------

    /**
     * glibc's {@code long syscall(long number, ...)}, linked once with six {@code long} arguments:
     * every system call below goes through this one downcall. Each distinct downcall shape costs
     * a new process 10-20 ms to link (a generated stub class and its method-handle adapters), so
     * a restore or a clone that linked a dozen libc wrappers spent ~100 ms on linking alone.
     * Unused trailing arguments are passed as 0 and ignored by the kernel; on failure glibc
     * returns -1 and sets errno, which is captured.
     */
    private static final class Syscall {
        static final MethodHandle H = link(
                "syscall",
                FunctionDescriptor.of(
                        JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG),
                Linker.Option.firstVariadicArg(1),
                ERRNO);
    }

    private static long syscall(
            MemorySegment capture, int number, long a1, long a2, long a3, long a4, long a5, long a6) {
        try {
            return (long) Syscall.H.invokeExact(capture, (long) number, a1, a2, a3, a4, a5, a6);
        } catch (Throwable t) {
            throw unexpected(t);
        }
    }

    private static long syscall(MemorySegment capture, int number, long a1, long a2, long a3) {
        return syscall(capture, number, a1, a2, a3, 0, 0, 0);
    }

    /** A system call that throws on failure, naming {@code call}; returns the non-negative result. */
    private static long checked(String call, int number, long a1, long a2, long a3) {
        var capture = CAPTURE.get();
        long r = syscall(capture, number, a1, a2, a3);
        if (r < 0) throw fail(call, capture);
        return r;
    }

    /**
     * The address of a pointer argument. Pointers go to the kernel as plain numbers, so FFM cannot
     * keep the segment's arena open during the call the way it does for an {@code ADDRESS}
     * argument; the rule instead: a segment passed to a system call belongs to an arena that stays
     * open until the call returns (the caller's own confined arena, or the VM's arena, which
     * outlives every vCPU), and is reachability-fenced after the call. A closed arena or heap
     * memory is refused here. Were the memory unmapped during a call anyway, the kernel would
     * fail it with EFAULT: the kernel checks user pointers, the JVM is not involved.
     */
    private static long address(MemorySegment segment) {
        if (!segment.isNative())
            throw new IllegalArgumentException("a system call needs native memory, not a heap segment");
        if (!segment.scope().isAlive()) throw new IllegalStateException("the segment's arena is already closed");
        return segment.address();
    }

    // ---- ioctl -------------------------------------------------------------------------------

    /** {@code ioctl(fd, request, arg)} with a pointer argument; returns the non-negative result. */
    public static int ioctl(int fd, long request, MemorySegment arg) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_ioctl, fd, request, address(arg));
        Reference.reachabilityFence(arg);
        if (r < 0) throw fail(Ioctls.name(request), capture);
        return (int) r;
    }

    /** {@code ioctl(fd, request, value)} with an integer argument (or none: pass 0). */
    public static int ioctl(int fd, long request, long value) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_ioctl, fd, request, value);
        if (r < 0) throw fail(Ioctls.name(request), capture);
        return (int) r;
    }

    /**
     * {@code ioctl} that reports failure as {@code -errno} instead of throwing: for calls whose
     * failure is an expected outcome (KVM_RUN interrupted by a kick returns EINTR).
     */
    public static int ioctlOrErrno(int fd, long request, MemorySegment arg) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_ioctl, fd, request, address(arg));
        Reference.reachabilityFence(arg);
        return r < 0 ? -capture.get(JAVA_INT, ERRNO_OFFSET) : (int) r;
    }

    /** {@code ioctl(fd, request, value)} with an integer argument, reporting failure as {@code -errno}. */
    public static int ioctlOrErrno(int fd, long request, long value) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_ioctl, fd, request, value);
        return r < 0 ? -capture.get(JAVA_INT, ERRNO_OFFSET) : (int) r;
    }

    // ---- files -------------------------------------------------------------------------------

    /** {@code open(path, flags, mode)}; the error message names the path. */
    public static int open(String path, int flags, int mode) {
        try (var arena = Arena.ofConfined()) {
            return (int)
                    checked("open " + path, LibcConstants.SYS_open, address(arena.allocateFrom(path)), flags, mode);
        }
    }

    /** Sets O_NONBLOCK on {@code fd}'s open file description (shared with every copy of the descriptor). */
    public static void setNonBlocking(int fd) {
        long flags = checked("fcntl F_GETFL", LibcConstants.SYS_fcntl, fd, LibcConstants.F_GETFL, 0);
        checked("fcntl F_SETFL", LibcConstants.SYS_fcntl, fd, LibcConstants.F_SETFL, flags | LibcConstants.O_NONBLOCK);
    }

    public static void close(int fd) {
        checked("close", LibcConstants.SYS_close, fd, 0, 0);
    }

    /** {@code read(fd, buf, buf.byteSize())}: bytes read, 0 at end of file. */
    public static long read(int fd, MemorySegment buf) {
        long r = checked("read", LibcConstants.SYS_read, fd, address(buf), buf.byteSize());
        Reference.reachabilityFence(buf);
        return r;
    }

    /** As {@link #read}, reporting failure as {@code -errno} (a non-blocking fd with nothing to read: {@code -EAGAIN}). */
    public static long readOrErrno(int fd, MemorySegment buf) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_read, fd, address(buf), buf.byteSize());
        Reference.reachabilityFence(buf);
        return r < 0 ? -capture.get(JAVA_INT, ERRNO_OFFSET) : r;
    }

    /** {@code write(fd, buf, buf.byteSize())}: bytes written. */
    public static long write(int fd, MemorySegment buf) {
        long r = checked("write", LibcConstants.SYS_write, fd, address(buf), buf.byteSize());
        Reference.reachabilityFence(buf);
        return r;
    }

    /**
     * {@code lseek(fd, offset, SEEK_DATA or SEEK_HOLE)}: the next offset at or after {@code offset}
     * that holds data (or starts a hole); -1 when there is no more data (ENXIO). Lets a reader skip
     * a sparse file's holes without touching them: reading a hole of a shared tmpfs mapping
     * allocates a page for it.
     */
    public static long seek(int fd, long offset, int whence) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_lseek, fd, offset, whence);
        if (r >= 0) return r;
        if (whence == LibcConstants.SEEK_DATA && capture.get(JAVA_INT, ERRNO_OFFSET) == LibcConstants.ENXIO) return -1;
        throw fail("lseek", capture);
    }

    /**
     * {@code flock(fd, operation)}: a whole-file advisory lock held by the open file description
     * (so it travels with the fd over SCM_RIGHTS and lasts while any copy of it, or a mapping of
     * it, is open). With {@code LOCK_NB}, false when another open file description holds a
     * conflicting lock (EWOULDBLOCK) instead of waiting; other failures throw.
     */
    public static boolean flock(int fd, int operation) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_flock, fd, operation, 0);
        if (r == 0) return true;
        if (capture.get(JAVA_INT, ERRNO_OFFSET) == LibcConstants.EWOULDBLOCK
                && (operation & LibcConstants.LOCK_NB) != 0) return false;
        throw fail("flock", capture);
    }

    public static void ftruncate(int fd, long length) {
        checked("ftruncate", LibcConstants.SYS_ftruncate, fd, length, 0);
    }

    public static void fallocate(int fd, int mode, long offset, long length) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_fallocate, fd, mode, offset, length, 0, 0);
        if (r < 0) throw fail("fallocate", capture);
    }

    /**
     * {@code preadv(fd, iov, count, offset)}: reads into the {@code count} {@code struct iovec}s at
     * {@code iov} (their buffers must stay mapped during the call, e.g. guest RAM); returns the
     * bytes read, fewer only at the end of the file. Retried on EINTR.
     */
    public static long preadv(int fd, MemorySegment iov, int count, long offset) {
        return vectored("preadv", LibcConstants.SYS_preadv, fd, iov, count, offset);
    }

    /** {@code pwritev(fd, iov, count, offset)}, as {@link #preadv}: returns the bytes written. */
    public static long pwritev(int fd, MemorySegment iov, int count, long offset) {
        return vectored("pwritev", LibcConstants.SYS_pwritev, fd, iov, count, offset);
    }

    private static long vectored(String call, int number, int fd, MemorySegment iov, int count, long offset) {
        var capture = CAPTURE.get();
        long base = address(iov);
        while (true) {
            // The raw call splits the offset into low and high words; on 64 bits the low word is all of it.
            long r = syscall(capture, number, fd, base, count, offset, 0, 0);
            if (r >= 0) {
                Reference.reachabilityFence(iov);
                return r;
            }
            if (capture.get(JAVA_INT, ERRNO_OFFSET) != LibcConstants.EINTR) throw fail(call, capture);
        }
    }

    /**
     * {@code readv(fd, iov, count)}: bytes read, or {@code -errno} (a non-blocking fd with nothing
     * to read: {@code -EAGAIN}); retried on EINTR. One call reads one frame from a tap.
     */
    public static long readvOrErrno(int fd, MemorySegment iov, int count) {
        return vectoredOrErrno(LibcConstants.SYS_readv, fd, iov, count);
    }

    /** {@code writev(fd, iov, count)}, as {@link #readvOrErrno}: bytes written or {@code -errno}. */
    public static long writevOrErrno(int fd, MemorySegment iov, int count) {
        return vectoredOrErrno(LibcConstants.SYS_writev, fd, iov, count);
    }

    /**
     * An errno capture segment of the caller's own, for {@link #readvOrErrno(MemorySegment, int,
     * MemorySegment, int)} and {@link #writevOrErrno(MemorySegment, int, MemorySegment, int)}: a
     * device's hot path (a frame per call) skips the per-thread lookup. One per thread that uses it.
     */
    public static MemorySegment errnoCapture(Arena arena) {
        return arena.allocate(CAPTURE_LAYOUT);
    }

    /** {@link #readvOrErrno(int, MemorySegment, int)} with the caller's {@link #errnoCapture}. */
    public static long readvOrErrno(MemorySegment capture, int fd, MemorySegment iov, int count) {
        return vectoredOrErrno(capture, LibcConstants.SYS_readv, fd, iov, count);
    }

    /** {@link #writevOrErrno(int, MemorySegment, int)} with the caller's {@link #errnoCapture}. */
    public static long writevOrErrno(MemorySegment capture, int fd, MemorySegment iov, int count) {
        return vectoredOrErrno(capture, LibcConstants.SYS_writev, fd, iov, count);
    }

    private static long vectoredOrErrno(int number, int fd, MemorySegment iov, int count) {
        return vectoredOrErrno(CAPTURE.get(), number, fd, iov, count);
    }

    private static long vectoredOrErrno(MemorySegment capture, int number, int fd, MemorySegment iov, int count) {
        long base = address(iov);
        while (true) {
            long r = syscall(capture, number, fd, base, count);
            if (r >= 0) {
                Reference.reachabilityFence(iov);
                return r;
            }
            int errno = capture.get(JAVA_INT, ERRNO_OFFSET);
            if (errno != LibcConstants.EINTR) return -errno;
        }
    }

    public static void fdatasync(int fd) {
        checked("fdatasync", LibcConstants.SYS_fdatasync, fd, 0, 0);
    }

    /** Fills {@code buf} from the kernel's random source ({@code getrandom(2)}, blocking only before it is seeded). */
    public static void getrandom(MemorySegment buf) {
        var capture = CAPTURE.get();
        long done = 0;
        while (done < buf.byteSize()) {
            long r = syscall(capture, LibcConstants.SYS_getrandom, address(buf) + done, buf.byteSize() - done, 0);
            if (r < 0) {
                if (capture.get(JAVA_INT, ERRNO_OFFSET) == LibcConstants.EINTR) continue;
                throw fail("getrandom", capture);
            }
            done += r;
        }
        Reference.reachabilityFence(buf);
    }

    /** An anonymous memory file ({@code MFD_CLOEXEC} is the caller's choice in {@code flags}). */
    public static int memfdCreate(String name, int flags) {
        try (var arena = Arena.ofConfined()) {
            return (int) checked(
                    "memfd_create", LibcConstants.SYS_memfd_create, address(arena.allocateFrom(name)), flags, 0);
        }
    }

    public static int eventfd(int initialValue, int flags) {
        return (int) checked("eventfd", LibcConstants.SYS_eventfd2, initialValue, flags, 0);
    }

    /**
     * {@code poll(fds, count, timeoutMillis)} over an array of {@code struct pollfd}: the number of
     * fds with events, 0 on timeout, and 0 too when a signal interrupted the wait (EINTR).
     */
    public static int poll(MemorySegment pollfds, int count, int timeoutMillis) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_poll, address(pollfds), count, timeoutMillis);
        Reference.reachabilityFence(pollfds);
        if (r >= 0) return (int) r;
        if (capture.get(JAVA_INT, ERRNO_OFFSET) == LibcConstants.EINTR) return 0;
        throw fail("poll", capture);
    }

    /** {@code userfaultfd(flags)} (glibc has no wrapper: a raw system call). */
    public static int userfaultfd(int flags) {
        return (int) checked("userfaultfd", LibcConstants.SYS_userfaultfd, flags, 0, 0);
    }

    // ---- io_uring (see IoUring) ----------------------------------------------------------------

    /** {@code io_uring_setup(entries, params)}: the ring's descriptor. */
    static int ioUringSetup(int entries, MemorySegment params) {
        int fd = (int) checked("io_uring_setup", LibcConstants.SYS_io_uring_setup, entries, address(params), 0);
        Reference.reachabilityFence(params);
        return fd;
    }

    /** {@code io_uring_register(fd, opcode, arg, count)}. */
    static void ioUringRegister(int fd, int opcode, MemorySegment arg, int count) {
        long at = arg.equals(MemorySegment.NULL) ? 0 : address(arg);
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_io_uring_register, fd, opcode, at, count, 0, 0);
        Reference.reachabilityFence(arg);
        if (r < 0) throw fail("io_uring_register", capture);
    }

    /** {@code io_uring_enter(fd, toSubmit, minComplete, flags, NULL, 0)}: requests submitted, or -errno. */
    static long ioUringEnter(MemorySegment capture, int fd, int toSubmit, int minComplete, int flags) {
        long r = syscall(capture, LibcConstants.SYS_io_uring_enter, fd, toSubmit, minComplete, flags, 0, 0);
        return r >= 0 ? r : -capture.get(JAVA_INT, ERRNO_OFFSET);
    }

    // ---- memory mappings ---------------------------------------------------------------------

    /**
     * {@code mmap(NULL, length, prot, flags, fd, offset)}; the result is a zero-length segment at
     * the mapping's address (give it a size and an owner with {@link #mapInto}).
     */
    public static MemorySegment mmap(long length, int prot, int flags, int fd, long offset) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_mmap, 0, length, prot, flags, fd, offset);
        if (r == LibcConstants.MAP_FAILED) throw fail("mmap", capture);
        return MemorySegment.ofAddress(r);
    }

    /**
     * {@code mmap(at, at.byteSize(), prot, flags | MAP_FIXED, fd, offset)}: replaces the pages of
     * {@code at} (part of an existing mapping, which keeps its owner) with a mapping of {@code fd},
     * e.g. a layer file's run of pages copy-on-write over a memory file's mapping.
     */
    public static void mmapFixed(MemorySegment at, int prot, int flags, int fd, long offset) {
        var capture = CAPTURE.get();
        long address = address(at);
        long r = syscall(
                capture,
                LibcConstants.SYS_mmap,
                address,
                at.byteSize(),
                prot,
                flags | LibcConstants.MAP_FIXED,
                fd,
                offset);
        Reference.reachabilityFence(at);
        if (r == LibcConstants.MAP_FAILED) throw fail("mmap", capture);
        if (r != address) throw new IllegalStateException("mmap with MAP_FIXED moved the mapping");
    }

    /**
     * Maps {@code length} bytes and ties the mapping to {@code arena}: it is unmapped when the
     * arena closes (an owner that outlives every user of the memory, e.g. every vCPU).
     */
    @SuppressWarnings("restricted") // native access: this module (dev.panamavmm.kvm) or the unnamed one (README)
    public static MemorySegment mapInto(Arena arena, long length, int prot, int flags, int fd, long offset) {
        MemorySegment raw = mmap(length, prot, flags, fd, offset);
        return raw.reinterpret(length, arena, s -> munmapQuietly(s.address(), length));
    }

    public static void munmap(MemorySegment segment) {
        checked("munmap", LibcConstants.SYS_munmap, address(segment), segment.byteSize(), 0);
    }

    private static void munmapQuietly(long address, long length) {
        // Cleanup runs when an arena closes; a failed munmap only leaks address space.
        syscall(CAPTURE.get(), LibcConstants.SYS_munmap, address, length, 0);
    }

    public static void madvise(MemorySegment segment, int advice) {
        checked("madvise", LibcConstants.SYS_madvise, address(segment), segment.byteSize(), advice);
        Reference.reachabilityFence(segment);
    }

    public static void mprotect(MemorySegment segment, int prot) {
        checked("mprotect", LibcConstants.SYS_mprotect, address(segment), segment.byteSize(), prot);
        Reference.reachabilityFence(segment);
    }

    /** One byte per page of {@code segment} into {@code vector}: bit 0 set when the page is resident. */
    public static void mincore(MemorySegment segment, MemorySegment vector) {
        long pages = (segment.byteSize() + 4095) / 4096;
        if (vector.byteSize() < pages)
            throw new IllegalArgumentException("mincore needs " + pages + " bytes of vector, got " + vector.byteSize());
        checked("mincore", LibcConstants.SYS_mincore, address(segment), segment.byteSize(), address(vector));
        Reference.reachabilityFence(segment);
        Reference.reachabilityFence(vector);
    }

    // ---- threads and signals -----------------------------------------------------------------

    /** The calling thread's kernel thread id, to kick it later with {@link #tgkill}. */
    public static int gettid() {
        return (int) syscall(CAPTURE.get(), LibcConstants.SYS_gettid, 0, 0, 0);
    }

    private static final class Pid {
        static final long PID = syscall(CAPTURE.get(), LibcConstants.SYS_getpid, 0, 0, 0);
    }

    /** Sends {@code signal} to thread {@code tid} of this process; false when that thread has exited. */
    public static boolean tgkill(int tid, int signal) {
        var capture = CAPTURE.get();
        if (syscall(capture, LibcConstants.SYS_tgkill, Pid.PID, tid, signal) == 0) return true;
        if (capture.get(JAVA_INT, ERRNO_OFFSET) == LibcConstants.ESRCH) return false;
        throw fail("tgkill", capture);
    }

    /**
     * Sets the nice value of the calling thread alone (Linux keeps it per thread: setpriority on
     * its thread id), so background work yields the CPU to vCPU and API threads.
     */
    public static void niceCurrentThread(int nice) {
        checked("setpriority", LibcConstants.SYS_setpriority, 0 /* PRIO_PROCESS */, gettid(), nice);
    }

    /**
     * Sets the nice value of every thread of every process in process group {@code pgid}
     * (setpriority with PRIO_PGRP reaches all threads, where PRIO_PROCESS on a pid reaches only
     * the thread with that id).
     */
    public static void niceProcessGroup(long pgid, int nice) {
        checked("setpriority", LibcConstants.SYS_setpriority, 1 /* PRIO_PGRP */, pgid, nice);
    }

    // ---- the sandbox: seccomp and Landlock ----------------------------------------------------

    /** {@code prctl(option, arg2, 0, 0, 0)}; the error message names the option. */
    public static int prctl(String call, int option, long arg2) {
        return (int) checked("prctl " + call, SandboxConstants.SYS_prctl, option, arg2, 0);
    }

    /**
     * {@code seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)}: installs the BPF program {@code prog}
     * (a {@code struct sock_fprog}) on the calling thread only (no TSYNC flag).
     */
    public static void seccompFilter(int flags, MemorySegment prog) {
        checked(
                "seccomp",
                SandboxConstants.SYS_seccomp,
                SandboxConstants.SECCOMP_SET_MODE_FILTER,
                flags,
                address(prog));
        Reference.reachabilityFence(prog);
    }

    /** {@code landlock_create_ruleset(attr, size, flags)}, failure as {@code -errno} (no Landlock: -ENOSYS or -EOPNOTSUPP). */
    public static int landlockCreateRulesetOrErrno(MemorySegment attr, long size, int flags) {
        var capture = CAPTURE.get();
        long r = syscall(
                capture,
                SandboxConstants.SYS_landlock_create_ruleset,
                attr.equals(MemorySegment.NULL) ? 0 : address(attr),
                size,
                flags);
        Reference.reachabilityFence(attr);
        return r < 0 ? -capture.get(JAVA_INT, ERRNO_OFFSET) : (int) r;
    }

    /** {@code landlock_add_rule(ruleset, LANDLOCK_RULE_PATH_BENEATH, attr, 0)}. */
    public static void landlockAddPathRule(int ruleset, MemorySegment attr) {
        checked(
                "landlock_add_rule",
                SandboxConstants.SYS_landlock_add_rule,
                ruleset,
                SandboxConstants.LANDLOCK_RULE_PATH_BENEATH,
                address(attr));
        Reference.reachabilityFence(attr);
    }

    /** {@code landlock_restrict_self(ruleset, 0)}: the calling thread (and threads it creates later) only. */
    public static void landlockRestrictSelf(int ruleset) {
        checked("landlock_restrict_self", SandboxConstants.SYS_landlock_restrict_self, ruleset, 0, 0);
    }

    private static final class Sigaction {
        static final MethodHandle H =
                link("sigaction", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, ADDRESS), ERRNO);
    }

    /** {@code sigaction(signal, action, old)}; {@code old} may be {@link MemorySegment#NULL}. */
    public static void sigaction(int signal, MemorySegment action, MemorySegment old) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Sigaction.H.invokeExact(capture, signal, action, old);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("sigaction", capture);
    }

    private static final class SigRtMin {
        static final MethodHandle H = link("__libc_current_sigrtmin", FunctionDescriptor.of(JAVA_INT));
    }

    /** SIGRTMIN as glibc sees it (glibc keeps the first real-time signals for itself). */
    public static int sigrtmin() {
        try {
            return (int) SigRtMin.H.invokeExact();
        } catch (Throwable t) {
            throw unexpected(t);
        }
    }

    // ---- sockets -----------------------------------------------------------------------------

    public static int socket(int domain, int type, int protocol) {
        return (int) checked("socket", LibcConstants.SYS_socket, domain, type, protocol);
    }

    public static void bind(int fd, MemorySegment address) {
        checked("bind", LibcConstants.SYS_bind, fd, address(address), address.byteSize());
        Reference.reachabilityFence(address);
    }

    public static void connect(int fd, MemorySegment address) {
        checked("connect", LibcConstants.SYS_connect, fd, address(address), address.byteSize());
        Reference.reachabilityFence(address);
    }

    public static void listen(int fd, int backlog) {
        checked("listen", LibcConstants.SYS_listen, fd, backlog, 0);
    }

    /** shutdown(fd, SHUT_RDWR): wakes a thread blocked on the socket; errors are ignored (the socket may be gone). */
    public static void shutdown(int fd) {
        syscall(CAPTURE.get(), LibcConstants.SYS_shutdown, fd, 2, 0);
    }

    /** Accepts one connection (blocking). */
    public static int accept(int fd, int flags) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_accept4, fd, 0, 0, flags, 0, 0);
        if (r < 0) throw fail("accept", capture);
        return (int) r;
    }

    /** As {@link #accept}, reporting failure as {@code -errno} (a non-blocking listener with no connection: {@code -EAGAIN}). */
    public static int acceptOrErrno(int fd, int flags) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_accept4, fd, 0, 0, flags, 0, 0);
        return r < 0 ? -capture.get(JAVA_INT, ERRNO_OFFSET) : (int) r;
    }

    /** As {@link #connect}, reporting failure as {@code -errno} (nobody listening: {@code -ECONNREFUSED} or {@code -ENOENT}). */
    public static int connectOrErrno(int fd, MemorySegment address) {
        var capture = CAPTURE.get();
        long r = syscall(capture, LibcConstants.SYS_connect, fd, address(address), address.byteSize());
        Reference.reachabilityFence(address);
        return r < 0 ? -capture.get(JAVA_INT, ERRNO_OFFSET) : 0;
    }

    /**
     * {@code send(fd, buf, size, MSG_DONTWAIT | MSG_NOSIGNAL)} on a socket: bytes sent, or
     * {@code -errno} ({@code -EAGAIN} when it is full, {@code -EPIPE} when the peer is gone, never SIGPIPE).
     */
    public static long sendOrErrno(int fd, MemorySegment buf) {
        var capture = CAPTURE.get();
        long r = syscall(
                capture,
                LibcConstants.SYS_sendto,
                fd,
                address(buf),
                buf.byteSize(),
                LibcConstants.MSG_DONTWAIT | LibcConstants.MSG_NOSIGNAL,
                0,
                0);
        Reference.reachabilityFence(buf);
        return r < 0 ? -capture.get(JAVA_INT, ERRNO_OFFSET) : r;
    }

    /** {@code recv(fd, buf, size, MSG_DONTWAIT)}: bytes received, 0 when the peer closed, or {@code -errno}. */
    public static long recvOrErrno(int fd, MemorySegment buf) {
        var capture = CAPTURE.get();
        long r = syscall(
                capture,
                LibcConstants.SYS_recvfrom,
                fd,
                address(buf),
                buf.byteSize(),
                LibcConstants.MSG_DONTWAIT,
                0,
                0);
        Reference.reachabilityFence(buf);
        return r < 0 ? -capture.get(JAVA_INT, ERRNO_OFFSET) : r;
    }

    /** {@code sendmsg(fd, msghdr, flags)}: bytes sent. With SCM_RIGHTS control data this passes fds. */
    public static long sendmsg(int fd, MemorySegment msghdr, int flags) {
        long r = checked("sendmsg", LibcConstants.SYS_sendmsg, fd, address(msghdr), flags);
        Reference.reachabilityFence(msghdr);
        return r;
    }

    /** {@code recvmsg(fd, msghdr, flags)}: bytes received, 0 when the peer closed. */
    public static long recvmsg(int fd, MemorySegment msghdr, int flags) {
        long r = checked("recvmsg", LibcConstants.SYS_recvmsg, fd, address(msghdr), flags);
        Reference.reachabilityFence(msghdr);
        return r;
    }

    // ---- terminals ---------------------------------------------------------------------------

    /**
     * Whether {@code fd} is a terminal: the {@code TCGETS} ioctl glibc's {@code isatty} makes,
     * through the one system-call downcall. A downcall of its own cost the first snapshot of a
     * process 10-20 ms to link (its progress bar asks whether stderr is a terminal).
     */
    public static boolean isatty(int fd) {
        try (var arena = Arena.ofConfined()) {
            // The kernel's struct termios (36 bytes on x86-64; glibc's is larger, and not what TCGETS fills).
            var termios = arena.allocate(64);
            long r = syscall(CAPTURE.get(), LibcConstants.SYS_ioctl, fd, LibcConstants.TCGETS, address(termios));
            Reference.reachabilityFence(termios);
            return r == 0;
        }
    }

    private static final class Tcgetattr {
        static final MethodHandle H = link("tcgetattr", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS), ERRNO);
    }

    /** Reads a terminal's settings into a {@code struct termios}. */
    public static void tcgetattr(int fd, MemorySegment termios) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Tcgetattr.H.invokeExact(capture, fd, termios);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("tcgetattr", capture);
    }

    private static final class Tcsetattr {
        static final MethodHandle H =
                link("tcsetattr", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS), ERRNO);
    }

    public static void tcsetattr(int fd, int when, MemorySegment termios) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Tcsetattr.H.invokeExact(capture, fd, when, termios);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("tcsetattr", capture);
    }

    private static final class Cfmakeraw {
        static final MethodHandle H = link("cfmakeraw", FunctionDescriptor.ofVoid(ADDRESS));
    }

    /** Turns a {@code struct termios} into raw mode: no echo, no line editing, no signals from keys. */
    public static void cfmakeraw(MemorySegment termios) {
        try {
            Cfmakeraw.H.invokeExact(termios);
        } catch (Throwable t) {
            throw unexpected(t);
        }
    }

    // ---- error text --------------------------------------------------------------------------

    private static final class Strerror {
        static final MethodHandle H = link("strerror", FunctionDescriptor.of(ADDRESS, JAVA_INT));
    }

    private static final class StrerrorName {
        static final MethodHandle H = link("strerrorname_np", FunctionDescriptor.of(ADDRESS, JAVA_INT));
    }

    /** {@code "Permission denied"} for EACCES. */
    @SuppressWarnings("restricted") // native access: this module (dev.panamavmm.kvm) or the unnamed one (README)
    public static String strerror(int errno) {
        try {
            MemorySegment s = (MemorySegment) Strerror.H.invokeExact(errno);
            return s.equals(MemorySegment.NULL)
                    ? "errno " + errno
                    : s.reinterpret(Long.MAX_VALUE).getString(0);
        } catch (Throwable t) {
            throw unexpected(t);
        }
    }

    /** {@code "EACCES"} for EACCES; null when libc does not know the value. */
    @SuppressWarnings("restricted") // native access: this module (dev.panamavmm.kvm) or the unnamed one (README)
    public static String strerrorname(int errno) {
        try {
            MemorySegment s = (MemorySegment) StrerrorName.H.invokeExact(errno);
            return s.equals(MemorySegment.NULL)
                    ? null
                    : s.reinterpret(Long.MAX_VALUE).getString(0);
        } catch (Throwable t) {
            throw unexpected(t);
        }
    }
}
