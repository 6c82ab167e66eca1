package dev.panamavmm.vmm.postcopy;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.ValueLayout;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;

/**
 * Post-copy between two guest memories of this process (no VM), over loopback TCP: the page
 * bookkeeping, a VMM thread that reads a missing page (it waits for it, it never reads zeros), and
 * a peer that sends garbage (a clear error, then recovery on a new connection).
 */
class PostcopyProtocolTest {
    private static final long SIZE = 16 * GuestMemory.MIB;

    @Test
    void pageSetAddsRunsAndBitmapsAsPageByPageWould() {
        try (var arena = Arena.ofShared();
                var memory = GuestMemory.create(SIZE, arena)) {
            long pages = SIZE / 4096;
            var random = new java.util.Random(7);
            var bulk = PageSet.of(memory);
            var single = PageSet.of(memory);
            // Runs that start and end inside a word, span words, and fill whole words, some overlapping.
            long[][] runs = {{3, 5}, {60, 70}, {64, 128}, {100, 400}, {0, 1}, {pages - 1, pages}, {126, 131}};
            long added = 0;
            for (long[] r : runs) {
                long before = single.count();
                for (long p = r[0]; p < r[1]; p++) single.set(p * 4096);
                long got = bulk.addRange(r[0] * 4096, (r[1] - r[0]) * 4096);
                assertEquals(single.count() - before, got, "pages added by " + r[0] + ".." + r[1]);
                added += got;
            }
            assertEquals(single.count(), bulk.count());
            assertEquals(added, bulk.count());
            assertArrayEquals(single.words(0), bulk.words(0));
            // A random bitmap, over pages partly in the set already.
            long[] words = new long[(int) (pages / 64)];
            for (int w = 0; w < words.length; w++) words[w] = random.nextLong();
            long before = single.count();
            for (long p = 0; p < pages; p++) if ((words[(int) (p >>> 6)] & (1L << (p & 63))) != 0) single.set(p * 4096);
            assertEquals(single.count() - before, bulk.addAll(0, words));
            assertArrayEquals(single.words(0), bulk.words(0));
            assertEquals(single.count(), bulk.count());
            assertEquals(pages, PageSet.all(memory).count());
            // Not a run of RAM, or a bitmap of another size: refused, the set unchanged.
            assertThrows(IllegalArgumentException.class, () -> bulk.addRange(SIZE - 4096, 8192));
            assertThrows(IllegalArgumentException.class, () -> bulk.addRange(4096, 100));
            assertThrows(IllegalArgumentException.class, () -> bulk.addAll(0, new long[words.length + 1]));
            assertEquals(single.count(), bulk.count());
        }
    }

    @Test
    void pageSetCountsAndFindsPages() {
        try (var arena = Arena.ofShared();
                var memory = GuestMemory.create(SIZE, arena)) {
            var set = PageSet.of(memory);
            assertEquals(0, set.count());
            assertEquals(-1, set.nextSet(0));
            assertTrue(set.set(0x5000));
            assertFalse(set.set(0x5000), "a page is added once");
            assertTrue(set.set(SIZE - 4096));
            assertEquals(2, set.count());
            assertEquals(0x5000, set.nextSet(0));
            assertEquals(0x5000, set.nextSet(0x5000));
            assertEquals(SIZE - 4096, set.nextSet(0x5001));
            assertEquals(-1, set.nextSet(SIZE));
            assertTrue(set.clear(0x5000));
            assertFalse(set.clear(0x5000), "a page is taken once");
            assertEquals(1, set.count());
            assertEquals(SIZE / 4096, PageSet.all(memory).count());
            assertThrows(IllegalArgumentException.class, () -> set.contains(SIZE));
            assertThrows(IllegalArgumentException.class, () -> set.contains(0x5001));
        }
    }

    /** A peer that reads the destination's HELLO, then sends {@code garbage}. */
    private static byte[] garbageAfterHello(Socket peer, byte[] garbage) throws IOException {
        var in = new DataInputStream(peer.getInputStream());
        assertEquals(PostcopyProtocol.HELLO, in.readByte());
        in.readInt();
        in.readShort();
        int blocks = in.readInt();
        for (int b = 0; b < blocks; b++) {
            in.readLong();
            in.readLong();
            in.skipNBytes(8L * in.readInt());
        }
        peer.getOutputStream().write(garbage);
        peer.getOutputStream().flush();
        return garbage;
    }

    private static byte[] message(byte type, long gpa, int count, int dataBytes) throws IOException {
        var bytes = new java.io.ByteArrayOutputStream();
        var out = new DataOutputStream(bytes);
        out.writeByte(type);
        out.writeLong(gpa);
        out.writeInt(count);
        out.write(new byte[dataBytes]);
        return bytes.toByteArray();
    }

    @Test
    void garbageFromTheSourceIsAClearErrorAndTheDestinationWaitsForRecovery() throws Exception {
        try (var arena = Arena.ofShared();
                var sourceMemory = GuestMemory.create(SIZE, arena);
                var destinationMemory = GuestMemory.create(SIZE, arena);
                var server = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            // A pattern in half the pages; the rest stay zero (holes).
            for (long gpa = 0; gpa < SIZE; gpa += 8192)
                sourceMemory.slice(gpa, 8).set(ValueLayout.JAVA_LONG, 0, gpa ^ 0x5a5a5a5aL);
            var missing = PageSet.all(destinationMemory);
            long total = missing.count();
            try (var destination = PostcopyDestination.register(destinationMemory, missing)) {
                // A VMM thread (a device) reading a missing page waits for it: never zeros.
                var read = new AtomicReference<Long>();
                var reader = Thread.ofPlatform()
                        .start(() ->
                                read.set(destinationMemory.slice(0x10000, 8).get(ValueLayout.JAVA_LONG, 0)));

                String[][] cases = {
                    {"outside", "outside guest RAM"},
                    {"short", "a short page"},
                    {"type", "unknown type 0x58"},
                    {"count", "a run of 0 pages"},
                };
                for (var c : cases) {
                    var sent = switch (c[0]) {
                        case "outside" -> message(PostcopyProtocol.PAGES, SIZE + 0x1000, 1, 4096);
                        case "short" -> message(PostcopyProtocol.PAGES, 0x10000, 2, 4096 + 100);
                        case "type" -> new byte[] {'X', 1, 2, 3};
                        default -> message(PostcopyProtocol.PAGES, 0x10000, 0, 0);
                    };
                    try (var client = new Socket(server.getInetAddress(), server.getLocalPort());
                            var peer = server.accept()) {
                        var peerDone = CompletableFuture.runAsync(() -> {
                            try {
                                garbageAfterHello(peer, sent);
                                if (c[0].equals("short")) peer.shutdownOutput(); // the page ends early
                            } catch (IOException e) {
                                throw new RuntimeException(e);
                            }
                        });
                        var e = assertThrows(
                                PostcopyException.class,
                                () -> destination.receive(client.getInputStream(), client.getOutputStream()),
                                c[0]);
                        assertTrue(e.getMessage().contains(c[1]), e.getMessage());
                        assertFalse(e.getMessage().contains("\n"), e.getMessage());
                        peerDone.get(10, TimeUnit.SECONDS);
                    }
                    assertEquals(total, missing.count(), "nothing was taken from garbage");
                    Thread.sleep(50);
                    assertTrue(reader.isAlive(), "the reader still waits for its page (" + c[0] + ")");
                    assertFalse(destination.complete());
                }

                // Recovery: a real source on a new connection.
                var source = new PostcopySource(sourceMemory, PageSet.all(sourceMemory));
                try (var client = new Socket(server.getInetAddress(), server.getLocalPort());
                        var peer = server.accept()) {
                    var served = CompletableFuture.supplyAsync(() -> {
                        try {
                            return source.serve(peer.getInputStream(), peer.getOutputStream());
                        } catch (IOException e) {
                            throw new RuntimeException(e);
                        }
                    });
                    var received = destination.receive(client.getInputStream(), client.getOutputStream());
                    var sent = served.get(30, TimeUnit.SECONDS);
                    assertEquals(total, received.pages(), received.toString());
                    assertEquals(0, received.duplicates(), received.toString());
                    assertEquals(total, sent.pages(), sent.toString());
                    assertEquals(total / 2, received.zeroPages(), "zero pages come as markers: " + received);
                    assertTrue(received.bytes() < SIZE / 2 + SIZE / 8, "zero pages are not sent: " + received);
                }
                reader.join(10_000);
                assertEquals(0x10000L ^ 0x5a5a5a5aL, read.get(), "the reader got the source's page");
                assertEquals(0, missing.count());
                assertArrayEquals(
                        sourceMemory.slice(0, SIZE).toArray(ValueLayout.JAVA_BYTE),
                        destinationMemory.slice(0, SIZE).toArray(ValueLayout.JAVA_BYTE));
            }
        }
    }

    @Test
    void garbageFromTheDestinationIsAClearErrorAndTheSourceServesAgain() throws Exception {
        try (var arena = Arena.ofShared();
                var sourceMemory = GuestMemory.create(SIZE, arena);
                var server = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            var toSend = PageSet.all(sourceMemory);
            var source = new PostcopySource(sourceMemory, toSend);
            byte[][] garbage = {{'H', 0, 0, 0, 0}, {'Q'}};
            String[] expected = {"does not speak post-copy", "not a HELLO"};
            for (int i = 0; i < garbage.length; i++) {
                try (var client = new Socket(server.getInetAddress(), server.getLocalPort());
                        var peer = server.accept()) {
                    client.getOutputStream().write(garbage[i]);
                    client.getOutputStream().flush();
                    var e = assertThrows(
                            PostcopyException.class, () -> source.serve(peer.getInputStream(), peer.getOutputStream()));
                    assertTrue(e.getMessage().contains(expected[i]), e.getMessage());
                }
            }
            assertEquals(SIZE / 4096, toSend.count(), "nothing was sent");
        }
    }
}
