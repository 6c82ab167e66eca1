package dev.panamavmm.cli;

/** An operation the user asked for cannot be done; the message says why in one line (exit code 1). */
final class UserException extends RuntimeException {
    UserException(String message) {
        super(message);
    }

    UserException(String message, Throwable cause) {
        super(message, cause);
    }
}
