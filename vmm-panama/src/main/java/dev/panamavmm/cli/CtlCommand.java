package dev.panamavmm.cli;

import dev.panamavmm.migration.Json;
import dev.panamavmm.api.ApiClient;
import picocli.CommandLine.Command;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.Callable;

/** {@code vmm ctl SOCKET COMMAND [JSON]}: sends one control-API command and prints its result. */
@Command(name = "ctl", mixinStandardHelpOptions = true,
        description = "Send a command to a running VMM's control API, e.g. vmm ctl /tmp/vmm.sock query-status")
final class CtlCommand implements Callable<Integer> {
    @Parameters(index = "0", paramLabel = "SOCKET", description = "the VMM's --api-socket")
    Path socket;

    @Parameters(index = "1", paramLabel = "COMMAND", description = "query-status, stop, cont, quit")
    String command;

    @Parameters(index = "2", arity = "0..1", paramLabel = "JSON", description = "arguments as a JSON object")
    String arguments;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() {
        Map<String, Object> args = null;
        if (arguments != null) {
            try {
                args = Json.asObject(Json.parse(arguments), "JSON arguments");
            } catch (Json.JsonException e) {
                throw new UsageException("arguments are not a JSON object: " + e.getMessage());
            }
        }
        try (var client = ApiClient.connect(socket)) {
            var reply = client.execute(command, args);
            if (reply.containsKey("error")) {
                var error = Json.asObject(reply.get("error"), "error");
                spec.commandLine().getErr().println("vmm: " + command + ": " + error.get("desc"));
                return Main.FAILED;
            }
            spec.commandLine().getOut().println(Json.write(reply.get("return")));
            return Main.OK;
        }
    }
}
