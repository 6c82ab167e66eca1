package dev.panamavmm.vmm;

import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.PageStreams;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.foreign.MemorySegment;
import java.net.Socket;

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
 * the socket with no copy in Java ({@link PageStreams}): the writer hands the kernel the frame's
 * header and the guest's pages in one gathering write, and the reader reads a batch straight into
 * the destination's RAM. On a TLS socket (encrypted in Java anyway) they pass its buffer.
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
        private final PageStreams.Out sink;
        private final DataOutputStream out;
        private volatile long maxBytesPerSecond;
        private double tokens;
        private long refilledAt = System.nanoTime();
        private long bytes;

        /** On any stream: pages are copied through its buffer. */
        Writer(OutputStream out, long maxBytesPerSecond) {
            this(PageStreams.out(out, 64 << 10), maxBytesPerSecond);
        }

        private Writer(PageStreams.Out sink, long maxBytesPerSecond) {
            this.sink = sink;
            this.out = new DataOutputStream(sink);
            this.maxBytesPerSecond = maxBytesPerSecond;
        }

        /** On {@code socket}: without a copy of the pages when it is a plain TCP socket. */
        static Writer on(Socket socket, long maxBytesPerSecond) throws IOException {
            return new Writer(PageStreams.out(socket), maxBytesPerSecond);
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
            out.writeByte(PAGES);
            out.writeInt(block);
            out.writeLong(firstPage);
            out.writeInt(count);
            sink.write(segment.asSlice(offset, length));
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
        PageStreams.Out stream() throws IOException {
            out.flush();
            return sink;
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
        private final PageStreams.In source;
        private final DataInputStream in;

        /** On any stream: pages are copied through its buffer. */
        Reader(InputStream in) {
            this(PageStreams.in(in, 8 << 10));
        }

        private Reader(PageStreams.In source) {
            this.source = source;
            this.in = new DataInputStream(source);
        }

        /** On {@code socket}: pages read straight into guest RAM when it is a plain TCP socket. */
        static Reader on(Socket socket) throws IOException {
            return new Reader(PageStreams.in(socket));
        }

        /** The pages of the {@link Pages} frame {@link #next} returned: exactly {@code target}'s size of them. */
        void readPages(MemorySegment target) throws IOException {
            try {
                source.readFully(target);
            } catch (EOFException e) {
                throw new Ended();
            }
        }

        /** Whether a frame has begun to arrive: {@link #next} would not wait for its first byte (TLS: never known). */
        boolean ready() {
            try {
                return in.available() > 0;
            } catch (IOException e) {
                return true; // next() reports what is wrong
            }
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
        PageStreams.In stream() {
            return source;
        }

        private static int count(int n) {
            if (n < 1 || n > MAX_BATCH_PAGES) throw new SnapshotException("the peer sent a batch of " + n + " pages");
            return n;
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
