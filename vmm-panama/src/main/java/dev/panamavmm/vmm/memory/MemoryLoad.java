package dev.panamavmm.vmm.memory;

import java.util.Locale;

/** How a restore brings the RAM stored in a snapshot file into guest memory (blocks held by reference are always mapped). */
public enum MemoryLoad {
    /** Mapped {@code MAP_PRIVATE} from the snapshot file: the guest faults each page in, 4 KiB at a time. */
    MAPPED,
    /** Anonymous memory filled through userfaultfd: faults served from the file, the rest loaded in the background. */
    LAZY,
    /** Anonymous memory filled from the file, in large sequential reads, before the guest runs. */
    EAGER;

    /** The name users type: {@code mapped}, {@code lazy}, {@code eager}. */
    public String userName() {
        return name().toLowerCase(Locale.ROOT);
    }

    /** Parses a user's choice; a bad one is an {@link IllegalArgumentException} with a one-line message. */
    public static MemoryLoad parse(String value) {
        for (var m : values()) if (m.userName().equals(value)) return m;
        throw new IllegalArgumentException("unknown memory load '" + value + "': use mapped, lazy or eager");
    }
}
