package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.VmmProcess;
import dev.panamavmm.vmm.TinyElfAccess;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CopyOnWriteArrayList;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * ctl, snapshot and migrate against sockets that are not there yet or are of another kind: typed
 * right after a background start they wait (at 52b27eb: "no VMM is listening there"), and a socket
 * that never greets is named instead of hanging.
 */
class SocketWaitTest {

    @Test
    void ctlOnASocketThatNeverGreetsSaysSoWithinAFewSeconds(@TempDir Path dir) throws Exception {
        var path = dir.resolve("silent.sock");
        try (var server = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
            server.bind(UnixDomainSocketAddress.of(path));
            // Accepts (as a waiting `vmm incoming` does) and then says nothing.
            var accepted = new CopyOnWriteArrayList<SocketChannel>();
            Thread.ofPlatform().daemon().start(() -> {
                try {
                    while (true) accepted.add(server.accept());
                } catch (IOException e) {
                    // closed at the end of the test
                }
            });
            long start = System.nanoTime();
            var r = MainTest.run("ctl", path.toString(), "query-status");
            long seconds = (System.nanoTime() - start) / 1_000_000_000L;
            assertEquals(1, r.code(), r.err());
            assertEquals("vmm: " + path + " is not a VMM control socket (no greeting within 3.0 s)\n", r.err());
            assertTrue(seconds < 10, "returned after " + seconds + " s");
            assertFalse(accepted.isEmpty(), "it did connect");
            for (var c : accepted) c.close();
        }
    }

    @Test
    void aFileThatIsNotASocketIsNamedAtOnce(@TempDir Path dir) throws Exception {
        var file = Files.writeString(dir.resolve("notes.txt"), "x");
        var r = MainTest.run("ctl", file.toString(), "query-status");
        assertEquals(1, r.code());
        assertEquals("vmm: " + file + " is not a socket: give the VMM's --api-socket\n", r.err());
        var s = MainTest.run(
                "snapshot", "--api-socket", file.toString(), dir.resolve("snap").toString());
        assertEquals("vmm: " + file + " is not a socket: give the VMM's --api-socket\n", s.err());
    }

    /** `vmm run ... &` then `vmm ctl` at once: ctl waits for the socket the starting VMM creates. */
    @KvmTest
    void ctlRightAfterABackgroundStartWaitsForTheSocket(@TempDir Path dir) throws Exception {
        var kernel = Files.write(dir.resolve("spin.elf"), TinyElfAccess.countForever());
        var api = dir.resolve("api.sock");
        try (var vmm = VmmProcess.start(
                "run", "--kernel", kernel.toString(), "--memory", "32M", "--api-socket", api.toString())) {
            assertFalse(Files.exists(api), "the test must start ctl before the socket exists");
            // The default wait (5 s) covers a start here (~0.4 s); a loaded test machine gets more room.
            var r = MainTest.run("ctl", api.toString(), "query-status", "--wait", "30");
            assertEquals(0, r.code(), r.err() + vmm.stderr());
            assertEquals("{\"status\":\"running\",\"singlestep\":false,\"running\":true}\n", r.out());
            assertEquals(0, MainTest.run("ctl", api.toString(), "quit").code());
            assertEquals(0, vmm.waitFor(30), vmm.stderr());
        }
    }

    /** `vmm incoming ... &` then `vmm migrate` at once: migrate waits for the incoming socket (it appears after ~1 s of warm-up). */
    @KvmTest
    void migrateRightAfterABackgroundIncomingWaitsForItsSocket(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var console = dir.resolve("console.txt");
        var incoming = dir.resolve("in.sock");
        var nextConsole = dir.resolve("console-next.txt");
        try (var source = VmmProcess.start(
                        "run",
                        "--memory",
                        "32M",
                        "--api-socket",
                        api.toString(),
                        "--console",
                        "file:" + console,
                        "--cmdline",
                        "console=ttyS0 testguest.hb=100 testguest.mem=4M");
                var dest = VmmProcess.start("incoming", "unix:" + incoming, "--console", "file:" + nextConsole)) {
            assertFalse(Files.exists(incoming));
            var r = MainTest.run("migrate", "--api-socket", api.toString(), "unix:" + incoming, "--wait", "60");
            assertEquals(0, r.code(), r.err() + source.stderr() + dest.stderr());
            assertEquals(0, source.waitFor(30), source.stderr());
            SnapshotCliTest.awaitText(nextConsole, "hb 0 \\d+", 30);
            dest.signal("TERM");
            assertEquals(0, dest.waitFor(30), dest.stderr());
        }
        var none = MainTest.run(
                "migrate", "--api-socket", dir.resolve("none.sock").toString(), "unix:" + incoming, "--wait", "0");
        assertEquals(1, none.code());
        assertEquals(
                "vmm: cannot connect to " + dir.resolve("none.sock") + ": no VMM is listening there (no such socket)\n",
                none.err());
    }
}
