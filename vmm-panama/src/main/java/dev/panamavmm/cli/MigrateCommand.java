package dev.panamavmm.cli;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.migration.Json;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.nio.file.Path;
import java.util.concurrent.Callable;

/** {@code vmm migrate --api-socket S unix:PATH}: hands a running VM to the VMM waiting on PATH. */
@Command(name = "migrate", mixinStandardHelpOptions = true,
        description = "Move a running VM to a new VMM process on this host (live update): only state moves.")
final class MigrateCommand implements Callable<Integer> {
    @Option(names = "--api-socket", required = true, paramLabel = "PATH", description = "the running VMM's --api-socket")
    Path apiSocket;

    @Parameters(index = "0", paramLabel = "unix:PATH", description = "where the new VMM waits (vmm incoming unix:PATH)")
    String uri;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() {
        IncomingCommand.socketPath(uri);
        try (var client = ApiClient.connect(apiSocket)) {
            var reply = client.execute("migrate", Json.object("uri", uri));
            if (reply.containsKey("error")) {
                spec.commandLine().getErr().println("vmm: " + Json.asObject(reply.get("error"), "error").get("desc"));
                return Main.FAILED;
            }
            var r = Json.asObject(reply.get("return"), "return");
            spec.commandLine().getOut().printf("migrated: downtime %s ms, total %s ms, %s bytes sent%n",
                    r.get("downtime-ms"), r.get("total-ms"), r.get("bytes-sent"));
            return Main.OK;
        }
    }
}
