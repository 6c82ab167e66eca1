package dev.panamavmm.cli;

import dev.panamavmm.migration.Json;

import java.nio.file.Path;

/** {@code vmm snapshot --api-socket S DIR}: asks a running VMM to save its VM. */
final class SnapshotCommand implements Cli.Command {
    Path apiSocket;
    Path dir;
    boolean noBypass;
    final ApiWait wait = new ApiWait();

    boolean stop, resume;

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec("snapshot", "Save a running VM (through its control API) into a snapshot directory.")
                .required("--api-socket", "PATH", "the running VMM's --api-socket", v -> apiSocket = Path.of(v))
                .parameter("DIR", "the snapshot directory (created if missing)", v -> dir = Path.of(v))
                .flag("--no-bypass", "write shared RAM too, so the snapshot does not depend on the memory file", () -> noBypass = true)
                .flag("--stop", "end the VM after saving (the default)", () -> stop = true)
                .flag("--resume", "let the guest run on after saving", () -> resume = true)
                .include(wait::declare);
    }

    @Override
    public int call(Cli.Io io) {
        if (stop && resume) throw new UsageException("--stop and --resume are mutually exclusive");
        try (var client = wait.connect(apiSocket)) {
            var reply = client.execute("snapshot", Json.object("path", dir.toAbsolutePath().toString(),
                    "bypass-shared-memory", !noBypass, "resume", resume));
            if (reply.containsKey("error")) {
                var error = Json.asObject(reply.get("error"), "error");
                io.err().println("vmm: snapshot failed: " + error.get("desc"));
                return Main.FAILED;
            }
            var r = Json.asObject(reply.get("return"), "return");
            io.out().printf("saved %s in %s ms: %s bytes of RAM written, %s block(s) by reference%n",
                    r.get("path"), r.get("duration-ms"), r.get("ram-bytes-written"), r.get("ram-blocks-by-reference"));
            return Main.OK;
        }
    }
}
