package dev.panamavmm.vmm.postcopy;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;

/**
 * The post-copy messages (docs/architecture.md, "Post-copy migration"): one type byte, then
 * big-endian fields. The destination speaks first on every connection.
 *
 * <pre>
 * destination -> source
 *   'H' HELLO     magic "PCPY", version (u16), blocks (u32), per block: guest address (u64),
 *                 size (u64), words (u32), the pages still missing (u64 bitmap words)
 *   'R' REQUEST   guest address (u64) of a page a thread faulted on
 *   'C' COMPLETE  every page is present: the source may end
 * source -> destination
 *   'P' PAGES     guest address (u64), count (u32, 1..64), count * 4096 bytes
 *   'Z' ZEROS     guest address (u64), count (u32, 1..2^20): pages that are all zero
 *   'E' END       every page the destination missed was sent
 * </pre>
 */
final class PostcopyProtocol {
    private PostcopyProtocol() {}

    static final int MAGIC = 0x50435059; // "PCPY"
    static final int VERSION = 1;
    static final byte HELLO = 'H', REQUEST = 'R', COMPLETE = 'C', PAGES = 'P', ZEROS = 'Z', END = 'E';
    static final int PAGE = PageSet.PAGE;
    /** Pages of one PAGES message at most (256 KiB): a fault's page never waits behind more. */
    static final int MAX_PAGES = 64;
    /** Pages of one ZEROS message at most (4 GiB). */
    static final int MAX_ZEROS = 1 << 20;

    /** The destination's HELLO: which pages of each block it still misses. */
    static void writeHello(DataOutputStream out, PageSet missing) throws IOException {
        out.writeByte(HELLO);
        out.writeInt(MAGIC);
        out.writeShort(VERSION);
        out.writeInt(missing.blocks());
        for (int b = 0; b < missing.blocks(); b++) {
            out.writeLong(missing.blockStart(b));
            out.writeLong(missing.blockSize(b));
            long[] words = missing.words(b);
            out.writeInt(words.length);
            out.write(bytesOf(words)); // one write: the HELLO goes out as the guest waits for its first pages
        }
    }

    /** Reads a HELLO into {@code toSend}: it becomes the pages the destination misses, of those in {@code original}. */
    static void readHello(DataInputStream in, PageSet toSend, PageSet original) throws IOException {
        int type = in.read();
        if (type < 0) throw new EOFException("the destination closed the connection before its HELLO");
        if (type != HELLO) throw new PostcopyException("the destination's first message is not a HELLO: " + name(type));
        int magic = in.readInt();
        if (magic != MAGIC)
            throw new PostcopyException("the peer does not speak post-copy (magic 0x%08x)".formatted(magic));
        int version = in.readUnsignedShort();
        if (version != VERSION)
            throw new PostcopyException(
                    "the destination speaks post-copy version " + version + ", this VMM " + VERSION);
        int blocks = in.readInt();
        if (blocks != toSend.blocks())
            throw new PostcopyException("the destination has " + blocks + " RAM blocks, the source " + toSend.blocks());
        var all = new long[blocks][];
        for (int b = 0; b < blocks; b++) {
            long start = in.readLong(), size = in.readLong();
            if (start != toSend.blockStart(b) || size != toSend.blockSize(b))
                throw new PostcopyException("the destination's RAM block %d is 0x%x+0x%x, the source's 0x%x+0x%x"
                        .formatted(b, start, size, toSend.blockStart(b), toSend.blockSize(b)));
            int words = in.readInt();
            if (words != (int) ((toSend.pages(b) + 63) / 64))
                throw new PostcopyException("the destination's bitmap of block " + b + " has " + words + " words");
            var bytes = new byte[Math.multiplyExact(words, Long.BYTES)];
            in.readFully(bytes); // one read, not a readLong a word: the source serves nothing until it has them
            all[b] = new long[words];
            ByteBuffer.wrap(bytes).asLongBuffer().get(all[b]);
        }
        for (int b = 0; b < blocks; b++) toSend.replace(b, all[b], original);
    }

    /** {@code words} as big-endian bytes, as {@link DataOutputStream#writeLong} would write them one by one. */
    private static byte[] bytesOf(long[] words) {
        var bytes = new byte[words.length * Long.BYTES];
        ByteBuffer.wrap(bytes).asLongBuffer().put(words);
        return bytes;
    }

    static String name(int type) {
        return switch (type) {
            case HELLO -> "HELLO";
            case REQUEST -> "REQUEST";
            case COMPLETE -> "COMPLETE";
            case PAGES -> "PAGES";
            case ZEROS -> "ZEROS";
            case END -> "END";
            default -> "a message of unknown type 0x%02x".formatted(type & 0xff);
        };
    }
}
