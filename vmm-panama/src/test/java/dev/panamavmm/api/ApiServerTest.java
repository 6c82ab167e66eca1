package dev.panamavmm.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.migration.Json;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The control API over a real Unix socket, against a recording target. */
class ApiServerTest {

    static final class Recorder implements ControlTarget {
        final List<String> calls = new ArrayList<>();
        boolean paused;

        @Override
        public Map<String, Object> status() {
            return Json.object("status", paused ? "paused" : "running", "running", !paused);
        }

        @Override
        public Map<String, Object> metrics() {
            return Json.object("pauses", calls.stream().filter("stop"::equals).count());
        }

        @Override
        public void stop() {
            calls.add("stop");
            paused = true;
        }

        @Override
        public void cont() {
            calls.add("cont");
            paused = false;
        }

        @Override
        public void quit() {
            calls.add("quit");
        }

        @Override
        public Map<String, Object> migrate(String uri, boolean detach) {
            calls.add("migrate " + uri);
            return Json.object();
        }

        @Override
        public Map<String, Object> snapshot(
                Path dir, boolean bypass, boolean resume, boolean diff, boolean live, boolean detach) {
            calls.add("snapshot " + dir + " bypass=" + bypass + " resume=" + resume + (diff ? " diff" : "")
                    + (live ? " live" : "") + (detach ? " detach" : ""));
            return Json.object("path", dir.toString());
        }

        @Override
        public Map<String, Object> templateCreate(Path dir) {
            calls.add("template-create " + dir);
            return Json.object("path", dir.toString());
        }

        @Override
        public List<Object> jobs() {
            return List.of();
        }

        @Override
        public void cancelJob(String id) {
            throw new IllegalArgumentException("no job " + id);
        }
    }

    @Test
    void commandsRepliesErrorsAndEvents(@TempDir Path dir) throws Exception {
        var path = dir.resolve("api.sock");
        var target = new Recorder();
        try (var server = ApiServer.start(path, target)) {
            assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(path)));
            try (var ch = SocketChannel.open(StandardProtocolFamily.UNIX)) {
                ch.connect(UnixDomainSocketAddress.of(path));
                var in = new BufferedReader(new InputStreamReader(Channels.newInputStream(ch), StandardCharsets.UTF_8));
                assertTrue(in.readLine().startsWith("{\"QMP\":"));
                server.event("READY", null); // not to a client that has not negotiated
                send(ch, "{\"execute\":\"query-status\",\"id\":6}");
                assertEquals(
                        "{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"Expecting capabilities negotiation with 'qmp_capabilities'\"},\"id\":6}",
                        in.readLine());
                send(ch, "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\"]}}");
                assertEquals(
                        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"Capability 'oob' not available\"}}",
                        in.readLine());
                send(ch, "{\"execute\":\"qmp_capabilities\"}");
                assertEquals("{\"return\":{}}", in.readLine());
                send(ch, "{\"execute\":\"qmp_capabilities\"}");
                assertEquals(
                        "{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"Capabilities negotiation is already complete, command ignored\"}}",
                        in.readLine());
                send(ch, "{\"execute\":\"query-status\",\"id\":7}");
                assertEquals("{\"return\":{\"status\":\"running\",\"running\":true},\"id\":7}", in.readLine());
                send(ch, "{\"execute\":\"stop\"}");
                assertEquals("{\"return\":{}}", in.readLine());
                send(ch, "{\"execute\":\"query-status\"}");
                assertEquals("{\"return\":{\"status\":\"paused\",\"running\":false}}", in.readLine());
                send(ch, "this is not json");
                assertTrue(in.readLine()
                        .startsWith("{\"error\":{\"class\":\"GenericError\",\"desc\":\"malformed request:"));
                send(ch, "{\"execute\":\"frobnicate\"}");
                assertEquals(
                        "{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"The command frobnicate has not been found\"}}",
                        in.readLine());
                send(ch, "{\"execute\":\"cont\",\"arguments\":[1]}");
                assertEquals(
                        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"malformed request: \\\"arguments\\\" must be a JSON object\"}}",
                        in.readLine());
                send(ch, "[".repeat(1000));
                assertTrue(in.readLine().contains("malformed request"));
                server.event("READY", null);
                assertTrue(in.readLine().startsWith("{\"event\":\"READY\",\"timestamp\":{\"seconds\":"));
                // Stamped to the microsecond where the VM said (RESUME: before its vCPUs went on).
                server.event("RESUME", null, java.time.Instant.ofEpochSecond(1_700_000_000L, 123_456_789));
                assertEquals(
                        "{\"event\":\"RESUME\",\"timestamp\":{\"seconds\":1700000000,\"microseconds\":123456}}",
                        in.readLine());
                send(ch, "{\"execute\":\"cont\"}");
                assertEquals("{\"return\":{}}", in.readLine());
                send(ch, "{\"execute\":\"snapshot\",\"arguments\":{\"path\":\"/tmp/s\",\"resume\":true}}");
                assertEquals("{\"return\":{\"path\":\"/tmp/s\"}}", in.readLine());
                send(ch, "{\"execute\":\"snapshot\",\"arguments\":{}}");
                assertEquals(
                        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"\\\"path\\\" is required (DIRECTORY)\"}}",
                        in.readLine());
                send(ch, "{\"execute\":\"snapshot\",\"arguments\":{\"path\":5}}");
                assertEquals(
                        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"\\\"path\\\" must be a non-empty string (DIRECTORY), not 5\"}}",
                        in.readLine());
                send(ch, "{\"execute\":\"query-status\",\"arguments\":{\"x\":1}}");
                assertEquals(
                        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"unexpected argument \\\"x\\\" (query-status takes none)\"}}",
                        in.readLine());
                send(ch, "{\"execute\":\"snapshot\",\"arguments\":{\"path\":\"/tmp/s\",\"bypass\":false}}");
                assertEquals(
                        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"unexpected argument \\\"bypass\\\" (snapshot takes path, bypass-shared-memory, resume, type, live, detach)\"}}",
                        in.readLine());
                send(ch, "{\"execute\":\"snapshot\",\"arguments\":{\"path\":\"/tmp/s\",\"type\":\"incremental\"}}");
                assertEquals(
                        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"\\\"type\\\" must be \\\"full\\\" or \\\"diff\\\"\"}}",
                        in.readLine());
                send(ch, "{\"execute\":\"snapshot\",\"arguments\":{\"path\":\"/tmp/s\",\"resume\":\"yes\"}}");
                assertEquals(
                        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"\\\"resume\\\" must be true or false\"}}",
                        in.readLine());
                send(ch, "{\"execute\":\"template-create\",\"arguments\":{\"path\":\"/tmp/t\"}}");
                assertEquals("{\"return\":{\"path\":\"/tmp/t\"}}", in.readLine());
                send(ch, "{\"execute\":\"template-create\",\"arguments\":{\"path\":\"/tmp/t\",\"id\":\"1\"}}");
                assertEquals(
                        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"unexpected argument \\\"id\\\" (template-create takes path)\"}}",
                        in.readLine());
            }
            try (var client = ApiClient.connect(path)) {
                assertEquals(
                        Json.object("status", "running", "running", true),
                        client.execute("query-status", null).get("return"));
            }
            var e = assertThrows(ApiException.class, () -> ApiServer.start(path, target));
            assertEquals("API socket " + path + " is in use by another process", e.getMessage());
        }
        assertEquals(
                List.of("stop", "cont", "snapshot /tmp/s bypass=true resume=true", "template-create /tmp/t"),
                target.calls,
                "a request with bad arguments is not executed");
        assertTrue(Files.notExists(path), "the socket file is removed on close");
    }

    @Test
    void queryCommandsListsTheServersAndTheHandlersCommandsAndQueryVersionHasQmpsShape(@TempDir Path dir)
            throws Exception {
        var path = dir.resolve("api.sock");
        try (var _ = ApiServer.start(path, new Recorder());
                var client = ApiClient.connect(path)) {
            var names = ((List<?>) client.execute("query-commands", null).get("return"))
                    .stream().map(c -> ((Map<?, ?>) c).get("name")).toList();
            assertEquals(
                    List.of(
                            "qmp_capabilities",
                            "query-commands",
                            "query-version",
                            "query-status",
                            "query-metrics",
                            "stop",
                            "cont",
                            "quit",
                            "snapshot",
                            "migrate",
                            "migrate-set-capabilities",
                            "query-migrate-capabilities",
                            "migrate-start-postcopy",
                            "migrate-recover",
                            "migrate-set-parameters",
                            "query-migrate-parameters",
                            "query-migrate",
                            "migrate-cancel",
                            "migrate_cancel",
                            "query-jobs",
                            "job-cancel",
                            "balloon",
                            "query-balloon",
                            "template-create"),
                    names);
            var version = Json.asObject(client.execute("query-version", null).get("return"), "version");
            var qemu = Json.asObject(version.get("qemu"), "qemu");
            assertEquals(0L, qemu.get("major"));
            assertEquals(1L, qemu.get("minor"));
            assertEquals(0L, qemu.get("micro"));
            assertTrue(String.valueOf(version.get("package")).startsWith("panama-vmm 0.1.0"), version.toString());
        }
    }

    @Test
    void aStaleSocketFileIsReplacedAndAPlainFileRefused(@TempDir Path dir) throws Exception {
        var path = dir.resolve("api.sock");
        try (var s = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
            s.bind(UnixDomainSocketAddress.of(path)); // leaves a socket file nobody will accept on after close
        }
        ApiServer.start(path, new Recorder()).close();
        var file = Files.writeString(dir.resolve("plain"), "x");
        var e = assertThrows(ApiException.class, () -> ApiServer.start(file, new Recorder()));
        assertEquals("API socket path " + file + " exists and is not a socket", e.getMessage());
    }

    private static void send(SocketChannel ch, String line) throws Exception {
        var buf = ByteBuffer.wrap((line + "\n").getBytes(StandardCharsets.UTF_8));
        while (buf.hasRemaining()) ch.write(buf);
    }
}
