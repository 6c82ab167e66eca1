package dev.panamavmm.vmm.memory;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import javax.net.ssl.SSLSocket;

/**
 * A migration connection's two directions, buffered for the small things (frame headers,
 * messages, requests) and with a way for guest pages that skips Java's arrays when the socket is
 * a plain TCP socket's: pages go from guest RAM to the kernel in one gathering write with what is
 * buffered before them, and from the kernel straight into guest RAM (or a native buffer) after
 * what the input buffer read ahead. On any other stream (TLS, a test's) pages are copied through
 * the buffer, as a plain buffered stream would.
 */
public final class PageStreams {
    private PageStreams() {}

    /** The input side of {@code socket} (its channel used for pages when it is plain TCP). */
    public static In in(Socket socket) throws IOException {
        return new In(socket.getInputStream(), plainChannel(socket), 64 << 10);
    }

    /** The output side of {@code socket} (its channel used for pages when it is plain TCP). */
    public static Out out(Socket socket) throws IOException {
        return new Out(socket.getOutputStream(), plainChannel(socket), 64 << 10);
    }

    /** {@code in} itself when it is one, else {@code in} buffered by {@code size} bytes, pages copied. */
    public static In in(InputStream in, int size) {
        return in instanceof In pages ? pages : new In(in, null, size);
    }

    /** {@code out} itself when it is one, else {@code out} buffered by {@code size} bytes, pages copied. */
    public static Out out(OutputStream out, int size) {
        return out instanceof Out pages ? pages : new Out(out, null, size);
    }

    /**
     * The channel of a plain TCP socket, or null. Not a TLS socket's: the JDK's TLS socket layered
     * over a plain one answers {@code getChannel} with the plain one's, which would bypass the
     * encryption.
     */
    public static SocketChannel plainChannel(Socket socket) {
        return socket instanceof SSLSocket ? null : socket.getChannel();
    }

    /** Buffered input whose {@link #readFully(MemorySegment)} reads pages past the buffer. */
    public static final class In extends BufferedInputStream {
        private final SocketChannel channel;
        private byte[] scratch; // without a channel: what pages pass through past the buffer

        private In(InputStream in, SocketChannel channel, int size) {
            super(in, size);
            this.channel = channel;
        }

        /** Exactly {@code target}'s size of bytes into {@code target}; EOFException if the stream ends first. */
        public synchronized void readFully(MemorySegment target) throws IOException {
            long length = target.byteSize();
            long done = Math.min(length, count - pos);
            MemorySegment.copy(buf, pos, target, ValueLayout.JAVA_BYTE, 0, (int) done);
            pos += (int) done;
            if (done == length) return;
            if (channel != null) {
                var rest = target.asSlice(done).asByteBuffer();
                while (rest.hasRemaining()) if (channel.read(rest) < 0) throw new EOFException();
                return;
            }
            if (scratch == null) scratch = new byte[buf.length];
            while (done < length) {
                int n = in.read(scratch, 0, (int) Math.min(scratch.length, length - done)); // the buffer is empty
                if (n < 0) throw new EOFException();
                MemorySegment.copy(scratch, 0, target, ValueLayout.JAVA_BYTE, done, n);
                done += n;
            }
        }
    }

    /** Buffered output whose {@link #write(MemorySegment)} sends pages without an array on a plain socket. */
    public static final class Out extends BufferedOutputStream {
        private final SocketChannel channel;

        private Out(OutputStream out, SocketChannel channel, int size) {
            super(out, size);
            this.channel = channel;
        }

        /** {@code pages}' bytes, after what is buffered: in one gathering write on a plain socket. */
        public synchronized void write(MemorySegment pages) throws IOException {
            if (channel != null) {
                var frame = new ByteBuffer[] {ByteBuffer.wrap(buf, 0, count), pages.asByteBuffer()};
                while (frame[0].hasRemaining() || frame[1].hasRemaining()) channel.write(frame);
                count = 0;
                return;
            }
            long done = 0, length = pages.byteSize();
            while (done < length) { // through the buffer
                if (count == buf.length) {
                    out.write(buf, 0, count);
                    count = 0;
                }
                int n = (int) Math.min(buf.length - count, length - done);
                MemorySegment.copy(pages, ValueLayout.JAVA_BYTE, done, buf, count, n);
                count += n;
                done += n;
            }
        }
    }
}
