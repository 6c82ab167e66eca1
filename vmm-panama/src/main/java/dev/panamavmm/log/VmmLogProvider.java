package dev.panamavmm.log;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import org.slf4j.ILoggerFactory;
import org.slf4j.IMarkerFactory;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.slf4j.helpers.BasicMDCAdapter;
import org.slf4j.helpers.BasicMarkerFactory;
import org.slf4j.spi.MDCAdapter;
import org.slf4j.spi.SLF4JServiceProvider;

/**
 * The VMM's own slf4j binding: one line per message on stderr (or {@code --log-file}), levels from
 * {@value LogLevels#ENV}. The VMM's code logs through slf4j-api only; the {@code vmm} command
 * selects this provider by the system property {@code slf4j.provider} ({@link #select}), and no
 * services file names it, so an application that embeds the VMM routes the same messages into
 * its own binding (logback, log4j) instead. It is small on purpose: a general logging library's
 * start (service lookup, configuration files) would cost every VM process time before its first
 * instruction.
 */
public final class VmmLogProvider implements SLF4JServiceProvider {
    /** The MDC key naming the VM a thread works for, in a process that runs many ({@code vmm host}, {@code serve}). */
    public static final String VM_KEY = "vm";

    private final ConcurrentMap<String, Logger> loggers = new ConcurrentHashMap<>();
    private final ILoggerFactory factory = name -> loggers.computeIfAbsent(name, n -> new VmmLogger(n, this));
    private final IMarkerFactory markers = new BasicMarkerFactory();
    /** Inheritable: a VM's vCPU and device threads, started by the thread that built it, carry its id. */
    private final MDCAdapter mdc = new BasicMDCAdapter();

    /** slf4j makes it by name ({@code slf4j.provider}). */
    public VmmLogProvider() {}

    /** The instance slf4j bound, if it bound this provider. */
    private static volatile VmmLogProvider bound;

    private LogLevels levels = LogLevels.parse(null);
    private volatile PrintStream out = System.err;

    /** Makes slf4j bind this provider, unless the process chose another; call before the first logger. */
    public static void select() {
        if (System.getProperty("slf4j.provider") == null) {
            System.setProperty("slf4j.provider", VmmLogProvider.class.getName());
            // slf4j reports at INFO that it loads a provider named by the property: a line on every start.
            if (System.getProperty("slf4j.internal.verbosity") == null)
                System.setProperty("slf4j.internal.verbosity", "WARN");
        }
    }

    @Override
    public void initialize() {
        bound = this;
        levels = LogLevels.parse(System.getenv(LogLevels.ENV));
        String warning = levels.warning();
        // Once per process: a mistyped level must not silently leave the user without the lines they asked for.
        if (warning != null) new VmmLogger(VmmLogProvider.class.getPackageName() + ".Log", this).warn(warning);
    }

    LogLevels levels() {
        return levels;
    }

    PrintStream out() {
        return out;
    }

    /**
     * Sends the VMM's log to {@code file} (appended) instead of stderr, if this provider is the
     * one bound; false when another binding is (its own configuration says where lines go).
     */
    public static boolean logTo(Path file) throws IOException {
        LoggerFactory.getILoggerFactory(); // binds the provider if nothing has logged yet
        var p = bound;
        if (p == null) return false;
        p.out = new PrintStream(
                Files.newOutputStream(file, StandardOpenOption.CREATE, StandardOpenOption.APPEND),
                true,
                StandardCharsets.UTF_8);
        return true;
    }

    @Override
    public ILoggerFactory getLoggerFactory() {
        return factory;
    }

    @Override
    public IMarkerFactory getMarkerFactory() {
        return markers;
    }

    @Override
    public MDCAdapter getMDCAdapter() {
        return mdc;
    }

    @Override
    public String getRequestedApiVersion() {
        return "2.0.99";
    }
}
