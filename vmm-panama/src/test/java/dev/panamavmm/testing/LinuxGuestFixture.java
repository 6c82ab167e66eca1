package dev.panamavmm.testing;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;

/**
 * A real Linux kernel (Debian's {@code linux-image-cloud-amd64}) and a busybox initramfs, fetched
 * and built into a cache by the project's scripts ({@code scripts/fetch-debian-kernel},
 * {@code scripts/build-busybox-initramfs}: the same commands docs/linux-guests.md gives). When a
 * script cannot run here (no apt, no network), the calling test is skipped with the script's own
 * message, printed to the test output too.
 */
public final class LinuxGuestFixture {
    private LinuxGuestFixture() {}

    /** The kernel files: the bzImage, the ELF vmlinux inside it, the kernel's config and its virtio modules. */
    public record Kernel(Path vmlinuz, Path vmlinux, Path config, Path modules) {}

    public static Kernel debianKernel() {
        var dir = Path.of(run("fetch-debian-kernel"));
        return new Kernel(
                dir.resolve("vmlinuz"), dir.resolve("vmlinux"), dir.resolve("config"), dir.resolve("modules"));
    }

    public static Path busyboxInitramfs() {
        return Path.of(run("build-busybox-initramfs"));
    }

    /** The busybox initramfs with {@code kernel}'s virtio modules: its /init reads and writes /dev/vda. */
    public static Path busyboxInitramfsWithDisks(Kernel kernel) {
        return Path.of(run("build-busybox-initramfs", kernel.modules().toString()));
    }

    /** Runs a script from the repository's scripts/ and returns its last output line; skips the test if it fails. */
    private static String run(String script, String... args) {
        Path path = repositoryRoot().resolve("scripts").resolve(script);
        try {
            var command = new ArrayList<String>();
            command.add(path.toString());
            command.addAll(List.of(args));
            var process = new ProcessBuilder(command)
                    .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
                    .start();
            process.getOutputStream().close();
            boolean done = process.waitFor(10, TimeUnit.MINUTES);
            String out = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8).strip();
            String err = new String(process.getErrorStream().readAllBytes(), StandardCharsets.UTF_8).strip();
            if (!done || process.exitValue() != 0 || out.isEmpty()) {
                skip(script + " failed: " + (done ? err : "timed out after 10 minutes"));
            }
            return out.lines().reduce((a, b) -> b).orElseThrow();
        } catch (IOException e) {
            skip("cannot run " + path + ": " + e.getMessage());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            skip("interrupted");
        }
        throw new AssertionError("unreachable");
    }

    private static void skip(String why) {
        System.out.println("SKIPPED (no real Linux kernel here): " + why);
        Assumptions.abort(why);
    }

    /** The directory holding scripts/ and the Maven reactor's pom.xml (tests run in a module directory). */
    static Path repositoryRoot() {
        for (Path dir = Path.of("").toAbsolutePath(); dir != null; dir = dir.getParent()) {
            if (Files.isRegularFile(dir.resolve("scripts/fetch-debian-kernel"))) return dir;
        }
        throw new IllegalStateException(
                "no scripts/fetch-debian-kernel above " + Path.of("").toAbsolutePath());
    }
}
