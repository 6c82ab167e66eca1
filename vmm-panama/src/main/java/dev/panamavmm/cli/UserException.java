package dev.panamavmm.cli;

import dev.panamavmm.error.VmmException;
import java.io.Serial;

/** An operation the user asked for cannot be done; the message says why in one line (exit code 1). */
final class UserException extends VmmException {
    @Serial
    private static final long serialVersionUID = 1L;

    UserException(String message) {
        super(message);
    }

    UserException(String message, Throwable cause) {
        super(message, cause);
    }
}
