package dev.panamavmm.cli;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.VmSnapshots;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.nio.file.Path;
import java.util.concurrent.Callable;

/** {@code vmm restore DIR}: a new VMM process continues the guest saved in a snapshot directory. */
@Command(name = "restore", mixinStandardHelpOptions = true,
        description = "Restore a VM from a snapshot directory and run it (its console and API as with run).")
final class RestoreCommand implements Callable<Integer> {
    @Parameters(index = "0", paramLabel = "DIR", description = "the snapshot directory")
    Path dir;

    @Option(names = "--paused", description = "restore but do not run the guest until the API's cont")
    boolean paused;

    @Option(names = "--console", paramLabel = "WHERE", defaultValue = "stdout",
            description = "stdout, file:PATH or unix:PATH (default: ${DEFAULT-VALUE})")
    String console;

    @Option(names = "--api-socket", paramLabel = "PATH", description = "serve the control API on this Unix socket")
    Path apiSocket;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        ConsoleIo.checkSpec(console);
        if (paused && apiSocket == null) throw new UsageException("--paused needs --api-socket (to send cont)");
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            return VmSession.serve(console, apiSocket, paused, spec.commandLine().getErr(),
                    (out, listener) -> VmSnapshots.restore(kvm, dir, out, listener));
        }
    }
}
