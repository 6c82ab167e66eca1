package dev.panamavmm.kvm.sys;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.Cmsghdr;
import dev.panamavmm.kvm.bindings.Iovec;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.bindings.Msghdr;
import dev.panamavmm.kvm.bindings.SockaddrUn;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Arrays;

/**
 * A Unix stream socket that carries file descriptors (SCM_RIGHTS) with its messages: what moves a
 * memfd-backed guest's RAM to another process without copying a page. Messages are framed: a
 * 4-byte length, then the bytes; the descriptors travel with the frame's first byte.
 */
public final class UnixSocket implements AutoCloseable {
    /**
     * Most descriptors one message carries: a live update's state message passes a vsock
     * device's listener and up to 64 connections. (The kernel's limit, SCM_MAX_FD, is 253.)
     */
    public static final int MAX_FDS = 80;
    /** Longest message accepted. */
    public static final int MAX_MESSAGE = 16 << 20;

    private final int fd;
    private boolean closed;

    private UnixSocket(int fd) {
        this.fd = fd;
    }

    /** A received message and the descriptors that came with it (owned by the receiver). */
    public record Message(byte[] data, int[] fds) {}

    private static MemorySegment address(Arena arena, Path path) {
        byte[] p = path.toString().getBytes(StandardCharsets.UTF_8);
        var sa = arena.allocate(SockaddrUn.LAYOUT);
        if (p.length >= SockaddrUn.SUN_PATH_COUNT)
            throw new KvmException("socket " + path, "path is too long for a Unix socket");
        SockaddrUn.sunFamily(sa, LibcConstants.AF_UNIX);
        MemorySegment.copy(MemorySegment.ofArray(p), 0, sa, SockaddrUn.SUN_PATH, p.length);
        return sa;
    }

    /**
     * A listening socket at {@code path} (which must not exist), mode 0600. It is bound under a
     * temporary name and renamed into place once listening: a client never finds the path early.
     */
    public static UnixSocket listen(Path path) {
        int fd = LibC.socket(LibcConstants.AF_UNIX, LibcConstants.SOCK_STREAM | LibcConstants.SOCK_CLOEXEC, 0);
        Path temp = path.resolveSibling(
                "." + path.getFileName() + ".tmp-" + ProcessHandle.current().pid());
        try (var arena = Arena.ofConfined()) {
            Files.deleteIfExists(temp);
            LibC.bind(fd, address(arena, temp));
            LibC.listen(fd, 1);
            Files.setPosixFilePermissions(temp, PosixFilePermissions.fromString("rw-------"));
            Files.move(temp, path, StandardCopyOption.ATOMIC_MOVE);
            return new UnixSocket(fd);
        } catch (IOException e) {
            LibC.close(fd);
            // The JDK's message is the (temporary) path alone; the reason is what the user needs.
            String why = e instanceof FileSystemException f && f.getReason() != null
                    ? f.getReason()
                    : e instanceof NoSuchFileException
                            ? "no such directory"
                            : e instanceof AccessDeniedException ? "permission denied" : e.toString();
            throw new KvmException("listen on " + path, why);
        } catch (KvmException e) {
            LibC.close(fd);
            // bind/listen name only the call ("bind failed: ENOENT"): say which path it was for.
            if (e.errno() != 0) throw new KvmException("listen on " + path, e.errno());
            throw e;
        } catch (RuntimeException e) {
            LibC.close(fd);
            throw e;
        }
    }

    public static UnixSocket connect(Path path) {
        int fd = LibC.socket(LibcConstants.AF_UNIX, LibcConstants.SOCK_STREAM | LibcConstants.SOCK_CLOEXEC, 0);
        try (var arena = Arena.ofConfined()) {
            LibC.connect(fd, address(arena, path));
            return new UnixSocket(fd);
        } catch (RuntimeException e) {
            LibC.close(fd);
            throw e;
        }
    }

    /** Waits for one connection. */
    public UnixSocket accept() {
        return new UnixSocket(LibC.accept(fd, LibcConstants.SOCK_CLOEXEC));
    }

    /** Sends one message with {@code fds} attached. */
    public void send(byte[] data, int... fds) {
        if (fds.length > MAX_FDS) throw new IllegalArgumentException("too many descriptors");
        var frame = new byte[4 + data.length];
        MemorySegment.ofArray(frame).set(JAVA_INT_UNALIGNED, 0, data.length);
        System.arraycopy(data, 0, frame, 4, data.length);
        try (var arena = Arena.ofConfined()) {
            var buffer = arena.allocate(frame.length);
            MemorySegment.copy(MemorySegment.ofArray(frame), 0, buffer, 0, frame.length);
            long sent = 0;
            while (sent < frame.length) {
                var iov = arena.allocate(Iovec.LAYOUT);
                Iovec.iovBase(iov, buffer.asSlice(sent));
                Iovec.iovLen(iov, frame.length - sent);
                var msg = arena.allocate(Msghdr.LAYOUT);
                Msghdr.msgIov(msg, iov);
                Msghdr.msgIovlen(msg, 1);
                if (sent == 0 && fds.length > 0) {
                    long len = LibcConstants.CMSG_DATA_OFFSET + 4L * fds.length;
                    long space = align(LibcConstants.CMSG_DATA_OFFSET) + align(4L * fds.length);
                    var control = arena.allocate(space, 8);
                    Cmsghdr.cmsgLen(control, len);
                    Cmsghdr.cmsgLevel(control, LibcConstants.SOL_SOCKET);
                    Cmsghdr.cmsgType(control, LibcConstants.SCM_RIGHTS);
                    for (int i = 0; i < fds.length; i++)
                        control.set(JAVA_INT_UNALIGNED, LibcConstants.CMSG_DATA_OFFSET + 4L * i, fds[i]);
                    Msghdr.msgControl(msg, control);
                    Msghdr.msgControllen(msg, space);
                }
                sent += LibC.sendmsg(fd, msg, 0);
            }
        }
    }

    private static long align(long n) {
        long a = LibcConstants.CMSG_ALIGNMENT;
        return (n + a - 1) / a * a;
    }

    /** Receives one message; null when the peer closed the connection before sending one. */
    public Message receive() {
        try (var arena = Arena.ofConfined()) {
            var fds = new int[MAX_FDS];
            int[] nfds = {0};
            var head = arena.allocate(4);
            if (!readFully(arena, head, fds, nfds)) return null;
            int length = head.get(JAVA_INT_UNALIGNED, 0);
            if (length < 0 || length > MAX_MESSAGE)
                throw new KvmException("recvmsg", "message of " + length + " bytes refused");
            var body = arena.allocate(Math.max(length, 1));
            if (length > 0 && !readFully(arena, body.asSlice(0, length), fds, nfds)) {
                throw new KvmException("recvmsg", "the peer closed the connection in the middle of a message");
            }
            return new Message(body.asSlice(0, length).toArray(JAVA_BYTE), Arrays.copyOf(fds, nfds[0]));
        }
    }

    private boolean readFully(Arena arena, MemorySegment into, int[] fds, int[] nfds) {
        long got = 0;
        long controlSpace = align(LibcConstants.CMSG_DATA_OFFSET) + align(4L * MAX_FDS);
        while (got < into.byteSize()) {
            var iov = arena.allocate(Iovec.LAYOUT);
            Iovec.iovBase(iov, into.asSlice(got));
            Iovec.iovLen(iov, into.byteSize() - got);
            var control = arena.allocate(controlSpace, 8);
            var msg = arena.allocate(Msghdr.LAYOUT);
            Msghdr.msgIov(msg, iov);
            Msghdr.msgIovlen(msg, 1);
            Msghdr.msgControl(msg, control);
            Msghdr.msgControllen(msg, controlSpace);
            long n = LibC.recvmsg(fd, msg, LibcConstants.MSG_CMSG_CLOEXEC);
            if (n == 0) {
                if (got == 0) return false;
                throw new KvmException("recvmsg", "the peer closed the connection in the middle of a message");
            }
            if (Msghdr.msgControllen(msg) >= LibcConstants.CMSG_DATA_OFFSET
                    && Cmsghdr.cmsgLevel(control) == LibcConstants.SOL_SOCKET
                    && Cmsghdr.cmsgType(control) == LibcConstants.SCM_RIGHTS) {
                long count = (Cmsghdr.cmsgLen(control) - LibcConstants.CMSG_DATA_OFFSET) / 4;
                for (int i = 0; i < count && nfds[0] < fds.length; i++) {
                    fds[nfds[0]++] = control.get(JAVA_INT, LibcConstants.CMSG_DATA_OFFSET + 4L * i);
                }
            }
            got += n;
        }
        return true;
    }

    public int fd() {
        return fd;
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            LibC.close(fd);
        }
    }
}
