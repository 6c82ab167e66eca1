package dev.panamavmm.migration.state;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.panamavmm.migration.SnapshotException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import org.junit.jupiter.api.Test;

class StateCodecTest {
    /** A state as a device or vCPU would have: every field type the sections carry. */
    record Sample(int a, long b, boolean c, byte[] d, int[] e, long[] f) {
        Sample {
            if (a < 0) throw new IllegalArgumentException("a must not be negative");
        }
    }

    static final Field A = new Field(1, "a"),
            B = new Field(2, "b"),
            C = new Field(3, "c"),
            D = new Field(4, "d"),
            E = new Field(5, "e"),
            F = new Field(6, "f");

    /** Schema 1 of Sample. */
    static final class SampleCodec implements StateCodec<Sample> {
        @Override
        public int schema() {
            return 1;
        }

        @Override
        public void write(Sample s, SectionEncoder out) {
            out.i32(A, s.a())
                    .i64(B, s.b())
                    .bool(C, s.c())
                    .bytes(D, s.d())
                    .ints(E, s.e())
                    .longs(F, s.f());
        }

        @Override
        public Sample read(StateFields in) {
            return new Sample(in.i32(A), in.i64(B), in.bool(C), in.bytes(D), in.ints(E), in.longs(F));
        }
    }

    /** The next release's Sample: it gained a component, {@code g}, whose default (7) is what schema 1 meant. */
    record Sample2(int a, long b, boolean c, byte[] d, int[] e, long[] f, int g) {}

    static final Field G = new Field(7, "g");

    static final class Sample2Codec implements StateCodec<Sample2> {
        @Override
        public int schema() {
            return 2;
        }

        @Override
        public void write(Sample2 s, SectionEncoder out) {
            out.i32(A, s.a())
                    .i64(B, s.b())
                    .bool(C, s.c())
                    .bytes(D, s.d())
                    .ints(E, s.e())
                    .longs(F, s.f())
                    .i32(G, s.g());
        }

        @Override
        public Sample2 read(StateFields in) {
            return new Sample2(in.i32(A), in.i64(B), in.bool(C), in.bytes(D), in.ints(E), in.longs(F), in.i32(G, 7));
        }
    }

    static final Sample SAMPLE = new Sample(
            7, -1L << 40, true, new byte[] {1, -2, 3}, new int[] {0x6e0, 0xc0000080}, new long[] {Long.MIN_VALUE, 5});

    @Test
    void roundTripsEveryFieldType() {
        var codec = new SampleCodec();
        var back = codec.decode(codec.encode(SAMPLE), 2, "sample");
        assertEquals(SAMPLE.a(), back.a());
        assertEquals(SAMPLE.b(), back.b());
        assertEquals(SAMPLE.c(), back.c());
        assertArrayEquals(SAMPLE.d(), back.d());
        assertArrayEquals(SAMPLE.e(), back.e());
        assertArrayEquals(SAMPLE.f(), back.f());
    }

    @Test
    void theLayoutIsTheSpecifiedOne() {
        byte[] bytes = new SampleCodec().encode(new Sample(5, 0, false, new byte[0], new int[0], new long[0]));
        var b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        assertEquals(1, b.getShort()); // schema
        assertEquals(0, b.getShort()); // reserved
        assertEquals(1, b.getShort()); // tag of a
        assertEquals(4, b.getInt());
        assertEquals(5, b.getInt());
        assertEquals(2, b.getShort()); // tag of b
        assertEquals(8, b.getInt());
    }

    @Test
    void anOlderSchemaIsReadWithTheDefaultsOfFieldsAddedSince() {
        byte[] schema1 = new SampleCodec().encode(SAMPLE);
        var next = new Sample2Codec();
        var read = next.decode(schema1, 2, "sample");
        assertEquals(7, read.g());
        assertEquals(SAMPLE.b(), read.b());
        assertEquals(
                3,
                next.decode(next.encode(new Sample2(1, 2, true, new byte[1], new int[0], new long[0], 3)), 2, "sample")
                        .g());
    }

    @Test
    void aNewerSchemaIsRefusedNamingBothVersions() {
        byte[] schema2 = new Sample2Codec().encode(new Sample2(1, 2, true, new byte[1], new int[0], new long[0], 3));
        assertEquals(
                "snapshot section sample has schema version 2; this VMM reads versions 1 to 1 (it was written by a newer VMM)",
                assertThrows(SnapshotException.class, () -> new SampleCodec().decode(schema2, 2, "sample"))
                        .getMessage());
    }

    @Test
    void aSchemaOlderThanThePreviousIsRefused() {
        var codec = new StateCodec<Sample>() {
            @Override
            public int schema() {
                return 3;
            }

            @Override
            public void write(Sample s, SectionEncoder out) {}

            @Override
            public Sample read(StateFields in) {
                return SAMPLE;
            }
        };
        assertEquals(
                "snapshot section s has schema version 1; this VMM reads versions 2 to 3",
                assertThrows(SnapshotException.class, () -> codec.decode(new SampleCodec().encode(SAMPLE), 2, "s"))
                        .getMessage());
    }

    @Test
    void missingWrongAndInvalidFieldsAreOneLineErrors() {
        var codec = new SampleCodec();
        byte[] noB = new SectionEncoder(1)
                .i32(A, 1)
                .bool(C, true)
                .bytes(D, new byte[0])
                .ints(E, new int[0])
                .longs(F, new long[0])
                .toBytes();
        assertEquals(
                "snapshot section s lacks b",
                assertThrows(SnapshotException.class, () -> codec.decode(noB, 2, "s"))
                        .getMessage());
        byte[] shortB = new SectionEncoder(1).i32(A, 1).i32(B, 1).toBytes();
        assertEquals(
                "snapshot section s: b has the wrong type",
                assertThrows(SnapshotException.class, () -> codec.decode(shortB, 2, "s"))
                        .getMessage());
        byte[] badBool = new SectionEncoder(1)
                .i32(A, 1)
                .i64(B, 1)
                .bytes(C, new byte[] {2})
                .toBytes();
        assertEquals(
                "snapshot section s: c has the wrong type",
                assertThrows(SnapshotException.class, () -> codec.decode(badBool, 2, "s"))
                        .getMessage());
        byte[] oddInts = new SectionEncoder(1)
                .i32(A, 1)
                .i64(B, 1)
                .bool(C, true)
                .bytes(D, new byte[0])
                .bytes(E, new byte[3])
                .toBytes();
        assertEquals(
                "snapshot section s: e has the wrong type",
                assertThrows(SnapshotException.class, () -> codec.decode(oddInts, 2, "s"))
                        .getMessage());
        byte[] negative = codec.encode(new Sample(0, 0, false, new byte[0], new int[0], new long[0]));
        ByteBuffer.wrap(negative).order(ByteOrder.LITTLE_ENDIAN).putInt(10, -1);
        assertEquals(
                "snapshot section s holds an invalid state: a must not be negative",
                assertThrows(SnapshotException.class, () -> codec.decode(negative, 2, "s"))
                        .getMessage());
    }

    @Test
    void malformedSectionsAreRefusedBeforeAnythingIsRead() {
        var codec = new SampleCodec();
        byte[] good = codec.encode(SAMPLE);
        for (int cut = 0; cut < good.length; cut++) {
            byte[] truncated = Arrays.copyOf(good, cut);
            assertThrows(SnapshotException.class, () -> codec.decode(truncated, 2, "s"), "cut at " + cut);
        }
        byte[] twice = new SectionEncoder(1).i32(A, 1).toBytes();
        byte[] doubled = Arrays.copyOf(twice, twice.length + 10);
        System.arraycopy(twice, 4, doubled, twice.length, 10);
        assertEquals(
                "snapshot section s is malformed (field 1 appears twice)",
                assertThrows(SnapshotException.class, () -> codec.decode(doubled, 2, "s"))
                        .getMessage());
        byte[] huge = new SectionEncoder(1).i32(A, 1).toBytes();
        ByteBuffer.wrap(huge).order(ByteOrder.LITTLE_ENDIAN).putInt(6, Integer.MAX_VALUE);
        assertEquals(
                "snapshot section s is malformed (field 1 is longer than the section)",
                assertThrows(SnapshotException.class, () -> codec.decode(huge, 2, "s"))
                        .getMessage());
    }

    @Test
    void formatOneSectionsAreReadAsJsonBySchemaOneNames() {
        String json =
                "{\"a\":7,\"b\":-1099511627776,\"c\":true,\"d\":\"Af4D\",\"e\":[1760,-1073741696],\"f\":[-9223372036854775808,5]}";
        var back = new SampleCodec().decode(json.getBytes(StandardCharsets.UTF_8), 1, "sample");
        assertEquals(SAMPLE.b(), back.b());
        assertArrayEquals(SAMPLE.d(), back.d());
        assertArrayEquals(SAMPLE.e(), back.e());
        assertArrayEquals(SAMPLE.f(), back.f());
        assertEquals(
                7,
                new Sample2Codec()
                        .decode(json.getBytes(StandardCharsets.UTF_8), 1, "sample")
                        .g());
        assertEquals(
                "snapshot section s: a has the wrong type",
                assertThrows(
                                SnapshotException.class,
                                () -> new SampleCodec()
                                        .decode("{\"a\":\"1\"}".getBytes(StandardCharsets.UTF_8), 1, "s"))
                        .getMessage());
        assertEquals(
                "snapshot section s lacks b",
                assertThrows(
                                SnapshotException.class,
                                () -> new SampleCodec().decode("{\"a\":1}".getBytes(StandardCharsets.UTF_8), 1, "s"))
                        .getMessage());
        assertThrows(
                SnapshotException.class, () -> new SampleCodec().decode("{".getBytes(StandardCharsets.UTF_8), 1, "s"));
    }
}
