package dev.panamavmm.api;

/** The control API cannot be served or reached; the message says why in one line. */
public final class ApiException extends RuntimeException {
    public ApiException(String message) {
        super(message);
    }
}
