package dev.panamavmm.cli;

/** A wrong command line: printed as one line, exit code 2. */
final class UsageException extends RuntimeException {
    UsageException(String message) {
        super(message);
    }
}
