package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.testing.VmmProcess;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.io.TempDir;

/**
 * A live update from the previous release into this one, both run as users run them: the
 * previous release (built from this repository's history by scripts/build-release) runs a 2-vCPU
 * guest and migrates it with its own `vmm migrate` into this version's `vmm incoming`. The guest
 * goes on without a gap. When the local-migration protocol or the snapshot format changes,
 * {@link #PREVIOUS_RELEASE} moves to the last commit of the release before.
 */
class CrossVersionTest {
    /** The last commit that speaks local-migration protocol 1 and writes snapshot format 1. */
    static final String PREVIOUS_RELEASE = "52b27eb";

    static Path previousRelease() throws Exception {
        var p = new ProcessBuilder(Path.of("..", "scripts", "build-release").toString(), PREVIOUS_RELEASE)
                .redirectErrorStream(false)
                .start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        assertEquals(0, p.waitFor(), "building the previous release " + PREVIOUS_RELEASE + " failed: " + err);
        return Path.of(out);
    }

    @KvmTest
    void aGuestLiveUpdatesFromThePreviousReleaseIntoThisOne(@TempDir Path dir) throws Exception {
        var oldJar = previousRelease();
        var oldConsole = dir.resolve("old.txt");
        var newConsole = dir.resolve("new.txt");
        var oldApi = dir.resolve("old.sock");
        var newApi = dir.resolve("new.sock");
        var incoming = dir.resolve("in.sock");
        var quiet = Map.of("PANAMA_VMM_NO_REHEARSAL", "1");
        try (var old = VmmProcess.startJar(
                        oldJar,
                        quiet,
                        "run",
                        "--cpus",
                        "2",
                        "--memory",
                        "64M",
                        "--api-socket",
                        oldApi.toString(),
                        "--console",
                        "file:" + oldConsole,
                        "--cmdline",
                        "console=ttyS0 testguest.hb=100 testguest.mem=8M");
                var next = VmmProcess.start(
                        "incoming",
                        "unix:" + incoming,
                        "--api-socket",
                        newApi.toString(),
                        "--console",
                        "file:" + newConsole)) {
            SnapshotCliTest.awaitText(oldConsole, "hb 1 2", 30);
            old.awaitSocket(oldApi);
            next.awaitSocket(incoming);
            try (var migrate = VmmProcess.startJar(
                    oldJar, quiet, "migrate", "--api-socket", oldApi.toString(), "unix:" + incoming)) {
                assertEquals(0, migrate.waitFor(30), migrate.stderr());
                assertTrue(
                        String.join("\n", migrate.lines()).startsWith("migrated: downtime "),
                        migrate.lines().toString());
            }
            assertEquals(0, old.waitFor(30), old.stderr());
            var seen = Heartbeats.checkLive(Files.readString(oldConsole) + Files.readString(newConsole));
            SnapshotCliTest.awaitText(newConsole, "hb 0 " + (seen.get(0) + 3), 30);
            SnapshotCliTest.awaitText(newConsole, "hb 1 " + (seen.get(1) + 3), 30);
            var last = Heartbeats.checkLive(Files.readString(oldConsole) + Files.readString(newConsole));
            assertTrue(last.get(0) >= 5 && last.get(1) >= 5, "the guest ran before and after: " + last);
            next.signal("TERM");
            assertEquals(0, next.waitFor(30), next.stderr());
        }
    }
}
