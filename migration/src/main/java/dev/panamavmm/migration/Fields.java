package dev.panamavmm.migration;

import java.util.Map;

/** Typed reads of parsed JSON objects that fail with a snapshot error naming the field. */
final class Fields {
    private Fields() {}

    static long longOf(Map<String, Object> m, String name) {
        if (m.get(name) instanceof Long l) return l;
        throw new SnapshotException("snapshot metadata: \"" + name + "\" is missing or not an integer");
    }

    static String stringOf(Map<String, Object> m, String name) {
        if (m.get(name) instanceof String s) return s;
        throw new SnapshotException("snapshot metadata: \"" + name + "\" is missing or not a string");
    }

    static boolean boolOf(Map<String, Object> m, String name) {
        if (m.get(name) instanceof Boolean b) return b;
        throw new SnapshotException("snapshot metadata: \"" + name + "\" is missing or not a boolean");
    }

    static Map<String, Object> objectOf(Map<String, Object> m, String name) {
        if (m.get(name) instanceof Map<?, ?>) return Json.asObject(m.get(name), name);
        throw new SnapshotException("snapshot metadata: \"" + name + "\" is missing or not an object");
    }
}
