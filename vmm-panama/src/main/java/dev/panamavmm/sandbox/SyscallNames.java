package dev.panamavmm.sandbox;

import dev.panamavmm.kvm.bindings.Syscalls;
import java.lang.reflect.Modifier;
import java.util.Map;
import java.util.TreeMap;

/** System call names and numbers of this architecture, from the generated {@link Syscalls} constants. */
public final class SyscallNames {
    private SyscallNames() {}

    private static final Map<String, Integer> BY_NAME = new TreeMap<>();
    private static final Map<Integer, String> BY_NUMBER = new TreeMap<>();

    static {
        for (var f : Syscalls.class.getFields()) {
            if (!Modifier.isStatic(f.getModifiers()) || !f.getName().startsWith("SYS_")) continue;
            try {
                int number = f.getInt(null);
                String name = f.getName().substring(4);
                BY_NAME.put(name, number);
                BY_NUMBER.put(number, name);
            } catch (IllegalAccessException e) {
                throw new IllegalStateException(e);
            }
        }
    }

    /** The number of system call {@code name}; throws for a name the bindings do not declare. */
    public static int number(String name) {
        Integer n = BY_NAME.get(name);
        if (n == null) throw new IllegalArgumentException("no system call " + name + " in the bindings");
        return n;
    }

    /** The name of system call {@code number}, or {@code "#N"} for one the bindings do not declare. */
    public static String name(int number) {
        return BY_NUMBER.getOrDefault(number, "#" + number);
    }

    /** Every declared call as "NUMBER NAME" lines (the launcher's watcher names a call with it). */
    static String table() {
        var out = new StringBuilder();
        BY_NUMBER.forEach((n, name) -> out.append(n).append(' ').append(name).append('\n'));
        return out.toString();
    }
}
