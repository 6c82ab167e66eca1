package dev.panamavmm.api;

import java.nio.file.Path;
import java.util.Map;

/**
 * Executes control-API commands. Returns the {@code "return"} value, or null for a command it
 * does not know; throws for a failed command (the message becomes the error's {@code desc}).
 */
@FunctionalInterface
public interface ApiHandler {
    Object execute(String command, Map<String, Object> arguments) throws Exception;

    /** The commands of one running VM: query-status, stop, cont, quit, snapshot. */
    static ApiHandler forVm(ControlTarget target) {
        return (command, a) -> switch (command) {
            case "query-status" -> target.status();
            case "stop" -> {
                target.stop();
                yield Map.of();
            }
            case "cont" -> {
                target.cont();
                yield Map.of();
            }
            case "quit" -> {
                target.quit();
                yield Map.of();
            }
            case "snapshot" -> target.snapshot(Path.of(requireString(a, "path", "DIRECTORY")),
                    flag(a, "bypass-shared-memory", true), flag(a, "resume", false));
            case "migrate" -> target.migrate(requireString(a, "uri", "unix:PATH"));
            default -> null;
        };
    }

    static String requireString(Map<String, Object> args, String name, String what) {
        if (!(args.get(name) instanceof String s) || s.isBlank()) {
            throw new IllegalArgumentException("\"" + name + "\" is required: " + what);
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
