package dev.panamavmm.vmm;

/**
 * How a TCP migration runs (QEMU's {@code migrate-set-parameters} names): {@code maxBandwidth}
 * bytes/s on the sender (0: no limit), {@code downtimeLimitMillis} the longest pause pre-copy
 * aims at, {@code tls} the credentials (null: plain TCP), {@code timeoutSeconds} the longest
 * wait for each reply of the destination (and for the stream to move at all); {@code postcopyRam}
 * QEMU's {@code postcopy-ram} capability (the migration may switch to post-copy), and
 * {@code convergence} what a pass that does not shrink the dirty set leads to: {@code throttle}
 * (auto-converge) or {@code postcopy} (the switch, when the capability is on).
 */
public record MigrationParameters(
        long maxBandwidth,
        long downtimeLimitMillis,
        MigrationTls tls,
        long timeoutSeconds,
        boolean postcopyRam,
        Convergence convergence) {
    /** QEMU's default downtime limit; no bandwidth limit; plain TCP; 10 s per step; pre-copy only, throttled. */
    public static final MigrationParameters DEFAULTS =
            new MigrationParameters(0, 300, null, 10, false, Convergence.THROTTLE);

    /** What a pass that does not shrink the dirty set leads to ({@code x-convergence}). */
    public enum Convergence {
        THROTTLE,
        POSTCOPY;

        public String apiName() {
            return name().toLowerCase(java.util.Locale.ROOT);
        }

        public static Convergence parse(String name) {
            for (var c : values()) if (c.apiName().equals(name)) return c;
            throw new IllegalArgumentException("\"x-convergence\" must be \"throttle\" or \"postcopy\"");
        }
    }

    public MigrationParameters {
        if (maxBandwidth < 0) throw new IllegalArgumentException("\"max-bandwidth\" must be 0 (no limit) or more");
        if (downtimeLimitMillis < 1 || downtimeLimitMillis > 2_000_000)
            throw new IllegalArgumentException("\"downtime-limit\" must be 1 to 2000000 ms");
        if (timeoutSeconds < 1) throw new IllegalArgumentException("the timeout must be at least 1 s");
        if (convergence == null) throw new IllegalArgumentException("\"x-convergence\" must be given");
    }

    public MigrationParameters withMaxBandwidth(long bytesPerSecond) {
        return new MigrationParameters(
                bytesPerSecond, downtimeLimitMillis, tls, timeoutSeconds, postcopyRam, convergence);
    }

    public MigrationParameters withDowntimeLimit(long millis) {
        return new MigrationParameters(maxBandwidth, millis, tls, timeoutSeconds, postcopyRam, convergence);
    }

    public MigrationParameters withTls(MigrationTls credentials) {
        return new MigrationParameters(
                maxBandwidth, downtimeLimitMillis, credentials, timeoutSeconds, postcopyRam, convergence);
    }

    public MigrationParameters withTimeout(long seconds) {
        return new MigrationParameters(maxBandwidth, downtimeLimitMillis, tls, seconds, postcopyRam, convergence);
    }

    public MigrationParameters withPostcopyRam(boolean on) {
        return new MigrationParameters(maxBandwidth, downtimeLimitMillis, tls, timeoutSeconds, on, convergence);
    }

    public MigrationParameters withConvergence(Convergence policy) {
        return new MigrationParameters(maxBandwidth, downtimeLimitMillis, tls, timeoutSeconds, postcopyRam, policy);
    }
}
