package dev.panamavmm.cli;

import dev.panamavmm.log.VmmLogProvider;
import dev.panamavmm.migration.IoErrors;
import java.io.IOException;
import java.nio.file.Path;

/** {@code --log-file PATH}: the VMM's log lines go to PATH (appended) instead of stderr. */
final class LogFileOption {
    private LogFileOption() {}

    /** Declares the option on {@code spec}; the file is opened as the option is read. */
    static Cli.Spec declare(Cli.Spec spec) {
        return spec.option(
                "--log-file",
                "PATH",
                null,
                "append the VMM's log lines to PATH instead of stderr (error messages for the user stay on stderr)",
                LogFileOption::open);
    }

    private static void open(String value) {
        var file = Path.of(value);
        try {
            if (!VmmLogProvider.logTo(file))
                throw new UserException(
                        "--log-file: the process logs through another slf4j binding; configure that one");
        } catch (IOException e) {
            throw new UserException("cannot open log file " + file + ": " + IoErrors.reason(e));
        }
    }
}
