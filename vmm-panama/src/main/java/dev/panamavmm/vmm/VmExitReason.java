package dev.panamavmm.vmm;

/** Why a VM ended. The first reason wins: a stop during a guest's own exit does not overwrite it. */
public sealed interface VmExitReason {

    /** The guest asked to exit with {@code code} through the VMM port. */
    record GuestExit(int code) implements VmExitReason {}

    /** The guest reset the machine (i8042 0xFE, or a KVM reset event); the VMM ends rather than reboots. */
    record Reset(String how) implements VmExitReason {}

    /** The guest shut down or triple-faulted. */
    record Shutdown(String how) implements VmExitReason {}

    /** The VMM's user ended it (Ctrl-C, the API's quit, a save or migration that ends it). */
    record Stopped(String by, Cause cause) implements VmExitReason {
        /** Ended by a request the VMM served: an API command, a save or a migration that ends the VM. */
        public Stopped(String by) {
            this(by, Cause.REQUEST);
        }

        /** Who ended it, as QEMU's ShutdownCause names it. */
        public enum Cause {
            REQUEST("host-qmp-quit"),
            SIGNAL("host-signal"),
            CONSOLE("host-ui");

            private final String qmpReason;

            Cause(String qmpReason) {
                this.qmpReason = qmpReason;
            }
        }
    }

    /** KVM or the VMM could not go on; {@code message} has the details (exit, suberror, RIP, bytes). */
    record Failed(String message) implements VmExitReason {}

    /** A sentence for logs and the CLI. */
    default String describe() {
        return switch (this) {
            case GuestExit g -> "guest exited with code " + g.code();
            case Reset r -> "guest reset the machine (" + r.how() + ")";
            case Shutdown s -> "guest shut down (" + s.how() + ")";
            case Stopped s -> "stopped by " + s.by();
            case Failed f -> f.message();
        };
    }

    /** QEMU's ShutdownCause for the {@code SHUTDOWN} event's {@code reason}. */
    default String qmpReason() {
        return switch (this) {
            case GuestExit g -> "guest-shutdown";
            case Reset r -> "guest-reset";
            case Shutdown s -> "guest-reset"; // a triple fault: QEMU resets (and with -no-reboot ends) the machine
            case Stopped s -> s.cause().qmpReason;
            case Failed f -> "host-error";
        };
    }

    /** Whether the guest itself ended it ({@code SHUTDOWN}'s {@code guest}). */
    default boolean byGuest() {
        return this instanceof GuestExit || this instanceof Reset || this instanceof Shutdown;
    }

    /** The process exit code `vmm run` ends with. */
    default int exitCode() {
        return switch (this) {
            case GuestExit g -> g.code();
            case Reset r -> 0;
            case Stopped s -> 0;
            case Shutdown s -> 1;
            case Failed f -> 1;
        };
    }
}
