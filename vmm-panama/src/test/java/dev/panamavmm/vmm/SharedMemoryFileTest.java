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
