package dev.panamavmm.api;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.ServerSocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;

/** Listening Unix sockets that appear at their path only when ready. */
public final class UnixSockets {
    private UnixSockets() {}

    /**
     * Binds and listens on a temporary name next to {@code path}, restricts it to the owner (0600),
     * then renames it into place: a client never finds the path before the socket accepts
     * connections (bind and listen are two steps) or while it is still open to others.
     */
    public static ServerSocketChannel listen(Path path) throws IOException {
        var temp = path.resolveSibling(
                "." + path.getFileName() + ".tmp-" + ProcessHandle.current().pid());
        Files.deleteIfExists(temp);
        var server = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        try {
            server.bind(UnixDomainSocketAddress.of(temp));
            Files.setPosixFilePermissions(temp, PosixFilePermissions.fromString("rw-------"));
            Files.move(temp, path, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            return server;
        } catch (IOException | RuntimeException e) {
            server.close();
            Files.deleteIfExists(temp);
            throw e;
        }
    }

    /** Whether {@code path} is a socket; {@code ifUnknown} when its mode cannot be read. */
    static boolean isSocket(Path path, boolean ifUnknown) {
        try {
            return (((Integer) Files.getAttribute(path, "unix:mode")) & 0170000) == 0140000;
        } catch (IOException | UnsupportedOperationException | IllegalArgumentException e) {
            return ifUnknown;
        }
    }
}
