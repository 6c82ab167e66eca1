package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** A clone's overlay against a byte-array model of the disk, on real files. */
class OverlayBlockBackendTest {
    /** Not a whole number of clusters: the last cluster is partial. */
    static final int SIZE = 64 * OverlayBlockBackend.CLUSTER + 1536;

    private static int open(Path p, int flags) {
        return LibC.open(p.toString(), flags | LibcConstants.O_CLOEXEC, 0);
    }

    private static OverlayBlockBackend backend(Path base, Path overlay) throws IOException {
        return OverlayBlockBackend.open(
                open(base, LibcConstants.O_RDONLY), open(overlay, LibcConstants.O_RDWR), SIZE, overlay);
    }

    private static byte[] readAll(OverlayBlockBackend b, Arena arena) throws IOException {
        var seg = arena.allocate(SIZE);
        // Two buffers that split a cluster, as a guest's descriptor chain may.
        assertEquals(SIZE, b.read(0, List.of(seg.asSlice(0, 5000), seg.asSlice(5000))));
        return seg.toArray(ValueLayout.JAVA_BYTE);
    }

    @Test
    void writesGoToTheOverlayReadsSeeThemAndTheBaseNeverChanges(@TempDir Path dir) throws Exception {
        var rnd = new Random(42);
        byte[] model = new byte[SIZE];
        rnd.nextBytes(model);
        var base = dir.resolve("base.raw");
        Files.write(base, model);
        var overlay = dir.resolve("clone.overlay");
        OverlayBlockBackend.create(overlay, SIZE);
        assertEquals(OverlayBlockBackend.fileLength(SIZE), Files.size(overlay));
        try (var arena = Arena.ofConfined()) {
            var b = backend(base, overlay);
            assertArrayEquals(model, readAll(b, arena), "a fresh overlay reads as its base");
            for (int i = 0; i < 300; i++) {
                int len = 1 + rnd.nextInt(3 * OverlayBlockBackend.CLUSTER);
                int at = rnd.nextInt(SIZE - len + 1);
                byte[] data = new byte[len];
                rnd.nextBytes(data);
                var seg = arena.allocate(len);
                MemorySegment.copy(data, 0, seg, ValueLayout.JAVA_BYTE, 0, len);
                switch (i % 10) {
                    case 8 -> {
                        b.writeZeroes(at, len, false);
                        Arrays.fill(model, at, at + len, (byte) 0);
                    }
                    case 9 -> {
                        b.discard(at, len);
                        Arrays.fill(model, at, at + len, (byte) 0);
                    }
                    default -> {
                        int split = rnd.nextInt(len);
                        assertEquals(len, b.write(at, List.of(seg.asSlice(0, split), seg.asSlice(split))));
                        System.arraycopy(data, 0, model, at, len);
                    }
                }
            }
            assertArrayEquals(model, readAll(b, arena));
            b.flush();
            // Another process (a restore, a live update's destination) opens the same files.
            assertArrayEquals(model, readAll(backend(base, overlay), arena), "the bitmap is in the file");
        }
        byte[] baseNow = Files.readAllBytes(base);
        var rnd2 = new Random(42);
        byte[] original = new byte[SIZE];
        rnd2.nextBytes(original);
        assertArrayEquals(original, baseNow, "the template's disk is never written");
    }

    /** First writes to one cluster from several threads at once: every sector keeps its own write. */
    @Test
    void concurrentFirstWritesToOneClusterKeepEverySector(@TempDir Path dir) throws Exception {
        var base = dir.resolve("base.raw");
        Files.write(base, new byte[SIZE]);
        var overlay = dir.resolve("clone.overlay");
        OverlayBlockBackend.create(overlay, SIZE);
        var b = backend(base, overlay);
        try (var arena = Arena.ofShared();
                var pool = Executors.newFixedThreadPool(8)) {
            var futures = new ArrayList<Future<Long>>();
            for (int sector = 0; sector < SIZE / 512; sector++) {
                var seg = arena.allocate(512);
                seg.fill((byte) (sector % 251 + 1));
                long at = sector * 512L;
                futures.add(pool.submit(() -> b.write(at, List.of(seg))));
            }
            for (var f : futures) assertEquals(512L, f.get());
            byte[] all = readAll(b, arena);
            for (int sector = 0; sector < SIZE / 512; sector++)
                for (int i = 0; i < 512; i++)
                    assertEquals((byte) (sector % 251 + 1), all[sector * 512 + i], "sector " + sector);
        }
    }

    @Test
    void aFileThatIsNoOverlayOfThisSizeIsRefused(@TempDir Path dir) throws Exception {
        var base = dir.resolve("base.raw");
        Files.write(base, new byte[SIZE]);
        var raw = dir.resolve("raw");
        Files.write(raw, new byte[(int) OverlayBlockBackend.fileLength(SIZE)]);
        var e = assertThrows(IOException.class, () -> backend(base, raw));
        assertEquals(raw + " is not a Panama VMM disk overlay", e.getMessage());
        var other = dir.resolve("other.overlay");
        OverlayBlockBackend.create(other, SIZE - 512);
        assertThrows(IOException.class, () -> backend(base, other));
        assertThrows(FileAlreadyExistsException.class, () -> OverlayBlockBackend.create(other, SIZE));
    }
}
