package dev.panamavmm.migration;

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
import java.util.Arrays;
import java.util.List;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The layer file of a chained template: written, read back, and refused when damaged. */
class LayerFileTest {

    static final long PAGE = 4096;

    /** Pages {@code [0, pages)} each filled with its own number plus {@code seed}; page {@code zero} left zero. */
    static MemorySegment pages(Arena arena, int pages, int seed, int zero) {
        var s = arena.allocate(pages * PAGE, PAGE);
        for (int p = 0; p < pages; p++) if (p != zero) s.asSlice(p * PAGE, PAGE).fill((byte) (p + seed));
        return s;
    }

    @Test
    void runsArePageAlignedAndReadBackAsWritten(@TempDir Path dir) throws Exception {
        var file = dir.resolve(LayerFile.FILE_NAME);
        try (var arena = Arena.ofConfined()) {
            var a = pages(arena, 3, 1, 1); // its middle page is zero: a hole, still part of the run
            var b = pages(arena, 2, 7, -1);
            var written = LayerFile.write(
                    file, 64 * PAGE, List.of(new LayerFile.Source(4 * PAGE, a), new LayerFile.Source(20 * PAGE, b)));
            var read = LayerFile.read(file);
            assertEquals(written, read);
            assertEquals(64 * PAGE, read.memorySize());
            assertEquals(5 * PAGE, read.dataBytes());
            assertEquals(
                    List.of(
                            new LayerFile.Run(4 * PAGE, 3 * PAGE, PAGE),
                            new LayerFile.Run(20 * PAGE, 2 * PAGE, 4 * PAGE)),
                    read.runs());
            assertEquals(6 * PAGE, Files.size(file), "the file ends where the data does");
            try (var ch = FileChannel.open(file, StandardOpenOption.READ)) {
                var mapped = ch.map(FileChannel.MapMode.READ_ONLY, 0, ch.size(), arena);
                for (var run : read.runs()) assertEquals(0, run.fileOffset() % PAGE);
                assertEquals(-1, mapped.asSlice(PAGE, 3 * PAGE).mismatch(a));
                assertEquals(-1, mapped.asSlice(4 * PAGE, 2 * PAGE).mismatch(b));
            }
        }
    }

    @Test
    void aDamagedOrImpossibleLayerIsRefusedInOneLine(@TempDir Path dir) throws Exception {
        var file = dir.resolve(LayerFile.FILE_NAME);
        try (var arena = Arena.ofConfined()) {
            LayerFile.write(file, 16 * PAGE, List.of(new LayerFile.Source(0, pages(arena, 2, 3, -1))));
        }
        byte[] good = Files.readAllBytes(file);

        assertRefused(file, mutate(good, b -> b[0] = 'X'), "is not a Panama VMM layer file");
        assertRefused(file, mutate(good, b -> b[20] ^= 1), "header checksum mismatch");
        assertRefused(file, mutate(good, b -> b[64 + 1] ^= 1), "run table checksum mismatch");
        assertRefused(file, Arrays.copyOf(good, (int) (2 * PAGE)), "truncated");
        // A run beyond the memory, with both checksums made right: refused by the run checks.
        assertRefused(file, withRun(good, 15 * PAGE, 2 * PAGE, PAGE), "impossible run 0");
        // A run whose file offset is not where the data area says: it would map the wrong pages.
        assertRefused(file, withRun(good, 0, 2 * PAGE, 2 * PAGE), "impossible run 0");
        Files.delete(file);
        var missing = assertThrows(SnapshotException.class, () -> LayerFile.read(file));
        assertEquals("layer file " + file + " is missing", missing.getMessage());
    }

    @Test
    void runsThatOverlapOrAreNotWholePagesAreNotWritten(@TempDir Path dir) {
        try (var arena = Arena.ofConfined()) {
            var two = pages(arena, 2, 1, -1);
            assertThrows(
                    IllegalArgumentException.class,
                    () -> LayerFile.write(
                            dir.resolve("a"),
                            16 * PAGE,
                            List.of(new LayerFile.Source(0, two), new LayerFile.Source(PAGE, two))));
            assertThrows(
                    IllegalArgumentException.class,
                    () -> LayerFile.write(
                            dir.resolve("b"), 16 * PAGE, List.of(new LayerFile.Source(100, two.asSlice(0, PAGE)))));
            assertFalse(Files.exists(dir.resolve("a")) || Files.exists(dir.resolve("b")));
        }
    }

    interface Change {
        void apply(byte[] b);
    }

    static byte[] mutate(byte[] good, Change change) {
        byte[] b = good.clone();
        change.apply(b);
        return b;
    }

    /** {@code good} with its only run replaced and both checksums recomputed. */
    static byte[] withRun(byte[] good, long memoryOffset, long length, long fileOffset) {
        byte[] b = good.clone();
        var buf = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
        buf.putLong(64, memoryOffset).putLong(72, length).putLong(80, fileOffset);
        var crc = new CRC32C();
        crc.update(b, 64, 24);
        buf.putInt(56, (int) crc.getValue());
        crc.reset();
        crc.update(b, 0, 60);
        buf.putInt(60, (int) crc.getValue());
        return b;
    }

    static void assertRefused(Path file, byte[] content, String why) throws Exception {
        Files.write(file, content);
        var e = assertThrows(SnapshotException.class, () -> LayerFile.read(file));
        assertTrue(e.getMessage().contains(why), e.getMessage());
        assertFalse(e.getMessage().contains("\n"), e.getMessage());
    }
}
