package dev.panamavmm.migration.state;

import dev.panamavmm.migration.SnapshotException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * The fields of a binary state section (the layout is in {@link SectionEncoder}). Parsing checks
 * every length against what is left before it reads, refuses a tag twice, and keeps only offsets:
 * no value is copied until a codec asks for it.
 */
final class BinaryFields implements StateFields {
    private static final int HEADER = 4, FIELD_HEADER = 6;

    private final String section;
    private final byte[] payload;
    private final int schema;
    /** Per field in order of appearance: its tag, the offset of its value and its length (a section has a dozen fields). */
    private int[] tags = new int[16], offsets = new int[16], lengths = new int[16];

    private int count;

    private BinaryFields(String section, byte[] payload) {
        this.section = section;
        this.payload = payload;
        var b = ByteBuffer.wrap(payload).order(ByteOrder.LITTLE_ENDIAN);
        if (payload.length < HEADER) throw corrupt("it ends inside its header");
        schema = Short.toUnsignedInt(b.getShort());
        b.getShort(); // reserved
        while (b.hasRemaining()) {
            if (b.remaining() < FIELD_HEADER) throw corrupt("it ends inside a field header");
            int tag = Short.toUnsignedInt(b.getShort());
            int len = b.getInt();
            if (len < 0 || len > b.remaining()) throw corrupt("field " + tag + " is longer than the section");
            if (tag == 0 || indexOf(tag) >= 0)
                throw corrupt(tag == 0 ? "a field has tag 0" : "field " + tag + " appears twice");
            if (count == tags.length) {
                tags = Arrays.copyOf(tags, count * 2);
                offsets = Arrays.copyOf(offsets, count * 2);
                lengths = Arrays.copyOf(lengths, count * 2);
            }
            tags[count] = tag;
            offsets[count] = b.position();
            lengths[count++] = len;
            b.position(b.position() + len);
        }
    }

    static BinaryFields parse(byte[] payload, String section) {
        return new BinaryFields(section, payload);
    }

    private SnapshotException corrupt(String why) {
        return new SnapshotException("snapshot section " + section + " is malformed (" + why + ")");
    }

    @Override
    public int schema() {
        return schema;
    }

    @Override
    public String section() {
        return section;
    }

    private int indexOf(int tag) {
        for (int i = 0; i < count; i++) if (tags[i] == tag) return i;
        return -1;
    }

    @Override
    public boolean has(Field f) {
        return indexOf(f.tag()) >= 0;
    }

    /** The value's bytes as a little-endian buffer, checked to be present and a multiple of {@code unit} long (exactly {@code unit} if {@code exact}). */
    private ByteBuffer value(Field f, int unit, boolean exact) {
        int i = indexOf(f.tag());
        if (i < 0) throw new SnapshotException("snapshot section " + section + " lacks " + f.name());
        int len = lengths[i];
        if (exact ? len != unit : len % unit != 0)
            throw new SnapshotException("snapshot section " + section + ": " + f.name() + " has the wrong type");
        return ByteBuffer.wrap(payload, offsets[i], len).slice().order(ByteOrder.LITTLE_ENDIAN);
    }

    @Override
    public int i32(Field f) {
        return value(f, 4, true).getInt();
    }

    @Override
    public long i64(Field f) {
        return value(f, 8, true).getLong();
    }

    @Override
    public boolean bool(Field f) {
        byte v = value(f, 1, true).get();
        if (v != 0 && v != 1)
            throw new SnapshotException("snapshot section " + section + ": " + f.name() + " has the wrong type");
        return v == 1;
    }

    @Override
    public byte[] bytes(Field f) {
        var v = value(f, 1, false);
        var a = new byte[v.remaining()];
        v.get(a);
        return a;
    }

    @Override
    public int[] ints(Field f) {
        var v = value(f, 4, false);
        var a = new int[v.remaining() / 4];
        v.asIntBuffer().get(a);
        return a;
    }

    @Override
    public long[] longs(Field f) {
        var v = value(f, 8, false);
        var a = new long[v.remaining() / 8];
        v.asLongBuffer().get(a);
        return a;
    }
}
