package dev.panamavmm.cli;

import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.TcpAddress;
import dev.panamavmm.vmm.memory.Sizes;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * {@code vmm migrate --api-socket S unix:PATH}: hands a running VM to the VMM waiting on PATH;
 * {@code tcp:HOST:PORT}: to the VMM waiting there (pre-copy, as a job whose progress is drawn here).
 */
final class MigrateCommand implements Cli.Command {
    Path apiSocket;
    String uri;
    final ApiWait wait = new ApiWait();
    final TlsOptions tls = new TlsOptions();
    Long maxBandwidth, downtimeLimit;
    boolean postcopy, postcopyWhenStuck;

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec(
                        "migrate",
                        "Move a running VM to a new VMM process on this host (live update: only state moves), or to"
                                + " one on another host (tcp: pre-copy of its memory, then state).")
                .required("--api-socket", "PATH", "the running VMM's --api-socket", v -> apiSocket = Path.of(v))
                .parameter(
                        "unix:PATH|tcp:HOST:PORT",
                        "where the new VMM waits (vmm incoming unix:PATH or tcp:[HOST]:PORT)",
                        v -> uri = v)
                .option(
                        "--max-bandwidth",
                        "SIZE",
                        null,
                        "tcp: bytes per second at most (suffixes K, M, G; 0: no limit)",
                        v -> maxBandwidth = Sizes.parse(v))
                .option(
                        "--downtime-limit",
                        "MS",
                        null,
                        "tcp: the longest pause pre-copy aims at (default 300)",
                        v -> downtimeLimit = Cli.longInteger(v))
                .flag(
                        "--postcopy",
                        "tcp: switch to post-copy right after the first pass (the guest runs there at once, its"
                                + " pages follow)",
                        () -> postcopy = true)
                .flag(
                        "--postcopy-when-stuck",
                        "tcp: switch to post-copy when a pass does not shrink the dirty pages (instead of throttling)",
                        () -> postcopyWhenStuck = true)
                .include(tls::declare)
                .include(wait::declare);
    }

    @Override
    public int call(Cli.Io io) throws InterruptedException {
        if (uri.startsWith("tcp:")) return tcp(io);
        if (tls.given() || maxBandwidth != null || downtimeLimit != null || postcopy || postcopyWhenStuck)
            throw new UsageException(
                    "--tls-*, --max-bandwidth, --downtime-limit and --postcopy* are for tcp: addresses");
        // Absolute: the running VMM resolves the path, and its working directory need not be ours.
        Path destination = IncomingCommand.socketPath(uri).toAbsolutePath();
        try (var client = wait.connect(apiSocket)) {
            // `vmm incoming` creates its socket only once it listens (after its warm-up, ~1 s): wait
            // here rather than let the migration fail and the guest stay.
            long deadline = System.nanoTime() + wait.millis * 1_000_000;
            while (!Files.exists(destination) && System.nanoTime() - deadline < 0) Thread.sleep(20);
            if (!Files.exists(destination)) {
                throw new UserException(
                        "no VMM waits on " + destination + " (start vmm incoming unix:" + destination + " first)");
            }
            var reply = client.execute("migrate", Json.object("uri", "unix:" + destination));
            if (reply.containsKey("error")) {
                io.err()
                        .println("vmm: "
                                + Json.asObject(reply.get("error"), "error").get("desc"));
                return Main.FAILED;
            }
            var r = Json.asObject(reply.get("return"), "return");
            String downtime = r.get("downtime-us") instanceof Long us
                    ? String.format(Locale.ROOT, "%.1f", us / 1000.0)
                    : String.valueOf(r.get("downtime-ms"));
            io.out()
                    .printf(
                            "migrated: downtime %s ms (confirmed after %s ms), total %s ms, %s bytes sent%n",
                            downtime, r.get("confirmed-ms"), r.get("total-ms"), r.get("bytes-sent"));
            return Main.OK;
        }
    }

    /** Sets the parameters given, starts the migration as a job and follows it to its end. */
    private int tcp(Cli.Io io) throws InterruptedException {
        try {
            TcpAddress.parse(uri);
        } catch (IllegalArgumentException e) {
            throw new UsageException(e.getMessage());
        }
        var params = Json.object();
        if (maxBandwidth != null) params.put("max-bandwidth", maxBandwidth);
        if (downtimeLimit != null) params.put("downtime-limit", downtimeLimit);
        if (postcopyWhenStuck) params.put("x-convergence", "postcopy");
        var creds = tls.credentials();
        if (creds != null)
            params.put(
                    "tls-creds",
                    Json.object(
                            "key-store",
                            tls.keyStore.toAbsolutePath().toString(),
                            "trust-store",
                            tls.trustStore.toAbsolutePath().toString(),
                            "password-file",
                            tls.passwordFile.toAbsolutePath().toString()));
        try (var client = wait.connect(apiSocket)) {
            if (postcopy || postcopyWhenStuck) {
                var set = client.execute(
                        "migrate-set-capabilities",
                        Json.object("capabilities", List.of(Json.object("capability", "postcopy-ram", "state", true))));
                if (set.get("error") instanceof Map<?, ?> error) {
                    io.err().println("vmm: " + error.get("desc"));
                    return Main.FAILED;
                }
            }
            if (!params.isEmpty()) {
                var set = client.execute("migrate-set-parameters", params);
                if (set.get("error") instanceof Map<?, ?> error) {
                    io.err().println("vmm: " + error.get("desc"));
                    return Main.FAILED;
                }
            }
            var reply = client.execute("migrate", Json.object("uri", uri, "detach", true));
            if (reply.get("error") instanceof Map<?, ?> error) {
                io.err().println("vmm: migration failed: " + error.get("desc"));
                return Main.FAILED;
            }
            // After setup: the switch then comes at the end of the first pass.
            while (postcopy) {
                var query = client.execute("query-migrate", Json.object());
                var status = query.get("return") instanceof Map<?, ?> r ? r.get("status") : null;
                if ("active".equals(status)) {
                    client.execute("migrate-start-postcopy", Json.object());
                    break;
                }
                if (!"setup".equals(status)) break; // it ended already: the job says how
                Thread.sleep(10);
            }
            String job =
                    String.valueOf(Json.asObject(reply.get("return"), "return").get("job-id"));
            var done = SnapshotCommand.awaitJob(client, job, "migrating RAM");
            if (done.get("error") != null) {
                io.err().println("vmm: " + done.get("error"));
                return Main.FAILED;
            }
            var r = Json.asObject(done.get("result"), "result");
            if (r.get("memory-file") instanceof String file) {
                io.out()
                        .printf(
                                "migrated: downtime %s ms, total %s ms, %s bytes sent (memory file %s by reference)%n",
                                r.get("downtime-ms"), r.get("total-ms"), r.get("bytes-sent"), file);
                return Main.OK;
            }
            io.out()
                    .printf(
                            "migrated: downtime %s ms, total %s ms, %s bytes sent in %s passes%s%s%n",
                            r.get("downtime-ms"),
                            r.get("total-ms"),
                            r.get("bytes-sent"),
                            r.get("passes"),
                            r.get("postcopy-pages") instanceof Long p && p > 0
                                    ? ", then " + p + " pages by post-copy"
                                    : "",
                            r.get("cpu-throttle-percentage") instanceof Long t && t > 0
                                    ? " (vCPUs throttled to " + t + "%)"
                                    : "");
            return Main.OK;
        }
    }
}
