package dev.panamavmm.migration;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Snapshot format v1: round trips, sparse RAM, atomic commit, and every kind of corrupt input refused. */
class SnapshotFormatTest {
    static final long MIB = 1 << 20;

    /** A snapshot with two sections, one RAM block with data (3 non-zero pages in 16 MiB) and one by reference. */
    static Path write(Path dir) throws IOException {
        var memoryFile = Files.write(dir.resolve("ram.shared"), new byte[8192]);
        try (var arena = Arena.ofConfined();
                var w = SnapshotWriter.create(dir.resolve("snap"))) {
            var block = arena.allocate(16 * MIB, 4096);
            block.set(JAVA_LONG, 0, 0x1111);
            block.set(JAVA_LONG, 5 * MIB, 0x2222);
            block.set(JAVA_BYTE, 16 * MIB - 1, (byte) 0x33);
            w.section("vcpu/0", new byte[] {1, 2, 3});
            w.section("device/serial", "{\"ier\":1}".getBytes());
            w.ramWithData("ram-low", 0, "memfd", false, block, RamWriter.Progress.NONE);
            w.ramByReference(RamBlockEntry.byReference(
                    "ram-high", 4L << 30, 8192, "shared-file", memoryFile, 0, FileIdentity.of(memoryFile)));
            w.commit(Map.of("cpus", 2L), "PVM", true);
        }
        return dir.resolve("snap");
    }

    @Test
    void roundTripsSectionsMetadataAndRam(@TempDir Path dir) throws Exception {
        var snap = write(dir);
        var r = SnapshotReader.open(snap);
        assertEquals(SnapshotFormat.VERSION, r.version());
        assertEquals("PVM", r.flavour());
        assertTrue(r.bypass());
        assertEquals(2L, r.metadata().get("cpus"));
        assertArrayEquals(new byte[] {1, 2, 3}, r.section("vcpu/0"));
        assertEquals("{\"ier\":1}", new String(r.section("device/serial")));
        assertEquals(2, r.ram().size());
        var low = r.ram().get(0);
        assertFalse(low.byReference());
        assertEquals(3, low.nonZeroPages());
        assertEquals(16 * MIB, low.size());
        var high = r.ram().get(1);
        assertTrue(high.byReference());
        assertEquals(dir.resolve("ram.shared"), high.file());
        assertEquals(FileIdentity.of(dir.resolve("ram.shared")), high.identity());

        try (var raf = new RandomAccessFile(r.file().toFile(), "r")) {
            raf.seek(low.dataOffset() + 5 * MIB);
            assertEquals(0x2222, Long.reverseBytes(raf.readLong()));
            raf.seek(low.dataOffset() + 16 * MIB - 1);
            assertEquals(0x33, raf.read());
        }
        long allocated = allocatedBytes(r.file());
        assertTrue(allocated < 1 * MIB, "zero pages are holes: " + allocated + " bytes allocated for 16 MiB of RAM");
        try (var files = Files.list(snap)) {
            assertEquals(
                    List.of(snap.resolve(SnapshotFormat.FILE_NAME)), files.toList(), "nothing but the snapshot file");
        }
    }

    /** Disk space a file really uses (stat's 512-byte blocks): holes cost nothing. */
    static long allocatedBytes(Path file) throws Exception {
        var p = new ProcessBuilder("stat", "-c", "%b", file.toString()).start();
        String out = new String(p.getInputStream().readAllBytes()).strip();
        assertEquals(0, p.waitFor());
        return Long.parseLong(out) * 512;
    }

    @Test
    void anUncommittedSnapshotLeavesNothing(@TempDir Path dir) {
        try (var w = SnapshotWriter.create(dir)) {
            w.section("vcpu/0", new byte[10]);
        }
        assertEquals(0, dir.toFile().list().length);
        var e = assertThrows(SnapshotException.class, () -> SnapshotReader.open(dir));
        assertEquals("no snapshot in " + dir + " (snapshot.pvm is missing)", e.getMessage());
    }

    @Test
    void refusesMissingTruncatedCorruptAndForeignInput(@TempDir Path dir) throws Exception {
        var e = assertThrows(SnapshotException.class, () -> SnapshotReader.open(dir.resolve("none")));
        assertEquals("no snapshot directory " + dir.resolve("none"), e.getMessage());

        var snap = write(dir);
        var file = snap.resolve(SnapshotFormat.FILE_NAME);
        byte[] good = Files.readAllBytes(file);

        Files.write(file, Arrays.copyOf(good, good.length - 1));
        assertTrue(assertThrows(SnapshotException.class, () -> SnapshotReader.open(snap))
                .getMessage()
                .contains("is truncated"));
        Files.write(file, Arrays.copyOf(good, 10));
        assertTrue(assertThrows(SnapshotException.class, () -> SnapshotReader.open(snap))
                .getMessage()
                .contains("is truncated"));

        for (int at : new int[] {9, 20, good.length - 2, good.length - 40}) {
            byte[] bad = good.clone();
            bad[at] ^= 0x10;
            Files.write(file, bad);
            var m = assertThrows(SnapshotException.class, () -> SnapshotReader.open(snap), "flipped byte " + at)
                    .getMessage();
            assertTrue(m.contains("is corrupt"), m);
        }

        byte[] foreign = good.clone();
        foreign[0] = 'X';
        Files.write(file, foreign);
        assertEquals(
                file + " is not a Panama VMM snapshot",
                assertThrows(SnapshotException.class, () -> SnapshotReader.open(snap))
                        .getMessage());

        byte[] future = good.clone();
        future[SnapshotFormat.OFF_VERSION] = 7;
        var crc = new CRC32C();
        crc.update(future, 0, SnapshotFormat.OFF_HEADER_CRC);
        ByteBuffer.wrap(future).order(ByteOrder.LITTLE_ENDIAN).putInt(SnapshotFormat.OFF_HEADER_CRC, (int)
                crc.getValue());
        Files.write(file, future);
        assertEquals(
                "snapshot " + file + " has format version 7; this VMM reads versions 1 to 3",
                assertThrows(SnapshotException.class, () -> SnapshotReader.open(snap))
                        .getMessage());
    }

    @Test
    void aContainerKeptInMemoryIsTheFileByteForByteAndIsCheckedAlike(@TempDir Path dir) throws Exception {
        var memoryFile = Files.write(dir.resolve("ram.shared"), new byte[8192]);
        var entry =
                RamBlockEntry.byReference("ram", 0, 8192, "shared-file", memoryFile, 0, FileIdentity.of(memoryFile));
        byte[] bytes;
        try (var w = SnapshotWriter.inMemory()) {
            w.section("vcpu/0", new byte[] {1, 2, 3});
            w.ramByReference(entry);
            w.ramByReference(RamBlockEntry.byDescriptor("ram-high", 1L << 32, 4096, "memfd", 0, 0));
            assertThrows(IllegalStateException.class, () -> w.reserve(4096), "pages need a file");
            bytes = w.commitToBytes(Map.of("cpus", 1L), "PVM", true);
        }
        var name = Path.of("migration-stream", SnapshotFormat.FILE_NAME);
        var r = SnapshotReader.fromBytes(bytes, name);
        assertArrayEquals(new byte[] {1, 2, 3}, r.section("vcpu/0"));
        assertEquals(1L, r.metadata().get("cpus"));
        assertEquals(
                List.of("ram", "ram-high"),
                r.ram().stream().map(RamBlockEntry::id).toList());
        assertTrue(r.ram().get(1).byDescriptor());
        assertTrue(r.bypass());

        // The same bytes as a file are a snapshot too.
        Files.createDirectories(dir.resolve("as-file"));
        Files.write(dir.resolve("as-file").resolve(SnapshotFormat.FILE_NAME), bytes);
        assertArrayEquals(
                new byte[] {1, 2, 3},
                SnapshotReader.open(dir.resolve("as-file")).section("vcpu/0"));

        // Every byte that matters is checked: a flip anywhere in the header or the section table (not
        // the zero gap between them, which nothing reads) is refused in one line, never another exception.
        for (int at = 0; at < bytes.length; at++) {
            if (at == SnapshotFormat.HEADER_SIZE) at = (int) SnapshotFormat.DATA_START;
            for (int bit : new int[] {0x01, 0x80}) {
                byte[] bad = bytes.clone();
                bad[at] ^= (byte) bit;
                int flipped = at;
                var m = assertThrows(
                                SnapshotException.class,
                                () -> SnapshotReader.fromBytes(bad, name),
                                "byte " + flipped + " bit " + bit)
                        .getMessage();
                assertTrue(m.startsWith("snapshot " + name + " is ") || m.contains("not a Panama VMM snapshot"), m);
            }
        }
        assertTrue(assertThrows(
                        SnapshotException.class,
                        () -> SnapshotReader.fromBytes(Arrays.copyOf(bytes, bytes.length - 1), name))
                .getMessage()
                .contains("is truncated"));

        // A stream cannot carry pages: a container with a block's data (a file's) is refused.
        var withPages = Files.readAllBytes(write(dir).resolve(SnapshotFormat.FILE_NAME));
        assertEquals(
                "snapshot " + name + " is corrupt (RAM block ram-low holds pages, which only a snapshot file can)",
                assertThrows(SnapshotException.class, () -> SnapshotReader.fromBytes(withPages, name))
                        .getMessage());
    }

    @Test
    void fileIdentityNoticesAReplacedOrModifiedFile(@TempDir Path dir) throws Exception {
        var f = Files.write(dir.resolve("m"), new byte[4096]);
        var saved = FileIdentity.of(f);
        assertEquals(null, saved.difference(FileIdentity.of(f)));
        Thread.sleep(5);
        Files.write(f, new byte[4096]);
        assertEquals("it was modified after the snapshot", saved.difference(FileIdentity.of(f)));
        Files.delete(f);
        Files.write(f, new byte[8192]);
        assertTrue(saved.difference(FileIdentity.of(f)).startsWith("it is a different file")
                || saved.difference(FileIdentity.of(f)).startsWith("its size"));
    }
}
