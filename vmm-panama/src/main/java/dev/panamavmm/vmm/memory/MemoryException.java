package dev.panamavmm.vmm.memory;

/** Guest memory cannot be set up as asked, or an access falls outside guest RAM. */
public final class MemoryException extends RuntimeException {
    public MemoryException(String message) {
        super(message);
    }

    public MemoryException(String message, Throwable cause) {
        super(message, cause);
    }
}
