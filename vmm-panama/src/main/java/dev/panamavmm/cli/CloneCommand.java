package dev.panamavmm.cli;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.Templates;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * {@code vmm clone DIR}: a new VM from a template, one per process (isolation). With
 * {@code --count N} it starts N such processes in the background, each with its own console
 * file and API socket, and returns when all of them run.
 */
final class CloneCommand implements Cli.Command {
    Path template;
    int count;
    String console;
    Path apiSocket;
    Path consoleDir;
    Path apiSocketDir;

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec("clone", "Start VMs from a template (copy-on-write memory, fresh generation id).")
                .parameter("DIR", "the template directory", v -> template = Path.of(v))
                .option("--count", "N", "1", "clones to start, one process each", v -> count = Cli.integer(v))
                .option("--console", "WHERE", "stdout", "for one clone: stdout, file:PATH or unix:PATH", v -> console = v)
                .option("--api-socket", "PATH", null, "for one clone: its control API socket", v -> apiSocket = Path.of(v))
                .option("--console-dir", "DIR", null, "with --count: clone-I.log console files go here (created if missing)", v -> consoleDir = Path.of(v))
                .option("--api-socket-dir", "DIR", null, "with --count: clone-I.sock API sockets go here (created if missing)", v -> apiSocketDir = Path.of(v));
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        if (count < 1) throw new UsageException("--count must be at least 1");
        if (count > 1) return startProcesses(io);
        ConsoleIo.checkSpec(console);
        var loaded = Templates.open(template); // before KVM: see RestoreCommand
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            // No rehearsal: clones come many at a time, and its CPU would slow the next ones' start.
            return VmSession.serve(console, apiSocket, false, io.err(), null,
                    (out, listener) -> Templates.clone(kvm, loaded, out, listener));
        }
    }

    /**
     * How to start another VMM process like this one: this JVM's own options and {@code -jar} when
     * it was started that way (as {@code ./vmm} does: its AOT cache and flags carry over, a clone
     * process starts in ~0.23 s instead of ~0.39), else the class path and the main class.
     */
    static List<String> sameJvm(String java, String[] jvmArguments, String classPath, Path ownJar) {
        var command = new ArrayList<String>();
        command.add(java);
        for (int i = 0; i < jvmArguments.length; i++) {
            if (jvmArguments[i].equals("-jar") && i + 1 < jvmArguments.length && ownJar != null
                    && Path.of(jvmArguments[i + 1]).toAbsolutePath().normalize().equals(ownJar)) { // the VMM's jar, not some launcher's
                command.addAll(List.of(jvmArguments).subList(0, i + 2));
                return command;
            }
        }
        command.addAll(List.of("--enable-native-access=ALL-UNNAMED", "-XX:+UseSerialGC", "-cp", classPath, Main.class.getName()));
        return command;
    }

    /** The jar this class was loaded from (absolute), or null when it runs from a directory. */
    private static Path ownJar() {
        try {
            var location = Path.of(CloneCommand.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            return location.toString().endsWith(".jar") ? location.toAbsolutePath().normalize() : null;
        } catch (Exception e) {
            return null;
        }
    }

    /** Starts {@code count} background `vmm clone` processes and waits until each one's API socket is up. */
    private int startProcesses(Cli.Io io) throws Exception {
        if (consoleDir == null || apiSocketDir == null) throw new UsageException("--count needs --console-dir and --api-socket-dir");
        Cli.createDirectories("--console-dir", consoleDir);
        Cli.createDirectories("--api-socket-dir", apiSocketDir);
        var info = ProcessHandle.current().info();
        var launch = sameJvm(info.command().orElse("java"), info.arguments().orElse(new String[0]), System.getProperty("java.class.path"),
                ownJar());
        var started = new ArrayList<Process>();
        var out = io.out();
        for (int i = 1; i <= count; i++) {
            Path log = consoleDir.resolve("clone-" + i + ".log");
            Path sock = apiSocketDir.resolve("clone-" + i + ".sock");
            var command = new ArrayList<>(launch);
            command.addAll(List.of("clone", template.toString(), "--console", "file:" + log, "--api-socket", sock.toString()));
            var pb = new ProcessBuilder(command)
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
