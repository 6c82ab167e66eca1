package dev.panamavmm.kvm.sys;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.LibcConstants;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.invoke.MethodHandle;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

/**
 * The libc functions and system calls the VMM uses, as FFM downcalls.
 *
 * <p>Each function has one {@code static final MethodHandle} in its own holder class, so a
 * process links only what it calls (the first linkage of a downcall costs milliseconds). Calls
 * that can fail capture {@code errno} in a per-thread segment and throw {@link KvmException}
 * naming the call; {@code ioctl} and {@code open} are variadic in C and are linked as such.
 * Prototypes are glibc's on x86-64 Linux: {@code size_t}/{@code off_t}/{@code ssize_t} are 64-bit.
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

    static MethodHandle link(String name, FunctionDescriptor fd, Linker.Option... options) {
        MemorySegment symbol = LINKER.defaultLookup().find(name)
                .orElseThrow(() -> new UnsatisfiedLinkError("libc has no " + name));
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

    // ---- ioctl -------------------------------------------------------------------------------

    private static final class IoctlPtr {
        static final MethodHandle H = link("ioctl", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG, ADDRESS),
                Linker.Option.firstVariadicArg(2), ERRNO);
    }

    private static final class IoctlLong {
        static final MethodHandle H = link("ioctl", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_LONG),
                Linker.Option.firstVariadicArg(2), ERRNO);
    }

    /** {@code ioctl(fd, request, arg)} with a pointer argument; returns the non-negative result. */
    public static int ioctl(int fd, long request, MemorySegment arg) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) IoctlPtr.H.invokeExact(capture, fd, request, arg);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail(Ioctls.name(request), capture);
        return r;
    }

    /** {@code ioctl(fd, request, value)} with an integer argument (or none: pass 0). */
    public static int ioctl(int fd, long request, long value) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) IoctlLong.H.invokeExact(capture, fd, request, value);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail(Ioctls.name(request), capture);
        return r;
    }

    /**
     * {@code ioctl} that reports failure as {@code -errno} instead of throwing: for calls whose
     * failure is an expected outcome (KVM_RUN interrupted by a kick returns EINTR).
     */
    public static int ioctlOrErrno(int fd, long request, MemorySegment arg) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) IoctlPtr.H.invokeExact(capture, fd, request, arg);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        return r < 0 ? -capture.get(JAVA_INT, ERRNO_OFFSET) : r;
    }

    // ---- files -------------------------------------------------------------------------------

    private static final class Open {
        static final MethodHandle H = link("open", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT),
                Linker.Option.firstVariadicArg(2), ERRNO);
    }

    /** {@code open(path, flags, mode)}; the error message names the path. */
    public static int open(String path, int flags, int mode) {
        var capture = CAPTURE.get();
        int r;
        try (var arena = Arena.ofConfined()) {
            r = (int) Open.H.invokeExact(capture, arena.allocateFrom(path), flags, mode);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("open " + path, capture);
        return r;
    }

    private static final class Close {
        static final MethodHandle H = link("close", FunctionDescriptor.of(JAVA_INT, JAVA_INT), ERRNO);
    }

    public static void close(int fd) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Close.H.invokeExact(capture, fd);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("close", capture);
    }

    private static final class Read {
        static final MethodHandle H = link("read", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG), ERRNO);
    }

    /** {@code read(fd, buf, buf.byteSize())}: bytes read, 0 at end of file. */
    public static long read(int fd, MemorySegment buf) {
        var capture = CAPTURE.get();
        long r;
        try {
            r = (long) Read.H.invokeExact(capture, fd, buf, buf.byteSize());
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("read", capture);
        return r;
    }

    private static final class Write {
        static final MethodHandle H = link("write", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG), ERRNO);
    }

    /** {@code write(fd, buf, buf.byteSize())}: bytes written. */
    public static long write(int fd, MemorySegment buf) {
        var capture = CAPTURE.get();
        long r;
        try {
            r = (long) Write.H.invokeExact(capture, fd, buf, buf.byteSize());
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("write", capture);
        return r;
    }

    private static final class Ftruncate {
        static final MethodHandle H = link("ftruncate", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG), ERRNO);
    }

    public static void ftruncate(int fd, long length) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Ftruncate.H.invokeExact(capture, fd, length);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("ftruncate", capture);
    }

    private static final class Fallocate {
        static final MethodHandle H = link("fallocate", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_LONG), ERRNO);
    }

    public static void fallocate(int fd, int mode, long offset, long length) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Fallocate.H.invokeExact(capture, fd, mode, offset, length);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("fallocate", capture);
    }

    private static final class MemfdCreate {
        static final MethodHandle H = link("memfd_create", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT), ERRNO);
    }

    /** An anonymous memory file ({@code MFD_CLOEXEC} is the caller's choice in {@code flags}). */
    public static int memfdCreate(String name, int flags) {
        var capture = CAPTURE.get();
        int r;
        try (var arena = Arena.ofConfined()) {
            r = (int) MemfdCreate.H.invokeExact(capture, arena.allocateFrom(name), flags);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("memfd_create", capture);
        return r;
    }

    private static final class Eventfd {
        static final MethodHandle H = link("eventfd", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT), ERRNO);
    }

    public static int eventfd(int initialValue, int flags) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Eventfd.H.invokeExact(capture, initialValue, flags);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("eventfd", capture);
        return r;
    }

    private static final class Syscall1 {
        static final MethodHandle H = link("syscall", FunctionDescriptor.of(JAVA_LONG, JAVA_LONG, JAVA_LONG),
                Linker.Option.firstVariadicArg(1), ERRNO);
    }

    /** {@code userfaultfd(flags)} (glibc has no wrapper: a raw system call). */
    public static int userfaultfd(int flags) {
        var capture = CAPTURE.get();
        long r;
        try {
            r = (long) Syscall1.H.invokeExact(capture, (long) LibcConstants.SYS_userfaultfd, (long) flags);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("userfaultfd", capture);
        return (int) r;
    }

    // ---- memory mappings ---------------------------------------------------------------------

    private static final class Mmap {
        static final MethodHandle H = link("mmap", FunctionDescriptor.of(ADDRESS, ADDRESS, JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_LONG), ERRNO);
    }

    /**
     * {@code mmap(NULL, length, prot, flags, fd, offset)}; the result is a zero-length segment at
     * the mapping's address (give it a size and an owner with {@link #mapInto}).
     */
    public static MemorySegment mmap(long length, int prot, int flags, int fd, long offset) {
        var capture = CAPTURE.get();
        MemorySegment r;
        try {
            r = (MemorySegment) Mmap.H.invokeExact(capture, MemorySegment.NULL, length, prot, flags, fd, offset);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r.address() == LibcConstants.MAP_FAILED) throw fail("mmap", capture);
        return r;
    }

    /**
     * Maps {@code length} bytes and ties the mapping to {@code arena}: it is unmapped when the
     * arena closes (an owner that outlives every user of the memory, e.g. every vCPU).
     */
    public static MemorySegment mapInto(Arena arena, long length, int prot, int flags, int fd, long offset) {
        MemorySegment raw = mmap(length, prot, flags, fd, offset);
        return raw.reinterpret(length, arena, s -> munmapQuietly(s.address(), length));
    }

    private static final class Munmap {
        static final MethodHandle H = link("munmap", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG), ERRNO);
    }

    public static void munmap(MemorySegment segment) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Munmap.H.invokeExact(capture, segment, segment.byteSize());
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("munmap", capture);
    }

    private static void munmapQuietly(long address, long length) {
        try {
            int ignored = (int) Munmap.H.invokeExact(CAPTURE.get(), MemorySegment.ofAddress(address), length);
        } catch (Throwable t) {
            // Cleanup runs when an arena closes; a failed munmap only leaks address space.
        }
    }

    private static final class Madvise {
        static final MethodHandle H = link("madvise", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT), ERRNO);
    }

    public static void madvise(MemorySegment segment, int advice) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Madvise.H.invokeExact(capture, segment, segment.byteSize(), advice);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("madvise", capture);
    }

    private static final class Mprotect {
        static final MethodHandle H = link("mprotect", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT), ERRNO);
    }

    public static void mprotect(MemorySegment segment, int prot) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Mprotect.H.invokeExact(capture, segment, segment.byteSize(), prot);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("mprotect", capture);
    }

    private static final class Mincore {
        static final MethodHandle H = link("mincore", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, ADDRESS), ERRNO);
    }

    /** One byte per page of {@code segment} into {@code vector}: bit 0 set when the page is resident. */
    public static void mincore(MemorySegment segment, MemorySegment vector) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Mincore.H.invokeExact(capture, segment, segment.byteSize(), vector);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("mincore", capture);
    }

    // ---- threads and signals -----------------------------------------------------------------

    private static final class PthreadSelf {
        static final MethodHandle H = link("pthread_self", FunctionDescriptor.of(JAVA_LONG));
    }

    /** The calling thread's pthread_t, to kick it later with {@link #pthreadKill}. */
    public static long pthreadSelf() {
        try {
            return (long) PthreadSelf.H.invokeExact();
        } catch (Throwable t) {
            throw unexpected(t);
        }
    }

    private static final class PthreadKill {
        static final MethodHandle H = link("pthread_kill", FunctionDescriptor.of(JAVA_INT, JAVA_LONG, JAVA_INT));
    }

    /** Sends {@code signal} to a thread; pthread_kill returns the error instead of setting errno. */
    public static void pthreadKill(long thread, int signal) {
        int r;
        try {
            r = (int) PthreadKill.H.invokeExact(thread, signal);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r != 0) throw new KvmException("pthread_kill", r);
    }

    private static final class Gettid {
        static final MethodHandle H = link("gettid", FunctionDescriptor.of(JAVA_INT));
    }

    private static final class Setpriority {
        static final MethodHandle H = link("setpriority", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT), ERRNO);
    }

    /**
     * Sets the nice value of the calling thread alone (Linux keeps it per thread: setpriority on
     * its thread id), so background work yields the CPU to vCPU and API threads.
     */
    public static void niceCurrentThread(int nice) {
        var capture = capture();
        int r;
        try {
            int tid = (int) Gettid.H.invokeExact();
            r = (int) Setpriority.H.invokeExact(capture, 0 /* PRIO_PROCESS */, tid, nice);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("setpriority", capture);
    }

    private static final class Sigaction {
        static final MethodHandle H = link("sigaction", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, ADDRESS), ERRNO);
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

    private static final class Socket {
        static final MethodHandle H = link("socket", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT), ERRNO);
    }

    public static int socket(int domain, int type, int protocol) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Socket.H.invokeExact(capture, domain, type, protocol);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("socket", capture);
        return r;
    }

    private static final class Bind {
        static final MethodHandle H = link("bind", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT), ERRNO);
    }

    public static void bind(int fd, MemorySegment address) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Bind.H.invokeExact(capture, fd, address, (int) address.byteSize());
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("bind", capture);
    }

    private static final class Connect {
        static final MethodHandle H = link("connect", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT), ERRNO);
    }

    public static void connect(int fd, MemorySegment address) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Connect.H.invokeExact(capture, fd, address, (int) address.byteSize());
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("connect", capture);
    }

    private static final class Listen {
        static final MethodHandle H = link("listen", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT), ERRNO);
    }

    public static void listen(int fd, int backlog) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Listen.H.invokeExact(capture, fd, backlog);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("listen", capture);
    }

    private static final class Shutdown {
        static final MethodHandle H = link("shutdown", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT), ERRNO);
    }

    /** shutdown(fd, SHUT_RDWR): wakes a thread blocked on the socket; errors are ignored (the socket may be gone). */
    public static void shutdown(int fd) {
        try {
            int ignored = (int) Shutdown.H.invokeExact(CAPTURE.get(), fd, 2);
        } catch (Throwable t) {
            throw unexpected(t);
        }
    }

    private static final class Accept4 {
        static final MethodHandle H = link("accept4", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, ADDRESS, JAVA_INT), ERRNO);
    }

    /** Accepts one connection (blocking). */
    public static int accept(int fd, int flags) {
        var capture = CAPTURE.get();
        int r;
        try {
            r = (int) Accept4.H.invokeExact(capture, fd, MemorySegment.NULL, MemorySegment.NULL, flags);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("accept", capture);
        return r;
    }

    private static final class Sendmsg {
        static final MethodHandle H = link("sendmsg", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_INT), ERRNO);
    }

    /** {@code sendmsg(fd, msghdr, flags)}: bytes sent. With SCM_RIGHTS control data this passes fds. */
    public static long sendmsg(int fd, MemorySegment msghdr, int flags) {
        var capture = CAPTURE.get();
        long r;
        try {
            r = (long) Sendmsg.H.invokeExact(capture, fd, msghdr, flags);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("sendmsg", capture);
        return r;
    }

    private static final class Recvmsg {
        static final MethodHandle H = link("recvmsg", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_INT), ERRNO);
    }

    /** {@code recvmsg(fd, msghdr, flags)}: bytes received, 0 when the peer closed. */
    public static long recvmsg(int fd, MemorySegment msghdr, int flags) {
        var capture = CAPTURE.get();
        long r;
        try {
            r = (long) Recvmsg.H.invokeExact(capture, fd, msghdr, flags);
        } catch (Throwable t) {
            throw unexpected(t);
        }
        if (r < 0) throw fail("recvmsg", capture);
        return r;
    }

    // ---- terminals ---------------------------------------------------------------------------

    private static final class Isatty {
        static final MethodHandle H = link("isatty", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
    }

    /** Whether {@code fd} is a terminal. */
    public static boolean isatty(int fd) {
        try {
            return (int) Isatty.H.invokeExact(fd) == 1;
        } catch (Throwable t) {
            throw unexpected(t);
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
        static final MethodHandle H = link("tcsetattr", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS), ERRNO);
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
    public static String strerror(int errno) {
        try {
            MemorySegment s = (MemorySegment) Strerror.H.invokeExact(errno);
            return s.equals(MemorySegment.NULL) ? "errno " + errno : s.reinterpret(Long.MAX_VALUE).getString(0);
        } catch (Throwable t) {
            throw unexpected(t);
        }
    }

    /** {@code "EACCES"} for EACCES; null when libc does not know the value. */
    public static String strerrorname(int errno) {
        try {
            MemorySegment s = (MemorySegment) StrerrorName.H.invokeExact(errno);
            return s.equals(MemorySegment.NULL) ? null : s.reinterpret(Long.MAX_VALUE).getString(0);
        } catch (Throwable t) {
            throw unexpected(t);
        }
    }
}
