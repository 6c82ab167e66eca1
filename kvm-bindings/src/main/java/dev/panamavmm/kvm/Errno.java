package dev.panamavmm.kvm;

import dev.panamavmm.kvm.sys.LibC;

/** Names of errno values, as libc gives them: {@code EACCES (Permission denied)}. */
public final class Errno {
    private Errno() {}

    /** {@code EACCES (Permission denied)}; the bare number for values libc does not know. */
    public static String describe(int errno) {
        String name = LibC.strerrorname(errno);
        String text = LibC.strerror(errno);
        return (name != null ? name : "errno " + errno) + " (" + text + ")";
    }
}
