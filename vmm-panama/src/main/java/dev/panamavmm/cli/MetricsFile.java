package dev.panamavmm.cli;

import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.Vm;
import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Instant;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * {@code --metrics-file PATH [--metrics-interval SECONDS]}: the VM's {@code query-metrics} report
 * appended to PATH as one JSON line ({@code {"time": ISO-8601, "metrics": {...}}}) every interval
 * and once more when the VM ends, for a collector that tails files. One per VMM process, like the
 * log file: the options are read into this class as they are parsed.
 */
final class MetricsFile implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(MetricsFile.class);

    /** The file, opened as the option is read (a path that cannot be written fails before any VM starts). */
    private static volatile Writer opened;

    private static volatile long intervalSeconds = 60;

    /** Declares the two options on {@code spec}. */
    static Cli.Spec declare(Cli.Spec spec) {
        return spec.option(
                        "--metrics-file",
                        "PATH",
                        null,
                        "append the VM's metrics (as query-metrics reports them) to PATH as a JSON line every"
                                + " --metrics-interval seconds and when the VM ends",
                        MetricsFile::open)
                .option("--metrics-interval", "SECONDS", "60", "seconds between two lines of --metrics-file", v -> {
                    long s;
                    try {
                        s = Long.parseLong(v);
                    } catch (NumberFormatException e) {
                        throw new UsageException("--metrics-interval '" + v + "' is not a number of seconds");
                    }
                    if (s < 1 || s > 86_400) throw new UsageException("--metrics-interval must be 1 to 86400 seconds");
                    intervalSeconds = s;
                });
    }

    private final Vm vm;
    private final Writer out;
    private final ScheduledExecutorService timer;

    private MetricsFile(Vm vm, Writer out, long seconds) {
        this.vm = vm;
        this.out = out;
        this.timer = Executors.newSingleThreadScheduledExecutor(
                Thread.ofPlatform().daemon().name("metrics-file").factory());
        timer.scheduleAtFixedRate(this::writeLine, seconds, seconds, TimeUnit.SECONDS);
    }

    private static void open(String value) {
        var path = Path.of(value);
        try {
            opened = Files.newBufferedWriter(
                    path, StandardCharsets.UTF_8, StandardOpenOption.CREATE, StandardOpenOption.APPEND);
        } catch (IOException e) {
            throw new UserException("cannot open metrics file " + path + ": " + IoErrors.reason(e));
        }
    }

    /** Starts writing {@code vm}'s metrics if {@code --metrics-file} was given; null otherwise. */
    static MetricsFile startIfAsked(Vm vm) {
        var out = opened;
        return out == null ? null : new MetricsFile(vm, out, intervalSeconds);
    }

    private synchronized void writeLine() {
        try {
            out.write(Json.write(Json.object("time", Instant.now().toString(), "metrics", vm.metricsReport())));
            out.write('\n');
            out.flush();
        } catch (IOException | RuntimeException e) {
            // A full disk must not stop the VM: the line is lost and said so.
            log.warn("metrics file: a line was not written: {}", e.getMessage());
        }
    }

    /** Writes the last line and closes the file. */
    @Override
    public void close() {
        timer.shutdownNow();
        writeLine();
        try {
            out.close();
        } catch (IOException e) {
            log.warn("metrics file: closing it failed: {}", e.getMessage());
        }
    }
}
