package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.VsockBackend;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.bindings.Pollfd;
import dev.panamavmm.kvm.bindings.SockaddrUn;
import dev.panamavmm.kvm.sys.LibC;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A {@link VsockBackend} of host Unix sockets: a non-blocking listener at the configured path and
 * connections to {@code PATH_PORT}, waited on with {@code poll} beside an eventfd that
 * {@link #wake} signals. A live update's destination gets the source's listener and connections
 * as descriptors instead ({@link VsockConfig#passed}) and opens nothing.
 */
final class UnixVsockBackend implements VsockBackend, AutoCloseable {
    private static final int NONBLOCK_CLOEXEC = LibcConstants.SOCK_NONBLOCK | LibcConstants.SOCK_CLOEXEC;

    private final Path uds;
    private final int listener;
    private final int wakeFd;
    private final Arena arena = Arena.ofShared();
    /** Bounce buffer for heap segments (the device calls under its own lock, one call at a time). */
    private final MemorySegment scratch;

    private final MemorySegment counter;
    private final MemorySegment one;
    private final List<Stream> adopted;
    /**
     * Whether the socket path is this process's to remove at the end: it created the listener, or
     * got it by a live update whose guest then ran here. A destination that fails before resuming
     * leaves the path to the source, which resumes its guest and listens there still.
     */
    private volatile boolean ownsPath;

    private final class FdStream implements Stream {
        final int fd;
        private boolean closed;

        FdStream(int fd) {
            this.fd = fd;
        }

        @Override
        public synchronized long read(MemorySegment into) {
            if (closed) return -1;
            var buf = into.isNative() ? into : scratch.asSlice(0, Math.min(into.byteSize(), scratch.byteSize()));
            long n = LibC.recvOrErrno(fd, buf);
            if (n == -LibcConstants.EAGAIN) return 0;
            if (n <= 0) return -1; // 0: the host closed its end
            if (!into.isNative()) MemorySegment.copy(buf, 0, into, 0, n);
            return n;
        }

        @Override
        public synchronized long write(MemorySegment from) {
            if (closed) return -1;
            var buf = from;
            if (!from.isNative()) {
                buf = scratch.asSlice(0, Math.min(from.byteSize(), scratch.byteSize()));
                MemorySegment.copy(from, 0, buf, 0, buf.byteSize());
            }
            long n = LibC.sendOrErrno(fd, buf);
            if (n == -LibcConstants.EAGAIN) return 0;
            return n < 0 ? -1 : n;
        }

        @Override
        public synchronized void close() {
            if (closed) return;
            closed = true;
            LibC.close(fd); // close, never shutdown: after a live update the socket lives on in the new process
        }
    }

    private UnixVsockBackend(
            Path uds, int listener, int wakeFd, List<Integer> passedConnections, boolean adoptedListener) {
        this.uds = uds;
        this.listener = listener;
        this.wakeFd = wakeFd;
        this.scratch = arena.allocate(64 * 1024);
        this.counter = arena.allocate(8);
        this.one = arena.allocate(8);
        one.set(ValueLayout.JAVA_LONG, 0, 1);
        var streams = new ArrayList<Stream>();
        for (int fd : passedConnections) streams.add(new FdStream(fd));
        this.adopted = List.copyOf(streams);
        this.ownsPath = !adoptedListener;
    }

    /**
     * The backend of {@code config}: the listener passed by a live update, or a new one at its path
     * (a stale socket file nobody listens on is replaced; one in use is refused).
     */
    static UnixVsockBackend open(VsockConfig config) {
        var passed = config.passed();
        if (passed instanceof VsockConfig.Passed p && !p.claim())
            throw new IllegalStateException("the passed vsock sockets were closed already");
        int wake;
        try {
            wake = LibC.eventfd(0, LibcConstants.EFD_CLOEXEC | LibcConstants.EFD_NONBLOCK);
        } catch (RuntimeException e) {
            passed.forEach(LibC::close); // claimed: ours to close
            throw e;
        }
        if (!passed.isEmpty())
            return new UnixVsockBackend(config.uds(), passed.getFirst(), wake, passed.subList(1, passed.size()), true);
        try {
            return new UnixVsockBackend(config.uds(), listen(config.uds()), wake, List.of(), false);
        } catch (RuntimeException e) {
            LibC.close(wake);
            throw e;
        }
    }

    private static int listen(Path path) {
        try (var a = Arena.ofConfined()) {
            var address = address(a, path);
            if (Files.exists(path)) {
                int probe = LibC.socket(LibcConstants.AF_UNIX, NONBLOCK_CLOEXEC | LibcConstants.SOCK_STREAM, 0);
                int r = LibC.connectOrErrno(probe, address);
                LibC.close(probe);
                if (r == 0 || r == -LibcConstants.EAGAIN)
                    throw new KvmException("vsock socket " + path, "in use: another program listens there");
                if (Files.isDirectory(path)) throw new KvmException("vsock socket " + path, "is a directory");
                Files.delete(path); // a socket file left by a VMM that ended
            }
            int fd = LibC.socket(LibcConstants.AF_UNIX, LibcConstants.SOCK_STREAM | NONBLOCK_CLOEXEC, 0);
            try {
                LibC.bind(fd, address);
                LibC.listen(fd, 64);
                return fd;
            } catch (KvmException e) {
                LibC.close(fd);
                throw new KvmException("vsock socket " + path, e.errno());
            }
        } catch (IOException e) {
            throw new KvmException("vsock socket " + path, e.toString());
        }
    }

    private static MemorySegment address(Arena arena, Path path) {
        byte[] p = path.toString().getBytes(StandardCharsets.UTF_8);
        if (p.length >= SockaddrUn.SUN_PATH_COUNT)
            throw new KvmException("vsock socket " + path, "the path is too long for a Unix socket");
        var sa = arena.allocate(SockaddrUn.LAYOUT);
        SockaddrUn.sunFamily(sa, LibcConstants.AF_UNIX);
        MemorySegment.copy(MemorySegment.ofArray(p), 0, sa, SockaddrUn.SUN_PATH, p.length);
        return sa;
    }

    /** The guest runs here (it resumed): the socket path is this process's now, to remove at its end. */
    void ownPath() {
        ownsPath = true;
    }

    /** The listener's descriptor (a live update passes it first). */
    int listenerFd() {
        return listener;
    }

    /** The descriptor of a stream of this backend. */
    static int fd(Stream stream) {
        return ((FdStream) stream).fd;
    }

    @Override
    public Stream accept() {
        int fd = LibC.acceptOrErrno(listener, NONBLOCK_CLOEXEC);
        return fd < 0 ? null : new FdStream(fd);
    }

    @Override
    public Stream connect(int port) {
        Path target = Path.of(uds + "_" + Integer.toUnsignedString(port));
        int fd = LibC.socket(LibcConstants.AF_UNIX, LibcConstants.SOCK_STREAM | NONBLOCK_CLOEXEC, 0);
        try (var a = Arena.ofConfined()) {
            if (LibC.connectOrErrno(fd, address(a, target)) == 0) return new FdStream(fd);
        } catch (KvmException e) {
            // a path too long: nothing can listen there
        }
        LibC.close(fd);
        return null;
    }

    @Override
    public void await(boolean listening, List<Stream> reading, List<Stream> writing, int timeoutMillis) {
        int n = 1 + (listening ? 1 : 0) + reading.size() + writing.size();
        try (var a = Arena.ofConfined()) {
            var fds = a.allocate(Pollfd.LAYOUT, n);
            int i = 0;
            i = watch(fds, i, wakeFd, LibcConstants.POLLIN);
            if (listening) i = watch(fds, i, listener, LibcConstants.POLLIN);
            for (var s : reading) i = watch(fds, i, ((FdStream) s).fd, LibcConstants.POLLIN);
            for (var s : writing) i = watch(fds, i, ((FdStream) s).fd, LibcConstants.POLLOUT);
            LibC.poll(fds, n, timeoutMillis);
            LibC.readOrErrno(wakeFd, counter); // consume the wake-up, if any
        }
    }

    private static int watch(MemorySegment fds, int i, int fd, int events) {
        long at = i * Pollfd.BYTE_SIZE;
        fds.set(ValueLayout.JAVA_INT, at + Pollfd.FD, fd);
        fds.set(ValueLayout.JAVA_SHORT, at + Pollfd.EVENTS, (short) events);
        fds.set(ValueLayout.JAVA_SHORT, at + Pollfd.REVENTS, (short) 0);
        return i + 1;
    }

    @Override
    public void wake() {
        LibC.write(wakeFd, one);
    }

    @Override
    public List<Stream> adopted() {
        return adopted;
    }

    /**
     * Closes the listener and the eventfd (the device closed its streams). With {@code unlink}
     * the socket file goes too; not after a live update, whose new process listens on it now.
     */
    void close(boolean unlink) {
        LibC.close(listener);
        LibC.close(wakeFd);
        if (unlink && ownsPath) {
            try {
                Files.deleteIfExists(uds);
            } catch (IOException e) {
                // left behind: the next VMM on this path replaces a socket nobody listens on
            }
        }
        arena.close();
    }

    @Override
    public void close() {
        close(false);
    }
}
