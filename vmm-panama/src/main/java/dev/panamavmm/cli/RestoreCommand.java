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

    @picocli.CommandLine.Mixin
    VmIoOptions io;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        ConsoleIo.checkSpec(io.console);
        if (paused && io.apiSocket == null) throw new UsageException("--paused needs --api-socket (to send cont)");
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            return VmSession.serve(io.console, io.apiSocket, paused, spec.commandLine().getErr(), kvm,
                    (out, listener) -> VmSnapshots.restore(kvm, dir, out, listener));
        }
    }
}
