package dev.panamavmm.vmm.memory;

import static dev.panamavmm.vmm.memory.GuestMemory.GIB;
import static dev.panamavmm.vmm.memory.GuestMemory.MIB;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class GuestMemoryTest {

    @Test
    void smallGuestIsOneLowBlockInAMemfd() {
        try (var arena = Arena.ofShared();
                var mem = GuestMemory.create(64 * MIB, arena)) {
            assertEquals(1, mem.blocks().size());
            var b = mem.blocks().getFirst();
            assertEquals("ram-low", b.id());
            assertEquals(0, b.guestAddress());
            assertEquals(64 * MIB, b.size());
            assertFalse(b.shared(), "a memfd dies with the process: not shared");
            mem.write(0x100000, new byte[] {1, 2, 3});
            assertArrayEquals(new byte[] {1, 2, 3}, mem.read(0x100000, 3));
        }
    }

    @Test
    void largeGuestSkipsThe32BitHole() {
        try (var arena = Arena.ofShared();
                var mem = GuestMemory.create(6 * GIB, arena)) {
            assertEquals(2, mem.blocks().size());
            var low = mem.blocks().get(0);
            var high = mem.blocks().get(1);
            assertEquals(3 * GIB, low.size());
            assertEquals(4 * GIB, high.guestAddress());
            assertEquals(3 * GIB, high.size());
            assertEquals(3 * GIB, high.fileOffset());
            assertNull(mem.blockAt(3 * GIB + 4096, 8), "the hole is not RAM");
            assertThrows(MemoryException.class, () -> mem.slice(3 * GIB - 4, 8), "a range across the hole is refused");
            mem.slice(4 * GIB, 8).set(JAVA_LONG, 0, 0x1122334455667788L);
            assertEquals(0x1122334455667788L, high.segment().get(JAVA_LONG, 0));
        }
    }

    @Test
    void untouchedMemoryCostsNothing() {
        try (var arena = Arena.ofShared();
                var mem = GuestMemory.create(64 * GIB, arena)) {
            var high = mem.blocks().get(1);
            high.segment().set(JAVA_BYTE, 5 * GIB, (byte) 7);
            long pages = 1024;
            try (var a = Arena.ofConfined()) {
                var window = high.segment().asSlice(5 * GIB - pages / 2 * 4096, pages * 4096);
                var vec = a.allocate(pages);
                LibC.mincore(window, vec);
                int resident = 0;
                for (int i = 0; i < pages; i++) resident += vec.get(JAVA_BYTE, i) & 1;
                assertEquals(1, resident, "only the page written is resident");
            }
        }
    }

    @Test
    void sharedFileHoldsTheGuestsWrites(@TempDir Path dir) throws Exception {
        var file = dir.resolve("ram");
        try (var arena = Arena.ofShared();
                var mem = GuestMemory.create(32 * MIB, new Backing.SharedFile(file), arena)) {
            assertTrue(mem.blocks().getFirst().shared());
            mem.write(4096, "hello".getBytes());
        }
        assertEquals(32 * MIB, Files.size(file));
        try (var ch = FileChannel.open(file)) {
            var buf = ByteBuffer.allocate(5);
            ch.read(buf, 4096);
            assertEquals("hello", new String(buf.array()));
        }
    }

    @Test
    void privateFileIsCopyOnWrite(@TempDir Path dir) throws Exception {
        var file = dir.resolve("template");
        try (var arena = Arena.ofShared();
                var mem = GuestMemory.create(16 * MIB, new Backing.SharedFile(file), arena)) {
            mem.write(0, "template".getBytes());
        }
        try (var arena = Arena.ofShared();
                var clone = GuestMemory.create(16 * MIB, new Backing.PrivateFile(file), arena)) {
            assertFalse(clone.blocks().getFirst().shared());
            assertEquals("template", new String(clone.read(0, 8)));
            clone.write(0, "CLONE!!!".getBytes());
            assertEquals("CLONE!!!", new String(clone.read(0, 8)));
        }
        byte[] head = new byte[8];
        try (var in = Files.newInputStream(file)) {
            assertEquals(8, in.read(head));
        }
        assertEquals("template", new String(head), "the template file never changes");
    }

    @Test
    void badSizesAndBackingsAreClearErrors(@TempDir Path dir) throws Exception {
        try (var arena = Arena.ofShared()) {
            var e = assertThrows(MemoryException.class, () -> GuestMemory.create(8 * MIB, arena));
            assertEquals("memory size 8388608 is below the minimum of 16 MiB", e.getMessage());
            assertThrows(MemoryException.class, () -> GuestMemory.create(16 * MIB + 1, arena));
            var missing = assertThrows(
                    MemoryException.class,
                    () -> GuestMemory.create(16 * MIB, new Backing.PrivateFile(dir.resolve("nope")), arena));
            assertTrue(missing.getMessage().contains("ENOENT"), missing.getMessage());
            var small = dir.resolve("small");
            Files.write(small, new byte[4096]);
            var tooSmall = assertThrows(
                    MemoryException.class, () -> GuestMemory.create(16 * MIB, new Backing.PrivateFile(small), arena));
            assertTrue(
                    tooSmall.getMessage().endsWith("holds 4096 bytes, the guest needs 16777216"),
                    tooSmall.getMessage());
        }
    }

    @Test
    void closingTheArenaUnmaps() {
        var arena = Arena.ofShared();
        var mem = GuestMemory.create(16 * MIB, arena);
        var seg = mem.blocks().getFirst().segment();
        mem.close();
        seg.set(JAVA_BYTE, 0, (byte) 1); // still mapped: only the fd is closed
        arena.close();
        assertThrows(IllegalStateException.class, () -> seg.get(JAVA_BYTE, 0));
    }

    /** One guest runs in a memory file: the second user of a shared file is refused before it maps or sizes anything. */
    @Test
    void aSharedMemoryFileHasOneUserAndCopyOnWriteUsersShareIt(@TempDir Path dir) throws Exception {
        var file = dir.resolve("ram");
        String inUse = "memory file " + file + " is in use by PID "
                + ProcessHandle.current().pid();
        try (var arena = Arena.ofShared()) {
            var first = GuestMemory.create(16 * MIB, new Backing.SharedFile(file), arena);
            first.write(0, new byte[] {42});
            try (var other = Arena.ofShared()) {
                var e = assertThrows(
                        MemoryException.class, () -> GuestMemory.create(32 * MIB, new Backing.SharedFile(file), other));
                assertEquals(inUse, e.getMessage());
                assertEquals(16 * MIB, Files.size(file), "refused before the file was grown");
                e = assertThrows(
                        MemoryException.class,
                        () -> GuestMemory.create(16 * MIB, new Backing.PrivateFile(file), other));
                assertEquals(inUse, e.getMessage());
            }
            // Closing the fds is not enough: the mapping keeps the open file description, and with it the lock.
            first.close();
            try (var other = Arena.ofShared()) {
                assertThrows(
                        MemoryException.class, () -> GuestMemory.create(16 * MIB, new Backing.SharedFile(file), other));
            }
        }
        // Its arena closed (unmapped), the file is free; copy-on-write users share it and keep a writer out.
        try (var a = Arena.ofShared();
                var b = Arena.ofShared();
                var c = Arena.ofShared();
                var _ = GuestMemory.create(16 * MIB, new Backing.PrivateFile(file), a);
                var cow2 = GuestMemory.create(16 * MIB, new Backing.PrivateFile(file), b)) {
            assertArrayEquals(new byte[] {42}, cow2.read(0, 1));
            var e = assertThrows(
                    MemoryException.class, () -> GuestMemory.create(16 * MIB, new Backing.SharedFile(file), c));
            assertEquals(inUse, e.getMessage());
        }
        try (var arena = Arena.ofShared();
                var again = GuestMemory.create(16 * MIB, new Backing.SharedFile(file), arena)) {
            assertArrayEquals(new byte[] {42}, again.read(0, 1));
            again.unlockSharedFiles(); // a stopped guest's file: free for the next user at once
            try (var next = Arena.ofShared();
                    var _ = GuestMemory.create(16 * MIB, new Backing.SharedFile(file), next)) {
                assertEquals(1, MemoryFileLocks.holders(file).size());
                assertTrue(MemoryFileLocks.holders(file).getFirst().exclusive());
            }
        }
    }
}
