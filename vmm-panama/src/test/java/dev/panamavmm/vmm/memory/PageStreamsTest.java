package dev.panamavmm.vmm.memory;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import org.junit.jupiter.api.Test;

/**
 * Pages through streams without a channel (TLS, tests): larger than the buffer, between small
 * writes, in order, and a short stream refused. The channel path: MigrationStreamTest over a socket.
 */
class PageStreamsTest {

    @Test
    void pagesLargerThanTheBufferPassItInOrderBetweenSmallWrites() throws Exception {
        try (var arena = Arena.ofConfined()) {
            var ram = arena.allocate(75 * 4096);
            for (long i = 0; i < ram.byteSize() / 4; i++)
                ram.setAtIndex(ValueLayout.JAVA_INT, i, (int) (i * 2654435761L));
            var bytes = new ByteArrayOutputStream();
            var out = PageStreams.out(bytes, 4096);
            var data = new DataOutputStream(out);
            data.writeInt(17);
            out.write(ram.asSlice(0, 3 * 4096 + 100)); // not a multiple of the buffer, after bytes in it
            data.writeLong(-1);
            out.write(ram.asSlice(3 * 4096 + 100));
            data.writeByte(9);
            data.flush();

            var in = PageStreams.in(new ByteArrayInputStream(bytes.toByteArray()), 4096);
            var read = new DataInputStream(in);
            var copy = arena.allocate(ram.byteSize());
            assertEquals(17, read.readInt());
            in.readFully(copy.asSlice(0, 3 * 4096 + 100));
            assertEquals(-1L, read.readLong());
            in.readFully(copy.asSlice(3 * 4096 + 100));
            assertEquals(9, read.readByte());
            assertEquals(-1, read.read());
            assertEquals(-1, ram.mismatch(copy), "every byte as written");
        }
    }

    /** On a plain socket what is buffered goes out with the pages, even when there are none. */
    @Test
    void overAChannelTheBufferedBytesGoFirstEvenBeforeNoPages() throws Exception {
        try (var server = ServerSocketChannel.open().bind(new InetSocketAddress("127.0.0.1", 0));
                Socket client = SocketChannel.open(server.getLocalAddress()).socket();
                Socket accepted = server.accept().socket();
                var arena = Arena.ofConfined()) {
            var out = PageStreams.out(client);
            var data = new DataOutputStream(out);
            var pages = arena.allocate(3 * 4096);
            pages.fill((byte) 0x5a);
            data.writeInt(7);
            out.write(pages);
            data.writeInt(8);
            out.write(pages.asSlice(0, 0));
            data.flush();
            client.shutdownOutput();

            var in = PageStreams.in(accepted);
            var read = new DataInputStream(in);
            assertEquals(7, read.readInt());
            var copy = arena.allocate(3 * 4096);
            in.readFully(copy);
            assertEquals(-1, pages.mismatch(copy));
            assertEquals(8, read.readInt());
            assertEquals(-1, read.read());
        }
    }

    @Test
    void aStreamThatEndsInsideThePagesIsAnEofAndAStreamIsWrappedOnce() throws Exception {
        var in = PageStreams.in(new ByteArrayInputStream(new byte[5000]), 4096);
        assertThrows(EOFException.class, () -> in.readFully(MemorySegment.ofArray(new byte[8192])));
        assertSame(in, PageStreams.in(in, 1 << 20), "already one: taken as it is");
        var out = PageStreams.out(new ByteArrayOutputStream(), 4096);
        assertSame(out, PageStreams.out(out, 1 << 20));
        var small = new byte[] {1, 2, 3};
        var bytes = new ByteArrayOutputStream();
        var o = PageStreams.out(bytes, 2);
        o.write(MemorySegment.ofArray(small));
        o.flush();
        assertArrayEquals(small, bytes.toByteArray());
    }
}
