package dev.panamavmm.migration;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.List;
import org.junit.jupiter.api.Test;

class JsonTest {
    @Test
    void roundTripsValues() {
        var value = Json.object("s", "x\"y\n", "n", 42L, "d", 1.5, "b", true, "z", null, "l", List.of(1L, "two"));
        String text = Json.write(value);
        assertEquals("{\"s\":\"x\\\"y\\n\",\"n\":42,\"d\":1.5,\"b\":true,\"z\":null,\"l\":[1,\"two\"]}", text);
        assertEquals(value, Json.parse(text));
    }

    @Test
    void rejectsMalformedAndTooDeepDocuments() {
        assertThrows(Json.JsonException.class, () -> Json.parse("{\"a\":"));
        assertThrows(Json.JsonException.class, () -> Json.parse("{} {}"));
        assertThrows(Json.JsonException.class, () -> Json.parse(""));
        assertThrows(Json.JsonException.class, () -> Json.parse("[".repeat(100) + "]".repeat(100)));
    }
}
