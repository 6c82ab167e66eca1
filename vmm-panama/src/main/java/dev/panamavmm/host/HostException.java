package dev.panamavmm.host;

import dev.panamavmm.error.VmmException;
import java.io.Serial;

/** A host daemon failure whose message is for the user (a state directory in use, ...). */
public final class HostException extends VmmException {
    @Serial
    private static final long serialVersionUID = 1L;

    public HostException(String message) {
        super(message);
    }
}
