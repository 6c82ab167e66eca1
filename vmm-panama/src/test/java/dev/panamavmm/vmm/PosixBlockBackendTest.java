package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** cache=none: O_DIRECT with aligned guest buffers straight through, unaligned ones through an aligned copy. */
class PosixBlockBackendTest {
    @ParameterizedTest
    @ValueSource(ints = {0, 8, 512})
    void directIoMovesTheSameBytesWhateverTheBuffersAlignment(int misalign, @TempDir Path dir) throws Exception {
        var file = dir.resolve("disk.raw");
        Files.write(file, new byte[1 << 20]);
        int fd = LibC.open(file.toString(), LibcConstants.O_RDWR | LibcConstants.O_DIRECT | LibcConstants.O_CLOEXEC, 0);
        try (var arena = Arena.ofConfined()) {
            var b = new PosixBlockBackend(fd, 1 << 20, true);
            byte[] data = new byte[3 * 4096];
            new Random(misalign).nextBytes(data);
            var raw = arena.allocate(data.length + 4096, 4096);
            var buf = raw.asSlice(misalign, data.length);
            buf.copyFrom(MemorySegment.ofArray(data));
            // Two buffers, as a descriptor chain splits a request.
            assertEquals(data.length, b.write(8192, List.of(buf.asSlice(0, 4096), buf.asSlice(4096))));
            b.flush();
            var back = arena.allocate(data.length + 4096, 4096).asSlice(misalign, data.length);
            assertEquals(data.length, b.read(8192, List.of(back.asSlice(0, 1024), back.asSlice(1024))));
            assertArrayEquals(data, back.toArray(ValueLayout.JAVA_BYTE));
        } finally {
            LibC.close(fd);
        }
        byte[] onDisk = Files.readAllBytes(file);
        byte[] expected = new byte[3 * 4096];
        new Random(misalign).nextBytes(expected);
        assertArrayEquals(expected, Arrays.copyOfRange(onDisk, 8192, 8192 + expected.length));
    }
}
