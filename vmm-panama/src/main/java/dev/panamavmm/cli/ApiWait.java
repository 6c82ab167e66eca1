package dev.panamavmm.cli;

import dev.panamavmm.api.ApiClient;
import java.math.BigDecimal;
import java.nio.file.Path;

/**
 * {@code --wait SECONDS} for the commands that talk to a running VMM (ctl, snapshot, migrate):
 * a command typed right after {@code vmm run ... &} finds the socket a moment before it exists.
 */
final class ApiWait {
    static final String DEFAULT_SECONDS = "5";
    static final long MAX_SECONDS = 3600;

    long millis;

    void declare(Cli.Spec spec) {
        spec.option(
                "--wait",
                "SECONDS",
                DEFAULT_SECONDS,
                "wait this long for the socket to appear and accept connections (0: no wait)",
                v -> millis = millis(v));
    }

    static long millis(String value) {
        BigDecimal seconds;
        try {
            seconds = new BigDecimal(value.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("'" + value + "' is not a number of seconds");
        }
        if (seconds.signum() < 0 || seconds.compareTo(BigDecimal.valueOf(MAX_SECONDS)) > 0) {
            throw new IllegalArgumentException("'" + value + "' is out of range (0 to " + MAX_SECONDS + " seconds)");
        }
        return seconds.movePointRight(3).longValue();
    }

    ApiClient connect(Path socket) {
        return ApiClient.connect(socket, millis, ApiClient.GREETING_MILLIS);
    }
}
