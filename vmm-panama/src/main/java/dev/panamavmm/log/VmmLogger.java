package dev.panamavmm.log;

import java.io.PrintStream;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import org.slf4j.MDC;
import org.slf4j.Marker;
import org.slf4j.event.Level;
import org.slf4j.helpers.LegacyAbstractLogger;
import org.slf4j.helpers.MessageFormatter;

/**
 * One source's logger in the VMM's own format: one line per message,
 * {@code TIME vmm: LEVEL [THREAD] vm=ID Source: message} (UTC, milliseconds; {@code vm=ID} only on
 * threads working for one VM of a host with many, from {@link VmmLogProvider#VM_KEY} in the MDC),
 * with a throwable's stack trace after its line.
 */
final class VmmLogger extends LegacyAbstractLogger {
    private static final long serialVersionUID = 1;

    private final String source;
    private final transient VmmLogProvider provider;
    private final int threshold;

    VmmLogger(String name, VmmLogProvider provider) {
        this.name = name;
        this.source = name.substring(name.lastIndexOf('.') + 1);
        this.provider = provider;
        this.threshold = provider.levels().levelOf(source).toInt();
    }

    private boolean enabled(Level level) {
        return level.toInt() >= threshold;
    }

    @Override
    public boolean isTraceEnabled() {
        return enabled(Level.TRACE);
    }

    @Override
    public boolean isDebugEnabled() {
        return enabled(Level.DEBUG);
    }

    @Override
    public boolean isInfoEnabled() {
        return enabled(Level.INFO);
    }

    @Override
    public boolean isWarnEnabled() {
        return enabled(Level.WARN);
    }

    @Override
    public boolean isErrorEnabled() {
        return enabled(Level.ERROR);
    }

    @Override
    protected String getFullyQualifiedCallerName() {
        return null;
    }

    @Override
    protected void handleNormalizedLoggingCall(
            Level level, Marker marker, String pattern, Object[] arguments, Throwable thrown) {
        String line = line(
                Instant.now(),
                level,
                Thread.currentThread().getName(),
                MDC.get(VmmLogProvider.VM_KEY),
                source,
                MessageFormatter.basicArrayFormat(pattern, arguments));
        PrintStream out = provider.out();
        synchronized (out) {
            out.println(line);
            if (thrown != null) thrown.printStackTrace(out);
        }
    }

    static String line(Instant at, Level level, String thread, String vm, String source, String message) {
        var line = new StringBuilder(96)
                .append(at.truncatedTo(ChronoUnit.MILLIS))
                .append(" vmm: ")
                .append(level)
                .append(" [")
                .append(thread)
                .append("] ");
        if (vm != null) line.append("vm=").append(vm).append(' ');
        return line.append(source).append(": ").append(message).toString();
    }
}
