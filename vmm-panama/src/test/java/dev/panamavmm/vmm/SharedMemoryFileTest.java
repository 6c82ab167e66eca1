package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
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
