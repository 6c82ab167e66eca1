package dev.panamavmm.migration;

/** A snapshot cannot be written or read; the message says why in one line (for the user). */
public final class SnapshotException extends RuntimeException {
    public SnapshotException(String message) {
        super(message);
    }

    public SnapshotException(String message, Throwable cause) {
        super(message, cause);
    }
}
