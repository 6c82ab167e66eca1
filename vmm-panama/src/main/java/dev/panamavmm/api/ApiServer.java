package dev.panamavmm.api;

import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.migration.Json;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The control API: JSON lines on a Unix socket (mode 0600), shaped like QEMU's QMP. A client gets
 * a greeting, then sends {@code {"execute": NAME, "arguments": {...}, "id": ANY}} lines and gets
 * {@code {"return": ...}} or {@code {"error": {"class": ..., "desc": ...}}} back (with the same
 * {@code id}); asynchronous {@code {"event": NAME, "data": ..., "timestamp": ...}} lines can come
 * at any time. A malformed line gets an error reply; the connection and the server stay up.
 */
public final class ApiServer implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(ApiServer.class);
    /** Longest request line accepted; a client cannot make the VMM buffer more. */
    static final int MAX_LINE = 1 << 20;

    private final Path path;
    private final ServerSocketChannel server;
    private final ApiHandler handler;
    private final List<Client> clients = new CopyOnWriteArrayList<>();
    private final Thread acceptor;
    /** Held (shared) while a request is handled and answered; close() takes it exclusively so a reply (quit's) is never cut off. */
    private final ReentrantReadWriteLock inflight = new ReentrantReadWriteLock();

    private ApiServer(Path path, ServerSocketChannel server, ApiHandler handler) {
        this.path = path;
        this.server = server;
        this.handler = handler;
        this.acceptor = Thread.ofPlatform().daemon().name("api-accept").start(this::acceptLoop);
    }

    /**
     * Listens on {@code path}. A stale socket file (nobody listening) is replaced; a live one is
     * refused, so two VMMs never share a control socket.
     */
    public static ApiServer start(Path path, ControlTarget target) {
        return start(path, ApiHandler.forVm(target));
    }

    /** Listens on {@code path} with any set of commands. */
    public static ApiServer start(Path path, ApiHandler handler) {
        var parent = path.toAbsolutePath().getParent();
        if (parent != null && !Files.isDirectory(parent)) {
            throw new ApiException("cannot create API socket " + path + ": "
                    + (Files.exists(parent) ? parent + " is not a directory" : "no such directory"));
        }
        try {
            if (Files.exists(path)) {
                if (!UnixSockets.isSocket(path, false))
                    throw new ApiException("API socket path " + path + " exists and is not a socket");
                if (isListening(path)) throw new ApiException("API socket " + path + " is in use by another process");
                Files.delete(path);
            }
            return new ApiServer(path, UnixSockets.listen(path), handler);
        } catch (IOException e) {
            throw new ApiException("cannot create API socket " + path + ": " + describe(e));
        }
    }

    private static boolean isListening(Path path) {
        try (var _ = SocketChannel.open(UnixDomainSocketAddress.of(path))) {
            return true;
        } catch (IOException e) {
            return false;
        }
    }

    static String describe(IOException e) {
        return switch (e) {
            case NoSuchFileException n -> "no such directory";
            case AccessDeniedException a -> "permission denied";
            default -> IoErrors.reason(e);
        };
    }

    public Path path() {
        return path;
    }

    /** Sends an event to every connected client. */
    public void event(String name, Map<String, Object> data) {
        long micros = System.currentTimeMillis() * 1000;
        var event = Json.object("event", name);
        if (data != null) event.put("data", data);
        event.put("timestamp", Json.object("seconds", micros / 1_000_000, "microseconds", micros % 1_000_000));
        String line = Json.write(event);
        for (var c : clients) c.send(line);
    }

    private void acceptLoop() {
        while (server.isOpen()) {
            try {
                var channel = server.accept();
                var client = new Client(channel);
                client.greet(); // before it can receive events: the greeting is always the first line
                clients.add(client);
                Thread.ofPlatform().daemon().name("api-client").start(client::serve);
            } catch (IOException e) {
                if (server.isOpen()) log.warn("API accept failed: {}", e.getMessage());
                return;
            }
        }
    }

    /** Handles one request line; returns the reply line. */
    String handle(String line) {
        Object id = null;
        try {
            var request = Json.asObject(Json.parse(line), "a request");
            id = request.get("id");
            Object execute = request.get("execute");
            if (!(execute instanceof String command))
                return error(id, "GenericError", "a request needs \"execute\": COMMAND");
            Object args = request.get("arguments");
            var arguments = args == null ? Json.object() : Json.asObject(args, "\"arguments\"");
            Object result = command.equals("qmp_capabilities") ? Json.object() : handler.execute(command, arguments);
            if (result == null) return error(id, "CommandNotFound", "the command " + command + " has not been found");
            var reply = Json.object("return", result);
            if (id != null) reply.put("id", id);
            return Json.write(reply);
        } catch (Json.JsonException e) {
            return error(id, "GenericError", "malformed request: " + e.getMessage());
        } catch (Exception e) {
            log.debug("API command failed", e);
            return error(id, "GenericError", String.valueOf(e.getMessage()));
        }
    }

    private static String error(Object id, String cls, String desc) {
        var reply = Json.object("error", Json.object("class", cls, "desc", desc));
        if (id != null) reply.put("id", id);
        return Json.write(reply);
    }

    @Override
    public void close() {
        inflight.writeLock().lock();
        try {
            server.close();
        } catch (IOException e) {
            log.debug("closing API socket", e);
        } finally {
            inflight.writeLock().unlock();
        }
        for (var c : clients) c.close();
        try {
            Files.deleteIfExists(path);
        } catch (IOException e) {
            log.debug("removing API socket", e);
        }
        acceptor.interrupt();
    }

    private final class Client {
        private final SocketChannel channel;

        Client(SocketChannel channel) {
            this.channel = channel;
        }

        void greet() {
            send(Json.write(Json.object(
                    "QMP", Json.object("version", Json.object("package", "panama-vmm"), "capabilities", List.of()))));
        }

        void serve() {
            var buf = ByteBuffer.allocate(8192);
            var line = new ByteArrayOutputStream();
            boolean discarding = false;
            try {
                while (channel.read(buf.clear()) > 0) {
                    buf.flip();
                    while (buf.hasRemaining()) {
                        byte b = buf.get();
                        if (b == '\n') {
                            if (discarding)
                                send(error(null, "GenericError", "request longer than " + MAX_LINE + " bytes"));
                            else if (line.size() > 0)
                                answer(line.toString(StandardCharsets.UTF_8).strip());
                            line.reset();
                            discarding = false;
                        } else if (!discarding) {
                            line.write(b);
                            if (line.size() > MAX_LINE) {
                                discarding = true;
                                line.reset();
                            }
                        }
                    }
                }
            } catch (IOException e) {
                log.debug("API client gone", e);
            } finally {
                close();
            }
        }

        private void answer(String request) {
            long start = System.nanoTime();
            inflight.readLock().lock();
            try {
                if (!server.isOpen()) return;
                String reply = handle(request);
                long handled = System.nanoTime();
                send(reply);
                if (log.isDebugEnabled()) {
                    log.debug(
                            "request handled in {} us, reply sent {} us later: {}",
                            (handled - start) / 1000,
                            (System.nanoTime() - handled) / 1000,
                            request.length() > 80 ? request.substring(0, 80) : request);
                }
            } finally {
                inflight.readLock().unlock();
            }
        }

        synchronized void send(String line) {
            var buf = ByteBuffer.wrap((line + "\n").getBytes(StandardCharsets.UTF_8));
            try {
                while (buf.hasRemaining()) channel.write(buf);
            } catch (IOException e) {
                close();
            }
        }

        void close() {
            clients.remove(this);
            try {
                channel.close();
            } catch (IOException e) {
                log.debug("closing API client", e);
            }
        }
    }
}
