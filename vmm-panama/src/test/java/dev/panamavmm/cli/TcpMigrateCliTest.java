package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.testing.VmmProcess;
import java.io.DataOutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import org.junit.jupiter.api.io.TempDir;

/** Migration over TCP as users run it: vmm incoming tcp:127.0.0.1:PORT in one process, vmm migrate on the running one. */
class TcpMigrateCliTest {

    static int freePort() throws Exception {
        try (var s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    static void awaitStderr(VmmProcess p, String text, long seconds) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (!p.stderr().contains(text)) {
            if (System.nanoTime() > deadline) throw new AssertionError("no '" + text + "' in stderr:\n" + p.stderr());
            Thread.sleep(20);
        }
    }

    /**
     * Runs a guest ({@code cmdline}, and {@code runOptions}) with 2 vCPUs and 128 MiB, waits for a
     * {@code vmm incoming tcp:} destination, runs {@code vmm migrate} with {@code migrateOptions} and
     * the address, and checks the guest carries on there in order; returns what migrate printed.
     */
    private static String migrate(Path dir, String cmdline, List<String> runOptions, List<String> migrateOptions)
            throws Exception {
        var api = dir.resolve("api.sock");
        var nextApi = dir.resolve("next.sock");
        var console = dir.resolve("console.txt");
        var nextConsole = dir.resolve("next.txt");
        int port = freePort();
        var run = new ArrayList<>(List.of(
                "run",
                "--cpus",
                "2",
                "--memory",
                "128M",
                "--api-socket",
                api.toString(),
                "--console",
                "file:" + console,
                "--cmdline",
                cmdline));
        run.addAll(runOptions);
        try (var source = VmmProcess.start(run.toArray(String[]::new));
                var destination = VmmProcess.start(
                        "incoming",
                        "tcp:127.0.0.1:" + port,
                        "--api-socket",
                        nextApi.toString(),
                        "--console",
                        "file:" + nextConsole,
                        "--memory",
                        "128M")) {
            SnapshotCliTest.awaitText(console, "hb 1 2", 30);
            source.awaitSocket(api);
            awaitStderr(destination, "vmm: waiting for a migration on tcp:127.0.0.1:" + port, 60);
            var migrate = new ArrayList<>(List.of("migrate", "--api-socket", api.toString()));
            migrate.addAll(migrateOptions);
            migrate.add("tcp:127.0.0.1:" + port);
            var r = MainTest.run(migrate.toArray(String[]::new));
            assertEquals(0, r.code(), r.err());
            assertEquals(0, source.waitFor(30), source.stderr());
            var status = MainTest.run("ctl", nextApi.toString(), "query-migrate"); // the destination's side
            assertTrue(status.out().contains("\"status\":\"completed\""), status.out());
            var seen = Heartbeats.checkLive(Files.readString(console) + Files.readString(nextConsole));
            SnapshotCliTest.awaitText(nextConsole, "hb 0 " + (seen.getOrDefault(0, 0) + 2), 30);
            SnapshotCliTest.awaitText(nextConsole, "hb 1 " + (seen.getOrDefault(1, 0) + 2), 30);
            destination.signal("TERM");
            assertEquals(0, destination.waitFor(30));
            Heartbeats.check(Files.readString(console) + Files.readString(nextConsole));
            return r.out();
        }
    }

    private static final String REWRITING = "console=ttyS0 testguest.hb=100 testguest.mem=64M testguest.rewrite=";

    @KvmTest
    void aGuestMovesToAnotherVmmOverTcp(@TempDir Path dir) throws Exception {
        String out = migrate(dir, REWRITING + 10, List.of(), List.of("--max-bandwidth", "1G"));
        assertTrue(out.startsWith("migrated: downtime "), out);
    }

    /** A guest in a shared memory file that the destination maps itself: only the device state crosses. */
    @KvmTest
    void aGuestInASharedMemoryFileMovesByReference(@TempDir Path dir) throws Exception {
        var ram = dir.resolve("ram");
        String out = migrate(dir, REWRITING + 10, List.of("--mem-path", ram.toString(), "--shared"), List.of());
        var line = Pattern.compile("migrated: downtime \\d+ ms, total \\d+ ms, (\\d+) bytes sent \\(memory file "
                        + Pattern.quote(ram.toString()) + " by reference\\)\n")
                .matcher(out);
        assertTrue(line.matches(), out);
        assertTrue(Long.parseLong(line.group(1)) < (1 << 20), "no page of the 64 MiB travelled: " + out);
    }

    @KvmTest
    void migratePostcopyMovesTheGuestAfterTheFirstPassAndItsPagesFollow(@TempDir Path dir) throws Exception {
        String out = migrate(dir, REWRITING + 100, List.of(), List.of("--postcopy"));
        assertTrue(out.matches("(?s)migrated: downtime .* in 1 passes, then \\d+ pages by post-copy\n"), out);
    }

    @KvmTest
    void aDestinationWhoseSourceVanishesExitsWithOneLine(@TempDir Path dir) throws Exception {
        int port = freePort();
        var console = dir.resolve("console.txt");
        try (var destination = VmmProcess.start("incoming", "tcp::" + port, "--console", "file:" + console)) {
            awaitStderr(destination, "vmm: waiting for a migration on tcp:127.0.0.1:" + port, 60);
            // A source that announces a VM and is gone before any page.
            try (var source = new Socket(InetAddress.getLoopbackAddress(), port);
                    var out = new DataOutputStream(source.getOutputStream())) {
                byte[] prepare = ("{\"type\":\"prepare\",\"protocol\":2,\"cpus\":1,\"memory\":67108864,"
                                + "\"ram\":[{\"id\":\"ram-low\",\"guestAddress\":0,\"size\":67108864,\"fileOffset\":0}]}")
                        .getBytes(StandardCharsets.UTF_8);
                out.writeByte('M');
                out.writeInt(prepare.length);
                out.write(prepare);
                out.flush();
                source.getInputStream().read(); // the destination's answer: it built the VM
            }
            assertEquals(1, destination.waitFor(30));
            assertEquals(
                    "vmm: the source closed the connection before the migration completed\n",
                    destination.stderr().substring(destination.stderr().indexOf("vmm: the source")));
            assertEquals("", Files.readString(console), "the guest never ran here");
        }
    }
}
