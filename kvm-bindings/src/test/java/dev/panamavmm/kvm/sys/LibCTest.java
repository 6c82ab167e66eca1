package dev.panamavmm.kvm.sys;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LibcConstants;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The system calls behind LibC's one {@code syscall} downcall: results, errno, and the pointer rules. */
class LibCTest {

    @Test
    void aPseudoTerminalIsATerminalAndAMemfdOrAClosedFdIsNot() {
        int pty = LibC.open("/dev/ptmx", LibcConstants.O_RDWR | LibcConstants.O_CLOEXEC, 0);
        int memfd = LibC.memfdCreate("libc-test-tty", LibcConstants.MFD_CLOEXEC);
        try {
            assertTrue(LibC.isatty(pty), "the master side of a pseudo-terminal");
            assertFalse(LibC.isatty(memfd), "a memfd");
        } finally {
            LibC.close(pty);
            LibC.close(memfd);
        }
        assertFalse(LibC.isatty(memfd), "a closed descriptor (EBADF)");
    }

    @Test
    void aMemfdIsWrittenSizedMappedAndReadBack() {
        int fd = LibC.memfdCreate("libc-test", LibcConstants.MFD_CLOEXEC);
        try (var arena = Arena.ofConfined()) {
            LibC.ftruncate(fd, 8192);
            var data = arena.allocateFrom("panama");
            assertEquals(data.byteSize(), LibC.write(fd, data));
            var map = LibC.mapInto(
                    arena, 8192, LibcConstants.PROT_READ | LibcConstants.PROT_WRITE, LibcConstants.MAP_SHARED, fd, 0);
            assertEquals("panama", map.getString(0));
            map.set(JAVA_LONG, 4096, 0x1122334455667788L);
            var resident = arena.allocate(2);
            LibC.mincore(map, resident);
            assertEquals(1, resident.get(JAVA_BYTE, 1) & 1, "the page just written is resident");
            var back = arena.allocate(7);
            // read(2) goes on from the offset write(2) left (7): the file is 8192 bytes, so 7 more come back.
            long n = LibC.read(fd, back);
            assertEquals(7, n);
            assertArrayEquals(new byte[7], back.toArray(JAVA_BYTE), "bytes 7..13 of the file are zeros");
        } finally {
            LibC.close(fd);
        }
    }

    @Test
    void failuresNameTheCallAndCarryErrno() {
        var e = assertThrows(KvmException.class, () -> LibC.close(-1));
        assertEquals(LibcConstants.EBADF, e.errno());
        assertTrue(e.getMessage().contains("close"), e.getMessage());
        var open = assertThrows(KvmException.class, () -> LibC.open("/nonexistent/panama", LibcConstants.O_RDONLY, 0));
        assertEquals(LibcConstants.ENOENT, open.errno());
        assertTrue(open.getMessage().contains("/nonexistent/panama"), open.getMessage());
    }

    @Test
    void pointersMustBeLiveNativeMemory() {
        int fd = LibC.memfdCreate("libc-test", LibcConstants.MFD_CLOEXEC);
        try {
            assertThrows(IllegalArgumentException.class, () -> LibC.write(fd, MemorySegment.ofArray(new byte[8])));
            MemorySegment closed;
            try (var arena = Arena.ofConfined()) {
                closed = arena.allocate(8);
            }
            assertThrows(IllegalStateException.class, () -> LibC.write(fd, closed));
        } finally {
            LibC.close(fd);
        }
    }

    @Test
    void threadsAreSignalledByTheirIdAndAGoneThreadIsReportedNotThrown() throws Exception {
        int[] tid = new int[1];
        var thread = Thread.ofPlatform().start(() -> tid[0] = LibC.gettid());
        thread.join();
        assertTrue(tid[0] > 0);
        // join() returns when the Java thread is done; the kernel thread exits a moment later.
        var task = Path.of("/proc/self/task/" + tid[0]);
        for (long deadline = System.nanoTime() + 5_000_000_000L; Files.exists(task) && System.nanoTime() < deadline; ) {
            Thread.sleep(1);
        }
        assertFalse(LibC.tgkill(tid[0], 0), "signal 0 to an exited thread: ESRCH, reported as false");
        assertTrue(LibC.tgkill(LibC.gettid(), 0), "signal 0 checks that the thread exists");
    }

    @Test
    void flockBelongsToTheOpenFileDescriptionAndRefusesAConflictWithoutWaiting(@TempDir Path dir) {
        String file = dir.resolve("locked").toString();
        int flags = LibcConstants.O_RDWR | LibcConstants.O_CREAT | LibcConstants.O_CLOEXEC;
        int first = LibC.open(file, flags, 0600), second = LibC.open(file, flags, 0600);
        try {
            assertTrue(LibC.flock(first, LibcConstants.LOCK_EX | LibcConstants.LOCK_NB));
            // Another open of the same file is another open file description: refused, even in this process.
            assertFalse(LibC.flock(second, LibcConstants.LOCK_SH | LibcConstants.LOCK_NB));
            assertFalse(LibC.flock(second, LibcConstants.LOCK_EX | LibcConstants.LOCK_NB));
            assertTrue(LibC.flock(first, LibcConstants.LOCK_UN));
            assertTrue(LibC.flock(second, LibcConstants.LOCK_SH | LibcConstants.LOCK_NB));
            assertTrue(
                    LibC.flock(first, LibcConstants.LOCK_SH | LibcConstants.LOCK_NB), "shared locks do not conflict");
            assertFalse(
                    LibC.flock(first, LibcConstants.LOCK_EX | LibcConstants.LOCK_NB),
                    "an exclusive one conflicts with a shared one");
        } finally {
            LibC.close(first);
            LibC.close(second);
        }
        var e = assertThrows(KvmException.class, () -> LibC.flock(-1, LibcConstants.LOCK_EX | LibcConstants.LOCK_NB));
        assertEquals(LibcConstants.EBADF, e.errno());
        assertTrue(e.getMessage().contains("flock"), e.getMessage());
    }
}
