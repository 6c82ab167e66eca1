package dev.panamavmm.cli;

import dev.panamavmm.migration.Json;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;

/** {@code vmm migrate --api-socket S unix:PATH}: hands a running VM to the VMM waiting on PATH. */
final class MigrateCommand implements Cli.Command {
    Path apiSocket;
    String uri;
    final ApiWait wait = new ApiWait();

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec(
                        "migrate",
                        "Move a running VM to a new VMM process on this host (live update): only state moves.")
                .required("--api-socket", "PATH", "the running VMM's --api-socket", v -> apiSocket = Path.of(v))
                .parameter("unix:PATH", "where the new VMM waits (vmm incoming unix:PATH)", v -> uri = v)
                .include(wait::declare);
    }

    @Override
    public int call(Cli.Io io) throws InterruptedException {
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
}
