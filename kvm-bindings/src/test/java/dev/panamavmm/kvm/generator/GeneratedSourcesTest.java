package dev.panamavmm.kvm.generator;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.TreeSet;
import org.junit.jupiter.api.Test;

/** The committed bindings are exactly what the generator makes from bindings.decl and this system's headers. */
class GeneratedSourcesTest {

    @Test
    void committedSourcesMatchARegeneration() throws Exception {
        var expected = Generator.generate(Path.of("bindings.decl"));
        var dir = Generator.packageDir(Path.of("src/main/java"));

        var committed = new TreeSet<String>();
        try (var files = Files.list(dir)) {
            for (var p : files.toList()) {
                if (p.toString().endsWith(".java") && Generator.isGenerated(p))
                    committed.add(p.getFileName().toString());
            }
        }
        assertEquals(
                new TreeSet<>(expected.keySet()),
                committed,
                "generated files differ from the declarations: run kvm-bindings/regenerate");

        for (var e : expected.entrySet()) {
            String actual = Files.readString(dir.resolve(e.getKey()), StandardCharsets.UTF_8);
            if (!actual.equals(e.getValue())) {
                fail(e.getKey() + " differs from a regeneration at " + firstDifference(e.getValue(), actual)
                        + ": run kvm-bindings/regenerate (and never edit generated files)");
            }
        }
    }

    private static String firstDifference(String expected, String actual) {
        var a = expected.lines().toList();
        var b = actual.lines().toList();
        for (int i = 0; i < Math.max(a.size(), b.size()); i++) {
            String x = i < a.size() ? a.get(i) : "<end>";
            String y = i < b.size() ? b.get(i) : "<end>";
            if (!x.equals(y)) return "line " + (i + 1) + ": expected [" + x.strip() + "] but found [" + y.strip() + "]";
        }
        return "line endings";
    }
}
