package dev.panamavmm.cli;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.migration.Json;
import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.nio.file.Path;
import java.util.concurrent.Callable;

/** {@code vmm snapshot --api-socket S DIR}: asks a running VMM to save its VM. */
@Command(name = "snapshot", mixinStandardHelpOptions = true,
        description = "Save a running VM (through its control API) into a snapshot directory.")
final class SnapshotCommand implements Callable<Integer> {
    @Option(names = "--api-socket", required = true, paramLabel = "PATH", description = "the running VMM's --api-socket")
    Path apiSocket;

    @Parameters(index = "0", paramLabel = "DIR", description = "the snapshot directory (created if missing)")
    Path dir;

    @Option(names = "--no-bypass", description = "write shared RAM too, so the snapshot does not depend on the memory file")
    boolean noBypass;

    static final class After {
        @Option(names = "--stop", description = "end the VM after saving (the default)")
        boolean stop;

        @Option(names = "--resume", description = "let the guest run on after saving")
        boolean resume;
    }

    @ArgGroup(exclusive = true)
    After after;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() {
        boolean resume = after != null && after.resume;
        try (var client = ApiClient.connect(apiSocket)) {
            var reply = client.execute("snapshot", Json.object("path", dir.toAbsolutePath().toString(),
                    "bypass-shared-memory", !noBypass, "resume", resume));
            if (reply.containsKey("error")) {
                var error = Json.asObject(reply.get("error"), "error");
                spec.commandLine().getErr().println("vmm: snapshot failed: " + error.get("desc"));
                return Main.FAILED;
            }
            var r = Json.asObject(reply.get("return"), "return");
            spec.commandLine().getOut().printf("saved %s in %s ms: %s bytes of RAM written, %s block(s) by reference%n",
                    r.get("path"), r.get("duration-ms"), r.get("ram-bytes-written"), r.get("ram-blocks-by-reference"));
            return Main.OK;
        }
    }
}
