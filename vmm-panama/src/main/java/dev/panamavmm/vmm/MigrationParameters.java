package dev.panamavmm.vmm;

/**
 * How a TCP migration runs (QEMU's {@code migrate-set-parameters} names): {@code maxBandwidth}
 * bytes/s on the sender (0: no limit), {@code downtimeLimitMillis} the longest pause pre-copy
 * aims at, {@code tls} the credentials (null: plain TCP), {@code timeoutSeconds} the longest
 * wait for each reply of the destination (and for the stream to move at all).
 */
public record MigrationParameters(long maxBandwidth, long downtimeLimitMillis, MigrationTls tls, long timeoutSeconds) {
    /** QEMU's default downtime limit; no bandwidth limit; plain TCP; 10 s per step. */
    public static final MigrationParameters DEFAULTS = new MigrationParameters(0, 300, null, 10);

    public MigrationParameters {
        if (maxBandwidth < 0) throw new IllegalArgumentException("\"max-bandwidth\" must be 0 (no limit) or more");
        if (downtimeLimitMillis < 1 || downtimeLimitMillis > 2_000_000)
            throw new IllegalArgumentException("\"downtime-limit\" must be 1 to 2000000 ms");
        if (timeoutSeconds < 1) throw new IllegalArgumentException("the timeout must be at least 1 s");
    }

    public MigrationParameters withMaxBandwidth(long bytesPerSecond) {
        return new MigrationParameters(bytesPerSecond, downtimeLimitMillis, tls, timeoutSeconds);
    }

    public MigrationParameters withDowntimeLimit(long millis) {
        return new MigrationParameters(maxBandwidth, millis, tls, timeoutSeconds);
    }

    public MigrationParameters withTls(MigrationTls credentials) {
        return new MigrationParameters(maxBandwidth, downtimeLimitMillis, credentials, timeoutSeconds);
    }

    public MigrationParameters withTimeout(long seconds) {
        return new MigrationParameters(maxBandwidth, downtimeLimitMillis, tls, seconds);
    }
}
