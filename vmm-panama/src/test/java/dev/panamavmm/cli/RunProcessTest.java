package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.VmmProcess;
import dev.panamavmm.vmm.TinyElfAccess;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.io.TempDir;

/** {@code vmm run} as its own process: signals end the VM cleanly. */
class RunProcessTest {

    @KvmTest
    void ctrlCEndsTheVmWithExitCodeZero(@TempDir Path dir) throws Exception {
        var kernel = Files.write(dir.resolve("spin.elf"), TinyElfAccess.countForever());
        var api = dir.resolve("api.sock");
        try (var vmm = VmmProcess.start(
                "run", "--kernel", kernel.toString(), "--memory", "32M", "--api-socket", api.toString())) {
            vmm.awaitSocket(api);
            vmm.signal("INT");
            assertEquals(0, vmm.waitFor(20));
            assertEquals("vmm: stopped by signal\n", vmm.stderr());
            assertTrue(Files.notExists(api), "the API socket is removed");
        }
    }

    /** On a terminal (a pty from script(1)) stdin goes to the guest in raw mode and Ctrl-A x quits. */
    @KvmTest
    void ctrlAxOnATerminalQuits() throws Exception {
        String javaBin = ProcessHandle.current().info().command().orElse("java");
        String command = String.join(
                " ",
                javaBin,
                "--enable-native-access=ALL-UNNAMED",
                "-cp",
                System.getProperty("java.class.path"),
                "dev.panamavmm.cli.Main",
                "run",
                "--memory",
                "32M",
                "--cmdline",
                "'console=ttyS0 testguest.hb=100'");
        var process = new ProcessBuilder("script", "-qfec", command, "/dev/null")
                .redirectErrorStream(true)
                .start();
        try {
            var out = new BufferedReader(new InputStreamReader(process.getInputStream()));
            var seen = new StringBuilder();
            for (String line; (line = out.readLine()) != null; ) {
                seen.append(line).append('\n');
                if (line.startsWith("hb 0 2")) break;
            }
            assertTrue(seen.toString().contains("ready"), seen.toString());
            process.getOutputStream().write(new byte[] {1, 'x'});
            process.getOutputStream().flush();
            String rest = new String(process.getInputStream().readAllBytes());
            assertTrue(process.waitFor(20, TimeUnit.SECONDS));
            assertEquals(0, process.exitValue(), rest);
            assertTrue(rest.contains("vmm: stopped by the console (Ctrl-A x)"), rest);
        } finally {
            process.destroyForcibly();
        }
    }

    /** --console unix:PATH serves the console on a socket: a client that connects sees the guest's lines. */
    @KvmTest
    void theConsoleCanBeServedOnAUnixSocket(@TempDir Path dir) throws Exception {
        var socket = dir.resolve("console.sock");
        try (var vmm = VmmProcess.start(
                "run",
                "--memory",
                "32M",
                "--console",
                "unix:" + socket,
                "--cmdline",
                "console=ttyS0 testguest.hb=100")) {
            vmm.awaitSocket(socket);
            try (var ch = SocketChannel.open(UnixDomainSocketAddress.of(socket))) {
                var in = new BufferedReader(new InputStreamReader(Channels.newInputStream(ch)));
                String line;
                do {
                    line = in.readLine();
                } while (line != null && !line.matches("hb 0 \\d+"));
                assertTrue(line != null, "the console socket delivered heartbeats");
            }
            assertEquals(List.of(), vmm.lines(), "nothing on stdout");
            vmm.signal("TERM");
            assertEquals(0, vmm.waitFor(20));
        }
    }

    /** vmm ctl: the API's client on the command line, with one-line errors. */
    @KvmTest
    void ctlDrivesARunningVmm(@TempDir Path dir) throws Exception {
        var kernel = Files.write(dir.resolve("spin.elf"), TinyElfAccess.countForever());
        var api = dir.resolve("api.sock");
        try (var vmm = VmmProcess.start(
                "run", "--kernel", kernel.toString(), "--memory", "32M", "--api-socket", api.toString())) {
            vmm.awaitSocket(api);
            var status = MainTest.run("ctl", api.toString(), "query-status");
            assertEquals(0, status.code(), status.err());
            assertEquals("{\"status\":\"running\",\"singlestep\":false,\"running\":true}\n", status.out());
            assertEquals(0, MainTest.run("ctl", api.toString(), "stop").code());
            assertEquals(
                    "{\"status\":\"paused\",\"singlestep\":false,\"running\":false}\n",
                    MainTest.run("ctl", api.toString(), "query-status").out());
            var unknown = MainTest.run("ctl", api.toString(), "frobnicate");
            assertEquals(1, unknown.code());
            assertEquals("vmm: frobnicate: The command frobnicate has not been found\n", unknown.err());
            var badJson = MainTest.run("ctl", api.toString(), "cont", "{not json");
            assertEquals(2, badJson.code());
            assertTrue(badJson.err().startsWith("vmm: the arguments are not valid JSON ("), badJson.err());
            var notObject = MainTest.run("ctl", api.toString(), "query-status", "[1]");
            assertEquals(2, notObject.code());
            assertEquals(
                    "vmm: the arguments must be a JSON object, e.g. '{\"id\": \"clone-1\"}', not [1]\n",
                    notObject.err());
            var file = Files.writeString(dir.resolve("a-file"), "x");
            var snapshotIntoAFile =
                    MainTest.run("ctl", api.toString(), "snapshot", "{\"path\": \"" + file + "\", \"resume\": true}");
            assertEquals(1, snapshotIntoAFile.code());
            assertEquals(
                    "vmm: snapshot: cannot write a snapshot in " + file + ": it is not a directory\n",
                    snapshotIntoAFile.err());
            assertEquals(0, MainTest.run("ctl", api.toString(), "quit").code());
            assertEquals(0, vmm.waitFor(20), vmm.stderr());
        }
        var gone = MainTest.run("ctl", api.toString(), "query-status", "--wait", "0");
        assertEquals(1, gone.code());
        assertEquals("vmm: cannot connect to " + api + ": no VMM is listening there (no such socket)\n", gone.err());
        long start = System.nanoTime();
        var waited = MainTest.run("ctl", api.toString(), "query-status", "--wait", "0.5");
        assertTrue(System.nanoTime() - start >= 500_000_000L, "--wait 0.5 waits half a second");
        assertEquals(
                "vmm: cannot connect to " + api + ": no VMM is listening there (no such socket, after waiting 0.5 s)\n",
                waited.err());
    }

    /** --metrics-file: a JSON line per interval and a last one when the VM ends, each the query-metrics report. */
    @KvmTest
    void theMetricsFileGetsALinePerIntervalAndALastOne(@TempDir Path dir) throws Exception {
        var file = dir.resolve("metrics.jsonl");
        try (var vmm = VmmProcess.start(
                "run",
                "--memory",
                "32M",
                "--console",
                "file:" + dir.resolve("console.txt"),
                "--metrics-file",
                file.toString(),
                "--metrics-interval",
                "1",
                "--cmdline",
                "console=ttyS0 testguest.hb=100 testguest.mem=4M testguest.exit_after=25")) {
            assertEquals(0, vmm.waitFor(60), vmm.stderr());
        }
        var lines = Files.readAllLines(file);
        assertTrue(lines.size() >= 2, lines.toString());
        var last = dev.panamavmm.migration.Json.asObject(
                dev.panamavmm.migration.Json.parse(lines.getLast()), "a metrics line");
        var metrics = dev.panamavmm.migration.Json.asObject(last.get("metrics"), "metrics");
        assertEquals("shutdown", metrics.get("status"));
        var vcpu = (java.util.Map<?, ?>) ((List<?>) metrics.get("vcpus")).getFirst();
        assertTrue((Long) ((java.util.Map<?, ?>) vcpu.get("exits")).get("io") > 25, lines.getLast());
    }
}
