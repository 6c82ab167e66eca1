package dev.panamavmm.vmm.boot;

/** The kernel image, initrd or command line cannot be booted; the message says why in one line. */
public final class BootException extends RuntimeException {
    public BootException(String message) {
        super(message);
    }
}
