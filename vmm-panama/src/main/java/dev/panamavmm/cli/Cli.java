package dev.panamavmm.cli;

import dev.panamavmm.migration.IoErrors;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.Serial;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.function.Consumer;
import java.util.function.Supplier;

/**
 * The command-line parser: each command declares its options and parameters in code, bound to
 * its own fields by setters, and {@link #execute} parses, applies and runs.
 *
 * <p>Why not a library: picocli, which this replaced, is compiled for Java 5, so the JDK's AOT
 * cache cannot hold its classes, and building its models by reflection cost ~0.3 s of every
 * {@code vmm} start, more than the JVM itself (docs/benchmarks.md). This parser does what the
 * VMM's commands need and nothing else: {@code --name VALUE} and {@code --name=VALUE}, flags,
 * defaults, required options, positional parameters, subcommands (first, when the command also
 * has parameters), {@code -h/--help},
 * {@code -V/--version}, and one-line errors worded as before.
 */
final class Cli {
    private Cli() {}

    /** A command: its declaration (bound to this instance) and what it does. */
    interface Command {
        Spec spec();

        int call(Io io) throws Exception;
    }

    /** Where a command writes: standard output and standard error. */
    record Io(PrintWriter out, PrintWriter err) {}

    /** A wrong command line: printed as "vmm: MESSAGE", exit code 2. */
    static final class ParseError extends RuntimeException {
        @Serial
        private static final long serialVersionUID = 1L;

        ParseError(String message) {
            super(message);
        }
    }

    private record Option(
            String name,
            String label,
            String description,
            String defaultValue,
            boolean required,
            Consumer<String> set,
            Runnable flag) {
        boolean isFlag() {
            return flag != null;
        }

        String usage() {
            return isFlag() ? name : name + "=" + label;
        }
    }

    private record Positional(String label, String description, boolean required, Consumer<String> set) {}

    /** What a command accepts; built fluently in the command's {@code spec()}. */
    static final class Spec {
        final String name;
        final String description;
        private final List<Option> options = new ArrayList<>();
        private final List<Positional> positionals = new ArrayList<>();
        private final Map<String, Supplier<Command>> subcommands = new LinkedHashMap<>();

        Spec(String name, String description) {
            this.name = name;
            this.description = description;
        }

        /** A flag: {@code set} runs when it is given. */
        Spec flag(String name, String description, Runnable set) {
            options.add(new Option(name, null, description, null, false, null, set));
            return this;
        }

        /** An option with a value; {@code defaultValue} (or null) is applied first, as if given. */
        Spec option(String name, String label, String defaultValue, String description, Consumer<String> set) {
            options.add(new Option(name, label, description, defaultValue, false, set, null));
            return this;
        }

        /** An option that must be given. */
        Spec required(String name, String label, String description, Consumer<String> set) {
            options.add(new Option(name, label, description, null, true, set, null));
            return this;
        }

        /** The next positional parameter, required. */
        Spec parameter(String label, String description, Consumer<String> set) {
            positionals.add(new Positional(label, description, true, set));
            return this;
        }

        /** The next positional parameter, optional. */
        Spec optionalParameter(String label, String description, Consumer<String> set) {
            positionals.add(new Positional(label, description, false, set));
            return this;
        }

        /** A subcommand, created only when it is named (or help lists it). */
        Spec subcommand(String name, Supplier<Command> command) {
            subcommands.put(name, command);
            return this;
        }

        /** Adds another spec's options and parameters (shared option sets such as the guest's). */
        Spec include(Consumer<Spec> mixin) {
            mixin.accept(this);
            return this;
        }

        /** The names of the subcommands, in declaration order. */
        Set<String> subcommandNames() {
            return subcommands.keySet();
        }

        private Option find(String name) {
            for (var o : options) if (o.name().equals(name)) return o;
            return null;
        }
    }

    /** Parses {@code args} for {@code command} (and its subcommands) and runs the command named; returns the exit code. */
    static int execute(Command command, String path, String[] args, Io io, String version) throws Exception {
        return execute(command, path, args, 0, io, version);
    }

    private static int execute(Command command, String path, String[] args, int start, Io io, String version)
            throws Exception {
        var spec = command.spec();
        for (var o : spec.options) {
            if (o.defaultValue() != null) apply(o, o.defaultValue());
        }
        var given = new HashSet<String>();
        int positional = 0;
        boolean onlyParameters = false;
        for (int i = start; i < args.length; i++) {
            String a = args[i];
            if (!onlyParameters && a.equals("--")) {
                onlyParameters = true;
                continue;
            }
            if (!onlyParameters && (a.equals("-h") || a.equals("--help"))) {
                io.out().print(usage(spec, path));
                io.out().flush();
                return Main.OK;
            }
            if (!onlyParameters && (a.equals("-V") || a.equals("--version"))) {
                io.out().println(version);
                io.out().flush();
                return Main.OK;
            }
            if (!onlyParameters && a.startsWith("-") && a.length() > 1) {
                int eq = a.indexOf('=');
                String name = eq < 0 ? a : a.substring(0, eq);
                var o = spec.find(name);
                if (o == null)
                    throw new ParseError("unknown option '" + name + "'"
                            + didYouMean(
                                    name,
                                    spec.options.stream().map(Option::name).toList()));
                if (o.isFlag()) {
                    if (eq >= 0) throw new ParseError("option '" + name + "' takes no value");
                    o.flag().run();
                } else {
                    String value;
                    if (eq >= 0) value = a.substring(eq + 1);
                    else if (i + 1 < args.length) value = args[++i];
                    else throw new ParseError("option '" + name + "' needs a value (" + o.label() + ")");
                    apply(o, value);
                }
                given.add(name);
                continue;
            }
            if (i == start && !spec.positionals.isEmpty() && spec.subcommands.containsKey(a)) {
                // A command with parameters of its own (snapshot DIR) and subcommands (snapshot verify DIR): the
                // subcommand comes first.
                return execute(spec.subcommands.get(a).get(), path + " " + a, args, i + 1, io, version);
            }
            if (!spec.subcommands.isEmpty() && positional == 0 && spec.positionals.isEmpty()) {
                var sub = spec.subcommands.get(a);
                if (sub == null)
                    throw new ParseError("unknown command '" + a + "'" + didYouMean(a, spec.subcommands.keySet()));
                checkRequired(spec, given);
                return execute(sub.get(), path + " " + a, args, i + 1, io, version);
            }
            if (positional >= spec.positionals.size()) throw new ParseError(unexpected(spec, path, a));
            var p = spec.positionals.get(positional++);
            try {
                p.set().accept(a);
            } catch (IllegalArgumentException e) {
                throw new ParseError("invalid " + p.label() + ": " + e.getMessage());
            }
        }
        checkRequired(spec, given);
        for (int p = positional; p < spec.positionals.size(); p++) {
            if (spec.positionals.get(p).required())
                throw new ParseError("missing " + spec.positionals.get(p).label() + usageHint(spec, path));
        }
        return command.call(io);
    }

    /** "unexpected argument 'X'", with what the command takes, or a hint when it looks like an option or a help placeholder. */
    private static String unexpected(Spec spec, String path, String arg) {
        var m = new StringBuilder("unexpected argument '").append(arg).append("'");
        if (arg.startsWith("[") && arg.endsWith("]"))
            m.append(" (square brackets in a usage line mark what is optional: leave them out)");
        else if (spec.positionals.isEmpty()) m.append(" (").append(path).append(" takes no parameters)");
        else
            m.append(" (")
                    .append(path)
                    .append(" takes ")
                    .append(String.join(
                            " ",
                            spec.positionals.stream()
                                    .map(p -> p.required() ? p.label() : "[" + p.label() + "]")
                                    .toList()))
                    .append(")");
        return m.toString();
    }

    private static String usageHint(Spec spec, String path) {
        var sb = new StringBuilder(" (usage: ").append(path);
        for (var o : spec.options) if (o.required()) sb.append(' ').append(o.usage());
        for (var p : spec.positionals) sb.append(' ').append(p.required() ? p.label() : "[" + p.label() + "]");
        return sb.append(")").toString();
    }

    /** "; did you mean 'run'?" when one of {@code known} is close to {@code typed} (a typo or a unique prefix), else "". */
    static String didYouMean(String typed, Collection<String> known) {
        String best = null;
        int bestDistance = Integer.MAX_VALUE;
        for (String k : known) {
            int d = distance(typed, k);
            if (d < bestDistance) {
                best = k;
                bestDistance = d;
            }
        }
        int allowed = Math.max(1, Math.min(2, typed.replaceFirst("^-+", "").length() / 3));
        if (best != null && bestDistance <= allowed) return "; did you mean '" + best + "'?";
        var prefixed = known.stream()
                .filter(k -> typed.replaceFirst("^-+", "").length() >= 3 && k.startsWith(typed))
                .toList();
        return prefixed.size() == 1 ? "; did you mean '" + prefixed.getFirst() + "'?" : "";
    }

    /** Edit distance counting an adjacent transposition as one edit (typing errors). */
    static int distance(String a, String b) {
        int[][] d = new int[a.length() + 1][b.length() + 1];
        for (int i = 0; i <= a.length(); i++) d[i][0] = i;
        for (int j = 0; j <= b.length(); j++) d[0][j] = j;
        for (int i = 1; i <= a.length(); i++) {
            for (int j = 1; j <= b.length(); j++) {
                int cost = a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1;
                d[i][j] = Math.min(Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1), d[i - 1][j - 1] + cost);
                if (i > 1 && j > 1 && a.charAt(i - 1) == b.charAt(j - 2) && a.charAt(i - 2) == b.charAt(j - 1)) {
                    d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
                }
            }
        }
        return d[a.length()][b.length()];
    }

    private static void checkRequired(Spec spec, Set<String> given) {
        for (var o : spec.options) {
            if (o.required() && !given.contains(o.name())) throw new ParseError("missing required option " + o.usage());
        }
    }

    private static void apply(Option o, String value) {
        try {
            o.set().accept(value);
        } catch (IllegalArgumentException e) {
            throw new ParseError("invalid value for " + o.name() + ": " + e.getMessage());
        }
    }

    /** An int option's value; the message is what the user sees after "Invalid value for option ...: ". */
    static int integer(String value) {
        try {
            return Integer.parseInt(value.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("'" + value + "' is not an integer");
        }
    }

    static long longInteger(String value) {
        try {
            return Long.parseLong(value.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("'" + value + "' is not an integer");
        }
    }

    /**
     * Creates a directory named by {@code option} when it is missing, like {@code mkdir -p}; a path
     * that exists and is not a directory is a usage error.
     */
    static Path createDirectories(String option, Path dir) {
        if (Files.exists(dir) && !Files.isDirectory(dir))
            throw new UsageException(option + " " + dir + " is not a directory");
        try {
            return Files.createDirectories(dir);
        } catch (IOException e) {
            throw new UserException("cannot create the " + option + " directory " + dir + ": " + IoErrors.reason(e));
        }
    }

    /** The help text of a command: usage line, description, parameters, options, subcommands. */
    static String usage(Command command, String path) {
        return usage(command.spec(), path);
    }

    private static String usage(Spec spec, String path) {
        var sb = new StringBuilder("Usage: ").append(path);
        if (!spec.options.isEmpty()) sb.append(" [OPTIONS]");
        for (var o : spec.options) if (o.required()) sb.append(' ').append(o.usage());
        for (var p : spec.positionals) sb.append(' ').append(p.required() ? p.label() : "[" + p.label() + "]");
        if (!spec.subcommands.isEmpty())
            sb.append(spec.positionals.isEmpty() ? " COMMAND" : "\n   or: " + path + " COMMAND ...");
        sb.append('\n').append(spec.description).append("\n\n");
        var rows = new ArrayList<String[]>();
        for (var p : spec.positionals) rows.add(new String[] {p.label(), p.description()});
        for (var o : spec.options) {
            String d = o.description();
            if (o.defaultValue() != null) d += " (default: " + o.defaultValue() + ")";
            if (o.required()) d += " (required)";
            rows.add(new String[] {o.usage(), d});
        }
        rows.add(new String[] {"-h, --help", "show this help and exit"});
        rows.add(new String[] {"-V, --version", "print the version and exit"});
        table(sb, rows);
        if (!spec.subcommands.isEmpty()) {
            sb.append("\nCommands:\n");
            var commands = new ArrayList<String[]>();
            spec.subcommands.forEach((name, command) -> commands.add(new String[] {
                name, command.get().spec().description.lines().findFirst().orElse("")
            }));
            table(sb, commands);
        }
        return sb.toString();
    }

    private static void table(StringBuilder sb, List<String[]> rows) {
        int width = 0;
        for (var r : rows) width = Math.max(width, r[0].length());
        for (var r : rows)
            sb.append("  ")
                    .append(r[0])
                    .append(" ".repeat(width - r[0].length() + 3))
                    .append(r[1])
                    .append('\n');
    }
}
