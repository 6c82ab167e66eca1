package dev.panamavmm.api;

import dev.panamavmm.migration.Json;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.Map;

/** A client of the control API: connect, read the greeting, send commands, skip events until each reply. */
public final class ApiClient implements AutoCloseable {
    private final SocketChannel channel;
    private final BufferedReader in;

    private ApiClient(SocketChannel channel) throws IOException {
        this.channel = channel;
        this.in = new BufferedReader(new InputStreamReader(Channels.newInputStream(channel), StandardCharsets.UTF_8));
        var greeting = readMessage();
        if (!greeting.containsKey("QMP")) throw new ApiException("the socket did not greet like a Panama VMM control API");
    }

    public static ApiClient connect(Path socket) {
        try {
            var channel = SocketChannel.open(StandardProtocolFamily.UNIX);
            try {
                channel.connect(UnixDomainSocketAddress.of(socket));
                return new ApiClient(channel);
            } catch (IOException | RuntimeException e) {
                channel.close();
                throw e;
            }
        } catch (java.net.SocketException e) {
            throw new ApiException("cannot connect to " + socket + ": no VMM is listening there (" + e.getMessage() + ")");
        } catch (IOException e) {
            throw new ApiException("cannot connect to " + socket + ": " + ApiServer.describe(e));
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
            }
        } catch (IOException e) {
            throw new ApiException("the VMM closed the connection: " + ApiServer.describe(e));
        }
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
