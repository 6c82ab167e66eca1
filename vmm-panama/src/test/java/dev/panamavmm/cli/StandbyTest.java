package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.testing.VmmProcess;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.io.TempDir;

/** A VMM started without a VM takes one over its API; `vmm incoming` is such a VMM waiting for a migration. */
class StandbyTest {
    static final Map<String, String> NO_REHEARSAL = Map.of("PANAMA_VMM_NO_REHEARSAL", "1");

    @KvmTest
    void aStandbyVmmRestoresASnapshotGivenOverItsApiAndRefusesASecondVm(@TempDir Path dir) throws Exception {
        var ram = Path.of(
                "/dev/shm", "panama-standby-test-" + ProcessHandle.current().pid() + "-" + System.nanoTime());
        var runApi = dir.resolve("run.sock");
        var standbyApi = dir.resolve("standby.sock");
        var runConsole = dir.resolve("run.txt");
        var standbyConsole = dir.resolve("standby.txt");
        var snap = dir.resolve("snap");
        try (var standby = VmmProcess.start(
                        NO_REHEARSAL,
                        "standby",
                        "--api-socket",
                        standbyApi.toString(),
                        "--console",
                        "file:" + standbyConsole);
                var run = VmmProcess.start(
                        NO_REHEARSAL,
                        "run",
                        "--cpus",
                        "2",
                        "--memory",
                        "64M",
                        "--mem-path",
                        ram.toString(),
                        "--shared",
                        "--api-socket",
                        runApi.toString(),
                        "--console",
                        "file:" + runConsole,
                        "--cmdline",
                        "console=ttyS0 testguest.hb=100 testguest.mem=8M")) {
            standby.awaitSocket(standbyApi);
            var status = MainTest.run("ctl", standbyApi.toString(), "query-status");
            assertEquals(
                    "{\"status\":\"prelaunch\",\"singlestep\":false,\"running\":false}\n", status.out(), status.err());
            var noVm = MainTest.run("ctl", standbyApi.toString(), "stop");
            assertEquals(1, noVm.code());
            assertTrue(noVm.err().contains("this VMM has no VM yet"), noVm.err());

            SnapshotCliTest.awaitText(runConsole, "hb 1 3", 30);
            run.awaitSocket(runApi);
            var saved = MainTest.run("snapshot", "--api-socket", runApi.toString(), snap.toString());
            assertEquals(0, saved.code(), saved.err());
            assertEquals(0, run.waitFor(30), run.stderr());

            var badLoad = MainTest.run(
                    "ctl", standbyApi.toString(), "restore", "{\"path\": \"" + snap + "\", \"memory-load\": \"fast\"}");
            assertEquals(1, badLoad.code());
            assertTrue(badLoad.err().contains("unknown memory load 'fast': use mapped, lazy or eager"), badLoad.err());
            // The snapshot holds its RAM by reference (bypass): lazy changes nothing, the file is mapped.
            var restore = MainTest.run(
                    "ctl", standbyApi.toString(), "restore", "{\"path\": \"" + snap + "\", \"memory-load\": \"lazy\"}");
            assertEquals(0, restore.code(), restore.err());
            assertTrue(restore.out().startsWith("{\"status\":\"running\""), restore.out());
            var seen = Heartbeats.checkLive(Files.readString(runConsole));
            SnapshotCliTest.awaitText(standbyConsole, "hb 0 " + (seen.get(0) + 3), 30);
            SnapshotCliTest.awaitText(standbyConsole, "hb 1 " + (seen.get(1) + 3), 30);
            Heartbeats.checkLive(Files.readString(runConsole) + Files.readString(standbyConsole));

            var second = MainTest.run("ctl", standbyApi.toString(), "restore", "{\"path\": \"" + snap + "\"}");
            assertEquals(1, second.code());
            assertTrue(second.err().contains("this VMM already runs a VM"), second.err());
            assertEquals(
                    "{\"status\":\"running\",\"singlestep\":false,\"running\":true}\n",
                    MainTest.run("ctl", standbyApi.toString(), "query-status").out());
            assertEquals(0, MainTest.run("ctl", standbyApi.toString(), "quit").code());
            assertEquals(0, standby.waitFor(30), standby.stderr());
        } finally {
            Files.deleteIfExists(ram);
        }
    }

    @KvmTest
    void aWaitingIncomingHasItsApiIgnoresStrayClientsAndStillTakesAMigration(@TempDir Path dir) throws Exception {
        var api = dir.resolve("in-api.sock");
        var incoming = dir.resolve("in.sock");
        var sourceApi = dir.resolve("src.sock");
        var console = dir.resolve("in.txt");
        var sourceConsole = dir.resolve("src.txt");
        try (var dest = VmmProcess.start(
                        NO_REHEARSAL,
                        "incoming",
                        "unix:" + incoming,
                        "--api-socket",
                        api.toString(),
                        "--console",
                        "file:" + console);
                var source = VmmProcess.start(
                        NO_REHEARSAL,
                        "run",
                        "--memory",
                        "64M",
                        "--api-socket",
                        sourceApi.toString(),
                        "--console",
                        "file:" + sourceConsole,
                        "--cmdline",
                        "console=ttyS0 testguest.hb=100 testguest.mem=8M")) {
            dest.awaitSocket(incoming);
            dest.awaitSocket(api);
            assertEquals(
                    "{\"status\":\"inmigrate\",\"singlestep\":false,\"running\":false}\n",
                    MainTest.run("ctl", api.toString(), "query-status").out());
            // query-migrate, as on QEMU's destination: set up, no source yet.
            assertEquals(
                    "{\"status\":\"setup\"}\n",
                    MainTest.run("ctl", api.toString(), "query-migrate").out());
            // A control client at the migration socket: it gets no greeting and gives up; the destination waits on.
            long start = System.nanoTime();
            var stray = MainTest.run("ctl", incoming.toString(), "query-status", "--wait", "0");
            assertEquals(1, stray.code());
            assertTrue(stray.err().contains("is not a VMM control socket"), stray.err());
            assertTrue(System.nanoTime() - start < 10_000_000_000L, "ctl returned within seconds");
            assertTrue(Files.exists(incoming), "the destination still listens");

            SnapshotCliTest.awaitText(sourceConsole, "hb 0 3", 30);
            source.awaitSocket(sourceApi);
            var migrated = MainTest.run("migrate", "--api-socket", sourceApi.toString(), "unix:" + incoming);
            assertEquals(0, migrated.code(), migrated.err());
            assertEquals(0, source.waitFor(30), source.stderr());
            var seen = Heartbeats.checkLive(Files.readString(sourceConsole) + Files.readString(console));
            SnapshotCliTest.awaitText(console, "hb 0 " + (seen.get(0) + 2), 30);
            assertEquals(
                    "{\"status\":\"running\",\"singlestep\":false,\"running\":true}\n",
                    MainTest.run("ctl", api.toString(), "query-status").out());
            dest.signal("TERM");
            assertEquals(0, dest.waitFor(30), dest.stderr());
        }
    }

    @KvmTest
    void aWaitingIncomingEndsOnQuitOrASignalAndLeavesNoSocket(@TempDir Path dir) throws Exception {
        for (String how : new String[] {"quit", "TERM", "INT"}) {
            var api = dir.resolve(how + "-api.sock");
            var incoming = dir.resolve(how + ".sock");
            try (var dest = VmmProcess.start(
                    NO_REHEARSAL,
                    "incoming",
                    "unix:" + incoming,
                    "--api-socket",
                    api.toString(),
                    "--console",
                    "file:/dev/null")) {
                dest.awaitSocket(incoming);
                dest.awaitSocket(api);
                if (how.equals("quit"))
                    assertEquals(0, MainTest.run("ctl", api.toString(), "quit").code());
                else dest.signal(how);
                assertEquals(0, dest.waitFor(30), how + ": " + dest.stderr());
                assertTrue(dest.stderr().contains("stopped before a VM arrived"), dest.stderr());
                assertFalse(Files.exists(incoming), how + ": the migration socket is removed");
                assertFalse(Files.exists(api), how + ": the API socket is removed");
            }
        }
    }
}
