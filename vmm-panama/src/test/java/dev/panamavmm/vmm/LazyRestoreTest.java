package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.MemoryLoad;
import dev.panamavmm.vmm.memory.RamLoader;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.io.TempDir;

/**
 * Restores of a full snapshot with the RAM loaded lazily (userfaultfd) or eagerly, the test guest
 * as the oracle: it verifies its memory continuously, so a page lost, stale or zeroed by the load
 * prints {@code CORRUPT}.
 */
class LazyRestoreTest {

    private static MachineConfig guest(int cpus, String mem) {
        return new MachineConfig(
                64 * GuestMemory.MIB,
                cpus,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=150 testguest.mem=" + mem);
    }

    /**
     * Boots the guest, lets it run a few heartbeats, and saves it in full (its memfd RAM is stored
     * in the file); returns its console up to the save, the start of every restore's transcript.
     */
    private static String saveGuest(Kvm kvm, int cpus, String mem, Path snap, SnapshotTest.Console console)
            throws Exception {
        try (var vm = VmBuilder.boot(kvm, guest(cpus, mem), console, new VmListener() {})) {
            vm.start();
            for (int cpu = 0; cpu < cpus; cpu++) console.await("hb " + cpu + " 3", 60);
            var saved = VmSnapshots.save(vm, snap, true, false, RamWriter.Progress.NONE);
            assertTrue(saved.ramBytesWritten() > 4 * GuestMemory.MIB, "the RAM is in the snapshot");
        }
        return console.text();
    }

    /** A console that starts with the transcript of the guest up to its save. */
    private static SnapshotTest.Console after(String boot) {
        var console = new SnapshotTest.Console();
        console.write(boot.getBytes(StandardCharsets.UTF_8), 0, boot.length());
        return console;
    }

    private static void restoreAndRun(Kvm kvm, Path snap, MemoryLoad load, int cpus, SnapshotTest.Console console)
            throws Exception {
        var before = SnapshotTest.checkHeartbeats(console.text());
        try (var vm = VmSnapshots.restore(kvm, snap, load, console, new VmListener() {})) {
            assertEquals(load == MemoryLoad.LAZY, vm.memory().loadStats() != null);
            if (load == MemoryLoad.LAZY) {
                // A VMM thread reading guest RAM loads the chunk itself, without a userfaultfd fault.
                var beforeRead = vm.memory().loadStats();
                vm.memory().read(0x100000, 8);
                var afterRead = vm.memory().loadStats();
                assertEquals(0, afterRead.faults(), afterRead.toString());
                assertEquals(beforeRead.chunksOnFault() + 1, afterRead.chunksOnFault(), afterRead.toString());
            }
            vm.start();
            for (int cpu = 0; cpu < cpus; cpu++) console.await("hb " + cpu + " " + (before.get(cpu) + 4), 60);
            vm.memory().awaitLoaded();
            if (load == MemoryLoad.LAZY) {
                var stats = vm.memory().loadStats();
                assertTrue(stats.complete(), stats.toString());
                // Each chunk is copied once, whether the guest faulted it while the loader worked or not.
                assertEquals(0, stats.pagesFoundThere(), stats.toString());
                assertTrue(stats.chunksOnFault() > 0, stats.toString());
            }
            // Heartbeats after the load completed: the pages the background loader brought in verify too.
            var loaded = SnapshotTest.checkHeartbeats(console.text());
            for (int cpu = 0; cpu < cpus; cpu++) console.await("hb " + cpu + " " + (loaded.get(cpu) + 2), 60);
            assertTrue(!vm.termination().isDone(), "the guest runs");
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    @KvmTest
    void lazyAndEagerRestoresContinueTheGuestOnOneCpu(@TempDir Path dir) throws Exception {
        continuesTheGuest(dir, 1);
    }

    @KvmTest
    void lazyAndEagerRestoresContinueTheGuestOnTwoCpus(@TempDir Path dir) throws Exception {
        continuesTheGuest(dir, 2);
    }

    private static void continuesTheGuest(Path dir, int cpus) throws Exception {
        var snap = dir.resolve("snap");
        try (var kvm = Kvm.open()) {
            for (var load : new MemoryLoad[] {MemoryLoad.LAZY, MemoryLoad.EAGER}) {
                var console = new SnapshotTest.Console();
                saveGuest(kvm, cpus, "24M", snap, console);
                restoreAndRun(kvm, snap, load, cpus, console);
            }
        }
    }

    @KvmTest
    void theFirstLazyRestoreRecordsAWorkingSetAndTheSecondLoadsItFirst(@TempDir Path dir) throws Exception {
        var snap = dir.resolve("snap");
        var workingSet = snap.resolve("working-set");
        try (var kvm = Kvm.open()) {
            var boot = saveGuest(kvm, 1, "16M", snap, new SnapshotTest.Console());
            // The snapshot stays as it is (a full one restores any number of times): both restores start from it.
            var first = runLazily(kvm, snap, after(boot));
            assertEquals(0, first.workingSetPages(), "no working set the first time");
            assertTrue(Files.exists(workingSet), "the first lazy restore writes the working set");
            var second = runLazily(kvm, snap, after(boot));
            assertTrue(second.workingSetPages() > 0, "the second restore uses it");
            assertTrue(second.chunksPreloaded() >= 16 * GuestMemory.MIB / RamLoader.CHUNK, second.toString());
            assertTrue(
                    second.chunksOnFault() * 4 < first.chunksOnFault(),
                    "far fewer faults: first " + first + ", second " + second);
        }
    }

    /** A lazy restore that runs until the load is complete (at least the recording window); its stats. */
    private static RamLoader.Stats runLazily(Kvm kvm, Path snap, SnapshotTest.Console console) throws Exception {
        try (var vm = VmSnapshots.restore(kvm, snap, MemoryLoad.LAZY, console, new VmListener() {})) {
            vm.start();
            Thread.sleep(RamLoader.RECORD_MILLIS + 500); // past the recording window
            vm.memory().awaitLoaded();
            console.await("hb 0 [0-9]+", 30);
            var stats = vm.memory().loadStats();
            assertTrue(stats.complete(), stats.toString());
            assertEquals(0, stats.pagesFoundThere(), stats.toString());
            SnapshotTest.checkHeartbeats(console.text());
            return stats;
        }
    }

    @KvmTest
    void aCorruptOrStaleWorkingSetIsIgnored(@TempDir Path dir) throws Exception {
        var a = dir.resolve("a");
        var b = dir.resolve("b");
        try (var kvm = Kvm.open()) {
            var bootA = saveGuest(kvm, 1, "8M", a, new SnapshotTest.Console());
            runLazily(kvm, a, after(bootA));
            var good = Files.readAllBytes(a.resolve("working-set"));
            // Corrupt: one page address flipped (the checksum no longer matches).
            var corrupt = good.clone();
            corrupt[44] ^= 0x10;
            Files.write(a.resolve("working-set"), corrupt);
            var stats = runLazily(kvm, a, after(bootA));
            assertEquals(0, stats.workingSetPages(), "a corrupt working set is not used");
            assertTrue(runLazily(kvm, a, after(bootA)).workingSetPages() > 0, "it was recorded anew");
            // Stale: the working set of another snapshot.
            var bootB = saveGuest(kvm, 1, "8M", b, new SnapshotTest.Console());
            Files.write(b.resolve("working-set"), good);
            assertEquals(0, runLazily(kvm, b, after(bootB)).workingSetPages(), "a stale one neither");
        }
    }

    @KvmTest
    void aSnapshotTruncatedAfterTheHeaderStopsALazilyRestoredVmWithAClearError(@TempDir Path dir) throws Exception {
        var snap = dir.resolve("snap");
        try (var kvm = Kvm.open()) {
            saveGuest(kvm, 1, "16M", snap, new SnapshotTest.Console());
            var loaded = VmSnapshots.load(snap);
            try (var vm = VmBuilder.fromSnapshot(
                    kvm,
                    loaded,
                    VmBuilder.Mode.CONTINUE,
                    MemoryLoad.LAZY,
                    new SnapshotTest.Console(),
                    new VmListener() {})) {
                // The file turns out short after the restore read it: the RAM is gone from it.
                try (var f = new RandomAccessFile(snap.resolve("snapshot.pvm").toFile(), "rw")) {
                    f.setLength(4096);
                }
                vm.start();
                var reason = vm.termination().get(30, TimeUnit.SECONDS);
                var failed = assertInstanceOf(VmExitReason.Failed.class, reason);
                assertTrue(
                        failed.message().startsWith("loading guest RAM from the snapshot failed:"), failed.message());
                assertTrue(failed.message().contains("truncated"), failed.message());
                assertTrue(!failed.message().contains("\n"), failed.message());
            }
        }
    }

    @KvmTest
    void closingAVmDuringALazyLoadDoesNotHang(@TempDir Path dir) throws Exception {
        var snap = dir.resolve("snap");
        try (var kvm = Kvm.open()) {
            var boot = saveGuest(kvm, 2, "48M", snap, new SnapshotTest.Console());
            for (long runFor : new long[] {0, 5, 50, 300}) {
                var console = after(boot);
                var vm = VmSnapshots.restore(kvm, snap, MemoryLoad.LAZY, console, new VmListener() {});
                vm.start();
                Thread.sleep(runFor);
                assertNotNull(vm.memory().loadStats());
                assertTimeoutPreemptively(Duration.ofSeconds(20), vm::close, "closing after " + runFor + " ms");
                assertInstanceOf(VmExitReason.Stopped.class, vm.termination().getNow(null));
                Heartbeats.checkLive(console.text());
            }
        }
    }
}
