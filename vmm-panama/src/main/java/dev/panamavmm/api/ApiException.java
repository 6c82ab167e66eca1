package dev.panamavmm.api;

import dev.panamavmm.error.VmmException;
import java.io.Serial;

/** The control API cannot be served or reached; the message says why in one line. */
public final class ApiException extends VmmException {
    @Serial
    private static final long serialVersionUID = 1L;

    public ApiException(String message) {
        super(message);
    }
}
