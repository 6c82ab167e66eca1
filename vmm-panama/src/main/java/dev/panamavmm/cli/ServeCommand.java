package dev.panamavmm.cli;

import dev.panamavmm.api.ApiServer;
import dev.panamavmm.control.CloneService;
import dev.panamavmm.control.Rehearsal;
import dev.panamavmm.kvm.Kvm;
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;

/**
 * {@code vmm serve}: one long-running process that keeps templates loaded and starts clones on
 * request. Everything that does not depend on the clone (the template's parsed state, its memory
 * file's identity check, the KVM fd) is done once; a clone costs a VM fd, memslots, vCPUs and a
 * private mapping of the template file.
 */
final class ServeCommand implements Cli.Command {
    Path apiSocket;

    Path consoleDir;

    @Override
    public Cli.Spec spec() {
        return LogFileOption.declare(new Cli.Spec(
                        "serve", "Serve clones of templates over the control API: clone, query-clones, destroy, quit.")
                .required("--api-socket", "PATH", "the control API socket", v -> apiSocket = Path.of(v))
                .option(
                        "--console-dir",
                        "DIR",
                        null,
                        "each clone's console goes to DIR/ID.log, created if missing (default: discarded);"
                                + " an ID whose log exists (another launch's clone) is skipped, so no file is written twice",
                        v -> consoleDir = Path.of(v)));
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        if (consoleDir != null) Cli.createDirectories("--console-dir", consoleDir);
        var quit = new CountDownLatch(1);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE);
                var clones = new CloneService(kvm, consoleDir, apiSocket)) {
            var previous = Signals.onTermination(name -> quit.countDown());
            Rehearsal.startInBackground(kvm); // the first clone then runs warm code too
            try (var _ = ApiServer.start(apiSocket, clones.handler(quit::countDown))) {
                quit.await();
            } finally {
                Signals.restore(previous);
            }
        }
        return Main.OK;
    }
}
