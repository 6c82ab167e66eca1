package dev.panamavmm.cli;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.memory.Backing;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.Callable;

/**
 * {@code vmm run}: boots a guest (by default the embedded test guest) and shows its console until
 * the guest exits, the user quits (Ctrl-A x on a terminal, Ctrl-C, the API's quit) or the VM fails.
 */
@Command(name = "run", mixinStandardHelpOptions = true, description = "Boot a guest and show its console.")
final class RunCommand implements Callable<Integer> {
    @Mixin
    GuestOptions guest;

    @Option(names = "--mem-path", paramLabel = "FILE", description = "back guest RAM with this file (tmpfs or disk)")
    Path memPath;

    @Option(names = "--shared", description = "map --mem-path shared: the file holds the guest's memory and outlives the VMM")
    boolean shared;

    @picocli.CommandLine.Mixin
    VmIoOptions io;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (shared && memPath == null) throw new UsageException("--shared needs --mem-path FILE");
        ConsoleIo.checkSpec(io.console);
        Backing backing = new Backing.Memfd();
        if (memPath != null) {
            if (Files.isDirectory(memPath)) throw new UsageException("--mem-path " + memPath + " is a directory; give a file");
            if (!shared && !Files.exists(memPath)) {
                throw new UsageException("--mem-path " + memPath + " without --shared maps an existing file copy-on-write, and it does not exist");
            }
            backing = shared ? new Backing.SharedFile(memPath) : new Backing.PrivateFile(memPath);
        }
        var config = guest.config(backing);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            if (guest.cpus > kvm.maxVcpus()) {
                throw new UsageException("--cpus " + guest.cpus + " is more than this host's maximum of " + kvm.maxVcpus());
            }
            return VmSession.serve(io.console, io.apiSocket, false, spec.commandLine().getErr(), kvm,
                    (out, listener) -> Vm.create(kvm, config, out, listener));
        }
    }
}
