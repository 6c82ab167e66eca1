package dev.panamavmm.cli;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.Templates;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;

/**
 * {@code vmm clone DIR}: a new VM from a template, one per process (isolation). With
 * {@code --count N} it starts N such processes in the background, each with its own console
 * file and API socket, and returns when all of them run.
 */
@Command(name = "clone", mixinStandardHelpOptions = true, description = "Start VMs from a template (copy-on-write memory, fresh generation id).")
final class CloneCommand implements Callable<Integer> {
    @Parameters(index = "0", paramLabel = "DIR", description = "the template directory")
    Path template;

    @Option(names = "--count", paramLabel = "N", defaultValue = "1", description = "clones to start, one process each (default: ${DEFAULT-VALUE})")
    int count;

    @Option(names = "--console", paramLabel = "WHERE", defaultValue = "stdout", description = "for one clone: stdout, file:PATH or unix:PATH")
    String console;

    @Option(names = "--api-socket", paramLabel = "PATH", description = "for one clone: its control API socket")
    Path apiSocket;

    @Option(names = "--console-dir", paramLabel = "DIR", description = "with --count: clone-I.log console files go here")
    Path consoleDir;

    @Option(names = "--api-socket-dir", paramLabel = "DIR", description = "with --count: clone-I.sock API sockets go here")
    Path apiSocketDir;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (count < 1) throw new UsageException("--count must be at least 1");
        if (count > 1) return startProcesses();
        ConsoleIo.checkSpec(console);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            var loaded = Templates.open(kvm, template);
            // No rehearsal: clones come many at a time, and its CPU would slow the next ones' start.
            return VmSession.serve(console, apiSocket, false, spec.commandLine().getErr(), null,
                    (out, listener) -> Templates.clone(kvm, loaded, out, listener));
        }
    }

    /** Starts {@code count} background `vmm clone` processes and waits until each one's API socket is up. */
    private int startProcesses() throws Exception {
        if (consoleDir == null || apiSocketDir == null) throw new UsageException("--count needs --console-dir and --api-socket-dir");
        for (var d : List.of(consoleDir, apiSocketDir)) if (!Files.isDirectory(d)) throw new UsageException(d + " is not a directory");
        var java = ProcessHandle.current().info().command().orElse("java");
        var started = new ArrayList<Process>();
        var out = spec.commandLine().getOut();
        for (int i = 1; i <= count; i++) {
            Path log = consoleDir.resolve("clone-" + i + ".log");
            Path sock = apiSocketDir.resolve("clone-" + i + ".sock");
            var pb = new ProcessBuilder(java, "--enable-native-access=ALL-UNNAMED", "-XX:+UseSerialGC", "-cp",
                    System.getProperty("java.class.path"), Main.class.getName(), "clone", template.toString(),
                    "--console", "file:" + log, "--api-socket", sock.toString())
                    .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")))
                    .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                    .redirectError(ProcessBuilder.Redirect.appendTo(consoleDir.resolve("clone-" + i + ".err").toFile()));
            started.add(pb.start());
        }
        for (int i = 1; i <= count; i++) {
            var p = started.get(i - 1);
            Path sock = apiSocketDir.resolve("clone-" + i + ".sock");
            long deadline = System.nanoTime() + 60_000_000_000L;
            while (!Files.exists(sock)) {
                if (!p.isAlive()) {
                    String why = Files.readString(consoleDir.resolve("clone-" + i + ".err")).strip();
                    throw new UserException("clone " + i + " failed: " + (why.isEmpty() ? "exit " + p.exitValue() : why.lines().reduce((a, b) -> b).orElse(why)));
                }
                if (System.nanoTime() > deadline) throw new UserException("clone " + i + " did not start within 60 s");
                Thread.sleep(5);
            }
            out.printf("clone %d: pid %d, api %s, console %s%n", i, p.pid(), sock, consoleDir.resolve("clone-" + i + ".log"));
        }
        out.flush();
        return Main.OK;
    }
}
