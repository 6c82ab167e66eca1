package dev.panamavmm.cli;

import org.junit.jupiter.api.Test;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

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
    void refusesWithPicocliWording() {
        assertError("Unknown option: '--nope'", "--name", "n", "a", "--nope");
        assertError("Missing required parameter for option '--count' (N)", "--name", "n", "a", "--count");
        assertError("Invalid value for option '--count': 'x' is not an integer", "--name", "n", "a", "--count", "x");
        assertError("Invalid value for option '--size': 'lots' is not a size (examples: 256M, 8G, 16777216)", "--name", "n", "a", "--size=lots");
        assertError("Missing required option: '--name=NAME'", "a");
        assertError("Missing required parameter: 'FIRST'", "--name", "n");
        assertError("Unmatched argument at index 4: 'c'", "--name", "n", "a", "b", "c");
        assertError("Option '--flag' takes no value", "--name", "n", "a", "--flag=yes");
    }

    @Test
    void helpAndVersionEndWithoutRunning() throws Exception {
        var out = new StringWriter();
        var io = new Cli.Io(new PrintWriter(out), new PrintWriter(new StringWriter()));
        var p = new Probe();
        assertEquals(0, Cli.execute(p, "probe", new String[] {"--help"}, io, "v1"));
        assertTrue(out.toString().startsWith("Usage: probe [OPTIONS] --name=NAME FIRST [SECOND]\nA probe.\n"), out.toString());
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
        Cli.execute(parent, "probe", new String[] {"--help"}, new Cli.Io(new PrintWriter(out), new PrintWriter(new StringWriter())), "v1");
        assertTrue(out.toString().startsWith("Usage: probe [OPTIONS] --name=NAME FIRST [SECOND]\n   or: probe COMMAND ...\nA probe.\n"),
                out.toString());
    }

    private static void assertError(String message, String... args) {
        var e = assertThrows(Cli.ParseError.class, () -> run(new Probe(), args));
        assertEquals(message, e.getMessage());
    }
}
