package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.vmm.memory.Sizes;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The command-line parser on its own: what it accepts, what it refuses and how it words it. */
class CliTest {
    /** A command that records what it was given. */
    static final class Probe implements Cli.Command {
        long size;
        int count;
        boolean flag;
        String required, first, second;
        final List<String> ran = new ArrayList<>();
        Probe sub;

        @Override
        public Cli.Spec spec() {
            var spec = new Cli.Spec("probe", "A probe.")
                    .option("--size", "SIZE", "1M", "a size", v -> size = Sizes.parse(v))
                    .option("--count", "N", null, "a count", v -> count = Cli.integer(v))
                    .flag("--flag", "a flag", () -> flag = true)
                    .required("--name", "NAME", "a name", v -> required = v)
                    .parameter("FIRST", "the first", v -> first = v)
                    .optionalParameter("SECOND", "the second", v -> second = v);
            return sub == null ? spec : spec.subcommand("sub", () -> sub);
        }

        @Override
        public int call(Cli.Io io) {
            ran.add("probe");
            return 7;
        }
    }

    static final Cli.Io IO = new Cli.Io(new PrintWriter(new StringWriter()), new PrintWriter(new StringWriter()));

    static int run(Probe p, String... args) throws Exception {
        return Cli.execute(p, "probe", args, IO, "v1");
    }

    @Test
    void parsesValuesFlagsDefaultsAndParameters() throws Exception {
        var p = new Probe();
        assertEquals(7, run(p, "--name", "n", "--count=3", "--flag", "a", "b"));
        assertEquals(1 << 20, p.size, "the default applies");
        assertEquals(3, p.count);
        assertTrue(p.flag);
        assertEquals("n", p.required);
        assertEquals("a", p.first);
        assertEquals("b", p.second);

        var q = new Probe();
        assertEquals(7, run(q, "x", "--size", "2G", "--name=m", "--", "--not-an-option"));
        assertEquals(2L << 30, q.size);
        assertEquals("--not-an-option", q.second, "after -- everything is a parameter");
    }

    @Test
    void refusesInPlainWordsNamingTheOptionOrArgument() {
        assertError("unknown option '--nope'", "--name", "n", "a", "--nope");
        assertError("unknown option '--cuont'; did you mean '--count'?", "--name", "n", "a", "--cuont", "3");
        assertError("option '--count' needs a value (N)", "--name", "n", "a", "--count");
        assertError("invalid value for --count: 'x' is not an integer", "--name", "n", "a", "--count", "x");
        assertError(
                "invalid value for --size: 'lots' is not a size (examples: 256M, 8G, 16777216)",
                "--name",
                "n",
                "a",
                "--size=lots");
        assertError("missing required option --name=NAME", "a");
        assertError("missing FIRST (usage: probe --name=NAME FIRST [SECOND])", "--name", "n");
        assertError("unexpected argument 'c' (probe takes FIRST [SECOND])", "--name", "n", "a", "b", "c");
        assertError(
                "unexpected argument '[--flag]' (square brackets in a usage line mark what is optional: leave them out)",
                "--name",
                "n",
                "a",
                "b",
                "[--flag]");
        assertError("option '--flag' takes no value", "--name", "n", "a", "--flag=yes");
    }

    @Test
    void suggestsACloseNameForATypoOrAUniquePrefixAndNothingForAStrangerWord() {
        var commands = List.of(
                "run", "restore", "snapshot", "template", "clone", "serve", "migrate", "incoming", "info", "ctl");
        assertEquals("; did you mean 'run'?", Cli.didYouMean("runn", commands));
        assertEquals("; did you mean 'snapshot'?", Cli.didYouMean("snapshto", commands), "a transposition is one edit");
        assertEquals("; did you mean 'template'?", Cli.didYouMean("templ", commands), "a unique prefix");
        assertEquals("; did you mean 'clone'?", Cli.didYouMean("clonee", commands));
        assertEquals("", Cli.didYouMean("frobnicate", commands));
        assertEquals("", Cli.didYouMean("re", commands), "too short to guess");
        assertEquals("; did you mean '--memory'?", Cli.didYouMean("--memroy", List.of("--memory", "--cpus")));
    }

    @Test
    void helpAndVersionEndWithoutRunning() throws Exception {
        var out = new StringWriter();
        var io = new Cli.Io(new PrintWriter(out), new PrintWriter(new StringWriter()));
        var p = new Probe();
        assertEquals(0, Cli.execute(p, "probe", new String[] {"--help"}, io, "v1"));
        assertTrue(
                out.toString().startsWith("Usage: probe [OPTIONS] --name=NAME FIRST [SECOND]\nA probe.\n"),
                out.toString());
        assertTrue(out.toString().matches("(?s).*\\n  --size=SIZE +a size \\(default: 1M\\)\\n.*"), out.toString());
        assertTrue(out.toString().matches("(?s).*\\n  --name=NAME +a name \\(required\\)\\n.*"), out.toString());
        assertEquals(0, Cli.execute(p, "probe", new String[] {"-V"}, io, "v1"));
        assertTrue(out.toString().endsWith("v1\n"));
        assertEquals(List.of(), p.ran);
    }

    /** A command with parameters of its own and a subcommand (snapshot DIR, snapshot verify DIR): the subcommand only first. */
    @Test
    void aSubcommandOfACommandWithParametersComesFirst() throws Exception {
        var sub = new Probe();
        var parent = new Probe();
        parent.sub = sub;
        assertEquals(7, Cli.execute(parent, "probe", new String[] {"sub", "--name", "s", "x"}, IO, "v1"));
        assertEquals("s", sub.required, "the subcommand ran, without the parent's required --name");
        assertEquals(List.of(), parent.ran);
        assertEquals(7, Cli.execute(parent, "probe", new String[] {"--name", "n", "sub"}, IO, "v1"));
        assertEquals("sub", parent.first, "after an option, 'sub' is the parent's parameter");

        var out = new StringWriter();
        Cli.execute(
                parent,
                "probe",
                new String[] {"--help"},
                new Cli.Io(new PrintWriter(out), new PrintWriter(new StringWriter())),
                "v1");
        assertTrue(
                out.toString()
                        .startsWith(
                                "Usage: probe [OPTIONS] --name=NAME FIRST [SECOND]\n   or: probe COMMAND ...\nA probe.\n"),
                out.toString());
    }

    private static void assertError(String message, String... args) {
        var e = assertThrows(Cli.ParseError.class, () -> run(new Probe(), args));
        assertEquals(message, e.getMessage());
    }
}
