package dev.panamavmm.cli;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.LocalMigration;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.nio.file.Path;
import java.util.concurrent.Callable;

/** {@code vmm incoming unix:PATH}: waits for a running VMM to hand over its guest (live update), then runs it. */
@Command(name = "incoming", mixinStandardHelpOptions = true,
        description = "Wait on a Unix socket for a VM from a running VMM (vmm migrate), then run it.")
final class IncomingCommand implements Callable<Integer> {
    @Parameters(index = "0", paramLabel = "unix:PATH", description = "where to wait")
    String uri;

    @picocli.CommandLine.Mixin
    VmIoOptions io;

    @Option(names = "--memory", paramLabel = "SIZE", converter = Sizes.class, description = "refuse a VM of another RAM size")
    Long memory;

    @Option(names = "--cpus", paramLabel = "N", description = "refuse a VM with another vCPU count")
    Integer cpus;

    @Option(names = "--timeout", paramLabel = "SECONDS", defaultValue = "10", description = "longest wait for each step after the VM arrives")
    long timeout;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        Path socket = socketPath(uri);
        ConsoleIo.checkSpec(io.console);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            // Before the socket appears: whoever waits for it to migrate then meets warm code (~1 s here).
            Rehearsal.runAndWait(kvm);
            return VmSession.serveStarted(io.console, io.apiSocket, spec.commandLine().getErr(),
                    (out, listener) -> LocalMigration.receive(kvm, socket, timeout, out, listener, config -> {
                        if (memory != null && memory != config.memoryBytes()) {
                            return "this VMM expects " + Sizes.format(memory) + " of RAM, the VM has " + Sizes.format(config.memoryBytes());
                        }
                        if (cpus != null && cpus != config.cpus()) {
                            return "this VMM expects " + cpus + " vCPUs, the VM has " + config.cpus();
                        }
                        return null;
                    }));
        }
    }

    static Path socketPath(String uri) {
        if (!uri.startsWith("unix:") || uri.length() == 5) throw new UsageException("the address must be unix:PATH, not '" + uri + "'");
        return Path.of(uri.substring(5));
    }
}
