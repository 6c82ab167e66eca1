package dev.panamavmm.kvm;

import java.io.Serial;

/**
 * A failed KVM ioctl or system call. The message names the call and the error, for example
 * {@code KVM_CREATE_VM failed: EACCES (Permission denied)}, so it can be shown to a user as is.
 */
public final class KvmException extends RuntimeException {
    @Serial
    private static final long serialVersionUID = 1L;

    private final String call;
    private final int errno;

    public KvmException(String call, int errno) {
        super(call + " failed: " + Errno.describe(errno));
        this.call = call;
        this.errno = errno;
    }

    /** A failure that is not an errno (a refused capability, a malformed answer from the kernel). */
    public KvmException(String call, String reason) {
        super(call + " failed: " + reason);
        this.call = call;
        this.errno = 0;
    }

    /** The call that failed: an ioctl name such as {@code KVM_RUN}, or a libc function such as {@code mmap}. */
    public String call() {
        return call;
    }

    /** The errno value, or 0 when the failure was not an errno. */
    public int errno() {
        return errno;
    }
}
