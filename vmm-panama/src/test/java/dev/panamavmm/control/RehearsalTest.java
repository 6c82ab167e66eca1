package dev.panamavmm.control;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.VmmProcess;
import dev.panamavmm.vmm.ScratchDir;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;

/** The background rehearsal of save and restore: it must work and leave nothing behind. */
class RehearsalTest {

    @KvmTest
    void rehearsesSaveAndRestoreAndLeavesNoFiles(@TempDir Path root) throws Exception {
        // A scratch directory of a process that no longer exists (killed mid-rehearsal) is swept up.
        long deadPid = ProcessHandle.current().pid() + 1_000_000;
        var stale = Files.createDirectories(root.resolve(Rehearsal.PREFIX + "-" + deadPid + "-123"));
        Files.writeString(stale.resolve("ram"), "left over");
        // Not ours, even though it looks alike: left alone.
        var other = Files.createDirectories(root.resolve("panama-rehearsal-notapid"));

        try (var kvm = Kvm.open()) {
            Rehearsal.rehearseIn(kvm, root); // throws if any step (API save, restore, clone) fails
        }
        try (Stream<Path> left = Files.list(root)) {
            assertEquals(List.of(other), left.toList());
        }
        assertTrue(Files.exists(other));
        // Its live updates' state directories are gone too.
        String ours = "panama-migrate-" + ProcessHandle.current().pid() + "-";
        try (Stream<Path> left = Files.list(ScratchDir.defaultRoot())) {
            assertEquals(
                    List.of(),
                    left.filter(p -> p.getFileName().toString().startsWith(ours))
                            .toList());
        }
    }

    @KvmTest
    void runWarmsUpOnlyWhenAsked() throws Exception {
        try (var vmm = VmmProcess.start(
                Map.of(),
                "run",
                "--memory",
                "32M",
                "--cmdline",
                "console=ttyS0 testguest.mem=4M testguest.hb=100 testguest.exit_after=15")) {
            String ours = Rehearsal.PREFIX + "-" + vmm.pid() + "-";
            vmm.awaitLine("hb 0 1", 30);
            for (int i = 0; i < 100 && vmm.lines().stream().noneMatch(l -> l.equals("hb 0 15")); i++) {
                assertEquals(List.of(), scratchDirs(ours), "a run without --warm-up rehearsed");
                Thread.sleep(15);
            }
            assertEquals(0, vmm.waitFor(30), vmm.stderr());
        }
    }

    @KvmTest
    void aVmmThatExitsWhileItRehearsesLeavesNoScratchDirectory() throws Exception {
        try (var vmm = VmmProcess.start(
                "run",
                "--memory",
                "32M",
                "--warm-up",
                "--cmdline",
                "console=ttyS0 testguest.mem=4M testguest.hb=100")) {
            vmm.awaitLine("hb 0 1", 30);
            // Once the background rehearsal has its directory, end the VMM (SIGTERM: a normal exit)
            // while the rehearsal is still at work in it.
            String ours = Rehearsal.PREFIX + "-" + vmm.pid() + "-";
            long deadline = System.nanoTime() + 30_000_000_000L;
            while (scratchDirs(ours).isEmpty()) {
                if (System.nanoTime() > deadline)
                    throw new AssertionError("no rehearsal directory appeared; stderr: " + vmm.stderr());
                Thread.sleep(1);
            }
            vmm.signal("TERM");
            assertEquals(0, vmm.waitFor(30), vmm.stderr());
            assertEquals(List.of(), scratchDirs(ours), "left behind by the exiting VMM");
        }
    }

    private static List<Path> scratchDirs(String prefix) throws IOException {
        try (Stream<Path> all = Files.list(ScratchDir.defaultRoot())) {
            return all.filter(p -> p.getFileName().toString().startsWith(prefix))
                    .toList();
        }
    }
}
