package dev.panamavmm.migration;

import java.io.Serial;

/** A snapshot cannot be written or read; the message says why in one line (for the user). */
public final class SnapshotException extends RuntimeException {
    @Serial
    private static final long serialVersionUID = 1L;

    public SnapshotException(String message) {
        super(message);
    }

    public SnapshotException(String message, Throwable cause) {
        super(message, cause);
    }
}
