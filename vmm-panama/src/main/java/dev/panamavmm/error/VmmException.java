package dev.panamavmm.error;

import java.io.Serial;

/**
 * The base of every failure of the VMM whose message is written for its user: one sentence that
 * names what it is about (a path, an option, a VM) once. The CLI prints the message alone, never
 * a stack trace; a cause, when there is one, is kept for the debug log and not repeated in the
 * message. The lower modules have their own bases, for the same reason and printed the same way:
 * {@code KvmException} (kvm-bindings) and {@code SnapshotException} (migration), which know
 * nothing of this module.
 */
public abstract class VmmException extends RuntimeException {
    @Serial
    private static final long serialVersionUID = 1L;

    protected VmmException(String message) {
        super(message);
    }

    protected VmmException(String message, Throwable cause) {
        super(message, cause);
    }
}
