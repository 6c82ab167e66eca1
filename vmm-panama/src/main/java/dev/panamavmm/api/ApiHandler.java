package dev.panamavmm.api;

import dev.panamavmm.migration.Json;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/**
 * Executes control-API commands. Returns the {@code "return"} value, or null for a command it
 * does not know; throws for a failed command (the message becomes the error's {@code desc}).
 */
@FunctionalInterface
public interface ApiHandler {
    Object execute(String command, Map<String, Object> arguments) throws Exception;

    /** The commands of one running VM: query-status, stop, cont, quit, snapshot, migrate, balloon, query-balloon. */
    static ApiHandler forVm(ControlTarget target) {
        return (command, a) -> switch (command) {
            case "query-status" -> {
                expect(command, a);
                yield target.status();
            }
            case "stop" -> {
                expect(command, a);
                target.stop();
                yield Map.of();
            }
            case "cont" -> {
                expect(command, a);
                target.cont();
                yield Map.of();
            }
            case "quit" -> {
                expect(command, a);
                target.quit();
                yield Map.of();
            }
            case "snapshot" -> {
                expect(command, a, "path", "bypass-shared-memory", "resume");
                yield target.snapshot(
                        Path.of(requireString(a, "path", "DIRECTORY")),
                        flag(a, "bypass-shared-memory", true),
                        flag(a, "resume", false));
            }
            case "migrate" -> {
                expect(command, a, "uri");
                yield target.migrate(requireString(a, "uri", "unix:PATH"));
            }
            case "balloon" -> {
                expect(command, a, "target-mib");
                if (!a.containsKey("target-mib"))
                    throw new IllegalArgumentException("\"target-mib\" is required (MiB)");
                target.balloon(number(a, "target-mib", 0));
                yield Map.of();
            }
            case "query-balloon" -> {
                expect(command, a);
                yield target.queryBalloon();
            }
            default -> null;
        };
    }

    /** Refuses an argument the command does not take (as QMP does): a misspelt one would otherwise be ignored without a word. */
    static void expect(String command, Map<String, Object> args, String... names) {
        var known = List.of(names);
        for (String name : args.keySet()) {
            if (!known.contains(name)) {
                throw new IllegalArgumentException("unexpected argument \"" + name + "\" (" + command + " takes "
                        + (known.isEmpty() ? "none" : String.join(", ", known)) + ")");
            }
        }
    }

    static String requireString(Map<String, Object> args, String name, String what) {
        Object v = args.get(name);
        if (v == null) throw new IllegalArgumentException("\"" + name + "\" is required (" + what + ")");
        if (!(v instanceof String s) || s.isBlank()) {
            throw new IllegalArgumentException(
                    "\"" + name + "\" must be a non-empty string (" + what + "), not " + Json.write(v));
        }
        return s;
    }

    static boolean flag(Map<String, Object> args, String name, boolean otherwise) {
        Object v = args.get(name);
        if (v == null) return otherwise;
        if (v instanceof Boolean b) return b;
        throw new IllegalArgumentException("\"" + name + "\" must be true or false");
    }

    static long number(Map<String, Object> args, String name, long otherwise) {
        Object v = args.get(name);
        if (v == null) return otherwise;
        if (v instanceof Long l) return l;
        throw new IllegalArgumentException("\"" + name + "\" must be an integer");
    }
}
