package dev.panamavmm.vmm.memory;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Where a block may hold data: the file's extents, plus a private mapping's copied-on-write pages. */
class DataExtentsTest {
    static final long PAGE = DataExtents.PAGE;

    @Test
    void aFilesDataExtentsSkipItsHoles() {
        int fd = LibC.memfdCreate("extents", LibcConstants.MFD_CLOEXEC);
        try (var arena = Arena.ofConfined()) {
            LibC.ftruncate(fd, 64 * PAGE);
            var shared = LibC.mapInto(
                    arena,
                    64 * PAGE,
                    LibcConstants.PROT_READ | LibcConstants.PROT_WRITE,
                    LibcConstants.MAP_SHARED,
                    fd,
                    0);
            shared.set(JAVA_LONG, 2 * PAGE, 1);
            shared.set(JAVA_LONG, 3 * PAGE, 1);
            shared.set(JAVA_LONG, 40 * PAGE, 1);
            assertExtents(
                    List.of(new long[] {2 * PAGE, 4 * PAGE}, new long[] {40 * PAGE, 41 * PAGE}),
                    DataExtents.fileData(fd, 0, 64 * PAGE));
            assertExtents(
                    List.of(new long[] {0, 2 * PAGE}),
                    DataExtents.fileData(fd, 2 * PAGE, 10 * PAGE),
                    "relative to the offset");
        } finally {
            LibC.close(fd);
        }
    }

    @Test
    void aPrivateMappingsWrittenPagesAreFoundButPagesOnlyReadAreNot() {
        int fd = LibC.memfdCreate("extents", LibcConstants.MFD_CLOEXEC);
        try (var arena = Arena.ofConfined()) {
            LibC.ftruncate(fd, 32 * PAGE);
            var mapping = LibC.mapInto(
                    arena,
                    32 * PAGE,
                    LibcConstants.PROT_READ | LibcConstants.PROT_WRITE,
                    LibcConstants.MAP_PRIVATE,
                    fd,
                    0);
            mapping.set(JAVA_LONG, 3 * PAGE, 7); // copied on write: anonymous
            mapping.set(JAVA_LONG, 10 * PAGE, 7);
            mapping.set(JAVA_LONG, 11 * PAGE + 8, 7);
            byte b = mapping.get(JAVA_BYTE, 20 * PAGE); // read only: the file's page, not a copy
            assertEquals(0, b);
            assertExtents(
                    List.of(new long[] {3 * PAGE, 4 * PAGE}, new long[] {10 * PAGE, 12 * PAGE}),
                    DataExtents.anonymousPages(mapping));
        } finally {
            LibC.close(fd);
        }
    }

    @Test
    void unionMergesOverlappingAndTouchingRanges() {
        var a = List.of(new long[] {0, 10}, new long[] {50, 60});
        var b = List.of(new long[] {5, 20}, new long[] {20, 30}, new long[] {70, 80});
        assertExtents(List.of(new long[] {0, 30}, new long[] {50, 60}, new long[] {70, 80}), DataExtents.union(a, b));
        assertExtents(List.of(), DataExtents.union(List.of(), List.of()));
    }

    private static void assertExtents(List<long[]> expected, List<long[]> actual) {
        assertExtents(expected, actual, "");
    }

    private static void assertExtents(List<long[]> expected, List<long[]> actual, String what) {
        assertEquals(
                expected.size(),
                actual.size(),
                what + ": " + actual.stream().map(Arrays::toString).toList());
        for (int i = 0; i < expected.size(); i++) assertArrayEquals(expected.get(i), actual.get(i), what);
    }
}
