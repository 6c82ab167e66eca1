package dev.panamavmm.kvm.sys;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.Iovec;
import dev.panamavmm.kvm.bindings.LibcConstants;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import org.junit.jupiter.api.Test;

/** The one-file io_uring: batches of writev and readv on a pipe, in order, with their results. */
class IoUringTest {

    /** Writes {@code parts} as iovecs at {@code iov} from {@code index}; returns their count. */
    private static int vector(Arena arena, MemorySegment iov, int index, String... parts) {
        for (int i = 0; i < parts.length; i++) {
            var bytes = arena.allocateFrom(parts[i], StandardCharsets.US_ASCII);
            long at = (index + i) * Iovec.BYTE_SIZE;
            iov.set(JAVA_LONG, at + Iovec.IOV_BASE, bytes.address());
            iov.set(JAVA_LONG, at + Iovec.IOV_LEN, bytes.byteSize() - 1); // without the NUL
        }
        return parts.length;
    }

    @Test
    void aBatchOfWritesReachesItsFileInOrderAndReadsComeBackWithTheirLengths() throws Exception {
        var fds = pipe();
        try (var arena = Arena.ofConfined();
                var writer = IoUring.open(fds[1], 8);
                var reader = IoUring.open(fds[0], 8)) {
            assertEquals(8, writer.capacity());
            var iov = arena.allocate(Iovec.LAYOUT, 8);
            int a = vector(arena, iov, 0, "first ", "frame;");
            int b = vector(arena, iov, a, "second;");
            int c = vector(arena, iov, a + b, "th", "ir", "d");
            writer.prepareWritev(iov.address(), a);
            writer.prepareWritev(iov.address() + a * Iovec.BYTE_SIZE, b);
            writer.prepareWritev(iov.address() + (a + b) * Iovec.BYTE_SIZE, c);
            assertEquals(3, writer.prepared());
            int[] results = new int[8];
            writer.submit(results);
            assertArrayEquals(new int[] {12, 7, 5}, java.util.Arrays.copyOf(results, 3), "bytes of each writev");
            assertEquals(0, writer.prepared());

            var into = arena.allocate(24);
            var readIov = arena.allocate(Iovec.LAYOUT, 2);
            readIov.set(JAVA_LONG, Iovec.IOV_BASE, into.address());
            readIov.set(JAVA_LONG, Iovec.IOV_LEN, 10);
            readIov.set(JAVA_LONG, Iovec.BYTE_SIZE + Iovec.IOV_BASE, into.address() + 10);
            readIov.set(JAVA_LONG, Iovec.BYTE_SIZE + Iovec.IOV_LEN, 14);
            reader.prepareReadv(readIov.address(), 2);
            reader.submit(results);
            assertEquals(24, results[0]);
            assertEquals("first frame;second;third", new String(into.toArray(JAVA_BYTE), StandardCharsets.US_ASCII));
        } finally {
            LibC.close(fds[0]);
            LibC.close(fds[1]);
        }
    }

    /**
     * A read with nothing to read fails at once with EAGAIN, even on a descriptor that would block
     * (io_uring would otherwise wait for data inside submit; a tap is such a file to io_uring
     * whether or not it is O_NONBLOCK), and the requests after it still run, in order.
     */
    @Test
    @org.junit.jupiter.api.Timeout(30)
    void aReadWithNothingToReadFailsAtOnceAndTheNextStillRuns() {
        var fds = pipe();
        try (var arena = Arena.ofConfined();
                var reader = IoUring.open(fds[0], 4);
                var writer = IoUring.open(fds[1], 4)) {
            var into = arena.allocate(8);
            var iov = arena.allocate(Iovec.LAYOUT, 1);
            iov.set(JAVA_LONG, Iovec.IOV_BASE, into.address());
            iov.set(JAVA_LONG, Iovec.IOV_LEN, 8);
            reader.prepareReadv(iov.address(), 1);
            reader.prepareReadv(iov.address(), 1);
            int[] results = new int[4];
            reader.submit(results); // returns: nothing waits for data
            assertEquals(-LibcConstants.EAGAIN, results[0]);
            assertEquals(-LibcConstants.EAGAIN, results[1]);

            var out = arena.allocate(Iovec.LAYOUT, 1);
            vector(arena, out, 0, "late");
            writer.prepareWritev(out.address(), 1);
            writer.submit(results);
            reader.prepareReadv(iov.address(), 1);
            reader.prepareReadv(iov.address(), 1);
            reader.submit(results);
            assertEquals(4, results[0]);
            assertEquals(-LibcConstants.EAGAIN, results[1]);
        } finally {
            LibC.close(fds[0]);
            LibC.close(fds[1]);
        }
    }

    @Test
    void aRequestThatFailsSaysWhyAndTheOthersStillComplete() {
        var fds = pipe();
        try (var arena = Arena.ofConfined();
                var ring = IoUring.open(fds[1], 4)) {
            var iov = arena.allocate(Iovec.LAYOUT, 2);
            vector(arena, iov, 0, "ok");
            iov.set(JAVA_LONG, Iovec.BYTE_SIZE + Iovec.IOV_BASE, 16); // an address no process has
            iov.set(JAVA_LONG, Iovec.BYTE_SIZE + Iovec.IOV_LEN, 8);
            ring.prepareWritev(iov.address(), 1);
            ring.prepareWritev(iov.address() + Iovec.BYTE_SIZE, 1);
            ring.prepareWritev(iov.address(), 1);
            int[] results = new int[4];
            ring.submit(results);
            assertEquals(2, results[0]);
            assertEquals(-LibcConstants.EFAULT, results[1]);
            assertEquals(2, results[2]);
        } finally {
            LibC.close(fds[0]);
            LibC.close(fds[1]);
        }
    }

    @Test
    void aFullBatchRefusesOneMoreAndAClosedRingFailsItsSubmit() {
        var fds = pipe();
        try (var arena = Arena.ofConfined()) {
            var ring = IoUring.open(fds[1], 2);
            var iov = arena.allocate(Iovec.LAYOUT, 1);
            vector(arena, iov, 0, "x");
            ring.prepareWritev(iov.address(), 1);
            ring.prepareWritev(iov.address(), 1);
            assertThrows(IllegalStateException.class, () -> ring.prepareWritev(iov.address(), 1));
            ring.close();
            var e = assertThrows(KvmException.class, () -> ring.submit(new int[2]));
            assertTrue(e.getMessage().contains("io_uring_enter"), e.getMessage());
        } finally {
            LibC.close(fds[0]);
            LibC.close(fds[1]);
        }
    }

    @Test
    void aDescriptorThatIsNotOpenGetsNoRing() {
        var e = assertThrows(KvmException.class, () -> IoUring.open(Integer.MAX_VALUE, 4));
        assertTrue(e.getMessage().contains("io_uring_register"), e.getMessage());
    }

    /**
     * A connected pair of Unix stream sockets as two descriptors, read end and write end (a byte
     * stream, as a pipe; a named FIFO cannot take RWF_NOWAIT). The caller closes both.
     */
    private static int[] pipe() {
        try {
            var dir = Files.createTempDirectory("io-uring-test");
            var path = dir.resolve("s");
            try (var listener = UnixSocket.listen(path)) {
                var writer = UnixSocket.connect(path);
                var reader = listener.accept();
                return new int[] {reader.fd(), writer.fd()};
            } finally {
                Files.deleteIfExists(path);
                Files.delete(dir);
            }
        } catch (java.io.IOException e) {
            throw new IllegalStateException(e);
        }
    }
}
