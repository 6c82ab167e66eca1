package dev.panamavmm.api;

import dev.panamavmm.migration.Json;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/**
 * Executes control-API commands. Returns the {@code "return"} value, or null for a command it
 * does not know; throws for a failed command (the message becomes the error's {@code desc}).
 * {@link ApiCommands} is the table most handlers are.
 */
public interface ApiHandler {
    Object execute(String command, Map<String, Object> arguments) throws Exception;

    /** The commands it knows now, for {@code query-commands}. */
    List<String> commands();

    /**
     * The commands of one running VM: query-status, query-metrics, stop, cont, quit, snapshot,
     * migrate, query-jobs, job-cancel, balloon, query-balloon, template-create (a clone's).
     */
    static ApiCommands forVm(ControlTarget target) {
        return new ApiCommands()
                .add("query-status", a -> target.status())
                .add("query-metrics", a -> target.metrics())
                .add("stop", a -> {
                    target.stop();
                    return Map.of();
                })
                .add("cont", a -> {
                    target.cont();
                    return Map.of();
                })
                .add("quit", a -> {
                    target.quit();
                    return Map.of();
                })
                .add("snapshot", List.of("path", "bypass-shared-memory", "resume", "type", "live", "detach"), a -> {
                    Object type = a.getOrDefault("type", "full");
                    if (!"full".equals(type) && !"diff".equals(type))
                        throw new IllegalArgumentException("\"type\" must be \"full\" or \"diff\"");
                    return target.snapshot(
                            Path.of(requireString(a, "path", "DIRECTORY")),
                            flag(a, "bypass-shared-memory", true),
                            flag(a, "resume", false),
                            "diff".equals(type),
                            flag(a, "live", false),
                            flag(a, "detach", false));
                })
                .add("migrate", List.of("uri", "detach", "resume"), a -> {
                    String uri = requireString(a, "uri", "unix:PATH or tcp:HOST:PORT");
                    if (flag(a, "resume", false)) {
                        target.migrateResume(uri);
                        return Map.of();
                    }
                    // Over TCP a migration takes seconds: a job unless the client says otherwise.
                    return target.migrate(uri, flag(a, "detach", uri.startsWith("tcp:")));
                })
                .add("migrate-set-capabilities", List.of("capabilities"), a -> {
                    if (!a.containsKey("capabilities"))
                        throw new IllegalArgumentException("migrate-set-capabilities needs \"capabilities\"");
                    target.migrateSetCapabilities(List.copyOf(Json.asList(a.get("capabilities"), "\"capabilities\"")));
                    return Map.of();
                })
                .add("query-migrate-capabilities", a -> target.queryMigrateCapabilities())
                .add("migrate-start-postcopy", a -> {
                    target.migrateStartPostcopy();
                    return Map.of();
                })
                .add(
                        "migrate-recover",
                        List.of("uri"),
                        a -> target.migrateRecover(requireString(a, "uri", "tcp:[HOST]:PORT")))
                .add(
                        "migrate-set-parameters",
                        List.of("max-bandwidth", "downtime-limit", "tls-creds", "x-convergence"),
                        a -> {
                            target.migrateSetParameters(a);
                            return Map.of();
                        })
                .add("query-migrate-parameters", a -> target.queryMigrateParameters())
                .add("query-migrate", a -> target.queryMigrate())
                .add("migrate-cancel", a -> {
                    target.migrateCancel();
                    return Map.of();
                })
                .add("migrate_cancel", a -> {
                    target.migrateCancel();
                    return Map.of();
                })
                .add("query-jobs", a -> target.jobs())
                .add("job-cancel", List.of("id"), a -> {
                    target.cancelJob(requireString(a, "id", "a job id"));
                    return Map.of();
                })
                .add("balloon", List.of("target-mib"), a -> {
                    if (!a.containsKey("target-mib"))
                        throw new IllegalArgumentException("\"target-mib\" is required (MiB)");
                    target.balloon(number(a, "target-mib", 0));
                    return Map.of();
                })
                .add("query-balloon", a -> target.queryBalloon())
                .add(
                        "template-create",
                        List.of("path"),
                        a -> target.templateCreate(Path.of(requireString(a, "path", "DIRECTORY"))));
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
