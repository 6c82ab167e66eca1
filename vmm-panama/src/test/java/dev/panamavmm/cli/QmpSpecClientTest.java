package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.Json;
import dev.panamavmm.testing.VmmProcess;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code vmm run} driven by a client that knows only QEMU's QMP specification (qmp-spec.txt): the
 * greeting's shape, capabilities negotiation, commands with ids, asynchronous events with
 * timestamps, error classes, and QEMU's status names and shutdown causes. The client is this
 * class, not the VMM's {@code ApiClient}: nothing of the VMM's own code speaks for it.
 */
class QmpSpecClientTest {

    /** The client: JSON objects one per line, events filed as they come, replies matched by id. */
    static final class SpecClient implements AutoCloseable {
        final SocketChannel channel;
        final BufferedReader in;
        final List<Map<String, Object>> events = new ArrayList<>();
        int nextId;

        SpecClient(Path socket) throws Exception {
            channel = SocketChannel.open(UnixDomainSocketAddress.of(socket));
            in = new BufferedReader(new InputStreamReader(Channels.newInputStream(channel), StandardCharsets.UTF_8));
        }

        Map<String, Object> read() throws Exception {
            String line = in.readLine();
            return line == null ? null : Json.asObject(Json.parse(line), "a QMP message");
        }

        /** Sends {@code command} with a fresh id; returns the reply with that id (events in between are filed). */
        Map<String, Object> execute(String command, Map<String, Object> arguments) throws Exception {
            String id = "req-" + nextId++;
            var request = Json.object("execute", command, "id", id);
            if (arguments != null) request.put("arguments", arguments);
            var buf = ByteBuffer.wrap((Json.write(request) + "\n").getBytes(StandardCharsets.UTF_8));
            while (buf.hasRemaining()) channel.write(buf);
            while (true) {
                var message = read();
                assertNotNull(message, "the server closed the connection before replying to " + command);
                if (message.containsKey("event")) {
                    events.add(message);
                    continue;
                }
                assertEquals(id, message.get("id"), "a reply carries its request's id: " + message);
                return message;
            }
        }

        /** The first event named {@code name}, filed or still to come. */
        Map<String, Object> event(String name) throws Exception {
            return event(name, e -> true);
        }

        /** The first event named {@code name} that {@code matches}, filed or still to come. */
        Map<String, Object> event(String name, java.util.function.Predicate<Map<String, Object>> matches)
                throws Exception {
            while (true) {
                for (var e : events) if (name.equals(e.get("event")) && matches.test(e)) return e;
                var message = read();
                assertNotNull(message, "the connection closed before " + name);
                assertTrue(message.containsKey("event"), "only events arrive unasked: " + message);
                events.add(message);
            }
        }

        @Override
        public void close() throws java.io.IOException {
            channel.close();
        }
    }

    static Map<String, Object> returned(Map<String, Object> reply) {
        assertTrue(reply.containsKey("return"), reply.toString());
        return reply.get("return") instanceof Map<?, ?> ? Json.asObject(reply.get("return"), "return") : Map.of();
    }

    static Map<String, Object> data(Map<String, Object> event) {
        return Json.asObject(event.get("data"), "event data");
    }

    static void assertError(String errorClass, Map<String, Object> reply) {
        var error = Json.asObject(reply.get("error"), "error");
        assertEquals(errorClass, error.get("class"), reply.toString());
        assertInstanceOf(String.class, error.get("desc"));
    }

    static void assertTimestamp(Map<String, Object> event) {
        var t = Json.asObject(event.get("timestamp"), "timestamp");
        assertInstanceOf(Long.class, t.get("seconds"));
        assertInstanceOf(Long.class, t.get("microseconds"));
    }

    @KvmTest
    void aClientOfTheSpecificationDrivesTheVmm(@TempDir Path dir) throws Exception {
        var api = dir.resolve("qmp.sock");
        try (var vmm = VmmProcess.start(
                "run",
                "--memory",
                "32M",
                "--api-socket",
                api.toString(),
                "--console",
                "file:" + dir.resolve("console.txt"),
                "--cmdline",
                "console=ttyS0 testguest.hb=100 testguest.mem=4M")) {
            vmm.awaitSocket(api);
            try (var qmp = new SpecClient(api)) {
                // 2.2 Server Greeting
                var greeting = Json.asObject(qmp.read().get("QMP"), "QMP");
                var version = Json.asObject(greeting.get("version"), "version");
                var qemu = Json.asObject(version.get("qemu"), "qemu");
                for (var part : List.of("major", "minor", "micro")) assertInstanceOf(Long.class, qemu.get(part));
                assertInstanceOf(String.class, version.get("package"));
                assertInstanceOf(List.class, greeting.get("capabilities"));

                // 4. Capabilities Negotiation: nothing else before it
                assertError("CommandNotFound", qmp.execute("query-status", null));
                assertEquals(Map.of(), returned(qmp.execute("qmp_capabilities", null)));
                assertError("CommandNotFound", qmp.execute("qmp_capabilities", null));

                var commands = ((List<?>) qmp.execute("query-commands", null).get("return"))
                        .stream().map(c -> ((Map<?, ?>) c).get("name")).toList();
                assertTrue(
                        commands.containsAll(List.of(
                                "qmp_capabilities",
                                "query-commands",
                                "query-version",
                                "query-status",
                                "stop",
                                "cont",
                                "quit")),
                        commands.toString());
                assertEquals(qemu, returned(qmp.execute("query-version", null)).get("qemu"));

                var status = returned(qmp.execute("query-status", null));
                assertEquals("running", status.get("status"));
                assertEquals(true, status.get("running"));
                assertEquals(false, status.get("singlestep"));

                assertEquals(Map.of(), returned(qmp.execute("stop", null)));
                assertTimestamp(qmp.event("STOP"));
                assertEquals(
                        "paused", returned(qmp.execute("query-status", null)).get("status"));
                assertEquals(Map.of(), returned(qmp.execute("cont", null)));
                assertTimestamp(qmp.event("RESUME"));

                // A detached snapshot: a job id at once, then the job's events and its progress.
                var job = returned(qmp.execute(
                        "snapshot", Map.of("path", dir.resolve("snap").toString(), "detach", true, "resume", true)));
                var id = (String) job.get("job-id");
                assertNotNull(id, job.toString());
                var concluded = qmp.event(
                        "JOB_STATUS_CHANGE",
                        e -> id.equals(data(e).get("id")) && "concluded".equals(data(e).get("status")));
                assertTimestamp(concluded);
                var jobs = (List<?>) qmp.execute("query-jobs", null).get("return");
                var entry = jobs.stream()
                        .map(j -> Json.asObject(j, "job"))
                        .filter(j -> id.equals(j.get("id")))
                        .findFirst()
                        .orElseThrow();
                assertEquals("snapshot", entry.get("type"));
                assertEquals("concluded", entry.get("status"));
                assertTrue((Long) entry.get("current-progress") > 0, entry.toString());
                assertEquals(entry.get("total-progress"), entry.get("current-progress"), entry.toString());
                assertEquals(
                        "running", returned(qmp.execute("query-status", null)).get("status"));

                assertError("CommandNotFound", qmp.execute("frobnicate", null));
                assertError("GenericError", qmp.execute("stop", Map.of("bogus", 1L)));

                assertEquals(Map.of(), returned(qmp.execute("quit", null)));
                var shutdown = qmp.event("SHUTDOWN");
                assertTimestamp(shutdown);
                var data = Json.asObject(shutdown.get("data"), "SHUTDOWN data");
                assertEquals(false, data.get("guest"));
                assertEquals("host-qmp-quit", data.get("reason"));
                String line;
                while ((line = qmp.in.readLine()) != null) assertTrue(line.contains("\"event\""), line);
                assertNull(qmp.read(), "the server closes the connection after quit");
            }
            assertEquals(0, vmm.waitFor(30));
        }
    }
}
