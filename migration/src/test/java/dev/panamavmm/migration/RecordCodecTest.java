package dev.panamavmm.migration;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

class RecordCodecTest {
    record Sample(int a, long b, boolean c, String d, byte[] e, int[] f, long[] g) {
        Sample {
            if (a < 0) throw new IllegalArgumentException("a must not be negative");
        }
    }

    @Test
    void roundTripsEverySupportedType() {
        var s = new Sample(7, -1L << 40, true, "x", new byte[] {1, -2, 3}, new int[] {0x6e0, -1}, new long[] {Long.MIN_VALUE, 5});
        var back = RecordCodec.decode(Sample.class, RecordCodec.encode(s), "sample");
        assertEquals(s.a(), back.a());
        assertEquals(s.b(), back.b());
        assertEquals(s.d(), back.d());
        assertArrayEquals(s.e(), back.e());
        assertArrayEquals(s.f(), back.f());
        assertArrayEquals(s.g(), back.g());
    }

    @Test
    void refusesMissingWrongAndInvalidValues() {
        assertEquals("snapshot section s lacks b", assertThrows(SnapshotException.class,
                () -> RecordCodec.decode(Sample.class, "{\"a\":1}".getBytes(), "s")).getMessage());
        assertEquals("snapshot section s: a has the wrong type", assertThrows(SnapshotException.class,
                () -> RecordCodec.decode(Sample.class, "{\"a\":\"1\",\"b\":1,\"c\":true,\"d\":\"\",\"e\":\"\",\"f\":[],\"g\":[]}".getBytes(), "s")).getMessage());
        assertEquals("snapshot section s holds an invalid state: a must not be negative", assertThrows(SnapshotException.class,
                () -> RecordCodec.decode(Sample.class, "{\"a\":-1,\"b\":1,\"c\":true,\"d\":\"\",\"e\":\"\",\"f\":[],\"g\":[]}".getBytes(), "s")).getMessage());
        assertThrows(SnapshotException.class, () -> RecordCodec.decode(Sample.class, "{".getBytes(), "s"));
    }
}
