package dev.panamavmm.migration;

import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.Arena;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** RAM pages go to the file at their own offsets; zero pages and everything outside the data extents are skipped. */
class RamWriterTest {
    static final long PAGE = 4096;

    @Test
    void onlyNonZeroPagesInsideTheExtentsAreReadAndWritten(@TempDir Path dir) throws Exception {
        try (var arena = Arena.ofConfined();
                var ch = FileChannel.open(
                        dir.resolve("ram"),
                        StandardOpenOption.CREATE_NEW,
                        StandardOpenOption.READ,
                        StandardOpenOption.WRITE)) {
            var block = arena.allocate(64 * PAGE, PAGE);
            for (long p : new long[] {1, 2, 10, 40, 63}) block.set(JAVA_LONG, p * PAGE, 0x1000 + p);
            // Extents [0, 16 pages) and [40 pages, 41 pages): page 63 lies outside them, so the caller
            // vouches that it is zero (a hole) and it must not even be looked at.
            var progress = new AtomicLong();
            long written = RamWriter.write(
                    ch, PAGE, block, new long[][] {{0, 16 * PAGE}, {40 * PAGE, 40 * PAGE + 100}}, progress::addAndGet);
            assertEquals(4, written, "pages 1, 2, 10 and 40");
            assertEquals(64 * PAGE, progress.get(), "progress covers the whole block, holes included");
            for (long p : new long[] {1, 2, 10, 40})
                assertEquals(0x1000 + p, readLong(ch, PAGE + p * PAGE), "page " + p);
            assertEquals(0, readLong(ch, PAGE + 63 * PAGE), "outside the extents: not written");
            assertEquals(0, readLong(ch, PAGE + 3 * PAGE), "a zero page inside an extent: a hole in the file");
        }
    }

    @Test
    void withoutExtentsTheWholeBlockIsScanned(@TempDir Path dir) throws Exception {
        try (var arena = Arena.ofConfined();
                var ch = FileChannel.open(
                        dir.resolve("ram"),
                        StandardOpenOption.CREATE_NEW,
                        StandardOpenOption.READ,
                        StandardOpenOption.WRITE)) {
            var block = arena.allocate(8 * PAGE, PAGE);
            block.set(JAVA_LONG, 7 * PAGE, 7);
            assertEquals(1, RamWriter.write(ch, 0, block, RamWriter.Progress.NONE));
            assertEquals(7, readLong(ch, 7 * PAGE));
        }
    }

    private static long readLong(FileChannel ch, long at) throws Exception {
        var b = ByteBuffer.allocate(8).order(ByteOrder.nativeOrder());
        if (ch.read(b, at) < 8) return 0; // beyond the end of the file: a hole
        return b.flip().getLong();
    }
}
