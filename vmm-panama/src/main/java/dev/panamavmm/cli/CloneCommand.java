package dev.panamavmm.cli;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.api.ApiException;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.vmm.NetConfig;
import dev.panamavmm.vmm.NetOverrides;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.VsockConfig;
import java.io.File;
import java.io.IOException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * {@code vmm clone DIR}: a new VM from a template, one per process (isolation). With
 * {@code --count N} it starts N such processes in the background, each with its own console
 * file and API socket named by the next free number, and returns when each of them runs or has
 * failed (then with exit code 1 and the reason).
 */
final class CloneCommand implements Cli.Command {
    Path template;
    int count;
    String console;
    Path apiSocket;
    Path consoleDir;
    Path apiSocketDir;
    final List<Path> disks = new ArrayList<>();
    final List<NetConfig> nets = new ArrayList<>();
    VsockConfig.ForClone vsock;
    boolean consoleGiven;

    static final int MAX_COUNT = 1000;
    static final long START_TIMEOUT_SECONDS = 60;

    @Override
    public Cli.Spec spec() {
        return MetricsFile.declare(LogFileOption.declare(new Cli.Spec(
                        "clone",
                        "Start VMs from a template (copy-on-write memory, fresh generation id).\n"
                                + "With --count or the directories, each clone runs in a background process of its own, named clone-N by\n"
                                + "the next number whose console file and socket do not exist yet (a running clone's files are never\n"
                                + "reused); stop one with vmm ctl DIR/clone-N.sock quit.")
                .parameter("DIR", "the template directory", v -> template = Path.of(v))
                .option(
                        "--count",
                        "N",
                        "1",
                        "clones to start, one process each (at most " + MAX_COUNT + ")",
                        v -> count = Cli.integer(v))
                .option(
                        "--console",
                        "WHERE",
                        "stdout",
                        "for one clone in the foreground: stdout, file:PATH or unix:PATH",
                        v -> {
                            console = v;
                            consoleGiven = !v.equals("stdout");
                        })
                .option(
                        "--api-socket",
                        "PATH",
                        null,
                        "for one clone in the foreground: its control API socket",
                        v -> apiSocket = Path.of(v))
                .option(
                        "--console-dir",
                        "DIR",
                        null,
                        "background clones: clone-N.log console files (and clone-N.err) go here,"
                                + " created if missing",
                        v -> consoleDir = Path.of(v))
                .option(
                        "--api-socket-dir",
                        "DIR",
                        null,
                        "background clones: clone-N.sock API sockets go here, created if missing",
                        v -> apiSocketDir = Path.of(v))
                .option(
                        "--disk",
                        "PATH",
                        null,
                        "for one clone in the foreground: make its private copy of the template's next writable disk"
                                + " here (a reflink copy, or an overlay over the template's disk; default: beside it as"
                                + " DISK.clone-PID-N; repeat for more disks)",
                        v -> disks.add(Path.of(v)))
                .option(
                        "--net",
                        "tap=NAME[,mac=MAC]",
                        null,
                        "for one clone in the foreground: the tap and MAC of the template's next network device"
                                + " (without mac= a random locally administered one; needed for each device of a"
                                + " template that has them)",
                        v -> nets.add(NetOption.parse(v)))
                .option(
                        "--vsock",
                        "[cid=N,]uds=PATH",
                        null,
                        "for one clone in the foreground of a template with a vsock device: listen on this Unix socket"
                                + " (and give the guest this CID) instead of the template's",
                        v -> vsock = VsockOption.parseForClone("--vsock", v))));
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        if (count < 1) throw new UsageException("--count must be at least 1");
        if (count > MAX_COUNT) throw new UsageException("--count " + count + " is above the maximum of " + MAX_COUNT);
        if ((count > 1 || consoleDir != null || apiSocketDir != null) && !disks.isEmpty())
            throw new UsageException(
                    "--disk names one clone's disk: not with --count, --console-dir or --api-socket-dir");
        if ((count > 1 || consoleDir != null || apiSocketDir != null) && !nets.isEmpty())
            throw new UsageException(
                    "--net names one clone's tap: not with --count, --console-dir or --api-socket-dir");
        if ((count > 1 || consoleDir != null || apiSocketDir != null) && vsock != null)
            throw new UsageException(
                    "--vsock names one clone's socket: not with --count, --console-dir or --api-socket-dir");
        if (count > 1 || consoleDir != null || apiSocketDir != null) return startProcesses(io);
        ConsoleIo.checkSpec(console);
        var loaded = NetOverrides.apply(Templates.open(template), nets); // before KVM: see RestoreCommand
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            // No rehearsal: clones come many at a time, and its CPU would slow the next ones' start.
            return VmSession.serve(
                    console,
                    apiSocket,
                    false,
                    io.err(),
                    null,
                    (out, listener) ->
                            Templates.clone(kvm, VsockConfig.ForClone.apply(loaded, vsock), disks, out, listener));
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
            if (jvmArguments[i].equals("-jar")
                    && i + 1 < jvmArguments.length
                    && ownJar != null
                    && Path.of(jvmArguments[i + 1])
                            .toAbsolutePath()
                            .normalize()
                            .equals(ownJar)) { // the VMM's jar, not some launcher's
                command.addAll(List.of(jvmArguments).subList(0, i + 2));
                return command;
            }
        }
        command.addAll(List.of(
                "--enable-native-access=ALL-UNNAMED", "-XX:+UseSerialGC", "-cp", classPath, Main.class.getName()));
        return command;
    }

    /** The jar this class was loaded from (absolute), or null when it runs from a directory. */
    static Path ownJar() {
        try {
            var location = Path.of(CloneCommand.class
                    .getProtectionDomain()
                    .getCodeSource()
                    .getLocation()
                    .toURI());
            return location.toString().endsWith(".jar")
                    ? location.toAbsolutePath().normalize()
                    : null;
        } catch (Exception e) {
            return null;
        }
    }

    /** A started clone process and the files it was given. */
    private record Started(String id, Process process, Path log, Path err, Path socket) {}

    /**
     * Starts {@code count} background `vmm clone` processes and waits until each one's API
     * socket answers or the process has ended; exit 1 when any failed, with its reason.
     */
    private int startProcesses(Cli.Io io) throws Exception {
        if (consoleDir == null || apiSocketDir == null) {
            throw new UsageException("background clones need both --console-dir and --api-socket-dir");
        }
        if (apiSocket != null || consoleGiven) {
            throw new UsageException(
                    "--console and --api-socket are for one clone in the foreground; background clones use"
                            + " --console-dir and --api-socket-dir");
        }
        Cli.createDirectories("--console-dir", consoleDir);
        Cli.createDirectories("--api-socket-dir", apiSocketDir);
        if (!Files.isDirectory(template)) throw new UserException("no template directory " + template);
        var info = ProcessHandle.current().info();
        var launch = sameJvm(
                info.command().orElse("java"),
                info.arguments().orElse(new String[0]),
                System.getProperty("java.class.path"),
                ownJar());
        var started = new ArrayList<Started>();
        int next = 1;
        for (int i = 0; i < count; i++) {
            String id;
            Path log, sock;
            while (true) {
                id = "clone-" + next++;
                sock = apiSocketDir.resolve(id + ".sock");
                log = consoleDir.resolve(id + ".log");
                if (Files.exists(sock, LinkOption.NOFOLLOW_LINKS))
                    continue; // another launch's clone (or its leftover socket)
                if (claim(log)) break; // CREATE_NEW: atomic against another launch doing the same
            }
            Path err = consoleDir.resolve(id + ".err");
            var command = new ArrayList<>(launch);
            command.addAll(
                    List.of("clone", template.toString(), "--console", "file:" + log, "--api-socket", sock.toString()));
            var pb = new ProcessBuilder(command)
                    .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
                    .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                    .redirectError(ProcessBuilder.Redirect.to(err.toFile()));
            started.add(new Started(id, pb.start(), log, err, sock));
        }
        var out = io.out();
        int failed = 0;
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(START_TIMEOUT_SECONDS);
        for (var c : started) {
            String failure = awaitRunning(c, deadline);
            if (failure == null) {
                out.printf(
                        "%s: pid %d, api %s, console %s%n", c.id(), c.process().pid(), c.socket(), c.log());
            } else {
                failed++;
                io.err().println("vmm: " + c.id() + " failed: " + failure);
            }
        }
        out.flush();
        io.err().flush();
        if (failed > 0) {
            io.err().println("vmm: " + failed + " of " + count + " clones failed to start");
            io.err().flush();
            return Main.FAILED;
        }
        return Main.OK;
    }

    /** Creates {@code log} if no file has that name yet; false when one has (its number is taken). */
    static boolean claim(Path log) {
        try {
            Files.newOutputStream(log, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)
                    .close();
            return true;
        } catch (FileAlreadyExistsException e) {
            return false;
        } catch (IOException e) {
            throw new UserException("cannot create the console file " + log + ": " + IoErrors.reason(e));
        }
    }

    /**
     * Null once the clone's API socket greets and reports its VM (running or paused), else why it
     * did not start: its own last error line (from its .err file), or the timeout.
     */
    private static String awaitRunning(Started c, long deadline) throws InterruptedException {
        while (true) {
            if (!c.process().isAlive()) return exitReason(c);
            if (Files.exists(c.socket())) {
                try (var client = ApiClient.connect(c.socket(), 0, ApiClient.GREETING_MILLIS)) {
                    var reply = client.execute("query-status", null);
                    if (reply.get("return") instanceof Map<?, ?> r && !"shutdown".equals(r.get("status"))) return null;
                } catch (ApiException e) {
                    // not accepting yet, or the process is ending: look again
                }
            }
            if (System.nanoTime() - deadline > 0) {
                return "not running after " + START_TIMEOUT_SECONDS + " s (pid "
                        + c.process().pid() + ", see " + c.err() + ")";
            }
            Thread.sleep(10);
        }
    }

    private static String exitReason(Started c) throws InterruptedException {
        int code = c.process().waitFor();
        String text;
        try {
            text = Files.readString(c.err()).strip();
        } catch (IOException e) {
            text = "";
        }
        String last = text.lines().filter(l -> !l.isBlank()).reduce((a, b) -> b).orElse("");
        if (last.startsWith("vmm: ")) last = last.substring(5);
        return (last.isEmpty() ? "it exited with code " + code : last) + " (" + c.err() + ")";
    }
}
