package dev.panamavmm.cli;

import dev.panamavmm.error.VmmException;
import java.io.Serial;

/** A wrong command line: printed as one line, exit code 2. */
final class UsageException extends VmmException {
    @Serial
    private static final long serialVersionUID = 1L;

    UsageException(String message) {
        super(message);
    }
}
