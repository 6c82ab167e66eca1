package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * The lists of commands in the docs and in {@code vmm ctl --help} against the code: at 52b27eb
 * docs/architecture.md named 3 of 11 commands and 5 of 10 API commands, and {@code ctl --help}
 * named four.
 */
class DocsTrueToCodeTest {
    /** The sources whose {@code ApiCommands} tables are the control API (plus the server's own commands). */
    static final List<String> HANDLERS =
            List.of("api/ApiHandler.java", "control/CloneService.java", "control/Standby.java", "host/VmHost.java");

    @Test
    void architectureNamesEveryCommandAndSubcommand() throws IOException {
        String row = Files.readString(docs().resolve("architecture.md"))
                .lines()
                .filter(l -> l.contains("`dev.panamavmm.cli`"))
                .findFirst()
                .orElseThrow();
        var names = new TreeSet<>(new Main().spec().subcommandNames());
        names.addAll(new TemplateCommand().spec().subcommandNames());
        names.addAll(new SnapshotCommand().spec().subcommandNames());
        for (String name : names)
            assertTrue(row.contains("`" + name + "`"), "docs/architecture.md's cli row lacks `" + name + "`: " + row);
    }

    @Test
    void everyControlCommandIsInTheArchitectureAndInCtlHelp() throws IOException {
        var commands = controlCommands();
        assertTrue(
                commands.containsAll(Set.of("query-status", "snapshot", "query-clones", "boot")), commands.toString());
        String architecture = Files.readString(docs().resolve("architecture.md"));
        String api = architecture.substring(
                architecture.indexOf("## Control API"), architecture.indexOf("## Build, launcher and CI"));
        var help = MainTest.run("ctl", "--help");
        assertEquals(0, help.code(), help.err());
        for (String command : commands) {
            assertTrue(api.contains("`" + command), "docs/architecture.md's Control API section lacks " + command);
            assertTrue(
                    Pattern.compile("[\\s:,]" + Pattern.quote(command) + "[\\s,;{]")
                            .matcher(help.out())
                            .find(),
                    "vmm ctl --help lacks " + command + ":\n" + help.out());
        }
    }

    /** docs/embedding.md shows the example program as it is in the test tree, where a test runs it. */
    @Test
    void theEmbeddingDocShowsTheExampleThatRuns() throws IOException {
        String source = Files.readString(ReadmeTest.repositoryRoot()
                .resolve("vmm-panama/src/test/java/dev/panamavmm/examples/EmbeddingExample.java"));
        String example = source.substring(
                source.indexOf("// begin example\n") + "// begin example\n".length(), source.indexOf("// end example"));
        String doc = Files.readString(docs().resolve("embedding.md"));
        assertTrue(
                doc.contains("```java\n" + example + "```\n"),
                "docs/embedding.md's program differs from EmbeddingExample.java");
    }

    /** Every command added to the handlers' tables ({@code .add("name", ...)}), and the server's own. */
    static Set<String> controlCommands() throws IOException {
        var names = new TreeSet<String>(dev.panamavmm.api.ApiServerAccess.ownCommands());
        Path sources = ReadmeTest.repositoryRoot().resolve("vmm-panama/src/main/java/dev/panamavmm");
        var added = Pattern.compile("\\.add\\(\\s*\"([\\w-]+)\"");
        for (String handler : HANDLERS) {
            var m = added.matcher(Files.readString(sources.resolve(handler)));
            while (m.find()) names.add(m.group(1));
        }
        return names;
    }

    private static Path docs() {
        return ReadmeTest.repositoryRoot().resolve("docs");
    }
}
