package dev.panamavmm.cli;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.vmm.boot.BootException;
import dev.panamavmm.vmm.memory.MemoryException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import picocli.CommandLine;
import picocli.CommandLine.Command;

import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Callable;

/**
 * {@code vmm}: the command-line entry point. User errors (a wrong flag, a missing /dev/kvm, a bad
 * kernel) end with one line on stderr and a non-zero exit; stack traces only go to the debug log.
 * Exit codes: 0 success, 1 the operation failed, 2 the command line was wrong; {@code run} ends
 * with the guest's exit code when the guest asked for one.
 */
@Command(name = "vmm", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = "Panama VMM: a KVM virtual machine monitor in Java.",
        subcommands = {RunCommand.class, RestoreCommand.class, SnapshotCommand.class, TemplateCommand.class, CloneCommand.class,
                ServeCommand.class, MigrateCommand.class, IncomingCommand.class, InfoCommand.class, CtlCommand.class,
                CommandLine.HelpCommand.class})
public final class Main implements Callable<Integer> {
    private static final Logger log = LoggerFactory.getLogger(Main.class);

    static final int OK = 0, FAILED = 1, USAGE = 2;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    public static void main(String[] args) {
        System.exit(run(args, System.out, System.err));
    }

    @Override
    public Integer call() {
        spec.commandLine().usage(spec.commandLine().getErr());
        return USAGE;
    }

    static int run(String[] args, PrintStream out, PrintStream err) {
        var cl = new CommandLine(new Main());
        cl.setOut(new PrintWriter(out, true, StandardCharsets.UTF_8));
        cl.setErr(new PrintWriter(err, true, StandardCharsets.UTF_8));
        cl.setParameterExceptionHandler((e, a) -> {
            err.println("vmm: " + firstLine(e.getMessage()));
            return USAGE;
        });
        cl.setExecutionExceptionHandler((e, cmd, parsed) -> {
            if (e instanceof UsageException) {
                err.println("vmm: " + e.getMessage());
                return USAGE;
            }
            if (isUserFacing(e)) {
                log.debug("command failed", e);
                err.println("vmm: " + e.getMessage());
                return FAILED;
            }
            log.error("internal error", e);
            err.println("vmm: internal error: " + e);
            return FAILED;
        });
        return cl.execute(args);
    }

    /** Failures whose message is written for the user: printed as is, without a stack trace. */
    static boolean isUserFacing(Throwable e) {
        return e instanceof KvmException || e instanceof MemoryException || e instanceof BootException
                || e instanceof UserException || e instanceof UncheckedIOException
                || e instanceof dev.panamavmm.api.ApiException || e instanceof dev.panamavmm.migration.SnapshotException;
    }

    private static String firstLine(String s) {
        int nl = s.indexOf('\n');
        return nl < 0 ? s : s.substring(0, nl);
    }

    static String version() {
        String v = Main.class.getPackage().getImplementationVersion();
        return v != null ? v : "0.1.0-SNAPSHOT";
    }

    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            return new String[] {"panama-vmm " + version()};
        }
    }
}
