package dev.panamavmm.vmm;

import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.SnapshotException;
import java.nio.file.Path;
import java.util.AbstractList;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicBoolean;

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
        passed = passed instanceof Passed p ? p : List.copyOf(passed);
    }

    public VsockConfig(long cid, Path uds) {
        this(cid, uds, List.of());
    }

    /** This device with the host sockets a live update passed. */
    VsockConfig withPassed(List<Integer> fds) {
        return new VsockConfig(cid, uds, new Passed(fds));
    }

    /** Closes the passed sockets if no device took them (a live update whose VM was never built). */
    void closeUnclaimed() {
        if (passed instanceof Passed p) p.closeUnclaimed();
    }

    /**
     * Descriptors a live update passed, owned by whoever claims them first: the device's backend,
     * or the failure path of the build, which closes them only if the backend never took them.
     */
    static final class Passed extends AbstractList<Integer> {
        private final List<Integer> fds;
        private final AtomicBoolean claimed = new AtomicBoolean();

        Passed(List<Integer> fds) {
            this.fds = List.copyOf(fds);
        }

        @Override
        public Integer get(int index) {
            return fds.get(index);
        }

        @Override
        public int size() {
            return fds.size();
        }

        /** True for the first caller, who owns the descriptors from then on. */
        boolean claim() {
            return claimed.compareAndSet(false, true);
        }

        void closeUnclaimed() {
            if (claim()) fds.forEach(LibC::close);
        }
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

    /**
     * A clone's own vsock device in place of its template's: the socket path {@code uds} and the
     * CID ({@code cid} 0 keeps the template's). Clones of one template need one each: two VMMs
     * cannot listen on one path.
     */
    public record ForClone(long cid, Path uds) {
        public ForClone {
            Objects.requireNonNull(uds, "uds");
            if (cid != 0 && (cid < 3 || cid > 0xFFFF_FFFFL))
                throw new IllegalArgumentException(
                        "cid=" + cid + ": a guest CID is 3 to 4294967295 (0-2 are reserved)");
        }

        /** The template's device {@code template} with this socket path and CID. */
        VsockConfig applyTo(VsockConfig template) {
            return new VsockConfig(cid == 0 ? template.cid() : cid, uds);
        }

        /**
         * {@code template} as a clone with this vsock device sees it; null leaves it as it is (the
         * clone listens where the template did). A template without a vsock device is refused.
         */
        public static LoadedSnapshot apply(LoadedSnapshot template, ForClone vsock) {
            if (vsock == null) return template;
            var config = template.config();
            if (config.vsock() == null)
                throw new SnapshotException("the template has no vsock device: a clone cannot get one of its own");
            return template.withConfig(config.withVsock(vsock.applyTo(config.vsock())));
        }

        /** Parses {@code [cid=N,]uds=PATH}; IllegalArgumentException with a sentence for anything else. */
        public static ForClone parse(String spec) {
            if (!spec.contains("cid=")) {
                var any = VsockConfig.parse("cid=3," + spec); // the same words; the CID stays the template's
                return new ForClone(0, any.uds());
            }
            var v = VsockConfig.parse(spec);
            return new ForClone(v.cid(), v.uds());
        }

        /** The API's {@code "vsock": {"cid": N, "uds": PATH}} ({@code cid} optional); null stays null. */
        public static ForClone fromJson(Object value) {
            if (value == null) return null;
            if (!(value instanceof Map<?, ?> m))
                throw new IllegalArgumentException("\"vsock\" must be an object: {\"cid\": N, \"uds\": PATH}");
            for (var k : m.keySet()) {
                if (!"cid".equals(k) && !"uds".equals(k))
                    throw new IllegalArgumentException("unexpected \"vsock\" member \"" + k + "\" (it takes cid, uds)");
            }
            if (!(m.get("uds") instanceof String uds) || uds.isBlank())
                throw new IllegalArgumentException("\"vsock\" needs \"uds\": the clone's socket path");
            Object cid = m.get("cid");
            if (cid != null && !(cid instanceof Long))
                throw new IllegalArgumentException("\"vsock\" \"cid\" must be an integer");
            return new ForClone(cid == null ? 0 : (Long) cid, Path.of(uds));
        }
    }
}
