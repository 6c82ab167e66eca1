package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.PageStreams;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The TCP migration's frames and addresses, without KVM: round trips, and a peer's bad input refused in one line. */
class MigrationStreamTest {

    private static MigrationStream.Reader reader(byte[] bytes) {
        return new MigrationStream.Reader(new ByteArrayInputStream(bytes));
    }

    private static final MigrationProtocol.DeviceState SHARED_STATE = new MigrationProtocol.DeviceState(
            5_000, List.of(new MigrationProtocol.Fingerprint("ram-low", List.of(0L, 17L), 0xdeadbeefL)));

    @Test
    void framesRoundTrip() throws Exception {
        var bytes = new ByteArrayOutputStream();
        var out = new MigrationStream.Writer(bytes, 0);
        try (var arena = Arena.ofConfined()) {
            var ram = arena.allocate(3 * 4096);
            ram.asSlice(4096, 4096).fill((byte) 7);
            out.message(new MigrationProtocol.PassEnd(2, 5));
            out.pages(1, 9, 2, ram, 4096);
            out.zeros(0, 3, 4);
            out.message(new MigrationProtocol.DeviceState(10_000));
            out.state(new byte[] {1, 2, 3});
            out.message(new MigrationProtocol.Postcopy(3));
            out.bitmap(0, new long[] {0b1011, 0});
            out.message(SHARED_STATE);
            out.message(new MigrationProtocol.Prepared(true));
            out.flush();
        }
        assertEquals(bytes.size(), out.bytes(), "the writer counts every byte it wrote");
        var in = reader(bytes.toByteArray());
        assertEquals(new MigrationProtocol.PassEnd(2, 5), ((MigrationStream.Message) in.next()).message());
        assertEquals(new MigrationStream.Pages(1, 9, 2), in.next());
        byte[] expected = new byte[2 * 4096];
        Arrays.fill(expected, 0, 4096, (byte) 7);
        var received = new byte[2 * 4096];
        in.readPages(MemorySegment.ofArray(received));
        assertArrayEquals(expected, received);
        assertEquals(new MigrationStream.Zeros(0, 3, 4), in.next());
        assertEquals(new MigrationProtocol.DeviceState(10_000), ((MigrationStream.Message) in.next()).message());
        assertEquals(3, ((MigrationStream.State) in.next()).bytes().length);
        assertEquals(new MigrationProtocol.Postcopy(3), ((MigrationStream.Message) in.next()).message());
        var bitmap = (MigrationStream.Bitmap) in.next();
        assertEquals(0, bitmap.block());
        assertArrayEquals(new long[] {0b1011, 0}, bitmap.words());
        assertEquals(SHARED_STATE, ((MigrationStream.Message) in.next()).message());
        assertEquals(new MigrationProtocol.Prepared(true), ((MigrationStream.Message) in.next()).message());
        assertNull(in.next());
    }

    /**
     * Over a plain socket (loopback) pages go from RAM to the kernel and from the kernel into RAM
     * without an array: batches of every size between messages and zero markers arrive intact,
     * including the bytes the reader's buffer took in with a frame's header.
     */
    @Test
    void pagesCrossASocketWithoutACopyAndArriveIntact() throws Exception {
        int pages = 1024;
        try (var server = ServerSocketChannel.open().bind(new InetSocketAddress("127.0.0.1", 0));
                var arena = Arena.ofShared()) {
            var ram = arena.allocate((long) pages * 4096, 4096);
            for (long i = 0; i < ram.byteSize() / 8; i++)
                ram.setAtIndex(ValueLayout.JAVA_LONG, i, i * 0x9E3779B97F4A7C15L);
            int[] batches = {1, 256, 3, 255, 17, 256, 200, 36}; // 1024 pages
            var sender = Thread.ofPlatform().start(() -> {
                try (Socket socket =
                        SocketChannel.open(server.getLocalAddress()).socket()) {
                    var out = MigrationStream.Writer.on(socket, 0);
                    long page = 0;
                    for (int n : batches) {
                        out.message(new MigrationProtocol.PassEnd(1, page));
                        out.pages(0, page, n, ram, page * 4096);
                        out.zeros(0, page, 1);
                        page += n;
                    }
                    out.flush();
                } catch (Exception e) {
                    throw new AssertionError(e);
                }
            });
            try (Socket socket = server.accept().socket()) {
                var in = MigrationStream.Reader.on(socket);
                var copy = arena.allocate(ram.byteSize(), 4096);
                long page = 0;
                for (int n : batches) {
                    assertEquals(
                            new MigrationProtocol.PassEnd(1, page), ((MigrationStream.Message) in.next()).message());
                    assertEquals(new MigrationStream.Pages(0, page, n), in.next());
                    in.readPages(copy.asSlice(page * 4096, n * 4096L));
                    assertEquals(new MigrationStream.Zeros(0, page, 1), in.next());
                    page += n;
                }
                assertNull(in.next());
                assertEquals(-1, ram.mismatch(copy), "every page arrived as sent");
            }
            sender.join();
        }
    }

    /** A TLS socket layered over a plain one answers getChannel with the plain one's: its pages must not take it. */
    @Test
    void aTlsSocketOverAChannelsSocketIsNotWrittenAroundItsEncryption() throws Exception {
        try (var server = ServerSocketChannel.open().bind(new InetSocketAddress("127.0.0.1", 0));
                Socket plain = SocketChannel.open(server.getLocalAddress()).socket();
                var accepted = server.accept();
                var tls = javax.net.ssl.SSLContext.getDefault()
                        .getSocketFactory()
                        .createSocket(plain, "127.0.0.1", plain.getPort(), false)) {
            assertTrue(accepted.isConnected());
            assertNotNull(tls.getChannel(), "the JDK's layered TLS socket hands out the plain channel");
            assertNull(PageStreams.plainChannel(tls));
            assertNotNull(PageStreams.plainChannel(plain));
        }
    }

    @Test
    void badFramesAreRefusedInOneLine() {
        var garbage = assertThrows(
                SnapshotException.class,
                () -> reader("GET / HTTP/1.0\r\n".getBytes()).next());
        assertEquals("the peer sent a frame of unknown kind 0x47: not a migration stream", garbage.getMessage());
        var batch = assertThrows(
                SnapshotException.class,
                () -> reader(new byte[] {'P', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1})
                        .next());
        assertEquals("the peer sent a batch of 257 pages", batch.getMessage());
        var state = assertThrows(
                SnapshotException.class,
                () -> reader(new byte[] {'D', 0x7f, 0, 0, 0}).next());
        assertEquals("the peer sent a device state of 2130706432 bytes", state.getMessage());
        var bitmap = assertThrows(
                SnapshotException.class,
                () -> reader(new byte[] {'B', 0, 0, 0, 0, 0x7f, 0, 0, 0}).next());
        assertEquals("the peer sent a bitmap of 2130706432 words", bitmap.getMessage());
        assertThrows(
                MigrationStream.Ended.class,
                () -> reader(new byte[] {'Z', 0, 0}).next());
    }

    @Test
    void addresses() {
        assertEquals(new TcpAddress("127.0.0.1", 4444), TcpAddress.parse("tcp::4444"));
        assertEquals(new TcpAddress("10.0.0.2", 0), TcpAddress.parse("tcp:10.0.0.2:0"));
        assertEquals(new TcpAddress("::1", 5), TcpAddress.parse("tcp:[::1]:5"));
        assertEquals("tcp:[::1]:5", TcpAddress.parse("tcp:[::1]:5").toString());
        var e = assertThrows(IllegalArgumentException.class, () -> TcpAddress.parse("tcp:host"));
        assertEquals("the address must be tcp:[HOST]:PORT, not 'tcp:host'", e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> TcpAddress.parse("tcp:h:70000"));
    }
}
