package dev.panamavmm.api;

import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.migration.Json;
import dev.panamavmm.sandbox.Sandbox;
import dev.panamavmm.sandbox.ThreadKind;
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
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The control API: QMP (QEMU's machine protocol, as its specification describes it) on a Unix
 * socket (mode 0600). A client gets a greeting, must negotiate with {@code qmp_capabilities}
 * (every other command is refused until then, as QEMU does), then sends
 * {@code {"execute": NAME, "arguments": {...}, "id": ANY}} lines and gets {@code {"return": ...}}
 * or {@code {"error": {"class": ..., "desc": ...}}} back (with the same {@code id});
 * asynchronous {@code {"event": NAME, "data": ..., "timestamp": ...}} lines come, once it has
 * negotiated, at any time. The server itself answers {@code qmp_capabilities},
 * {@code query-commands} and {@code query-version}; the handler the rest. A malformed line gets an
 * error reply; the connection and the server stay up.
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
        this.acceptor = Thread.ofPlatform()
                .daemon()
                .name("api-accept")
                .start(Sandbox.confined(ThreadKind.API, this::acceptLoop));
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

    /** The commands the server answers itself. */
    static final List<String> OWN_COMMANDS = List.of("qmp_capabilities", "query-commands", "query-version");

    /** Sends an event to every client that has negotiated capabilities, stamped now. */
    public void event(String name, Map<String, Object> data) {
        event(name, data, Instant.now());
    }

    /** As above, stamped {@code at} (to the microsecond, as QMP's timestamps). */
    public void event(String name, Map<String, Object> data, Instant at) {
        var event = Json.object("event", name);
        if (data != null) event.put("data", data);
        event.put(
                "timestamp", Json.object("seconds", at.getEpochSecond(), "microseconds", (long) (at.getNano() / 1000)));
        String line = Json.write(event);
        for (var c : clients) if (c.negotiated) c.send(line);
    }

    private void acceptLoop() {
        while (server.isOpen()) {
            try {
                var channel = server.accept();
                var client = new Client(channel);
                client.greet(); // before it can receive events: the greeting is always the first line
                clients.add(client);
                Thread.ofPlatform().daemon().name("api-client").start(Sandbox.confined(ThreadKind.API, client::serve));
            } catch (IOException e) {
                if (server.isOpen()) log.warn("API accept failed: {}", e.getMessage());
                return;
            }
        }
    }

    /** Handles one request line of {@code client}; returns the reply line. */
    String handle(Client client, String line) {
        Object id = null;
        try {
            var request = Json.asObject(Json.parse(line), "a request");
            id = request.get("id");
            Object execute = request.get("execute");
            if (!(execute instanceof String command))
                return error(id, "GenericError", "a request needs \"execute\": COMMAND");
            Object args = request.get("arguments");
            var arguments = args == null ? Json.object() : Json.asObject(args, "\"arguments\"");
            // QEMU's words and classes for the handshake (qmp-spec.txt, "Capabilities Negotiation").
            if (command.equals("qmp_capabilities")) {
                if (client.negotiated)
                    return error(
                            id, "CommandNotFound", "Capabilities negotiation is already complete, command ignored");
                ApiHandler.expect(command, arguments, "enable");
                if (arguments.get("enable") instanceof List<?> enable && !enable.isEmpty())
                    return error(id, "GenericError", "Capability '" + enable.getFirst() + "' not available");
                client.negotiated = true;
                return reply(id, Json.object());
            }
            if (!client.negotiated)
                return error(id, "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'");
            Object result = switch (command) {
                case "query-commands" -> {
                    ApiHandler.expect(command, arguments);
                    var names = new ArrayList<Object>();
                    for (var name : OWN_COMMANDS) names.add(Json.object("name", name));
                    for (var name : handler.commands()) names.add(Json.object("name", name));
                    yield names;
                }
                case "query-version" -> {
                    ApiHandler.expect(command, arguments);
                    yield version();
                }
                default -> handler.execute(command, arguments);
            };
            if (result == null) return error(id, "CommandNotFound", "The command " + command + " has not been found");
            return reply(id, result);
        } catch (Json.JsonException e) {
            return error(id, "GenericError", "malformed request: " + e.getMessage());
        } catch (Exception e) {
            log.debug("API command failed", e);
            return error(id, "GenericError", String.valueOf(e.getMessage()));
        }
    }

    private static String reply(Object id, Object result) {
        var reply = Json.object("return", result);
        if (id != null) reply.put("id", id);
        return Json.write(reply);
    }

    /** The VMM's version as QMP's greeting and {@code query-version} give it: numbers under "qemu", a package string. */
    static Map<String, Object> version() {
        String v = ApiServer.class.getPackage().getImplementationVersion();
        if (v == null) v = "0.1.0-SNAPSHOT";
        var parts = v.replaceAll("[^0-9.].*$", "").split("\\.");
        return Json.object(
                "qemu",
                Json.object("major", number(parts, 0), "minor", number(parts, 1), "micro", number(parts, 2)),
                "package",
                "panama-vmm " + v);
    }

    private static long number(String[] parts, int i) {
        try {
            return i < parts.length ? Long.parseLong(parts[i]) : 0;
        } catch (NumberFormatException e) {
            return 0;
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
        /** Whether it sent qmp_capabilities: until then only that command is served and no event is sent. */
        volatile boolean negotiated;

        Client(SocketChannel channel) {
            this.channel = channel;
        }

        void greet() {
            send(Json.write(Json.object("QMP", Json.object("version", version(), "capabilities", List.of()))));
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
                String reply = handle(this, request);
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
