package dev.panamavmm.examples;

import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.io.TempDir;

/** The program of docs/embedding.md runs: it boots, saves, restores, makes a template and two clones. */
class EmbeddingExampleTest {
    @KvmTest
    void theExampleRunsToTheEnd(@TempDir Path dir) throws Exception {
        var out = new ByteArrayOutputStream();
        var stdout = System.out;
        System.setOut(new PrintStream(out, true, StandardCharsets.UTF_8));
        try {
            EmbeddingExample.main(new String[] {dir.resolve("work").toString()});
        } finally {
            System.setOut(stdout);
        }
        String printed = out.toString(StandardCharsets.UTF_8);
        assertTrue(printed.contains("two clones run"), printed);
        assertTrue(printed.matches("(?s)saved [1-9][0-9]* bytes of RAM.*"), printed);
        assertTrue(Files.notExists(dir.resolve("work/template")), "the template was removed");
    }
}
