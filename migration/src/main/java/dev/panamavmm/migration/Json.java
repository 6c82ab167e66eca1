package dev.panamavmm.migration;

import java.io.Serial;
import java.io.StringWriter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import tools.jackson.core.JacksonException;
import tools.jackson.core.JsonGenerator;
import tools.jackson.core.JsonParser;
import tools.jackson.core.JsonToken;
import tools.jackson.core.ObjectReadContext;
import tools.jackson.core.ObjectWriteContext;
import tools.jackson.core.json.JsonFactory;

/**
 * JSON values as plain Java objects (Map, List, String, Long, Double, Boolean, null), read and
 * written with jackson-core's streaming API: no data binding, no reflection. Nesting is limited
 * so a hostile document cannot exhaust the stack.
 */
public final class Json {
    private Json() {}

    private static final JsonFactory FACTORY = new JsonFactory();
    static final int MAX_DEPTH = 64;

    /** A document that is not JSON, or nests deeper than {@link #MAX_DEPTH}. */
    public static final class JsonException extends RuntimeException {
        @Serial
        private static final long serialVersionUID = 1L;

        JsonException(String message) {
            super(message);
        }
    }

    public static Object parse(String text) {
        try (JsonParser p = FACTORY.createParser(ObjectReadContext.empty(), text)) {
            JsonToken t = p.nextToken();
            if (t == null) throw new JsonException("empty document");
            Object value = read(p, t, 0);
            if (p.nextToken() != null) throw new JsonException("trailing data after the JSON value");
            return value;
        } catch (JacksonException e) {
            throw new JsonException(e.getOriginalMessage());
        }
    }

    private static Object read(JsonParser p, JsonToken t, int depth) {
        if (depth > MAX_DEPTH) throw new JsonException("nested deeper than " + MAX_DEPTH + " levels");
        return switch (t) {
            case START_OBJECT -> {
                var map = new LinkedHashMap<String, Object>();
                for (JsonToken n = p.nextToken(); n != JsonToken.END_OBJECT; n = p.nextToken()) {
                    String name = p.currentName();
                    map.put(name, read(p, p.nextToken(), depth + 1));
                }
                yield map;
            }
            case START_ARRAY -> {
                var list = new ArrayList<Object>();
                for (JsonToken n = p.nextToken(); n != JsonToken.END_ARRAY; n = p.nextToken())
                    list.add(read(p, n, depth + 1));
                yield list;
            }
            case VALUE_STRING -> p.getString();
            case VALUE_NUMBER_INT -> p.getLongValue();
            case VALUE_NUMBER_FLOAT -> p.getDoubleValue();
            case VALUE_TRUE -> Boolean.TRUE;
            case VALUE_FALSE -> Boolean.FALSE;
            case VALUE_NULL -> null;
            default -> throw new JsonException("unexpected " + t);
        };
    }

    /** One line of JSON (no newline inside). */
    public static String write(Object value) {
        var out = new StringWriter();
        try (JsonGenerator g = FACTORY.createGenerator(ObjectWriteContext.empty(), out)) {
            write(g, value);
        }
        return out.toString();
    }

    private static void write(JsonGenerator g, Object value) {
        switch (value) {
            case null -> g.writeNull();
            case Map<?, ?> map -> {
                g.writeStartObject();
                for (var e : map.entrySet()) {
                    g.writeName(String.valueOf(e.getKey()));
                    write(g, e.getValue());
                }
                g.writeEndObject();
            }
            case List<?> list -> {
                g.writeStartArray();
                for (var v : list) write(g, v);
                g.writeEndArray();
            }
            case String s -> g.writeString(s);
            case Integer i -> g.writeNumber(i);
            case Long l -> g.writeNumber(l);
            case Double d -> g.writeNumber(d);
            case Boolean b -> g.writeBoolean(b);
            default ->
                throw new IllegalArgumentException(
                        "not a JSON value: " + value.getClass().getName());
        }
    }

    /** A JSON object with the given key/value pairs, in order. */
    public static Map<String, Object> object(Object... keyValues) {
        var map = new LinkedHashMap<String, Object>();
        for (int i = 0; i < keyValues.length; i += 2) map.put((String) keyValues[i], keyValues[i + 1]);
        return map;
    }

    @SuppressWarnings("unchecked")
    public static Map<String, Object> asObject(Object value, String what) {
        if (value instanceof Map<?, ?> m) return (Map<String, Object>) m;
        throw new JsonException(what + " must be a JSON object");
    }

    public static List<?> asList(Object value, String what) {
        if (value instanceof List<?> l) return l;
        throw new JsonException(what + " must be a JSON array");
    }
}
