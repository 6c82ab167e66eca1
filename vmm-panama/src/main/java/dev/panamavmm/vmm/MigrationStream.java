package dev.panamavmm.vmm;

import dev.panamavmm.migration.SnapshotException;
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.channels.GatheringByteChannel;
import java.nio.channels.ReadableByteChannel;
import java.nio.channels.SocketChannel;
import javax.net.ssl.SSLSocket;

/**
 * The frames of a TCP migration over one byte stream (a socket's, or a TLS socket's): each frame is
 * a kind byte and its body. {@code M}: a {@link MigrationProtocol} message (int length, JSON);
 * {@code P}: a page batch (int block, long first page, int count, then count raw 4 KiB pages);
 * {@code Z}: zero pages, as markers only (block, first page, count); {@code D}: the device state
 * (int length, the snapshot container's bytes); {@code B}: a RAM block's page bitmap at the switch to
 * post-copy (int block, int words, then the words; bit i of word w: page 64 w + i). Sizes are bounded, so a peer cannot make the
 * reader allocate more than {@link #MAX_STATE} bytes.
 *
 * <p>Over a plain TCP socket ({@link Writer#on}, {@link Reader#on}) pages go between guest RAM and
 * the socket with no copy in Java: the writer hands the kernel the guest's pages themselves (a
 * gathering write of the frame's header and the RAM), and the reader reads a batch straight into the
 * destination's RAM. A TLS socket has no channel (its bytes are encrypted in Java anyway): pages go
 * through a 1 MiB array there.
 */
final class MigrationStream {
    private MigrationStream() {}

    static final int PAGE = 4096;
    /** Pages per batch at most: 1 MiB. */
    static final int MAX_BATCH_PAGES = 256;

    static final int MAX_MESSAGE = 1 << 20;
    static final int MAX_STATE = 256 << 20;

    /** Bitmap words at most: one bit per page of the largest guest. */
    static final int MAX_BITMAP_WORDS = (int) (dev.panamavmm.vmm.memory.GuestMemory.MAX_SIZE / PAGE / 64);

    private static final byte MESSAGE = 'M', PAGES = 'P', ZEROS = 'Z', STATE = 'D', BITMAP = 'B';

    /** One frame as read. */
    sealed interface Frame {}

    record Message(MigrationProtocol.Message message) implements Frame {}

    /** {@code count} pages from {@code firstPage} of block {@code block}; their bytes follow: {@link Reader#readPages}. */
    record Pages(int block, long firstPage, int count) implements Frame {}

    record Zeros(int block, long firstPage, int count) implements Frame {}

    record State(byte[] bytes) implements Frame {}

    record Bitmap(int block, long[] words) implements Frame {}

    /**
     * The sending side; {@code maxBytesPerSecond} > 0 limits it (a token bucket refilled at that
     * rate, at most 100 ms of it saved up).
     */
    static final class Writer {
        private final DataOutputStream out;
        private final GatheringByteChannel channel; // a plain socket's: pages go from guest RAM to the kernel
        private final ByteBuffer header = ByteBuffer.allocate(17);
        private byte[]
                buffer; // without a channel, on the first pages: a migration by reference never has 1 MiB to collect
        private volatile long maxBytesPerSecond;
        private double tokens;
        private long refilledAt = System.nanoTime();
        private long bytes;

        Writer(DataOutputStream out, long maxBytesPerSecond) {
            this(out, null, maxBytesPerSecond);
        }

        private Writer(DataOutputStream out, GatheringByteChannel channel, long maxBytesPerSecond) {
            this.out = out;
            this.channel = channel;
            this.maxBytesPerSecond = maxBytesPerSecond;
        }

        /** On {@code socket}: without a copy of the pages when it is a plain TCP socket (it has a channel). */
        static Writer on(Socket socket, long maxBytesPerSecond) throws IOException {
            var channel = plainChannel(socket);
            // Messages and zero markers are small; without a channel 1 MiB batches pass the buffer by.
            var buffered = new BufferedOutputStream(socket.getOutputStream(), 64 << 10);
            return new Writer(new DataOutputStream(buffered), channel, maxBytesPerSecond);
        }

        void maxBytesPerSecond(long rate) {
            maxBytesPerSecond = rate;
        }

        void message(MigrationProtocol.Message m) throws IOException {
            byte[] json = MigrationProtocol.encode(m, MigrationProtocol.VERSION);
            throttle(5 + json.length);
            out.writeByte(MESSAGE);
            out.writeInt(json.length);
            out.write(json);
        }

        /** {@code count} pages of {@code segment} from byte {@code offset}, sent as block {@code block}'s page {@code firstPage} on. */
        void pages(int block, long firstPage, int count, MemorySegment segment, long offset) throws IOException {
            int length = count * PAGE;
            throttle(17 + length);
            if (channel != null) {
                out.flush(); // the frames before this one first
                header.clear()
                        .put(PAGES)
                        .putInt(block)
                        .putLong(firstPage)
                        .putInt(count)
                        .flip();
                var frame = new ByteBuffer[] {
                    header, segment.asSlice(offset, length).asByteBuffer()
                };
                while (frame[1].hasRemaining()) channel.write(frame);
                return;
            }
            if (buffer == null) buffer = new byte[MAX_BATCH_PAGES * PAGE];
            MemorySegment.copy(segment, ValueLayout.JAVA_BYTE, offset, buffer, 0, length);
            out.writeByte(PAGES);
            out.writeInt(block);
            out.writeLong(firstPage);
            out.writeInt(count);
            out.write(buffer, 0, length);
        }

        void zeros(int block, long firstPage, int count) throws IOException {
            throttle(17);
            out.writeByte(ZEROS);
            out.writeInt(block);
            out.writeLong(firstPage);
            out.writeInt(count);
        }

        void state(byte[] state) throws IOException {
            out.writeByte(STATE);
            out.writeInt(state.length);
            out.write(state);
            bytes += 5 + state.length;
        }

        void bitmap(int block, long[] words) throws IOException {
            out.writeByte(BITMAP);
            out.writeInt(block);
            out.writeInt(words.length);
            for (long w : words) out.writeLong(w);
            bytes += 9 + 8L * words.length;
        }

        void flush() throws IOException {
            out.flush();
        }

        /** The stream under the frames (flushed), for the post-copy protocol that follows them. */
        DataOutputStream stream() throws IOException {
            out.flush();
            return out;
        }

        /** Bytes written so far, frames included. */
        long bytes() {
            return bytes;
        }

        private void throttle(int n) throws IOException {
            bytes += n;
            long rate = maxBytesPerSecond;
            if (rate <= 0) return;
            long now = System.nanoTime();
            tokens = Math.min(rate / 10.0, tokens + (now - refilledAt) * rate / 1e9);
            refilledAt = now;
            tokens -= n;
            if (tokens < 0) {
                long waitNanos = (long) (-tokens * 1e9 / rate);
                try {
                    // What is buffered goes out while this sender waits.
                    out.flush();
                    Thread.sleep(waitNanos / 1_000_000, (int) (waitNanos % 1_000_000));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new IOException("interrupted");
                }
            }
        }
    }

    /**
     * The receiving side: checks every frame's kind and size before it reads the body. After a
     * {@link Pages} frame the caller reads its pages with {@link #readPages} before the next frame.
     */
    static final class Reader {
        private final DataInputStream in;
        private final Input input; // with a channel: a plain socket's
        private byte[] buffer; // without a channel, on the first pages, as the writer's

        Reader(DataInputStream in) {
            this.in = in;
            this.input = null;
        }

        private Reader(Input input) {
            this.in = new DataInputStream(input);
            this.input = input;
        }

        /** On {@code socket}: pages read straight into guest RAM when it is a plain TCP socket (it has a channel). */
        static Reader on(Socket socket) throws IOException {
            var channel = plainChannel(socket);
            if (channel == null)
                return new Reader(new DataInputStream(new BufferedInputStream(socket.getInputStream())));
            return new Reader(new Input(socket.getInputStream(), channel));
        }

        /** The pages of the {@link Pages} frame {@link #next} returned: exactly {@code target}'s size of them. */
        void readPages(MemorySegment target) throws IOException {
            if (input != null) {
                input.readFully(target);
                return;
            }
            int length = Math.toIntExact(target.byteSize());
            if (buffer == null) buffer = new byte[MAX_BATCH_PAGES * PAGE];
            try {
                in.readFully(buffer, 0, length);
            } catch (EOFException e) {
                throw new Ended();
            }
            MemorySegment.copy(buffer, 0, target, ValueLayout.JAVA_BYTE, 0, length);
        }

        /** The next frame, or null at the end of the stream (between frames). */
        Frame next() throws IOException {
            int kind = in.read();
            if (kind < 0) return null;
            try {
                return switch ((byte) kind) {
                    case MESSAGE -> {
                        int length = in.readInt();
                        if (length < 2 || length > MAX_MESSAGE)
                            throw new SnapshotException("the peer sent a message of " + length + " bytes");
                        byte[] json = new byte[length];
                        in.readFully(json);
                        yield new Message(MigrationProtocol.decode(json));
                    }
                    case PAGES -> new Pages(in.readInt(), in.readLong(), count(in.readInt()));
                    case ZEROS -> new Zeros(in.readInt(), in.readLong(), count(in.readInt()));
                    case STATE -> {
                        int length = in.readInt();
                        if (length < 0 || length > MAX_STATE)
                            throw new SnapshotException("the peer sent a device state of " + length + " bytes");
                        byte[] state = new byte[length];
                        in.readFully(state);
                        yield new State(state);
                    }
                    case BITMAP -> {
                        int block = in.readInt();
                        int length = in.readInt();
                        if (length < 0 || length > MAX_BITMAP_WORDS)
                            throw new SnapshotException("the peer sent a bitmap of " + length + " words");
                        long[] words = new long[length];
                        for (int i = 0; i < length; i++) words[i] = in.readLong();
                        yield new Bitmap(block, words);
                    }
                    default ->
                        throw new SnapshotException(String.format(
                                "the peer sent a frame of unknown kind 0x%02x: not a migration stream", kind));
                };
            } catch (EOFException e) {
                throw new Ended();
            }
        }

        /** The next frame, which must be a message: anything else, or the end, is a {@link SnapshotException}. */
        MigrationProtocol.Message message(String expected) throws IOException {
            var frame = next();
            if (frame == null) throw new SnapshotException("the peer closed the connection");
            if (!(frame instanceof Message m))
                throw new SnapshotException("the peer sent " + describe(frame) + " instead of " + expected);
            return m.message();
        }

        /** The stream under the frames (what it buffered included), for the post-copy protocol that follows them. */
        DataInputStream stream() {
            return in;
        }

        private static int count(int n) {
            if (n < 1 || n > MAX_BATCH_PAGES) throw new SnapshotException("the peer sent a batch of " + n + " pages");
            return n;
        }
    }

    /**
     * The channel of a plain TCP socket, or null. Not a TLS socket's: one layered over a plain
     * socket answers {@code getChannel} with the plain socket's, which would bypass the encryption.
     */
    static SocketChannel plainChannel(Socket socket) {
        return socket instanceof SSLSocket ? null : socket.getChannel();
    }

    /**
     * A socket's input, buffered for the frames' headers, whose page batches bypass the buffer:
     * what it read ahead is copied, the rest read from the channel into guest RAM by the kernel.
     */
    private static final class Input extends BufferedInputStream {
        private final ReadableByteChannel channel;

        Input(InputStream in, ReadableByteChannel channel) {
            super(in);
            this.channel = channel;
        }

        synchronized void readFully(MemorySegment target) throws IOException {
            long length = target.byteSize();
            int ahead = (int) Math.min(length, count - pos);
            MemorySegment.copy(buf, pos, target, ValueLayout.JAVA_BYTE, 0, ahead);
            pos += ahead;
            var rest = target.asSlice(ahead).asByteBuffer();
            while (rest.hasRemaining()) if (channel.read(rest) < 0) throw new Ended();
        }
    }

    /** The stream ended in the middle of a frame. */
    static final class Ended extends IOException {
        private static final long serialVersionUID = 1L;

        Ended() {
            super("the connection ended in the middle of a frame");
        }
    }

    static String describe(Frame frame) {
        return switch (frame) {
            case Message m -> m.message().getClass().getSimpleName().toLowerCase();
            case Pages p -> "pages";
            case Zeros z -> "zero pages";
            case State s -> "the device state";
            case Bitmap b -> "a page bitmap";
        };
    }
}
