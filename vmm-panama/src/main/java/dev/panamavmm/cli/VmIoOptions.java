package dev.panamavmm.cli;

import java.nio.file.Path;

/** Where a running VM's console goes and where its control API listens: shared by run, restore, clone and incoming. */
final class VmIoOptions {
    String console;
    Path apiSocket;

    /** Declares these options on a command. */
    void declare(Cli.Spec spec) {
        MetricsFile.declare(LogFileOption.declare(spec))
                .option("--console", "WHERE", "stdout", "stdout, file:PATH or unix:PATH", v -> console = v)
                .option(
                        "--api-socket",
                        "PATH",
                        null,
                        "serve the control API on this Unix socket",
                        v -> apiSocket = Path.of(v));
    }
}
