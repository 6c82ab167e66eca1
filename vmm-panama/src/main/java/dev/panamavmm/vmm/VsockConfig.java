package dev.panamavmm.vmm;

import java.nio.file.Path;
import java.util.List;
import java.util.Objects;

/**
 * The machine's virtio-vsock device: the guest's CID (at least 3) and the host Unix socket
 * {@code uds} where host programs connect (guest-initiated connections to port P go to
 * {@code uds_P}). {@code passed} are the host sockets a live update's source handed over (its
 * listener first, then its connections in the order of the device's state); empty otherwise.
 */
public record VsockConfig(long cid, Path uds, List<Integer> passed) implements VirtioConfig {
    public VsockConfig {
        Objects.requireNonNull(uds, "uds");
        if (cid < 3 || cid > 0xFFFF_FFFFL)
            throw new IllegalArgumentException("cid=" + cid + ": a guest CID is 3 to 4294967295 (0-2 are reserved)");
        passed = List.copyOf(passed);
    }

    public VsockConfig(long cid, Path uds) {
        this(cid, uds, List.of());
    }

    /** This device with the host sockets a live update passed. */
    VsockConfig withPassed(List<Integer> fds) {
        return new VsockConfig(cid, uds, fds);
    }

    /** Parses {@code cid=N,uds=PATH}; IllegalArgumentException with a sentence for anything else. */
    public static VsockConfig parse(String spec) {
        Long cid = null;
        String uds = null;
        for (String p : spec.split(",", -1)) {
            if (p.startsWith("cid=")) {
                try {
                    cid = Long.parseLong(p.substring(4));
                } catch (NumberFormatException e) {
                    throw new IllegalArgumentException("cid=" + p.substring(4) + " is not a number");
                }
            } else if (p.startsWith("uds=") && p.length() > 4) uds = p.substring(4);
            else throw new IllegalArgumentException("unknown vsock option \"" + p + "\" (cid=N,uds=PATH)");
        }
        if (cid == null || uds == null) throw new IllegalArgumentException("a vsock device needs cid=N,uds=PATH");
        return new VsockConfig(cid, Path.of(uds));
    }
}
