package dev.panamavmm.vmm.boot;

import dev.panamavmm.error.VmmException;
import java.io.Serial;

/** The kernel image, initrd or command line cannot be booted; the message says why in one line. */
public final class BootException extends VmmException {
    @Serial
    private static final long serialVersionUID = 1L;

    public BootException(String message) {
        super(message);
    }
}
