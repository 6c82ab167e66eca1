package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import java.io.File;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import java.util.zip.ZipFile;
import org.junit.jupiter.api.Test;

/**
 * The VMM as an embedder runs it: its modules on the module path, native access granted to the
 * bindings' module alone ({@code dev.panamavmm.kvm}) and denied to every other
 * ({@code --illegal-native-access=deny}), so a restricted FFM call from any other module fails the
 * run instead of printing a warning. The tests themselves run on the class path.
 */
class ModulePathTest {
    @Test
    void infoRunsOnTheModulePath() throws Exception {
        var result = runOnModulePath("info");
        assertEquals(0, result.exit(), result.output());
        assertTrue(result.output().contains("capabilities the VMM relies on"), result.output());
        assertFalse(result.output().contains("WARNING"), result.output());
    }

    /** Booting the test guest takes every restricted call of the main path (mmap, ioctl, KVM_RUN's shared page). */
    @KvmTest
    void theTestGuestBootsWithNativeAccessForTheBindingsOnly() throws Exception {
        var result = runOnModulePath(
                "run", "--memory", "32M", "--cmdline", "console=ttyS0 testguest.hb=50 testguest.exit_after=2");
        assertEquals(0, result.exit(), result.output());
        assertTrue(result.output().contains("hb 0 2"), result.output());
        assertFalse(result.output().contains("WARNING"), result.output());
    }

    private record Result(int exit, String output) {}

    private static Result runOnModulePath(String... args) throws IOException, InterruptedException {
        var command = new ArrayList<>(List.of(
                ProcessHandle.current().info().command().orElse("java"),
                "--module-path",
                modulePath(),
                "--enable-native-access=dev.panamavmm.kvm",
                "--illegal-native-access=deny",
                "-XX:+UseSerialGC",
                "-m",
                "dev.panamavmm.vmm/dev.panamavmm.cli.Main"));
        command.addAll(Arrays.asList(args));
        // Output goes to a file, not a pipe: a child that hangs (or a sandbox watcher that keeps the
        // pipe open) must fail this test after the timeout instead of blocking a read forever.
        Path log = Files.createTempFile("module-path-run", ".log");
        var process = new ProcessBuilder(command)
                .redirectErrorStream(true)
                .redirectOutput(log.toFile())
                .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
                .start();
        try {
            boolean ended = process.waitFor(60, TimeUnit.SECONDS);
            String output = Files.readString(log, StandardCharsets.UTF_8);
            assertTrue(ended, "the run did not end within 60 s: " + output);
            return new Result(process.exitValue(), output);
        } finally {
            process.destroyForcibly();
            Files.deleteIfExists(log);
        }
    }

    /** The entries of this test's class path that are modules: the VMM's own and the libraries they read. */
    private static String modulePath() {
        String path = Arrays.stream(System.getProperty("java.class.path").split(File.pathSeparator))
                .map(Path::of)
                .filter(ModulePathTest::isModule)
                .map(Path::toString)
                .collect(Collectors.joining(File.pathSeparator));
        assertTrue(path.contains("kvm-bindings"), "the bindings' module is on the class path: " + path);
        return path;
    }

    private static boolean isModule(Path entry) {
        if (Files.isDirectory(entry)) return Files.exists(entry.resolve("module-info.class"));
        if (!entry.toString().endsWith(".jar") || !Files.isRegularFile(entry)) return false;
        try (var jar = new ZipFile(entry.toFile())) {
            return jar.stream().anyMatch(e -> e.getName().endsWith("module-info.class"));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
