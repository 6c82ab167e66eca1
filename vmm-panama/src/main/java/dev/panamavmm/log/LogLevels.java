package dev.panamavmm.log;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.slf4j.event.Level;

/**
 * The levels of the VMM's own log, from the environment variable {@value #ENV}: a default level
 * and/or per-source levels, comma-separated, e.g. {@code debug}, {@code LocalMigration=debug} or
 * {@code warn,VmSnapshots=debug} (a source is a class's simple name). The default is {@code info}.
 * Unknown words are ignored (logging must not stop the VMM) and listed in {@code ignored}, for one
 * warning.
 */
record LogLevels(Level fallback, Map<String, Level> bySource, List<String> ignored) {
    static final String ENV = "PANAMA_VMM_LOG";

    static LogLevels parse(String spec) {
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
        return new LogLevels(fallback, Map.copyOf(bySource), List.copyOf(ignored));
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
            case "debug" -> Level.DEBUG;
            case "trace" -> Level.TRACE;
            default -> null;
        };
    }

    Level levelOf(String source) {
        return bySource.getOrDefault(source, fallback);
    }

    /** The warning about ignored words, or null when every word was understood. */
    String warning() {
        if (ignored.isEmpty()) return null;
        return ENV + ": ignored "
                + String.join(", ", ignored.stream().map(w -> "'" + w + "'").toList())
                + " (give LEVEL or SOURCE=LEVEL, comma-separated; LEVEL is error, warn, info, debug or trace;"
                + " SOURCE a class name such as LocalMigration)";
    }
}
