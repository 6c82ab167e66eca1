package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.HostFlavour;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.SnapshotFormat;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.testing.VmmProcess;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** vmm snapshot / vmm restore as users run them: two processes, the test guest as the oracle. */
class SnapshotCliTest {

    static Map<Integer, Integer> heartbeats(String console) {
        return Heartbeats.check(console);
    }

    static void awaitText(Path file, String regex, long seconds) throws Exception {
        long deadline = System.nanoTime() + seconds * 1_000_000_000L;
        var p = Pattern.compile("(?m)^" + regex + "$");
        while (!(Files.exists(file) && p.matcher(Files.readString(file)).find())) {
            if (System.nanoTime() > deadline)
                throw new AssertionError(
                        "no /" + regex + "/ in " + file + ":\n" + (Files.exists(file) ? Files.readString(file) : ""));
            Thread.sleep(20);
        }
    }

    /** Save with --cpus 2, end the first process, restore in a second: every CPU heartbeats on with the next number. */
    @KvmTest
    void saveStopAndRestoreInANewProcess(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var snap = dir.resolve("snap");
        var console1 = dir.resolve("console1.txt");
        var console2 = dir.resolve("console2.txt");
        String cmdline = "console=ttyS0 testguest.hb=150 testguest.mem=16M";
        try (var first = VmmProcess.start(
                "run",
                "--cpus",
                "2",
                "--memory",
                "128M",
                "--api-socket",
                api.toString(),
                "--console",
                "file:" + console1,
                "--cmdline",
                cmdline)) {
            awaitText(console1, "hb 1 3", 30);
            first.awaitSocket(api);
            var r = MainTest.run("snapshot", "--api-socket", api.toString(), snap.toString());
            assertEquals(0, r.code(), r.err());
            assertTrue(r.out().startsWith("saved " + snap.resolve(SnapshotFormat.FILE_NAME)), r.out());
            assertEquals(0, first.waitFor(30), first.stderr());
            assertTrue(first.stderr().contains("vmm: stopped by snapshot to " + snap), first.stderr());
        }
        var before = heartbeats(Files.readString(console1));
        try (var second = VmmProcess.start("restore", snap.toString(), "--console", "file:" + console2)) {
            awaitText(console2, "hb 0 " + (before.get(0) + 3), 30);
            awaitText(console2, "hb 1 " + (before.get(1) + 3), 30);
            second.signal("TERM");
            assertEquals(0, second.waitFor(30), second.stderr());
        }
        heartbeats(Files.readString(console1) + Files.readString(console2));
    }

    /**
     * A guest with a disk and rng: a second VMM cannot take the disk while the first runs, the
     * snapshot hands it over to the restoring process, and a disk changed afterwards is refused.
     */
    @KvmTest
    void aVmWithADiskSavesAndRestoresAndAChangedDiskIsRefused(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var snap = dir.resolve("snap");
        var disk = Files.write(dir.resolve("disk.raw"), new byte[1 << 20]).toAbsolutePath();
        var console1 = dir.resolve("console1.txt");
        var console2 = dir.resolve("console2.txt");
        String cmdline = "console=ttyS0 testguest.hb=100 testguest.mem=8M";
        try (var first = VmmProcess.start(
                "run",
                "--disk",
                disk.toString(),
                "--rng",
                "--api-socket",
                api.toString(),
                "--console",
                "file:" + console1,
                "--cmdline",
                cmdline)) {
            awaitText(console1, "hb 0 2", 30);
            first.awaitSocket(api);
            var busy = MainTest.run("run", "--disk", disk.toString(), "--cmdline", cmdline);
            assertEquals(1, busy.code(), busy.err());
            assertTrue(busy.err().startsWith("vmm: disk " + disk + " is in use by PID "), busy.err());
            assertEquals(1, busy.err().lines().count(), busy.err());
            var r = MainTest.run("snapshot", "--api-socket", api.toString(), snap.toString());
            assertEquals(0, r.code(), r.err());
            assertEquals(0, first.waitFor(30), first.stderr());
        }
        var before = heartbeats(Files.readString(console1));
        try (var second = VmmProcess.start("restore", snap.toString(), "--console", "file:" + console2)) {
            awaitText(console2, "hb 0 " + (before.get(0) + 2), 30);
            second.signal("TERM");
            assertEquals(0, second.waitFor(30), second.stderr());
        }
        Files.write(disk, new byte[512], java.nio.file.StandardOpenOption.APPEND);
        var refused = MainTest.run("restore", snap.toString());
        assertEquals(1, refused.code(), refused.err());
        assertEquals(
                "vmm: refusing to restore: the disk " + disk
                        + " does not match the snapshot (its size changed from 1048576 to 1049088 bytes)\n",
                refused.err());
    }

    @Test
    void badSnapshotsAreOneLineErrors(@TempDir Path dir) throws Exception {
        var missing = MainTest.run("restore", dir.resolve("none").toString());
        assertEquals(1, missing.code());
        assertEquals("vmm: no snapshot directory " + dir.resolve("none") + "\n", missing.err());
        var empty = Files.createDirectory(dir.resolve("empty"));
        assertEquals(
                "vmm: no snapshot in " + empty + " (snapshot.pvm is missing)\n",
                MainTest.run("restore", empty.toString()).err());
        assertEquals(2, MainTest.run("restore", empty.toString(), "--paused").code(), "--paused needs an API socket");
    }

    /** A real snapshot, then each kind of damage: every restore refuses with one line, exit 1. */
    @KvmTest
    void damagedSnapshotsAreRefused(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var snap = dir.resolve("snap");
        var ram =
                Path.of("/dev/shm", "panama-cli-test-" + ProcessHandle.current().pid() + "-" + System.nanoTime());
        try {
            try (var vmm = VmmProcess.start(
                    "run",
                    "--memory",
                    "64M",
                    "--mem-path",
                    ram.toString(),
                    "--shared",
                    "--api-socket",
                    api.toString(),
                    "--console",
                    "file:" + dir.resolve("c"),
                    "--cmdline",
                    "console=ttyS0 testguest.hb=100 testguest.mem=8M")) {
                awaitText(dir.resolve("c"), "hb 0 2", 30);
                vmm.awaitSocket(api);
                var r = MainTest.run("snapshot", "--api-socket", api.toString(), snap.toString());
                assertEquals(0, r.code(), r.err());
                assertTrue(r.out().contains(": 0 bytes of RAM written, 1 block(s) by reference"), r.out());
                assertEquals(0, vmm.waitFor(30));
            }
            var file = snap.resolve(SnapshotFormat.FILE_NAME);
            byte[] good = Files.readAllBytes(file);
            assertTrue(good.length < 64 * 1024, "bypass: no RAM in the snapshot");

            refused(snap, file, Arrays.copyOf(good, good.length - 7), "is truncated");
            byte[] flipped = good.clone();
            flipped[good.length - 100] ^= 1;
            refused(snap, file, flipped, "is corrupt");
            refused(snap, file, withHeaderInt(good, 8, 4), "has format version 4; this VMM reads versions 1 to 3");
            refused(snap, file, withHeaderInt(good, 8, 3), "is corrupt (a diff layer without a base)");
            String otherFlavour = Kvm.hostFlavour() == HostFlavour.PVM ? "VMX" : "PVM";
            refused(
                    snap,
                    file,
                    withHeaderInt(good, 12, otherFlavour.equals("VMX") ? 1 : 3),
                    "the snapshot was taken on a " + otherFlavour + " host");
            Files.write(file, good);
            var verified = MainTest.run("snapshot", "verify", snap.toString());
            assertEquals(0, verified.code(), verified.err());
            assertEquals(
                    "snapshot " + file
                            + " is intact: no RAM stored in it; 1 RAM block(s) by reference to a memory file:"
                            + " its identity checked, not its contents\n",
                    verified.out());

            byte[] original = Files.readAllBytes(ram);
            try (var ch = FileChannel.open(ram, StandardOpenOption.WRITE)) {
                ch.truncate(32 << 20);
            }
            refusedAsIs(snap, "does not match the snapshot (its size changed");
            Files.write(ram, original);
            refusedAsIs(snap, "does not match the snapshot (it was modified after the snapshot)");
            var stale = MainTest.run("snapshot", "verify", snap.toString());
            assertEquals(1, stale.code(), stale.err());
            assertEquals(
                    "vmm: snapshot " + file + " cannot be restored: the memory file " + ram
                            + " of RAM block ram-low does not match"
                            + " the snapshot (it was modified after the snapshot)\n",
                    stale.err());
            Files.delete(ram);
            refusedAsIs(snap, "the snapshot's memory file " + ram + " is missing");
        } finally {
            Files.deleteIfExists(ram);
        }
    }

    /**
     * A full snapshot's RAM checksums: intact it verifies and restores with --verify (the guest
     * continues); a flipped byte in a data page, or a byte written into a hole (a zero page now
     * non-zero), fails both verify and restore --verify, naming the block's damaged 2 MiB.
     */
    @KvmTest
    void verifyNamesTheDamagedExtentAndRestoreVerifyRefusesIt(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var snap = dir.resolve("snap");
        var console1 = dir.resolve("console1.txt");
        var console2 = dir.resolve("console2.txt");
        try (var vmm = VmmProcess.start(
                "run",
                "--memory",
                "64M",
                "--api-socket",
                api.toString(),
                "--console",
                "file:" + console1,
                "--cmdline",
                "console=ttyS0 testguest.hb=100 testguest.mem=8M")) {
            awaitText(console1, "hb 0 2", 30);
            vmm.awaitSocket(api);
            var r = MainTest.run("snapshot", "--api-socket", api.toString(), "--no-bypass", snap.toString());
            assertEquals(0, r.code(), r.err());
            assertEquals(0, vmm.waitFor(30), vmm.stderr());
        }
        var file = snap.resolve(SnapshotFormat.FILE_NAME);
        var intact = MainTest.run("snapshot", "verify", snap.toString());
        assertEquals(0, intact.code(), intact.err());
        assertTrue(
                intact.out()
                        .matches("snapshot " + Pattern.quote(file.toString())
                                + " is intact: 1 RAM block\\(s\\), 64 MiB checked in \\d+ ms\n"),
                intact.out());

        byte[] good = Files.readAllBytes(file);
        long data = SnapshotFormat.DATA_START; // the one block's first byte
        // A byte of the guest's exercised memory (it fills 8 MiB above its image at 1 MiB), and a page of the untouched
        // top.
        int dataByte = -1;
        for (int at = (int) (data + (4 << 20)); at < data + (12 << 20) && dataByte < 0; at++)
            if (good[at] != 0) dataByte = at;
        assertTrue(dataByte > 0, "the guest wrote its pattern");
        int holeByte = (int) (data + (61 << 20) + 12345);
        for (int at = holeByte - 4096; at < holeByte + 4096; at++)
            assertEquals(0, good[at], "a zero page near the top");

        byte[] flipped = good.clone();
        flipped[dataByte] ^= 0x20;
        long chunk = (dataByte - data) & -(2L << 20);
        damaged(
                snap,
                file,
                flipped,
                String.format("RAM block ram-low, bytes 0x%x-0x%x: checksum mismatch", chunk, chunk + (2 << 20) - 1));
        byte[] filledHole = good.clone();
        filledHole[holeByte] = 1;
        damaged(snap, file, filledHole, "RAM block ram-low, bytes 0x3c00000-0x3dfffff: checksum mismatch");

        Files.write(file, good);
        var before = heartbeats(Files.readString(console1));
        try (var restored = VmmProcess.start("restore", "--verify", snap.toString(), "--console", "file:" + console2)) {
            awaitText(console2, "hb 0 " + (before.get(0) + 3), 30);
            assertTrue(
                    restored.stderr()
                            .startsWith("vmm: snapshot " + file + " is intact: 1 RAM block(s), 64 MiB checked"),
                    restored.stderr());
            restored.signal("TERM");
            assertEquals(0, restored.waitFor(30), restored.stderr());
        }
        heartbeats(Files.readString(console1) + Files.readString(console2));
    }

    static void damaged(Path snap, Path file, byte[] content, String why) throws Exception {
        Files.write(file, content);
        String line = "vmm: snapshot " + file + " is corrupt (" + why + ")\n";
        var verify = MainTest.run("snapshot", "verify", snap.toString());
        assertEquals(1, verify.code(), verify.out());
        assertEquals(line, verify.err());
        var restore = MainTest.run("restore", "--verify", snap.toString(), "--console", "file:/dev/null");
        assertEquals(1, restore.code(), restore.err());
        assertEquals(line, restore.err());
    }

    /** The committed format v1 snapshot has no RAM checksums: verify says so (exit 0); restore --verify warns and restores it. */
    @KvmTest
    void aVersion1SnapshotVerifiesWithoutRamChecksumsAndStillRestores(@TempDir Path dir) throws Exception {
        var fixture = Path.of("src/test/fixtures/snapshots/v1-52b27eb-full-2cpu");
        var snap = Files.createDirectory(dir.resolve("v1"));
        Files.copy(fixture.resolve(SnapshotFormat.FILE_NAME), snap.resolve(SnapshotFormat.FILE_NAME));
        var file = snap.resolve(SnapshotFormat.FILE_NAME);
        var verify = MainTest.run("snapshot", "verify", snap.toString());
        assertEquals(0, verify.code(), verify.err());
        assertEquals(
                "snapshot " + file
                        + " has format version 1: header and sections intact, its RAM carries no checksums\n",
                verify.out());

        var console = dir.resolve("console.txt");
        try (var restored = VmmProcess.start("restore", "--verify", snap.toString(), "--console", "file:" + console)) {
            awaitText(console, "hb 1 \\d+", 30);
            int first = Integer.parseInt(Files.readString(console)
                    .lines()
                    .filter(l -> l.startsWith("hb 1 "))
                    .findFirst()
                    .orElseThrow()
                    .substring(5));
            awaitText(console, "hb 1 " + (first + 3), 30);
            assertTrue(
                    restored.stderr()
                            .startsWith("vmm: snapshot " + file + " has format version 1: header and sections intact,"
                                    + " its RAM carries no checksums; restoring it unverified\n"),
                    restored.stderr());
            restored.signal("TERM");
            assertEquals(0, restored.waitFor(30), restored.stderr());
        }
        continuing(Files.readString(console));
    }

    /** The heartbeats of a guest restored from a snapshot of unknown count: each CPU's go on by one from its first, nothing CORRUPT. */
    static void continuing(String console) {
        var first = new HashMap<Integer, Integer>();
        var lines = new ArrayList<String>();
        for (var line : console.lines().toList()) {
            var m = TestGuest.HEARTBEAT.matcher(line);
            if (m.matches() && first.putIfAbsent(Integer.parseInt(m.group(1)), Integer.parseInt(m.group(2))) == null) {
                for (int n = 1; n < Integer.parseInt(m.group(2)); n++)
                    lines.add("hb " + m.group(1) + " " + n); // what the saved guest had printed
            }
            lines.add(line);
        }
        assertEquals(2, first.size(), console);
        Heartbeats.check(lines);
    }

    /**
     * Issue 13: kill -9 of a VMM while it writes a 1 GiB full snapshot into a directory holding an
     * earlier snapshot. The earlier one restores intact (the guest goes on from it, nothing
     * CORRUPT); the dead writer's temporary file is ignored by that restore and removed by the
     * next save, after which the directory holds exactly snapshot.pvm.
     */
    @KvmTest
    void aSaveKilledMidWriteLeavesTheEarlierSnapshotAndTheNextSaveRemovesItsTemporaryFile(@TempDir Path dir)
            throws Exception {
        var shm = Files.createTempDirectory(Path.of("/dev/shm"), "panama-kill-test-");
        try {
            var snap = shm.resolve("snap");
            var console1 = dir.resolve("console1.txt");
            var console2 = dir.resolve("console2.txt");
            var console3 = dir.resolve("console3.txt");
            String cmdline = "console=ttyS0 testguest.hb=100 testguest.mem=512M";
            var api1 = dir.resolve("api1.sock");
            try (var first = VmmProcess.start(
                    "run",
                    "--memory",
                    "1G",
                    "--api-socket",
                    api1.toString(),
                    "--console",
                    "file:" + console1,
                    "--cmdline",
                    cmdline)) {
                awaitText(console1, "hb 0 2", 60);
                first.awaitSocket(api1);
                var r = MainTest.run("snapshot", "--api-socket", api1.toString(), "--no-bypass", snap.toString());
                assertEquals(0, r.code(), r.err());
                assertEquals(0, first.waitFor(30), first.stderr());
            }
            var file = snap.resolve(SnapshotFormat.FILE_NAME);
            byte[] earlierHeader = Arrays.copyOf(Files.readAllBytes(file), SnapshotFormat.HEADER_SIZE);

            // A second VMM continues that guest and is killed while it saves it again into the same directory.
            var api2 = dir.resolve("api2.sock");
            Path temp;
            try (var second = VmmProcess.start(
                    "restore", snap.toString(), "--api-socket", api2.toString(), "--console", "file:" + console2)) {
                second.awaitSocket(api2);
                awaitText(console2, "hb 0 \\d+", 30);
                var save = CompletableFuture.supplyAsync(() ->
                        MainTest.run("snapshot", "--api-socket", api2.toString(), "--no-bypass", snap.toString()));
                temp = awaitGrowingTemporary(snap, second.pid(), save);
                ProcessHandle.of(second.pid()).orElseThrow().destroyForcibly(); // SIGKILL
                second.waitFor(30);
                var failed = save.get(30, TimeUnit.SECONDS);
                assertEquals(1, failed.code(), failed.out());
            }
            assertTrue(Files.size(temp) > 0, "kill -9 leaves the writer's temporary file: " + temp);
            assertTrue(
                    Arrays.equals(earlierHeader, Arrays.copyOf(Files.readAllBytes(file), SnapshotFormat.HEADER_SIZE)),
                    "snapshot.pvm is still the earlier snapshot");

            // The earlier snapshot restores (the temporary file beside it ignored) and the guest goes on from it.
            var api3 = dir.resolve("api3.sock");
            var before = heartbeats(Files.readString(console1));
            try (var third = VmmProcess.start(
                    "restore", snap.toString(), "--api-socket", api3.toString(), "--console", "file:" + console3)) {
                awaitText(console3, "hb 0 " + (before.get(0) + 5), 60);
                third.awaitSocket(api3);
                assertTrue(Files.exists(temp));
                var r = MainTest.run("snapshot", "--api-socket", api3.toString(), "--no-bypass", snap.toString());
                assertEquals(0, r.code(), r.err());
                assertEquals(0, third.waitFor(30), third.stderr());
            }
            heartbeats(Files.readString(console1) + Files.readString(console3));
            try (var files = Files.list(snap)) {
                assertEquals(List.of(file), files.toList(), "the next save removed the dead writer's temporary file");
            }
        } finally {
            try (var walk = Files.walk(shm)) {
                for (var p : walk.sorted(Comparator.reverseOrder()).toList()) Files.deleteIfExists(p);
            }
        }
    }

    /** Waits until the VMM {@code pid} has a temporary snapshot file in {@code dir} that is growing (it is writing RAM). */
    static Path awaitGrowingTemporary(Path dir, long pid, Future<?> save) throws Exception {
        String prefix = "." + SnapshotFormat.FILE_NAME + ".tmp-" + pid + "-";
        long deadline = System.nanoTime() + 60_000_000_000L, lastSize = -1;
        while (System.nanoTime() < deadline && !save.isDone()) {
            Path temp = null;
            try (var files = Files.list(dir)) {
                temp = files.filter(f -> f.getFileName().toString().startsWith(prefix))
                        .findFirst()
                        .orElse(null);
            }
            if (temp != null) {
                long size;
                try {
                    size = Files.size(temp);
                } catch (NoSuchFileException e) {
                    break; // committed already: too late
                }
                if (lastSize > 0 && size > lastSize) return temp;
                lastSize = size;
            }
            Thread.sleep(1);
        }
        throw new AssertionError(
                "no growing temporary snapshot file of pid " + pid + " in " + dir + " (the save ended or never began)");
    }

    static byte[] withHeaderInt(byte[] good, int offset, int value) {
        byte[] b = good.clone();
        var buf = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
        buf.putInt(offset, value);
        var crc = new CRC32C();
        crc.update(b, 0, 60);
        buf.putInt(60, (int) crc.getValue());
        return b;
    }

    static void refused(Path snap, Path file, byte[] content, String why) throws Exception {
        Files.write(file, content);
        refusedAsIs(snap, why);
    }

    static void refusedAsIs(Path snap, String why) {
        var r = MainTest.run("restore", snap.toString(), "--console", "file:/dev/null");
        assertEquals(1, r.code(), r.err());
        assertEquals(1, r.err().lines().count(), r.err());
        assertTrue(r.err().startsWith("vmm: ") && r.err().contains(why), r.err());
    }

    /** A full snapshot (memfd RAM) restored in a new process with each --memory-load: the guest goes on, nothing CORRUPT. */
    @KvmTest
    void aFullSnapshotRestoresWithEachMemoryLoad(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var snap = dir.resolve("snap");
        var console1 = dir.resolve("console1.txt");
        try (var first = VmmProcess.start(
                "run",
                "--memory",
                "64M",
                "--api-socket",
                api.toString(),
                "--console",
                "file:" + console1,
                "--cmdline",
                "console=ttyS0 testguest.hb=150 testguest.mem=16M")) {
            awaitText(console1, "hb 0 3", 30);
            first.awaitSocket(api);
            assertEquals(
                    0,
                    MainTest.run("snapshot", "--api-socket", api.toString(), snap.toString())
                            .code());
            assertEquals(0, first.waitFor(30), first.stderr());
        }
        var before = heartbeats(Files.readString(console1));
        for (var load : new String[] {"lazy", "lazy", "eager", "mapped"}) { // the second lazy one uses the working set
            var console = Files.createTempFile(dir, "console-" + load, ".txt");
            try (var restored = VmmProcess.start(
                    "restore", "--memory-load", load, snap.toString(), "--console", "file:" + console)) {
                awaitText(console, "hb 0 " + (before.get(0) + 3), 30);
                restored.signal("TERM");
                assertEquals(0, restored.waitFor(30), restored.stderr());
            }
            heartbeats(Files.readString(console1) + Files.readString(console));
        }
        assertTrue(Files.exists(snap.resolve("working-set")), "the first lazy restore wrote the working set");
        var bad = MainTest.run("restore", "--memory-load", "fast", snap.toString());
        assertEquals(2, bad.code(), bad.err());
        assertTrue(bad.err().contains("unknown memory load 'fast': use mapped, lazy or eager"), bad.err());
        assertEquals(1, bad.err().lines().count(), bad.err());
    }
}
