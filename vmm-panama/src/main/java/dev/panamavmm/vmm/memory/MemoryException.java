package dev.panamavmm.vmm.memory;

import dev.panamavmm.error.VmmException;
import java.io.Serial;

/** Guest memory cannot be set up as asked, or an access falls outside guest RAM. */
public final class MemoryException extends VmmException {
    @Serial
    private static final long serialVersionUID = 1L;

    public MemoryException(String message) {
        super(message);
    }

    public MemoryException(String message, Throwable cause) {
        super(message, cause);
    }
}
