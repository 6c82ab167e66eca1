package dev.panamavmm.migration;

import java.lang.reflect.Constructor;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.RecordComponent;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.List;
import java.util.Map;

/**
 * State records to JSON sections and back, by their components: a device or vCPU state record
 * needs no hand-written serializer. Supported component types: int, long, boolean, String,
 * byte[] (base64), int[] and long[] (arrays of numbers). Reading validates every value against
 * the component's type (and the record's own constructor checks), so a corrupt or hostile
 * section is a {@link SnapshotException}, never a half-built device.
 */
public final class RecordCodec {
    private RecordCodec() {}

    public static byte[] encode(Record state) {
        var map = Json.object();
        for (RecordComponent c : state.getClass().getRecordComponents()) {
            Object v;
            try {
                v = c.getAccessor().invoke(state);
            } catch (IllegalAccessException | InvocationTargetException e) {
                throw new IllegalStateException(e);
            }
            map.put(c.getName(), switch (v) {
                case byte[] b -> Base64.getEncoder().encodeToString(b);
                case int[] a -> java.util.Arrays.stream(a).mapToObj(i -> (Object) (long) i).toList();
                case long[] a -> java.util.Arrays.stream(a).mapToObj(l -> (Object) l).toList();
                case Integer i -> (long) i;
                default -> v;
            });
        }
        return Json.write(map).getBytes(StandardCharsets.UTF_8);
    }

    public static <R extends Record> R decode(Class<R> type, byte[] section, String what) {
        Map<String, Object> map;
        try {
            map = Json.asObject(Json.parse(new String(section, StandardCharsets.UTF_8)), what);
        } catch (Json.JsonException e) {
            throw new SnapshotException("snapshot section " + what + " is malformed: " + e.getMessage());
        }
        RecordComponent[] components = type.getRecordComponents();
        var args = new Object[components.length];
        var types = new Class<?>[components.length];
        for (int i = 0; i < components.length; i++) {
            var c = components[i];
            types[i] = c.getType();
            args[i] = value(c, map.get(c.getName()), what);
        }
        try {
            Constructor<R> ctor = type.getDeclaredConstructor(types);
            return ctor.newInstance(args);
        } catch (InvocationTargetException e) {
            throw new SnapshotException("snapshot section " + what + " holds an invalid state: " + e.getCause().getMessage());
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException(e);
        }
    }

    private static Object value(RecordComponent c, Object v, String what) {
        Class<?> t = c.getType();
        String where = what + "." + c.getName();
        if (v == null) throw new SnapshotException("snapshot section " + what + " lacks " + c.getName());
        try {
            if (t == int.class) return Math.toIntExact((Long) v);
            if (t == long.class) return (Long) v;
            if (t == boolean.class) return (Boolean) v;
            if (t == String.class) return (String) v;
            if (t == byte[].class) return Base64.getDecoder().decode((String) v);
            if (t == int[].class) {
                List<?> l = Json.asList(v, where);
                var a = new int[l.size()];
                for (int i = 0; i < a.length; i++) a[i] = Math.toIntExact((Long) l.get(i));
                return a;
            }
            if (t == long[].class) {
                List<?> l = Json.asList(v, where);
                var a = new long[l.size()];
                for (int i = 0; i < a.length; i++) a[i] = (Long) l.get(i);
                return a;
            }
        } catch (ClassCastException | ArithmeticException | IllegalArgumentException | Json.JsonException e) {
            throw new SnapshotException("snapshot section " + what + ": " + c.getName() + " has the wrong type");
        }
        throw new IllegalArgumentException("unsupported state component type " + t + " in " + where);
    }

}
