package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.testing.VmmProcess;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import org.junit.jupiter.api.io.TempDir;

/** Live update as users run it: vmm incoming in a new process, vmm migrate on the running one, three times. */
class MigrateCliTest {

    @KvmTest
    void aTwoCpuGuestLiveUpdatesThroughThreeNewProcesses(@TempDir Path dir) throws Exception {
        var consoles = new ArrayList<Path>();
        consoles.add(dir.resolve("console-0.txt"));
        var processes = new ArrayList<VmmProcess>();
        try {
            var api = dir.resolve("api-0.sock");
            processes.add(VmmProcess.start(
                    "run",
                    "--cpus",
                    "2",
                    "--memory",
                    "128M",
                    "--api-socket",
                    api.toString(),
                    "--console",
                    "file:" + consoles.getFirst(),
                    "--cmdline",
                    "console=ttyS0 testguest.hb=100 testguest.mem=16M"));
            SnapshotCliTest.awaitText(consoles.getFirst(), "hb 1 2", 30);
            processes.getFirst().awaitSocket(api);
            for (int i = 1; i <= 3; i++) {
                var incoming = dir.resolve("in-" + i + ".sock");
                var nextApi = dir.resolve("api-" + i + ".sock");
                var console = dir.resolve("console-" + i + ".txt");
                consoles.add(console);
                var next = VmmProcess.start(
                        "incoming",
                        "unix:" + incoming,
                        "--api-socket",
                        nextApi.toString(),
                        "--console",
                        "file:" + console,
                        "--memory",
                        "128M");
                processes.add(next);
                next.awaitSocket(incoming);
                var r = MainTest.run("migrate", "--api-socket", api.toString(), "unix:" + incoming);
                assertEquals(0, r.code(), r.err());
                assertTrue(r.out().startsWith("migrated: downtime "), r.out());
                assertEquals(
                        0,
                        processes.get(i - 1).waitFor(30),
                        processes.get(i - 1).stderr());
                next.awaitSocket(nextApi);
                var text = new StringBuilder();
                for (var c : consoles) text.append(Files.readString(c));
                var seen = Heartbeats.checkLive(
                        text.toString()); // the new VM may not have printed a split line's rest yet
                SnapshotCliTest.awaitText(console, "hb 0 " + (seen.getOrDefault(0, 0) + 2), 30);
                SnapshotCliTest.awaitText(console, "hb 1 " + (seen.getOrDefault(1, 0) + 2), 30);
                api = nextApi;
            }
            processes.getLast().signal("TERM");
            assertEquals(0, processes.getLast().waitFor(30));
            var text = new StringBuilder();
            for (var c : consoles) text.append(Files.readString(c));
            var last = SnapshotCliTest.heartbeats(text.toString());
            assertTrue(last.get(0) >= 8 && last.get(1) >= 8, text.toString());
        } finally {
            for (var p : processes) p.close();
        }
    }

    @KvmTest
    void aDestinationExpectingAnotherRamSizeRefusesAndTheSourceGoesOn(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var console = dir.resolve("console.txt");
        try (var source = VmmProcess.start(
                "run",
                "--memory",
                "64M",
                "--api-socket",
                api.toString(),
                "--console",
                "file:" + console,
                "--cmdline",
                "console=ttyS0 testguest.hb=100 testguest.mem=8M")) {
            SnapshotCliTest.awaitText(console, "hb 0 2", 30);
            source.awaitSocket(api);
            var incoming = dir.resolve("in.sock");
            try (var dest = VmmProcess.start(
                    "incoming", "unix:" + incoming, "--memory", "128M", "--console", "file:/dev/null")) {
                dest.awaitSocket(incoming);
                var r = MainTest.run("migrate", "--api-socket", api.toString(), "unix:" + incoming);
                assertEquals(1, r.code());
                assertEquals(
                        "vmm: migration to " + incoming + " failed, the guest runs on here: the destination refused: "
                                + "this VMM expects 128 MiB of RAM, the VM has 64 MiB\n",
                        r.err());
                assertEquals(1, dest.waitFor(30));
            }
            int at = SnapshotCliTest.heartbeats(Files.readString(console)).get(0);
            SnapshotCliTest.awaitText(console, "hb 0 " + (at + 2), 30);
            source.signal("TERM");
            assertEquals(0, source.waitFor(30));
        }
    }
}
