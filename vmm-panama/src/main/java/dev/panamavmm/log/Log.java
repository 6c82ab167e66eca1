package dev.panamavmm.log;

import java.io.PrintStream;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * The VMM's log: one line per message on stderr, {@code vmm: LEVEL Source: message}. It replaces
 * a logging library because starting one (service lookup, configuration files) cost a VMM process
 * tens of milliseconds before {@code main}, on every start, restore and clone.
 *
 * <p>Levels come from the environment variable {@value #ENV}: a default level and/or per-source
 * levels, comma-separated, e.g. {@code debug}, {@code LocalMigration=debug} or
 * {@code warn,VmSnapshots=debug} (a source is a class's simple name). The default is {@code info}.
 * Messages use {@code {}} placeholders; a {@link Throwable} after the last placeholder's argument
 * is printed with its stack trace.
 */
public final class Log {
    public static final String ENV = "PANAMA_VMM_LOG";

    public enum Level {
        ERROR,
        WARN,
        INFO,
        DEBUG
    }

    private static final Config CONFIG = Config.parse(System.getenv(ENV));

    static {
        // Once per process: a mistyped level must not silently leave the user without the lines they asked for.
        if (!CONFIG.ignored().isEmpty()) {
            System.err.println(
                    "vmm: WARN Log: " + ENV + ": ignored "
                            + String.join(
                                    ", ",
                                    CONFIG.ignored().stream()
                                            .map(w -> "'" + w + "'")
                                            .toList())
                            + " (give LEVEL or SOURCE=LEVEL, comma-separated; LEVEL is error, warn, info or debug; SOURCE a class name such as LocalMigration)");
        }
    }

    private final String source;
    private final Level level;

    private Log(String source, Level level) {
        this.source = source;
        this.level = level;
    }

    public static Log of(Class<?> owner) {
        String source = owner.getSimpleName();
        return new Log(source, CONFIG.levelOf(source));
    }

    public boolean enabled(Level at) {
        return at.ordinal() <= level.ordinal();
    }

    public void error(String message, Object... args) {
        log(Level.ERROR, message, args);
    }

    public void warn(String message, Object... args) {
        log(Level.WARN, message, args);
    }

    public void info(String message, Object... args) {
        log(Level.INFO, message, args);
    }

    public void debug(String message, Object... args) {
        log(Level.DEBUG, message, args);
    }

    private void log(Level at, String message, Object[] args) {
        if (!enabled(at)) return;
        var line =
                new StringBuilder("vmm: ").append(at).append(' ').append(source).append(": ");
        Throwable thrown = format(line, message, args);
        PrintStream err = System.err;
        synchronized (err) {
            err.println(line);
            if (thrown != null) thrown.printStackTrace(err);
        }
    }

    /** Appends the message with {@code {}} replaced by the arguments; returns a trailing unused Throwable. */
    static Throwable format(StringBuilder out, String message, Object[] args) {
        int next = 0, from = 0;
        for (int at; next < args.length && (at = message.indexOf("{}", from)) >= 0; from = at + 2) {
            out.append(message, from, at).append(args[next++]);
        }
        out.append(message, from, message.length());
        return next < args.length && args[args.length - 1] instanceof Throwable t ? t : null;
    }

    /**
     * The parsed {@value #ENV}: a default level and per-source levels. Unknown words are ignored
     * (logging must not stop the VMM) and listed in {@code ignored}, for one warning.
     */
    record Config(Level fallback, Map<String, Level> bySource, List<String> ignored) {
        static Config parse(String spec) {
            Level fallback = Level.INFO;
            var bySource = new HashMap<String, Level>();
            var ignored = new ArrayList<String>();
            if (spec != null) {
                for (String part : spec.split(",")) {
                    if (part.isBlank()) continue;
                    int eq = part.indexOf('=');
                    Level level = level(eq < 0 ? part : part.substring(eq + 1));
                    String source = eq < 0 ? null : part.substring(0, eq).trim();
                    if (level == null || (source != null && !isClassName(source))) {
                        ignored.add(part.trim());
                    } else if (source == null) {
                        fallback = level;
                    } else {
                        bySource.put(source, level);
                    }
                }
            }
            return new Config(fallback, Map.copyOf(bySource), List.copyOf(ignored));
        }

        private static boolean isClassName(String s) {
            if (s.isEmpty() || !Character.isJavaIdentifierStart(s.charAt(0))) return false;
            return s.chars().allMatch(Character::isJavaIdentifierPart);
        }

        private static Level level(String word) {
            return switch (word.trim().toLowerCase(Locale.ROOT)) {
                case "error" -> Level.ERROR;
                case "warn", "warning" -> Level.WARN;
                case "info" -> Level.INFO;
                case "debug", "trace" -> Level.DEBUG;
                default -> null;
            };
        }

        Level levelOf(String source) {
            return bySource.getOrDefault(source, fallback);
        }
    }
}
