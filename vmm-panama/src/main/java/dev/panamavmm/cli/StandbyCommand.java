package dev.panamavmm.cli;

import dev.panamavmm.control.Rehearsal;
import dev.panamavmm.kvm.Kvm;
import java.nio.file.Path;

/**
 * {@code vmm standby}: a warm VMM without a VM that adopts one over its control API (restore,
 * clone, boot or incoming), then runs it like {@code vmm run}. Start it before it is needed.
 */
final class StandbyCommand implements Cli.Command {
    Path apiSocket;
    String console = "stdout";

    @Override
    public Cli.Spec spec() {
        return LogFileOption.declare(new Cli.Spec(
                        "standby",
                        "Start a warm VMM without a VM; it takes one over its control API.\n"
                                + "It warms up first (a rehearsal of save, restore and clone on a throwaway VM; PANAMA_VMM_NO_REHEARSAL=1 skips it),\n"
                                + "then listens: restore {\"path\": DIR}, clone {\"template\": DIR}, boot {\"memory\": \"256M\", \"cpus\": 1, ...}\n"
                                + "or incoming {\"uri\": \"unix:PATH\"} gives it its one VM, which it then runs like vmm run.")
                .required(
                        "--api-socket",
                        "PATH",
                        "the control API socket (it appears once the VMM is warm)",
                        v -> apiSocket = Path.of(v))
                .option(
                        "--console",
                        "WHERE",
                        "stdout",
                        "the VM's console: stdout, file:PATH or unix:PATH",
                        v -> console = v));
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        ConsoleIo.checkSpec(console);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            Rehearsal.runAndWait(kvm); // before the socket appears: whoever waits for it meets warm code
            System.gc(); // the rehearsal's garbage goes now, not into the VM's lifetime
            return VmSession.serveStandby(
                    kvm,
                    console,
                    apiSocket,
                    io.err(),
                    standby -> {
                        io.err()
                                .println("vmm: on standby, warm, at " + apiSocket
                                        + ": restore, clone, boot or incoming gives it a VM");
                        io.err().flush();
                        return standby.adopted();
                    },
                    null); // quit or a signal before any VM came: a normal exit, nothing to say
        }
    }
}
