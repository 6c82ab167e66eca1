package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import org.junit.jupiter.api.io.TempDir;

/** Save and restore with the test guest as the oracle: heartbeats go on with the next number, memory verifies. */
class SnapshotTest {

    /** One console for both VMs: a line split by the save is whole in the concatenation. */
    static class Console extends OutputStream {
        private final ByteArrayOutputStream bytes = new ByteArrayOutputStream();

        @Override
        public synchronized void write(int b) {
            bytes.write(b);
            notifyAll();
        }

        @Override
        public synchronized void write(byte[] b, int off, int len) {
            bytes.write(b, off, len);
            notifyAll();
        }

        synchronized String text() {
            return bytes.toString();
        }

        synchronized void await(String regex, long seconds) throws InterruptedException {
            // A whole line only: "hb 0 3" must not match the first half of "hb 0 31".
            var p = Pattern.compile("(?m)^" + regex + "\\r?\\n");
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
            while (!p.matcher(bytes.toString()).find()) {
                long left = deadline - System.nanoTime();
                if (left <= 0) throw new AssertionError("no line /" + regex + "/ in:\n" + bytes);
                wait(Math.max(1, left / 1_000_000));
            }
        }
    }

    /** Checks a console that may still be written: a last line without its newline is left out (half a heartbeat). */
    static Map<Integer, Integer> checkHeartbeats(String console) {
        return Heartbeats.checkLive(console);
    }

    static MachineConfig guest(int cpus, Backing backing, String options) {
        return new MachineConfig(
                64 * GuestMemory.MIB,
                cpus,
                backing,
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=150 testguest.mem=8M " + options);
    }

    @KvmTest
    void aRestoredGuestContinuesOnEveryCpu(@TempDir Path dir) throws Exception {
        var console = new Console();
        var snap = dir.resolve("snap");
        try (var kvm = Kvm.open()) {
            try (var vm = VmBuilder.boot(kvm, guest(2, new Backing.Memfd(), ""), console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 3", 30);
                console.await("hb 1 3", 30);
                var saved = VmSnapshots.save(vm, snap, true, false, RamWriter.Progress.NONE);
                assertTrue(
                        saved.ramBytesWritten() > 8 * GuestMemory.MIB, "memfd RAM is not shared: its pages are saved");
                assertInstanceOf(
                        VmExitReason.Stopped.class,
                        vm.termination().get(10, TimeUnit.SECONDS),
                        "saving stops the VM by default");
            }
            var before = checkHeartbeats(console.text());
            try (var vm = VmSnapshots.restore(kvm, snap, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 " + (before.get(0) + 3), 30);
                console.await("hb 1 " + (before.get(1) + 3), 30);
            }
        }
        var after = checkHeartbeats(console.text());
        assertTrue(after.get(0) >= 6 && after.get(1) >= 6, console.text());
    }

    @KvmTest
    void aMigrationsWarmUpSavesTheRunningVmWithAScratchVcpuAndTheGuestRunsOn(@TempDir Path dir) throws Exception {
        var console = new Console();
        var snap = dir.resolve("snap");
        try (var kvm = Kvm.open()) {
            try (var vm = VmBuilder.boot(kvm, guest(2, new Backing.Memfd(), ""), console, new VmListener() {});
                    var scratch = HostFacts.of(kvm).scratchVcpu()) {
                vm.start();
                console.await("hb 1 2", 30);
                assertEquals(
                        VmSnapshots.WARM_SAVE_MIN_ROUNDS,
                        VmSnapshots.warmUpSaveState(vm, scratch.vcpu(), () -> true),
                        "rounds when the destination is ready at once");
                assertEquals(
                        VmSnapshots.WARM_SAVE_ROUNDS,
                        VmSnapshots.warmUpSaveState(vm, scratch.vcpu(), () -> false),
                        "rounds when it never is");
                assertFalse(vm.isPaused(), "the warm-up never pauses the guest");
                console.await("hb 0 4", 30);
                console.await("hb 1 4", 30);
                VmSnapshots.save(vm, snap, true, false, RamWriter.Progress.NONE);
            }
            var before = checkHeartbeats(console.text());
            try (var vm = VmSnapshots.restore(kvm, snap, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 " + (before.get(0) + 2), 30);
                console.await("hb 1 " + (before.get(1) + 2), 30);
            }
        }
        checkHeartbeats(console.text());
    }

    @KvmTest
    void aBypassSnapshotOfSharedRamHoldsNoPagesAndRefusesAChangedFile(@TempDir Path dir) throws Exception {
        var console = new Console();
        var ram = Path.of(
                "/dev/shm", "panama-snapshot-test-" + ProcessHandle.current().pid() + "-" + System.nanoTime());
        var snap = dir.resolve("snap");
        try (var kvm = Kvm.open()) {
            try (var vm =
                    VmBuilder.boot(kvm, guest(1, new Backing.SharedFile(ram), ""), console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 2", 30);
                var resume = assertThrows(
                        SnapshotException.class, () -> VmSnapshots.save(vm, snap, true, true, RamWriter.Progress.NONE));
                assertTrue(resume.getMessage()
                        .startsWith("resuming after a bypass-shared-memory snapshot would let the guest change"));
                var saved = VmSnapshots.save(vm, snap, true, false, RamWriter.Progress.NONE);
                assertEquals(0, saved.ramBytesWritten());
                assertEquals(1, saved.ramBlocksByReference());
                assertTrue(
                        Files.size(saved.file()) < 64 * 1024,
                        "a bypass snapshot is small: " + Files.size(saved.file()));
            }
            var before = checkHeartbeats(console.text());
            try (var vm = VmSnapshots.restore(kvm, snap, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 " + (before.get(0) + 2), 30);
            }
            checkHeartbeats(console.text());
            // The guest ran on in the file: the snapshot no longer describes it.
            var e = assertThrows(
                    SnapshotException.class,
                    () -> VmSnapshots.restore(kvm, snap, OutputStream.nullOutputStream(), new VmListener() {}));
            assertTrue(e.getMessage().startsWith("refusing to restore: the memory file " + ram), e.getMessage());
        } finally {
            Files.deleteIfExists(ram);
        }
    }

    static Path shmFile(String name) {
        return Path.of(
                "/dev/shm", "panama-" + name + "-" + ProcessHandle.current().pid() + "-" + System.nanoTime());
    }

    /** Without bypass the snapshot directory alone holds the guest: a copy restores with the memory file gone. */
    @KvmTest
    void aFullSnapshotRestoresFromACopyWithoutTheMemoryFile(@TempDir Path dir) throws Exception {
        var console = new Console();
        var ram = shmFile("full");
        var snap = dir.resolve("snap");
        var copy = dir.resolve("copy");
        try (var kvm = Kvm.open()) {
            try (var vm =
                    VmBuilder.boot(kvm, guest(1, new Backing.SharedFile(ram), ""), console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 2", 30);
                var saved = VmSnapshots.save(vm, snap, false, false, RamWriter.Progress.NONE);
                assertEquals(0, saved.ramBlocksByReference());
                assertTrue(saved.ramBytesWritten() >= 8 * GuestMemory.MIB);
            }
            Files.delete(ram);
            Files.createDirectories(copy);
            Files.copy(snap.resolve("snapshot.pvm"), copy.resolve("snapshot.pvm"));
            var before = checkHeartbeats(console.text());
            try (var vm = VmSnapshots.restore(kvm, copy, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 " + (before.get(0) + 3), 30);
            }
            checkHeartbeats(console.text());
        } finally {
            Files.deleteIfExists(ram);
        }
    }

    /**
     * A full save of a sparse 4 GiB memfd guest reads only what the guest touched: reading a hole
     * through the shared mapping would allocate it (4 GiB of shmem for one save).
     */
    @KvmTest
    void aFullSaveOfASparseGuestLeavesItsHolesAlone(@TempDir Path dir) throws Exception {
        var console = new Console();
        var config = new MachineConfig(
                4 * GuestMemory.GIB,
                1,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=150 testguest.mem=16M");
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(kvm, config, console, new VmListener() {})) {
            vm.start();
            console.await("hb 0 2", 30);
            var saved = VmSnapshots.save(vm, dir.resolve("snap"), false, false, RamWriter.Progress.NONE);
            long allocated = 0;
            for (var block : vm.memory().blocks()) for (long[] e : block.dataExtents()) allocated += e[1] - e[0];
            assertTrue(allocated < 64 * GuestMemory.MIB, "memfd bytes allocated after the save: " + allocated);
            assertTrue(
                    saved.ramBytesWritten() > 16 * GuestMemory.MIB && saved.ramBytesWritten() < 64 * GuestMemory.MIB,
                    "RAM written: " + saved.ramBytesWritten());
        }
    }

    /**
     * A VM restored from a full snapshot maps the (sparse) snapshot file privately; its own full
     * save must not read that file's holes (which would allocate them on tmpfs), and must still
     * save a page written into one after the restore (a copy-on-write page the file does not show).
     */
    @KvmTest
    void aFullSaveOfARestoredSparseGuestKeepsItsSnapshotSparseAndSavesPagesWrittenInHoles() throws Exception {
        var dir = shmFile("resave");
        var config = new MachineConfig(
                4 * GuestMemory.GIB,
                1,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=150 testguest.mem=16M");
        var console = new Console();
        byte[] marker = "written into a hole after the restore".getBytes(StandardCharsets.US_ASCII);
        long hole = 2 * GuestMemory.GIB; // far above the 16 MiB the guest uses
        try (var kvm = Kvm.open()) {
            try (var vm = VmBuilder.boot(kvm, config, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 2", 30);
                VmSnapshots.save(vm, dir.resolve("first"), false, false, RamWriter.Progress.NONE);
            }
            var first = dir.resolve("first").resolve("snapshot.pvm");
            long before = allocated(first);
            try (var vm = VmSnapshots.restore(kvm, dir.resolve("first"), console, new VmListener() {})) {
                vm.memory().write(hole, marker);
                vm.start();
                console.await("hb 0 " + (checkHeartbeats(console.text()).get(0) + 2), 30);
                VmSnapshots.save(vm, dir.resolve("second"), false, false, RamWriter.Progress.NONE);
            }
            assertTrue(
                    allocated(first) < before + 16 * GuestMemory.MIB,
                    "the first snapshot's file stays sparse: " + before + " -> " + allocated(first) + " bytes of data");
            try (var vm = VmSnapshots.restore(kvm, dir.resolve("second"), console, new VmListener() {})) {
                assertEquals(
                        new String(marker, StandardCharsets.US_ASCII),
                        new String(vm.memory().read(hole, marker.length), StandardCharsets.US_ASCII));
            }
        } finally {
            try (var files = Files.walk(dir)) {
                files.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }

    /** Bytes of {@code file} in data extents (SEEK_DATA / SEEK_HOLE): what it occupies, holes excluded. */
    static long allocated(Path file) throws Exception {
        int fd = LibC.open(file.toString(), LibcConstants.O_RDONLY, 0);
        try {
            long size = Files.size(file), total = 0;
            for (long at = 0; at < size; ) {
                long data = LibC.seek(fd, at, LibcConstants.SEEK_DATA);
                if (data < 0) break;
                long end = LibC.seek(fd, data, LibcConstants.SEEK_HOLE);
                total += end - data;
                at = end;
            }
            return total;
        } finally {
            LibC.close(fd);
        }
    }

    /** A bypass snapshot's size does not grow with RAM: a 4 GiB shared guest saves no pages. */
    @KvmTest
    void aBypassSnapshotOfA4GiBGuestHoldsNoRam(@TempDir Path dir) throws Exception {
        var console = new Console();
        var ram = shmFile("4g");
        var snap = dir.resolve("snap");
        var config = new MachineConfig(
                4 * GuestMemory.GIB,
                1,
                new Backing.SharedFile(ram),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=150 testguest.mem=16M");
        try (var kvm = Kvm.open()) {
            try (var vm = VmBuilder.boot(kvm, config, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 2", 30);
                var saved = VmSnapshots.save(vm, snap, true, false, RamWriter.Progress.NONE);
                assertEquals(0, saved.ramBytesWritten());
                assertEquals(2, saved.ramBlocksByReference(), "ram-low and ram-high, both by reference");
                assertTrue(
                        Files.size(saved.file()) < 64 * 1024,
                        "snapshot of a 4 GiB guest: " + Files.size(saved.file()) + " bytes");
            }
            var before = checkHeartbeats(console.text());
            try (var vm = VmSnapshots.restore(kvm, snap, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 " + (before.get(0) + 2), 30);
            }
            checkHeartbeats(console.text());
        } finally {
            Files.deleteIfExists(ram);
        }
    }

    /** The guest floods the console (a heartbeat a millisecond) and rewrites memory while it is saved: nothing is lost. */
    @KvmTest
    void savingABusyGuestLosesNoConsoleByteAndNoPage(@TempDir Path dir) throws Exception {
        var console = new Console();
        var snap = dir.resolve("snap");
        var config = new MachineConfig(
                64 * GuestMemory.MIB,
                2,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=1 testguest.mem=32M");
        try (var kvm = Kvm.open()) {
            try (var vm = VmBuilder.boot(kvm, config, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 200", 30);
                VmSnapshots.save(vm, snap, true, false, RamWriter.Progress.NONE);
            }
            var before = checkHeartbeats(console.text());
            try (var vm = VmSnapshots.restore(kvm, snap, console, new VmListener() {})) {
                vm.start();
                // Long enough for each CPU to re-verify its 16 MiB many times over.
                console.await("hb 0 " + (before.get(0) + 500), 60);
                console.await("hb 1 " + (before.get(1) + 500), 60);
            }
        }
        checkHeartbeats(console.text());
    }

    /** With resume the guest runs on after the save, and the snapshot restores on its own. */
    @KvmTest
    void aGuestRunsOnAfterASaveWithResume(@TempDir Path dir) throws Exception {
        var console = new Console();
        var restored = new Console();
        var snap = dir.resolve("snap");
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(kvm, guest(1, new Backing.Memfd(), ""), console, new VmListener() {})) {
            vm.start();
            console.await("hb 0 2", 30);
            VmSnapshots.save(vm, snap, true, true, RamWriter.Progress.NONE);
            int savedAt = checkHeartbeats(console.text()).get(0);
            console.await("hb 0 " + (savedAt + 2), 30);
            assertFalse(vm.termination().isDone());
            try (var copy = VmSnapshots.restore(kvm, snap, restored, new VmListener() {})) {
                copy.start();
                restored.await("hb 0 " + (savedAt + 2), 30);
            }
            // The restored guest's first heartbeat follows the last one the original printed before the save.
            var first = TestGuest.HEARTBEAT.matcher(restored.text()
                    .lines()
                    .filter(l -> l.startsWith("hb"))
                    .findFirst()
                    .orElseThrow());
            assertTrue(first.matches());
            assertTrue(Integer.parseInt(first.group(2)) <= savedAt + 1, restored.text());
        }
        checkHeartbeats(console.text());
    }
}
