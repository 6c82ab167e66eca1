package dev.panamavmm.api;

import java.io.Serial;

/** The control API cannot be served or reached; the message says why in one line. */
public final class ApiException extends RuntimeException {
    @Serial
    private static final long serialVersionUID = 1L;

    public ApiException(String message) {
        super(message);
    }
}
