package dev.panamavmm.migration;

import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.FileTime;
import java.util.Map;
import java.util.Set;
import java.util.stream.Collectors;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Format v2's RAM checksums (computed while writing, checked by RamVerifier) and the writer's removal of stale temporary files. */
class RamChecksumsTest {
    static final long PAGE = 4096, MIB = 1 << 20;

    /** The table built page by page equals the CRC32C of each chunk's bytes, zero pages and holes included. */
    @Test
    void accumulatedChecksumsAreThoseOfTheWholeChunks(@TempDir Path dir) throws Exception {
        int chunk = 16 * (int) PAGE;
        try (var arena = Arena.ofConfined();
                var ch = FileChannel.open(
                        dir.resolve("ram"),
                        StandardOpenOption.CREATE_NEW,
                        StandardOpenOption.READ,
                        StandardOpenOption.WRITE)) {
            var block = arena.allocate(100 * PAGE, PAGE); // 7 chunks, the last one 4 pages
            // Data at the start of a chunk, in its middle, at its last page, in the short last chunk; chunk 2 all zero.
            for (long p : new long[] {0, 5, 6, 20, 31, 50, 97, 99})
                block.set(JAVA_LONG, p * PAGE + 8 * p, 0x0101_0101L * (p + 1));
            var accumulator = new RamChecksums.Accumulator(block, chunk);
            // Page 50 and its neighbours lie outside the extents: the caller vouches they are zero, so clear it as the
            // writer would assume.
            block.set(JAVA_LONG, 50 * PAGE + 400, 0);
            RamWriter.write(
                    ch,
                    0,
                    block,
                    new long[][] {{0, 40 * PAGE}, {64 * PAGE, 100 * PAGE}},
                    RamWriter.Progress.NONE,
                    accumulator);
            int[] crcs = accumulator.finish();
            assertEquals(7, crcs.length);
            for (int i = 0; i < crcs.length; i++) {
                long from = (long) i * chunk, to = Math.min(block.byteSize(), from + chunk);
                assertEquals(crcOf(block, from, to), crcs[i], "chunk " + i);
            }
        }
    }

    static int crcOf(MemorySegment segment, long from, long to) {
        var crc = new CRC32C();
        crc.update(segment.asSlice(from, to - from).asByteBuffer());
        return (int) crc.getValue();
    }

    /** A snapshot whose 16 MiB block has data in chunks 0 and 2 (2 MiB chunks), the rest holes, and a block by reference. */
    static Path write(Path dir) throws Exception {
        var memoryFile = Files.write(dir.resolve("ram.shared"), new byte[8192]);
        try (var arena = Arena.ofConfined();
                var w = SnapshotWriter.create(dir.resolve("snap"))) {
            var block = arena.allocate(16 * MIB, PAGE);
            block.set(JAVA_LONG, 0, 0x1111);
            block.set(JAVA_LONG, 5 * MIB, 0x2222);
            w.section("vcpu/0", new byte[] {1, 2, 3});
            w.ramWithData("ram-low", 0, "memfd", false, block, RamWriter.Progress.NONE);
            w.ramByReference(RamBlockEntry.byReference(
                    "ram-high", 4L << 30, 8192, "shared-file", memoryFile, 0, FileIdentity.of(memoryFile)));
            w.commit(Map.of("cpus", 1L), "PVM", true);
        }
        return dir.resolve("snap");
    }

    @Test
    void anIntactSnapshotVerifies(@TempDir Path dir) throws Exception {
        var snap = write(dir);
        var verified = RamVerifier.verify(SnapshotReader.open(snap));
        assertTrue(verified.checksums());
        assertEquals(1, verified.blocksChecked());
        assertEquals(16 * MIB, verified.bytesChecked());
        assertEquals(1, verified.blocksByReference());
        var table = SnapshotReader.open(snap)
                .checksums(SnapshotReader.open(snap).ram().getFirst());
        assertEquals(RamChecksums.CHUNK, table.chunk());
        assertEquals(8, table.crcs().length);
        assertEquals(
                RamChecksums.zeroCrc(RamChecksums.CHUNK), table.crcs()[1], "a chunk of holes has the CRC of zeros");
    }

    @Test
    void aFlippedByteOrAHoleThatBecameDataIsNamed(@TempDir Path dir) throws Exception {
        var snap = write(dir);
        var file = snap.resolve(SnapshotFormat.FILE_NAME);
        long data = SnapshotReader.open(snap).ram().getFirst().dataOffset();
        byte[] good = Files.readAllBytes(file);

        byte[] flipped = good.clone();
        flipped[(int) (data + 5 * MIB + 3)] ^= 0x04;
        Files.write(file, flipped);
        var reader = SnapshotReader.open(snap); // header and sections are intact: only the RAM check sees it
        assertEquals(
                "snapshot " + file + " is corrupt (RAM block ram-low, bytes 0x400000-0x5fffff: checksum mismatch)",
                assertThrows(SnapshotException.class, () -> RamVerifier.verify(reader))
                        .getMessage());

        Files.write(file, good);
        try (var ch = FileChannel.open(file, StandardOpenOption.WRITE)) {
            ch.write(ByteBuffer.wrap(new byte[] {7}), data + 13 * MIB + 77); // inside a hole (chunk 6)
        }
        assertEquals(
                "snapshot " + file + " is corrupt (RAM block ram-low, bytes 0xc00000-0xdfffff: checksum mismatch)",
                assertThrows(SnapshotException.class, () -> RamVerifier.verify(SnapshotReader.open(snap)))
                        .getMessage());

        Files.write(file, good);
        assertTrue(RamVerifier.verify(SnapshotReader.open(snap)).checksums());
    }

    /** A format v1 snapshot (the version rewritten in the header) has no checksums: nothing to read, said so. */
    @Test
    void aVersion1SnapshotHasNoChecksums(@TempDir Path dir) throws Exception {
        var snap = write(dir);
        var file = snap.resolve(SnapshotFormat.FILE_NAME);
        byte[] v1 = Files.readAllBytes(file);
        var header = ByteBuffer.wrap(v1).order(ByteOrder.LITTLE_ENDIAN);
        header.putInt(SnapshotFormat.OFF_VERSION, 1);
        var crc = new CRC32C();
        crc.update(v1, 0, SnapshotFormat.OFF_HEADER_CRC);
        header.putInt(SnapshotFormat.OFF_HEADER_CRC, (int) crc.getValue());
        Files.write(file, v1);
        var verified = RamVerifier.verify(SnapshotReader.open(snap));
        assertFalse(verified.checksums());
        assertEquals(0, verified.bytesChecked());
    }

    @Test
    void checksumSectionNamesAreTheWritersOwn(@TempDir Path dir) {
        try (var w = SnapshotWriter.create(dir)) {
            assertThrows(IllegalArgumentException.class, () -> w.section(RamChecksums.section("ram-low"), new byte[8]));
        }
    }

    /** A save removes the temporary files of writers that are gone, keeps those of live ones; a reader never looks at them. */
    @Test
    void staleTemporaryFilesOfDeadWritersAreRemoved(@TempDir Path dir) throws Exception {
        var dead = new ProcessBuilder("true").start();
        dead.waitFor();
        long self = ProcessHandle.current().pid();
        var deadWriter = Files.write(dir.resolve(".snapshot.pvm.tmp-" + dead.pid() + "-123"), new byte[PAGE_INT]);
        var liveWriter = Files.write(dir.resolve(".snapshot.pvm.tmp-" + self + "--456"), new byte[PAGE_INT]);
        var initsFile = Files.write(dir.resolve(".snapshot.pvm.tmp-1-789"), new byte[PAGE_INT]);
        // Our pid, but written an hour before this JVM started: the pid was reused, the writer is gone.
        var reusedPid = Files.write(dir.resolve(".snapshot.pvm.tmp-" + self + "-1"), new byte[PAGE_INT]);
        var started = ProcessHandle.current().info().startInstant().orElseThrow();
        Files.setLastModifiedTime(reusedPid, FileTime.from(started.minusSeconds(3600)));
        var notOurs = Files.write(dir.resolve(".snapshot.pvm.tmp-x"), new byte[1]);

        try (var w = SnapshotWriter.create(dir)) {
            w.commit(Map.of(), "PVM", false);
        }
        Set<Path> left;
        try (var files = Files.list(dir)) {
            left = files.collect(Collectors.toSet());
        }
        assertEquals(Set.of(dir.resolve(SnapshotFormat.FILE_NAME), liveWriter, initsFile, notOurs), left);
        assertFalse(Files.exists(deadWriter));
        assertArrayEquals(
                new byte[0],
                SnapshotReader.open(dir).ram().stream()
                        .map(RamBlockEntry::id)
                        .collect(Collectors.joining())
                        .getBytes());
    }

    static final int PAGE_INT = (int) PAGE;
}
