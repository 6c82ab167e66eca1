package dev.panamavmm.cli;

import dev.panamavmm.error.VmmException;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.log.VmmLogProvider;
import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.sandbox.Sandbox;
import java.io.IOException;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Locale;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * {@code vmm}: the command-line entry point. User errors (a wrong flag, a missing /dev/kvm, a bad
 * kernel) end with one line on stderr and a non-zero exit; stack traces only go to the debug log.
 * Exit codes: 0 success, 1 the operation failed, 2 the command line was wrong; {@code run} ends
 * with the guest's exit code when the guest asked for one.
 */
public final class Main implements Cli.Command {
    static {
        // Before any logger exists: the CLI logs in the VMM's own format (an embedder brings its own binding).
        VmmLogProvider.select();
    }

    private static final Logger log = LoggerFactory.getLogger(Main.class);

    static final int OK = 0, FAILED = 1, USAGE = 2;

    public static void main(String[] args) {
        EarlyWarmup.startFor(args);
        System.exit(run(args, System.out, System.err));
    }

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec("vmm", "Panama VMM: a KVM virtual machine monitor in Java.")
                .subcommand("run", RunCommand::new)
                .subcommand("restore", RestoreCommand::new)
                .subcommand("snapshot", SnapshotCommand::new)
                .subcommand("template", TemplateCommand::new)
                .subcommand("clone", CloneCommand::new)
                .subcommand("serve", ServeCommand::new)
                .subcommand("host", HostCommand::new)
                .subcommand("migrate", MigrateCommand::new)
                .subcommand("incoming", IncomingCommand::new)
                .subcommand("standby", StandbyCommand::new)
                .subcommand("info", InfoCommand::new)
                .subcommand("ctl", CtlCommand::new)
                .subcommand("help", Help::new);
    }

    @Override
    public int call(Cli.Io io) {
        io.err().print(Cli.usage(this, "vmm"));
        io.err().flush();
        return USAGE;
    }

    /** {@code vmm help [COMMAND]}: the usage of the VMM or of one command. */
    static final class Help implements Cli.Command {
        String command;

        @Override
        public Cli.Spec spec() {
            return new Cli.Spec("help", "Show the usage of vmm or of one of its commands.")
                    .optionalParameter("COMMAND", "the command", v -> command = v);
        }

        @Override
        public int call(Cli.Io io) throws Exception {
            var main = new Main();
            if (command == null) {
                io.out().print(Cli.usage(main, "vmm"));
            } else {
                var names = main.spec().subcommandNames();
                if (!names.contains(command))
                    throw new UsageException("unknown command '" + command + "'" + Cli.didYouMean(command, names));
                return Cli.execute(main, "vmm", new String[] {command, "--help"}, io, version());
            }
            io.out().flush();
            return OK;
        }
    }

    static int run(String[] args, PrintStream out, PrintStream err) {
        var io = new Cli.Io(
                new PrintWriter(out, true, StandardCharsets.UTF_8), new PrintWriter(err, true, StandardCharsets.UTF_8));
        try {
            args = sandboxOption(args);
            args = cgroupOption(args);
            return Cli.execute(new Main(), "vmm", args, io, "panama-vmm " + version());
        } catch (Cli.ParseError | UsageException e) {
            err.println("vmm: " + firstLine(e.getMessage()));
            return USAGE;
        } catch (Exception e) {
            if (isUserFacing(e)) {
                log.debug("command failed", e);
                err.println("vmm: " + e.getMessage());
                return FAILED;
            }
            if (e instanceof FileSystemException f && f.getFile() != null) {
                // A file operation no command put into words: still one line, naming the file once.
                log.debug("command failed", e);
                err.println("vmm: " + f.getFile() + (f.getOtherFile() != null ? " -> " + f.getOtherFile() : "") + ": "
                        + IoErrors.reason(f));
                return FAILED;
            }
            log.error("internal error", e);
            err.println("vmm: internal error: " + e);
            return FAILED;
        } finally {
            io.out().flush();
            io.err().flush();
        }
    }

    /**
     * Takes {@code --sandbox on|off|log} (accepted by every command, anywhere on the line) out of
     * {@code args} and selects that mode for this process (docs/operating.md, "Sandbox").
     */
    static String[] sandboxOption(String[] args) throws UsageException {
        var rest = new ArrayList<String>();
        for (int i = 0; i < args.length; i++) {
            String value;
            if (args[i].equals("--sandbox")) {
                if (i + 1 == args.length) throw new UsageException("--sandbox needs a mode: on, off or log");
                value = args[++i];
            } else if (args[i].startsWith("--sandbox=")) {
                value = args[i].substring("--sandbox=".length());
            } else {
                rest.add(args[i]);
                continue;
            }
            try {
                System.setProperty(
                        Sandbox.PROPERTY, Sandbox.Mode.parse(value).name().toLowerCase(Locale.ROOT));
            } catch (IllegalArgumentException e) {
                throw new UsageException(e.getMessage());
            }
        }
        return rest.toArray(String[]::new);
    }

    /**
     * Takes {@code --cgroup DIR} (any command) out of {@code args} and moves this process into the
     * cgroup v2 directory DIR (its pid written to {@code DIR/cgroup.procs}) before anything else runs.
     */
    static String[] cgroupOption(String[] args) throws IOException {
        var rest = new ArrayList<String>();
        for (int i = 0; i < args.length; i++) {
            if (!args[i].equals("--cgroup")) {
                rest.add(args[i]);
                continue;
            }
            if (i + 1 == args.length) throw new UsageException("--cgroup needs a cgroup v2 directory");
            var dir = Path.of(args[++i]);
            if (!Files.isDirectory(dir)) throw new UserException("--cgroup " + dir + ": no such directory");
            String type = Files.getFileStore(dir).type();
            if (!type.equals("cgroup2") || !Files.exists(dir.resolve("cgroup.procs"))) {
                throw new UserException("--cgroup " + dir + ": not a cgroup v2 directory (it is on " + type
                        + "); cgroup v2 is mounted where /proc/mounts lists type cgroup2");
            }
            try {
                Files.writeString(
                        dir.resolve("cgroup.procs"),
                        Long.toString(ProcessHandle.current().pid()));
            } catch (IOException e) {
                throw new UserException("--cgroup " + dir + ": cannot move the VMM there: " + IoErrors.reason(e));
            }
        }
        return rest.toArray(String[]::new);
    }

    /** Failures whose message is written for the user: printed as is, without a stack trace. */
    static boolean isUserFacing(Throwable e) {
        return e instanceof VmmException
                || e instanceof KvmException
                || e instanceof SnapshotException
                || e instanceof UncheckedIOException;
    }

    private static String firstLine(String s) {
        int nl = s.indexOf('\n');
        return nl < 0 ? s : s.substring(0, nl);
    }

    static String version() {
        String v = Main.class.getPackage().getImplementationVersion();
        return v != null ? v : "0.1.0-SNAPSHOT";
    }
}
