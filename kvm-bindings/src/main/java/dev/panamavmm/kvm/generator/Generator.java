package dev.panamavmm.kvm.generator;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.stream.Stream;

/**
 * Generates the FFM bindings from {@code bindings.decl}: measures the declarations with the C
 * compiler against the system headers ({@link CProbe}), then writes one Java source per struct,
 * the constants classes and {@code Ioctls} ({@link JavaEmitter}).
 *
 * <pre>java -cp kvm-bindings/target/classes dev.panamavmm.kvm.generator.Generator bindings.decl OUTPUT_DIR</pre>
 * (the script {@code kvm-bindings/regenerate} does this).
 */
public final class Generator {
    private Generator() {}

    /** The sources the declarations produce on this system: file name -> text. */
    public static Map<String, String> generate(Path declarations) throws IOException, InterruptedException {
        var decls = Declarations.read(declarations);
        var measurements = CProbe.measure(decls);
        return new JavaEmitter(measurements).emit(decls);
    }

    /** The package directory the generated sources live in, under a source root. */
    public static Path packageDir(Path sourceRoot) {
        return sourceRoot.resolve(JavaEmitter.PACKAGE.replace('.', '/'));
    }

    /** Whether a file was written by this generator (its first line says so). */
    public static boolean isGenerated(Path file) throws IOException {
        try (var lines = Files.lines(file, StandardCharsets.UTF_8)) {
            return lines.findFirst()
                    .orElse("")
                    .equals(JavaEmitter.HEADER.lines().findFirst().orElseThrow());
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: Generator DECLARATIONS SOURCE_ROOT");
            System.exit(2);
        }
        try {
            var files = generate(Path.of(args[0]));
            var dir = packageDir(Path.of(args[1]));
            Files.createDirectories(dir);
            try (Stream<Path> existing = Files.list(dir)) {
                for (var p : existing.toList()) {
                    if (p.toString().endsWith(".java")
                            && isGenerated(p)
                            && !files.containsKey(p.getFileName().toString())) {
                        Files.delete(p);
                    }
                }
            }
            for (var e : files.entrySet()) {
                Files.writeString(dir.resolve(e.getKey()), e.getValue(), StandardCharsets.UTF_8);
            }
            System.out.println("generated " + files.size() + " sources in " + dir);
        } catch (IllegalArgumentException | IllegalStateException | IOException e) {
            System.err.println("bindings generator: " + e.getMessage());
            System.exit(1);
        }
    }
}
