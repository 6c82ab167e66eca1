package dev.panamavmm.cli;

import picocli.CommandLine.Option;

import java.nio.file.Path;

/** Where a running VM's console goes and where its control API listens: shared by run, restore, clone and incoming. */
final class VmIoOptions {
    @Option(names = "--console", paramLabel = "WHERE", defaultValue = "stdout",
            description = "stdout, file:PATH or unix:PATH (default: ${DEFAULT-VALUE})")
    String console;

    @Option(names = "--api-socket", paramLabel = "PATH", description = "serve the control API on this Unix socket")
    Path apiSocket;
}
