package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.MemoryException;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The hand-over of a shared memory file between two VMMs that each open it (a TCP migration by reference). */
class SharedMemoryFileTest {
    private static final long SIZE = 16 * GuestMemory.MIB;

    private static List<MigrationProtocol.RamBlock> announce(GuestMemory memory) {
        var rows = new ArrayList<MigrationProtocol.RamBlock>();
        Path file = SharedMemoryFile.of(memory);
        for (var b : memory.blocks())
            rows.add(new MigrationProtocol.RamBlock(b.id(), b.guestAddress(), b.size(), b.fileOffset(), null, file));
        return rows;
    }

    /** Guest memory in {@code file} with a few pages written, as a guest would have. */
    private static GuestMemory written(Path file, Arena arena, long seed) {
        var memory = GuestMemory.create(SIZE, new Backing.SharedFile(file), arena);
        var segment = memory.blocks().getFirst().segment();
        for (long page = 3; page < SIZE / 4096; page += 37)
            segment.set(ValueLayout.JAVA_LONG, page * 4096, seed + page);
        return memory;
    }

    @Test
    void theDestinationTakesTheFileOverAndTheSourceCannotTakeItBack(@TempDir Path dir) {
        Path file = dir.resolve("ram");
        try (var arena = Arena.ofShared();
                var source = written(file, arena, 1)) {
            var why = new StringBuilder();
            var sources = SharedMemoryFile.open(announce(source), why);
            assertNotNull(sources, why.toString());
            try (var destination = GuestMemory.map(sources, arena)) {
                var fingerprints = SharedMemoryFile.fingerprints(source, SharedMemoryFile.samples(source));
                assertFalse(fingerprints.getFirst().pages().isEmpty(), "pages of the file's data are sampled");
                var locked = assertThrows(
                        MemoryException.class, () -> SharedMemoryFile.takeOver(destination, file, fingerprints));
                assertTrue(locked.getMessage().contains("is in use by PID"), locked.getMessage());
                SharedMemoryFile.release(source);
                SharedMemoryFile.takeOver(destination, file, fingerprints);
                var back = assertThrows(MemoryException.class, () -> SharedMemoryFile.retake(source, file));
                assertTrue(back.getMessage().contains("is in use by PID"), back.getMessage());
            }
        }
    }

    @Test
    void theSamplesTravelAheadAndTheDestinationMapsThoseBeforeThePause(@TempDir Path dir) throws Exception {
        Path file = dir.resolve("ram");
        try (var arena = Arena.ofShared();
                var source = written(file, arena, 1)) {
            var samples = SharedMemoryFile.samples(source);
            var wire = MigrationProtocol.encode(SharedMemoryFile.message(source, samples), MigrationProtocol.VERSION);
            var message = assertInstanceOf(MigrationProtocol.Samples.class, MigrationProtocol.decode(wire));
            assertEquals(samples.getFirst(), message.blocks().getFirst().pages());
            try (var destination =
                    GuestMemory.map(SharedMemoryFile.open(announce(source), new StringBuilder()), arena)) {
                long before = residentPages(destination);
                SharedMemoryFile.touch(destination, message.blocks());
                // mincore says nothing of this process's mapping; its page table does (/proc/self/smaps' Rss)
                assertTrue(
                        residentPages(destination)
                                >= before + samples.getFirst().size() - 1,
                        "the sampled pages are mapped: " + before + " -> " + residentPages(destination));
                var id = source.blocks().getFirst().id();
                var outside = List.of(new MigrationProtocol.BlockPages(id, List.of(SIZE / 4096)));
                var e = assertThrows(SnapshotException.class, () -> SharedMemoryFile.touch(destination, outside));
                assertEquals("the source's samples names page " + SIZE / 4096 + " of " + id, e.getMessage());
                var other = List.of(new MigrationProtocol.BlockPages("elsewhere", List.of(0L)));
                e = assertThrows(SnapshotException.class, () -> SharedMemoryFile.touch(destination, other));
                assertEquals("the source's samples 0 is of block elsewhere", e.getMessage());
            }
        }
        var tooMany = new StringBuilder("{\"type\":\"samples\",\"blocks\":[{\"block\":\"ram\",\"pages\":[0");
        for (int i = 1; i <= MigrationProtocol.Fingerprint.MAX_PAGES; i++)
            tooMany.append(',').append(i);
        var e = assertThrows(
                SnapshotException.class,
                () -> MigrationProtocol.decode(tooMany.append("]}]}").toString().getBytes()));
        assertEquals("the source sent samples of 65 pages", e.getMessage());
    }

    @Test
    void theSamplesAreSpreadOverTheDataOfADenseAndOfASparseFileAndNoHoleIsRead() throws Exception {
        long pages = SIZE / 4096, spacing = pages / SharedMemoryFile.SAMPLES;
        // tmpfs, where guest RAM files live and where reading a hole through a mapping allocates it
        Path dir = Files.createTempDirectory(Path.of("/dev/shm"), "panama-samples-test-");
        try (var arena = Arena.ofShared();
                var dense = GuestMemory.create(SIZE, new Backing.SharedFile(dir.resolve("dense")), arena);
                var sparse = GuestMemory.create(SIZE, new Backing.SharedFile(dir.resolve("sparse")), arena)) {
            var d = dense.blocks().getFirst();
            for (long page = 0; page < pages; page++) // page spacing + 1 is never written: a hole
            if (page != spacing + 1) d.segment().set(ValueLayout.JAVA_LONG, page * 4096, page + 1);
            d.segment().set(ValueLayout.JAVA_LONG, spacing * 4096, 0); // data, but zeros
            d.segment().set(ValueLayout.JAVA_LONG, 2 * spacing * 4096, 0);
            var denseExtents = extents(dense);
            // Every sample point is data: a sample at each point, or the next non-zero page after it.
            var expected = new ArrayList<Long>();
            for (long k = 0; k < SharedMemoryFile.SAMPLES; k++) expected.add(k * spacing);
            expected.set(1, spacing + 2); // past the zero page and the hole after it (not read)
            expected.set(2, 2 * spacing + 1);
            assertEquals(expected, SharedMemoryFile.samples(dense).getFirst());
            SharedMemoryFile.fingerprints(dense, SharedMemoryFile.samples(dense));
            assertEquals(denseExtents, extents(dense), "no hole of the file was read (a read allocates it)");

            // A file that holds three pages: found through its data extents, and only those pages.
            var s = sparse.blocks().getFirst();
            for (long page : new long[] {5, 2000, 4000}) s.segment().set(ValueLayout.JAVA_LONG, page * 4096, page);
            var sparseExtents = extents(sparse);
            assertEquals(
                    List.of(5L, 2000L, 4000L), SharedMemoryFile.samples(sparse).getFirst());
            SharedMemoryFile.fingerprints(sparse, SharedMemoryFile.samples(sparse));
            assertEquals(sparseExtents, extents(sparse), "no hole of the file was read");
        } finally {
            Files.deleteIfExists(dir.resolve("dense"));
            Files.deleteIfExists(dir.resolve("sparse"));
            Files.delete(dir);
        }
    }

    private static List<List<Long>> extents(GuestMemory memory) {
        return Stream.of(memory.blocks().getFirst().dataExtents())
                .map(e -> List.of(e[0], e[1]))
                .toList();
    }

    /** The resident pages of this process's mapping of {@code memory}'s first block, from /proc/self/smaps. */
    private static long residentPages(GuestMemory memory) throws java.io.IOException {
        String start = Long.toHexString(memory.blocks().getFirst().segment().address());
        var lines = Files.readAllLines(Path.of("/proc/self/smaps"));
        for (int i = 0; i < lines.size(); i++) {
            if (!lines.get(i).startsWith(start + "-")) continue;
            for (int j = i + 1; j < lines.size(); j++)
                if (lines.get(j).startsWith("Rss:"))
                    return Long.parseLong(lines.get(j).replaceAll("\\D", "")) / 4;
        }
        throw new AssertionError("no mapping at " + start + " in /proc/self/smaps");
    }

    @Test
    void aFileOfTheSameNameAndSizeWithOtherBytesIsRefused(@TempDir Path dir) {
        Path file = dir.resolve("ram");
        try (var arena = Arena.ofShared();
                var source = written(file, arena, 1)) {
            var fingerprints = SharedMemoryFile.fingerprints(source, SharedMemoryFile.samples(source));
            SharedMemoryFile.release(source);
            try (var other = written(dir.resolve("other"), arena, 2)) {
                var e = assertThrows(
                        SnapshotException.class,
                        () -> SharedMemoryFile.takeOver(other, dir.resolve("other"), fingerprints));
                assertEquals(
                        "memory file " + dir.resolve("other") + " here holds other bytes than the source's"
                                + " (not the same file on shared storage, or the storage is not coherent)",
                        e.getMessage());
            }
        }
    }

    @Test
    void aMissingOrShortFileIsNotMappedAndSaysWhy(@TempDir Path dir) throws Exception {
        Path file = dir.resolve("ram");
        try (var arena = Arena.ofShared();
                var source = written(file, arena, 1)) {
            var rows = announce(source);
            Files.move(file, dir.resolve("moved"));
            var why = new StringBuilder();
            assertNull(SharedMemoryFile.open(rows, why));
            assertEquals(file + " is not a regular file here", why.toString());
            try (var f = new RandomAccessFile(file.toFile(), "rw")) {
                f.setLength(SIZE / 2);
            }
            var shorter = new StringBuilder();
            assertNull(SharedMemoryFile.open(rows, shorter));
            assertEquals(file + " holds " + SIZE / 2 + " bytes here, block ram-low needs " + SIZE, shorter.toString());
        }
    }
}
