package dev.panamavmm.vmm.boot;

import java.io.Serial;

/** The kernel image, initrd or command line cannot be booted; the message says why in one line. */
public final class BootException extends RuntimeException {
    @Serial
    private static final long serialVersionUID = 1L;

    public BootException(String message) {
        super(message);
    }
}
