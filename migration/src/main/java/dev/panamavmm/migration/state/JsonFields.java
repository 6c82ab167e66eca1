package dev.panamavmm.migration.state;

import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.SnapshotException;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.List;
import java.util.Map;

/**
 * The fields of a format-1 state section: a JSON object with one member per record component
 * (numbers, booleans, byte arrays as base64, int and long arrays as arrays of numbers), as the
 * VMM wrote them up to format 1. Read by field name; it counts as schema version 1.
 */
final class JsonFields implements StateFields {
    private final String section;
    private final Map<String, Object> map;

    private JsonFields(String section, Map<String, Object> map) {
        this.section = section;
        this.map = map;
    }

    static JsonFields parse(byte[] payload, String section) {
        try {
            return new JsonFields(
                    section, Json.asObject(Json.parse(new String(payload, StandardCharsets.UTF_8)), section));
        } catch (Json.JsonException e) {
            throw new SnapshotException("snapshot section " + section + " is malformed: " + e.getMessage());
        }
    }

    @Override
    public int schema() {
        return 1;
    }

    @Override
    public String section() {
        return section;
    }

    @Override
    public boolean has(Field f) {
        return map.get(f.name()) != null;
    }

    private Object value(Field f) {
        Object v = map.get(f.name());
        if (v == null) throw new SnapshotException("snapshot section " + section + " lacks " + f.name());
        return v;
    }

    private SnapshotException wrongType(Field f) {
        return new SnapshotException("snapshot section " + section + ": " + f.name() + " has the wrong type");
    }

    @Override
    public int i32(Field f) {
        if (value(f) instanceof Long l && l == (int) (long) l) return (int) (long) l;
        throw wrongType(f);
    }

    @Override
    public long i64(Field f) {
        if (value(f) instanceof Long l) return l;
        throw wrongType(f);
    }

    @Override
    public boolean bool(Field f) {
        if (value(f) instanceof Boolean b) return b;
        throw wrongType(f);
    }

    @Override
    public byte[] bytes(Field f) {
        if (value(f) instanceof String s) {
            try {
                return Base64.getDecoder().decode(s);
            } catch (IllegalArgumentException e) {
                throw wrongType(f);
            }
        }
        throw wrongType(f);
    }

    private List<?> list(Field f) {
        if (value(f) instanceof List<?> l) return l;
        throw wrongType(f);
    }

    @Override
    public int[] ints(Field f) {
        var l = list(f);
        var a = new int[l.size()];
        for (int i = 0; i < a.length; i++) {
            if (!(l.get(i) instanceof Long v) || v != (int) (long) v) throw wrongType(f);
            a[i] = (int) (long) v;
        }
        return a;
    }

    @Override
    public long[] longs(Field f) {
        var l = list(f);
        var a = new long[l.size()];
        for (int i = 0; i < a.length; i++) {
            if (!(l.get(i) instanceof Long v)) throw wrongType(f);
            a[i] = v;
        }
        return a;
    }
}
