package dev.panamavmm.cli;

import dev.panamavmm.api.ApiServer;
import dev.panamavmm.control.Rehearsal;
import dev.panamavmm.control.Standby;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmExitReason;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;

/**
 * {@code vmm standby}: a warm VMM without a VM that adopts one over its control API (restore,
 * clone, boot or incoming), then runs it like {@code vmm run}. Start it before it is needed.
 */
final class StandbyCommand implements Cli.Command {
    Path apiSocket;
    String console = "stdout";

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec(
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
                        v -> console = v);
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        ConsoleIo.checkSpec(console);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            Rehearsal.runAndWait(kvm); // before the socket appears: whoever waits for it meets warm code
            System.gc(); // the rehearsal's garbage goes now, not into the VM's lifetime
            try (var consoleIo = ConsoleIo.open(console)) {
                var events = new VmSession.ApiEvents(() -> {});
                var quit = new CompletableFuture<Vm>();
                try (var standby = new Standby(kvm, consoleIo.output(), events, () -> quit.complete(null));
                        var api = ApiServer.start(apiSocket, standby.handler())) {
                    events.attach(api);
                    // Until runToEnd takes over signals: one before a VM came ends the process, one after ends the VM.
                    var previous = Signals.onTermination(name -> {
                        var adopted = standby.adopted().getNow(null);
                        if (adopted != null) adopted.end(new VmExitReason.Stopped("signal"));
                        else quit.complete(null);
                    });
                    Vm vm;
                    try {
                        io.err()
                                .println("vmm: on standby, warm, at " + apiSocket
                                        + ": restore, clone, boot or incoming gives it a VM");
                        io.err().flush();
                        vm = (Vm)
                                CompletableFuture.anyOf(standby.adopted(), quit).get();
                    } catch (Exception e) {
                        Signals.restore(previous);
                        throw e;
                    }
                    if (vm == null) return Main.OK; // quit or a signal before any VM came
                    try (vm) {
                        return VmSession.runToEnd(consoleIo, vm, io.err(), () -> {});
                    }
                }
            }
        }
    }
}
