package dev.panamavmm.cli;

import dev.panamavmm.migration.Json;
import java.nio.file.Path;
import java.util.Map;

/** {@code vmm ctl SOCKET COMMAND [JSON]}: sends one control-API command and prints its result. */
final class CtlCommand implements Cli.Command {
    Path socket;
    String command;
    String arguments;
    final ApiWait wait = new ApiWait();

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec(
                        "ctl", "Send a command to a running VMM's control API, e.g. vmm ctl /tmp/vmm.sock query-status")
                .parameter("SOCKET", "the VMM's --api-socket", v -> socket = Path.of(v))
                .parameter(
                        "COMMAND",
                        "every VMM's: query-commands, query-version (ctl sends qmp_capabilities, QMP's handshake, first);"
                                + " a VM's: query-status, query-metrics, stop, cont, quit, snapshot {\"path\", \"detach\"}, migrate {\"uri\", \"resume\"},"
                                + " migrate-set-capabilities {\"capabilities\"}, query-migrate-capabilities,"
                                + " migrate-start-postcopy, migrate-recover {\"uri\"},"
                                + " migrate-set-parameters {\"max-bandwidth\", \"downtime-limit\", \"tls-creds\", \"x-convergence\"},"
                                + " query-migrate-parameters, query-migrate, migrate-cancel or migrate_cancel,"
                                + " query-jobs, job-cancel {\"id\"}, balloon {\"target-mib\"}, query-balloon,"
                                + " template-create {\"path\"} (a clone's);"
                                + " vmm serve's: clone {\"template\", \"count\"}, query-clones, destroy {\"id\"},"
                                + " balloon {\"id\", \"target-mib\"}, query-balloon {\"id\"}, template-create {\"id\", \"path\"}, quit;"
                                + " vmm standby's (then the VM's): restore {\"path\"}, clone {\"template\"}, boot {\"memory\", ...},"
                                + " incoming {\"uri\"}, query-status, quit;"
                                + " vmm host's: boot {...}, restore {\"path\"}, clone {\"template\"}, incoming {\"uri\"}, destroy {\"id\"},"
                                + " stop, cont, query-metrics, snapshot, migrate, balloon and query-balloon with {\"id\", ...},"
                                + " handover {\"host\"}, query-vms, query-host, quit",
                        v -> command = v)
                .optionalParameter("JSON", "arguments as a JSON object", v -> arguments = v)
                .include(wait::declare);
    }

    @Override
    public int call(Cli.Io io) {
        Map<String, Object> args = null;
        if (arguments != null) {
            Object parsed;
            try {
                parsed = Json.parse(arguments);
            } catch (Json.JsonException e) {
                throw new UsageException("the arguments are not valid JSON (" + e.getMessage()
                        + "); give an object, e.g. '{\"id\": \"clone-1\"}'");
            }
            if (!(parsed instanceof Map<?, ?>))
                throw new UsageException(
                        "the arguments must be a JSON object, e.g. '{\"id\": \"clone-1\"}', not " + arguments);
            args = Json.asObject(parsed, "the arguments");
        }
        try (var client = wait.connect(socket)) {
            var reply = client.execute(command, args);
            if (reply.containsKey("error")) {
                var error = Json.asObject(reply.get("error"), "error");
                io.err().println("vmm: " + command + ": " + error.get("desc"));
                return Main.FAILED;
            }
            io.out().println(Json.write(reply.get("return")));
            return Main.OK;
        }
    }
}
