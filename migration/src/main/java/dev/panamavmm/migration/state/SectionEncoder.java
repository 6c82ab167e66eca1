package dev.panamavmm.migration.state;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.BitSet;

/**
 * Builds a binary state section (format 2, specified in docs/snapshot-format.md):
 *
 * <pre>
 * u16 schema version, u16 reserved (0)
 * then per field: u16 tag, u32 length, length bytes of value
 * </pre>
 *
 * All little-endian. Values: i32 (4 bytes), i64 (8), bool (1 byte, 0 or 1), bytes (as they are:
 * a kernel struct is stored as the kernel's own bytes), ints (n x 4), longs (n x 8).
 */
public final class SectionEncoder {
    private ByteBuffer buf = ByteBuffer.allocate(256).order(ByteOrder.LITTLE_ENDIAN);
    private final BitSet written = new BitSet();

    public SectionEncoder(int schema) {
        if (schema < 1 || schema > 0xFFFF) throw new IllegalArgumentException("schema version " + schema);
        buf.putShort((short) schema).putShort((short) 0);
    }

    private ByteBuffer field(Field f, int length) {
        if (written.get(f.tag())) throw new IllegalArgumentException("field " + f.name() + " written twice");
        written.set(f.tag());
        int need = 6 + length;
        if (buf.remaining() < need) {
            var bigger = ByteBuffer.allocate(Math.max(buf.capacity() * 2, buf.position() + need))
                    .order(ByteOrder.LITTLE_ENDIAN);
            buf = bigger.put(buf.flip());
        }
        return buf.putShort((short) f.tag()).putInt(length);
    }

    public SectionEncoder i32(Field f, int v) {
        field(f, 4).putInt(v);
        return this;
    }

    public SectionEncoder i64(Field f, long v) {
        field(f, 8).putLong(v);
        return this;
    }

    public SectionEncoder bool(Field f, boolean v) {
        field(f, 1).put((byte) (v ? 1 : 0));
        return this;
    }

    public SectionEncoder bytes(Field f, byte[] v) {
        field(f, v.length).put(v);
        return this;
    }

    public SectionEncoder ints(Field f, int[] v) {
        var b = field(f, Math.multiplyExact(v.length, 4));
        for (int x : v) b.putInt(x);
        return this;
    }

    public SectionEncoder longs(Field f, long[] v) {
        var b = field(f, Math.multiplyExact(v.length, 8));
        for (long x : v) b.putLong(x);
        return this;
    }

    public byte[] toBytes() {
        return Arrays.copyOf(buf.array(), buf.position());
    }
}
