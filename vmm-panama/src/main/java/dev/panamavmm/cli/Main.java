package dev.panamavmm.cli;

import dev.panamavmm.kvm.KvmException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.PrintStream;
import java.util.Arrays;

/**
 * {@code vmm}: the command-line entry point. User errors (a wrong flag, a missing /dev/kvm) end
 * with one line on stderr and a non-zero exit; stack traces only go to the debug log.
 */
public final class Main {
    private static final Logger log = LoggerFactory.getLogger(Main.class);

    /** Exit codes: 0 success, 1 the operation failed, 2 the command line was wrong. */
    static final int OK = 0, FAILED = 1, USAGE = 2;

    private static final String USAGE_TEXT = """
            usage: vmm COMMAND [OPTIONS]

            commands:
              info [--kvm-device PATH]   what this host's KVM offers and what the VMM needs of it
              version                    print the version
              help                       this text
            """;

    private Main() {}

    public static void main(String[] args) {
        System.exit(run(args, System.out, System.err));
    }

    static int run(String[] args, PrintStream out, PrintStream err) {
        if (args.length == 0) {
            err.print(USAGE_TEXT);
            return USAGE;
        }
        String[] rest = Arrays.copyOfRange(args, 1, args.length);
        try {
            return switch (args[0]) {
                case "info" -> InfoCommand.run(rest, out);
                case "version", "--version" -> {
                    out.println("panama-vmm " + version());
                    yield OK;
                }
                case "help", "--help", "-h" -> {
                    out.print(USAGE_TEXT);
                    yield OK;
                }
                default -> throw new UsageException("unknown command '" + args[0] + "' (see: vmm help)");
            };
        } catch (UsageException e) {
            err.println("vmm: " + e.getMessage());
            return USAGE;
        } catch (KvmException e) {
            log.debug("command failed", e);
            err.println("vmm: " + e.getMessage());
            return FAILED;
        }
    }

    static String version() {
        String v = Main.class.getPackage().getImplementationVersion();
        return v != null ? v : "0.1.0-SNAPSHOT";
    }
}
