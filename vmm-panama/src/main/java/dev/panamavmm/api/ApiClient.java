package dev.panamavmm.api;

import dev.panamavmm.migration.Json;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.SocketException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * A client of the control API: connect, read the greeting, negotiate ({@code qmp_capabilities}),
 * send commands, skip events until each reply.
 */
public final class ApiClient implements AutoCloseable {
    /** How long a VMM may take to greet: its accept thread greets at once, so only a socket of another kind waits longer. */
    public static final long GREETING_MILLIS = 3000;

    private final SocketChannel channel;
    private final BufferedReader in;
    private volatile java.util.function.Consumer<Map<String, Object>> events = e -> {};

    private ApiClient(SocketChannel channel, Path socket, long greetingMillis) throws IOException {
        this.channel = channel;
        this.in = new BufferedReader(new InputStreamReader(Channels.newInputStream(channel), StandardCharsets.UTF_8));
        // A socket of another kind (a waiting `vmm incoming`, any other server) may never send a
        // line: after greetingMillis the channel is closed under the blocked read.
        var greeted = new CountDownLatch(1);
        var timedOut = new AtomicBoolean();
        if (greetingMillis > 0) {
            Thread.ofPlatform().daemon().name("api-greeting-timeout").start(() -> {
                try {
                    if (!greeted.await(greetingMillis, TimeUnit.MILLISECONDS)) {
                        timedOut.set(true);
                        channel.close();
                    }
                } catch (InterruptedException | IOException e) {
                    // nothing to stop
                }
            });
        }
        Map<String, Object> greeting;
        try {
            greeting = readMessage();
        } catch (IOException | ApiException | Json.JsonException e) {
            throw new ApiException(socket + " is not a VMM control socket ("
                    + (timedOut.get()
                            ? "no greeting within " + greetingMillis / 1000.0 + " s"
                            : "it did not greet like one")
                    + ")");
        } finally {
            greeted.countDown();
        }
        if (!greeting.containsKey("QMP"))
            throw new ApiException(socket + " is not a VMM control socket (it did not greet like one)");
        var negotiated = execute("qmp_capabilities", null);
        if (negotiated.get("error") instanceof Map<?, ?> error)
            throw new ApiException(socket + " refused the QMP handshake: " + error.get("desc"));
    }

    /** Connects to a socket that must be there and listening now (no wait, no greeting timeout). */
    public static ApiClient connect(Path socket) {
        return connect(socket, 0, 0);
    }

    /**
     * Connects to {@code socket}, waiting up to {@code waitMillis} for it to appear and accept
     * connections (a VMM started in the background creates it a moment later, and a stale socket
     * refuses until the new VMM replaces it), and gives up when nothing greets within
     * {@code greetingMillis} (0: wait for the greeting as long as it takes).
     */
    public static ApiClient connect(Path socket, long waitMillis, long greetingMillis) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(waitMillis);
        while (true) {
            String notYet;
            if (!Files.exists(socket)) {
                notYet = "no such socket";
            } else {
                if (!UnixSockets.isSocket(socket, true))
                    throw new ApiException(socket + " is not a socket: give the VMM's --api-socket");
                try {
                    var channel = SocketChannel.open(StandardProtocolFamily.UNIX);
                    try {
                        channel.connect(UnixDomainSocketAddress.of(socket));
                        return new ApiClient(channel, socket, greetingMillis);
                    } catch (IOException | RuntimeException e) {
                        channel.close();
                        throw e;
                    }
                } catch (SocketException e) {
                    String m = String.valueOf(e.getMessage());
                    if (m.contains("refused")) notYet = "the socket refuses connections";
                    else if (m.contains("ermission"))
                        throw new ApiException("cannot connect to " + socket + ": permission denied");
                    else if (m.contains("No such file")) notYet = "no such socket";
                    else throw new ApiException("cannot connect to " + socket + ": " + m);
                } catch (IOException e) {
                    throw new ApiException("cannot connect to " + socket + ": " + ApiServer.describe(e));
                }
            }
            if (System.nanoTime() - deadline >= 0) {
                String waited = waitMillis > 0 ? ", after waiting " + waitMillis / 1000.0 + " s" : "";
                throw new ApiException(
                        "cannot connect to " + socket + ": no VMM is listening there (" + notYet + waited + ")");
            }
            try {
                Thread.sleep(20);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new ApiException("interrupted while waiting for " + socket);
            }
        }
    }

    /** Sends one command and returns its reply ({@code return} or {@code error}); events in between are skipped. */
    public Map<String, Object> execute(String command, Map<String, Object> arguments) {
        var request = Json.object("execute", command);
        if (arguments != null) request.put("arguments", arguments);
        try {
            var buf = ByteBuffer.wrap((Json.write(request) + "\n").getBytes(StandardCharsets.UTF_8));
            while (buf.hasRemaining()) channel.write(buf);
            while (true) {
                var message = readMessage();
                if (message.containsKey("return") || message.containsKey("error")) return message;
                if (message.containsKey("event")) events.accept(message);
            }
        } catch (IOException e) {
            throw new ApiException("the VMM closed the connection: " + ApiServer.describe(e));
        }
    }

    /** {@code listener} gets each event {@link #execute} reads while it waits for a reply. */
    public void onEvent(java.util.function.Consumer<Map<String, Object>> listener) {
        events = listener;
    }

    /** The next message (reply or event). */
    public Map<String, Object> readMessage() throws IOException {
        String line = in.readLine();
        if (line == null) throw new ApiException("the VMM closed the connection");
        return Json.asObject(Json.parse(line), "a message");
    }

    @Override
    public void close() {
        try {
            channel.close();
        } catch (IOException e) {
            // nothing left to do with a connection that failed to close
        }
    }
}
