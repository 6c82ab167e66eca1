package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.testing.VmmProcess;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code vmm run} with the embedded test guest, as a user runs it: the guest's own console lines
 * are the oracle (banner, ready, gap-free heartbeats on every vCPU, no CORRUPT).
 */
class TestGuestRunTest {

    static String cmdline(String... options) {
        return "console=ttyS0 " + String.join(" ", options);
    }

    static Map<Integer, Integer> checkHeartbeats(List<String> lines) {
        return Heartbeats.check(lines);
    }

    @KvmTest
    void everyCpuHeartbeatsAndTheApiStopsAndContinuesIt(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        try (var vmm = VmmProcess.start(
                "run",
                "--cpus",
                "2",
                "--memory",
                "128M",
                "--api-socket",
                api.toString(),
                "--cmdline",
                cmdline("testguest.hb=200", "testguest.mem=32M"))) {
            vmm.awaitLine("testguest \\S+ cpus=2 mem=\\d+", 30);
            vmm.awaitLine("ready", 30);
            vmm.awaitLine("hb 0 3", 30);
            vmm.awaitLine("hb 1 3", 30);
            vmm.awaitSocket(api);
            try (var client = ApiClient.connect(api)) {
                assertEquals(
                        Map.of("status", "running", "singlestep", false, "running", true),
                        client.execute("query-status", null).get("return"));
                client.execute("stop", null);
                assertEquals(
                        "paused",
                        ((Map<?, ?>) client.execute("query-status", null).get("return")).get("status"));
                var before = checkHeartbeats(vmm.lines());
                int linesAtStop = vmm.lines().size();
                Thread.sleep(1000);
                assertEquals(
                        linesAtStop,
                        vmm.lines().size(),
                        "no guest output while stopped: "
                                + vmm.lines().subList(linesAtStop, vmm.lines().size()));
                client.execute("cont", null);
                int next = before.get(0) + 1;
                vmm.awaitLine("hb 0 " + next, linesAtStop, 30);
                vmm.awaitLine("hb 1 " + (before.get(1) + 1), linesAtStop, 30);
                var after = checkHeartbeats(vmm.lines());
                assertTrue(after.get(0) >= next);
                client.execute("quit", null);
            }
            assertEquals(0, vmm.waitFor(30), vmm.stderr());
        }
    }

    @KvmTest
    void theGuestsExitCodeBecomesTheVmms() throws Exception {
        try (var vmm = VmmProcess.start(
                "run", "--cmdline", cmdline("testguest.hb=100", "testguest.exit_after=2", "testguest.exit_code=42"))) {
            assertEquals(42, vmm.waitFor(60), vmm.stderr());
            vmm.awaitLine("hb 0 2", 1);
            assertEquals("", vmm.stderr());
        }
    }

    @KvmTest
    void unknownPortsAndAddressesAreReportedOnceAndTheGuestGoesOn() throws Exception {
        try (var vmm = VmmProcess.start(
                "run",
                "--memory",
                "64M",
                "--cmdline",
                cmdline(
                        "testguest.hb=100",
                        "testguest.fault=unmapped",
                        "testguest.fault=port",
                        "testguest.exit_after=3"))) {
            assertEquals(0, vmm.waitFor(60), vmm.stderr());
            checkHeartbeats(vmm.lines());
            vmm.awaitLine("hb 0 3", 1);
            var err = vmm.stderr().lines().toList();
            assertEquals(
                    1,
                    err.stream()
                            .filter(l -> l.contains("unknown I/O port 0x2f0"))
                            .count(),
                    vmm.stderr());
            assertEquals(
                    1,
                    err.stream()
                            .filter(l -> l.contains("unmapped address 0xd0000000"))
                            .count(),
                    vmm.stderr());
        }
    }

    @KvmTest
    void anI8042ResetEndsTheVm() throws Exception {
        try (var vmm = VmmProcess.start(
                "run", "--memory", "32M", "--cmdline", cmdline("testguest.hb=100", "testguest.reset_after=2"))) {
            assertEquals(0, vmm.waitFor(60));
            assertEquals("vmm: guest reset the machine (i8042 reset)\n", vmm.stderr());
        }
    }

    @KvmTest
    void smallestAndLargeSparseGuestsRun() throws Exception {
        for (var size : List.of("16M", "8G")) {
            try (var vmm = VmmProcess.start(
                    "run", "--memory", size, "--cmdline", cmdline("testguest.hb=100", "testguest.exit_after=2"))) {
                assertEquals(0, vmm.waitFor(60), size + ": " + vmm.stderr());
                vmm.awaitLine("testguest \\S+ cpus=1 mem=\\d+", 1);
                checkHeartbeats(vmm.lines());
                vmm.awaitLine("hb 0 2", 1);
            }
        }
    }

    /** With --mem-path on tmpfs and --shared, the file holds the guest's memory: its pattern is readable from outside. */
    @KvmTest
    void aSharedMemoryFileHoldsTheGuestsPattern(@TempDir Path dir) throws Exception {
        var file =
                Path.of("/dev/shm", "panama-vmm-test-" + ProcessHandle.current().pid() + "-" + System.nanoTime());
        var api = dir.resolve("api.sock");
        try (var vmm = VmmProcess.start(
                "run",
                "--memory",
                "64M",
                "--mem-path",
                file.toString(),
                "--shared",
                "--api-socket",
                api.toString(),
                "--cmdline",
                cmdline("testguest.mem=16M", "testguest.hb=200"))) {
            int bannerLine = vmm.awaitLine("testguest .*", 30);
            var banner = TestGuest.BANNER.matcher(vmm.lines().get(bannerLine));
            assertTrue(banner.matches());
            long exercised = Long.parseLong(banner.group(3));
            vmm.awaitLine("ready", 30);
            vmm.awaitSocket(api);
            try (var client = ApiClient.connect(api)) {
                client.execute("stop", null);
                long verified = verifiedPatternBytes(file);
                assertTrue(
                        verified >= exercised,
                        "the file holds " + verified + " bytes of the guest's pattern, the guest exercises "
                                + exercised);
                client.execute("quit", null);
            }
            assertEquals(0, vmm.waitFor(30), vmm.stderr());
            assertEquals(64L << 20, Files.size(file), "the memory file outlives the VMM");
        } finally {
            Files.deleteIfExists(file);
        }
    }

    static long pattern(long a, long g) {
        long z = a ^ (g * 0x9E3779B97F4A7C15L);
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /**
     * Bytes of 64 KiB chunks in which every word is the guest's pattern for its address, all of one
     * generation or (the chunk a vCPU was rewriting when stopped) of two consecutive ones.
     */
    static long verifiedPatternBytes(Path file) throws IOException {
        final int chunk = 64 * 1024;
        long verified = 0;
        try (var ch = FileChannel.open(file)) {
            var buf = ByteBuffer.allocate(chunk).order(ByteOrder.LITTLE_ENDIAN);
            for (long base = 0; base + chunk <= ch.size(); base += chunk) {
                buf.clear();
                while (buf.hasRemaining() && ch.read(buf, base + buf.position()) > 0) {}
                long first = buf.getLong(0);
                long gen = -1;
                for (long g = 1; g < 256 && gen < 0; g++) if (pattern(base, g) == first) gen = g;
                if (gen < 0) continue;
                boolean all = true;
                for (int i = 0; i < chunk && all; i += 8) {
                    long word = buf.getLong(i);
                    all = word == pattern(base + i, gen)
                            || word == pattern(base + i, gen - 1)
                            || word == pattern(base + i, gen + 1);
                }
                if (all) verified += chunk;
            }
        }
        return verified;
    }
}
