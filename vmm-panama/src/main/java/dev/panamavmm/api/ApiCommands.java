package dev.panamavmm.api;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A table of control-API commands: each by name, with the arguments it takes (any other is
 * refused, as QMP does) and what it does. It is the one place a command is added, and what
 * {@code query-commands} lists.
 */
public final class ApiCommands implements ApiHandler {
    /** What a command does with its (already checked) arguments; its result is the reply's {@code "return"}. */
    @FunctionalInterface
    public interface Body {
        Object run(Map<String, Object> args) throws Exception;
    }

    private record Entry(List<String> arguments, Body body) {}

    private final Map<String, Entry> table = new LinkedHashMap<>();

    /** An empty table; {@link #add} fills it. */
    public ApiCommands() {}

    /** Adds {@code name}, which takes the arguments {@code arguments} (all optional as far as the table knows). */
    public ApiCommands add(String name, List<String> arguments, Body body) {
        if (table.putIfAbsent(name, new Entry(List.copyOf(arguments), body)) != null)
            throw new IllegalArgumentException("the command " + name + " is already in the table");
        return this;
    }

    /** Adds {@code name}, which takes no arguments. */
    public ApiCommands add(String name, Body body) {
        return add(name, List.of(), body);
    }

    @Override
    public Object execute(String command, Map<String, Object> args) throws Exception {
        var entry = table.get(command);
        if (entry == null) return null;
        ApiHandler.expect(command, args, entry.arguments().toArray(String[]::new));
        return entry.body().run(args);
    }

    @Override
    public List<String> commands() {
        return List.copyOf(table.keySet());
    }
}
