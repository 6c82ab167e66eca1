package dev.panamavmm.cli;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.SnapshotFormat;
import dev.panamavmm.testing.VmmProcess;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.zip.CRC32C;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** vmm snapshot / vmm restore as users run them: two processes, the test guest as the oracle. */
class SnapshotCliTest {

    static Map<Integer, Integer> heartbeats(String console) {
        return dev.panamavmm.testing.Heartbeats.check(console);
    }

    static void awaitText(Path file, String regex, long seconds) throws Exception {
        long deadline = System.nanoTime() + seconds * 1_000_000_000L;
        var p = java.util.regex.Pattern.compile("(?m)^" + regex + "$");
        while (!(Files.exists(file) && p.matcher(Files.readString(file)).find())) {
            if (System.nanoTime() > deadline) throw new AssertionError("no /" + regex + "/ in " + file + ":\n" + (Files.exists(file) ? Files.readString(file) : ""));
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
        try (var first = VmmProcess.start("run", "--cpus", "2", "--memory", "128M", "--api-socket", api.toString(),
                "--console", "file:" + console1, "--cmdline", cmdline)) {
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

    @Test
    void badSnapshotsAreOneLineErrors(@TempDir Path dir) throws Exception {
        var missing = MainTest.run("restore", dir.resolve("none").toString());
        assertEquals(1, missing.code());
        assertEquals("vmm: no snapshot directory " + dir.resolve("none") + "\n", missing.err());
        var empty = Files.createDirectory(dir.resolve("empty"));
        assertEquals("vmm: no snapshot in " + empty + " (snapshot.pvm is missing)\n", MainTest.run("restore", empty.toString()).err());
        assertEquals(2, MainTest.run("restore", empty.toString(), "--paused").code(), "--paused needs an API socket");
    }

    /** A real snapshot, then each kind of damage: every restore refuses with one line, exit 1. */
    @KvmTest
    void damagedSnapshotsAreRefused(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var snap = dir.resolve("snap");
        var ram = Path.of("/dev/shm", "panama-cli-test-" + ProcessHandle.current().pid() + "-" + System.nanoTime());
        try {
            try (var vmm = VmmProcess.start("run", "--memory", "64M", "--mem-path", ram.toString(), "--shared",
                    "--api-socket", api.toString(), "--console", "file:" + dir.resolve("c"),
                    "--cmdline", "console=ttyS0 testguest.hb=100 testguest.mem=8M")) {
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

            refused(snap, file, java.util.Arrays.copyOf(good, good.length - 7), "is truncated");
            byte[] flipped = good.clone();
            flipped[good.length - 100] ^= 1;
            refused(snap, file, flipped, "is corrupt");
            refused(snap, file, withHeaderInt(good, 8, 2), "has format version 2; this VMM reads version 1");
            String otherFlavour = dev.panamavmm.kvm.Kvm.hostFlavour() == dev.panamavmm.kvm.HostFlavour.PVM ? "VMX" : "PVM";
            refused(snap, file, withHeaderInt(good, 12, otherFlavour.equals("VMX") ? 1 : 3),
                    "the snapshot was taken on a " + otherFlavour + " host");
            Files.write(file, good);

            byte[] original = Files.readAllBytes(ram);
            try (var ch = java.nio.channels.FileChannel.open(ram, java.nio.file.StandardOpenOption.WRITE)) {
                ch.truncate(32 << 20);
            }
            refusedAsIs(snap, "does not match the snapshot (its size changed");
            Files.write(ram, original);
            refusedAsIs(snap, "does not match the snapshot (it was modified after the snapshot)");
            Files.delete(ram);
            refusedAsIs(snap, "the snapshot's memory file " + ram + " is missing");
        } finally {
            Files.deleteIfExists(ram);
        }
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
}
