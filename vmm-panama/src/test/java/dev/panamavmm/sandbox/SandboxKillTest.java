package dev.panamavmm.sandbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.sys.LibC;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * A thread of each kind that makes a call its filter forbids ends its process (a child JVM this
 * test starts, sandbox on) with SIGSYS, and the sandbox's watcher names the thread and the call.
 */
class SandboxKillTest {
    @ParameterizedTest
    @CsvSource({
        "VCPU, vcpu-0, ioctl (16)", // KVM_CREATE_VM
        "DEVICE, virtio-blk0, ioctl (16)", // KVM_RUN
        "API, api-client, clone (56)", // a process
        "MAIN, main-test, ioctl (16)" // a request the VMM never makes
    })
    void aForbiddenCallEndsTheProcessWithAMessage(String kind, String thread, String call, @TempDir Path dir)
            throws Exception {
        var errFile = dir.resolve("stderr");
        var java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        var process = new ProcessBuilder(List.of(
                        java,
                        "--enable-native-access=ALL-UNNAMED",
                        "-Dpanama.vmm.sandbox=on",
                        "-Dslf4j.provider=dev.panamavmm.log.VmmLogProvider",
                        "-cp",
                        System.getProperty("java.class.path"),
                        Child.class.getName(),
                        kind,
                        thread))
                .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")))
                // A file, not a pipe: the JDK drains and closes a child's pipes when it exits, and the
                // watcher writes after that.
                .redirectError(errFile.toFile())
                .start();
        var out = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(process.waitFor(60, TimeUnit.SECONDS));
        String expected = "vmm: the sandbox stopped thread " + thread + " at system call " + call;
        String err = Files.readString(errFile);
        for (long end = System.nanoTime() + 10_000_000_000L; !err.contains(expected) && System.nanoTime() < end; ) {
            Thread.sleep(50);
            err = Files.readString(errFile);
        }
        assertEquals(128 + 31, process.exitValue(), "killed by SIGSYS\nout: " + out + "\nerr: " + err);
        assertTrue(out.contains("filtered\n") && !out.contains("survived"), out);
        assertTrue(err.contains(expected), "stderr: " + err);
    }

    /** The child: a thread named as a VMM thread of {@code kind} enters it, then makes a forbidden call. */
    public static final class Child {
        public static void main(String[] args) throws Exception {
            var kind = ThreadKind.valueOf(args[0]);
            var t = Thread.ofPlatform().name(args[1]).start(() -> {
                Sandbox.enter(kind);
                System.out.println("filtered");
                System.out.flush();
                switch (kind) {
                    case VCPU -> LibC.ioctlOrErrno(-1, Ioctls.KVM_CREATE_VM, 0);
                    case DEVICE -> LibC.ioctlOrErrno(-1, Ioctls.KVM_RUN, 0);
                    case API -> {
                        try {
                            new ProcessBuilder("true").start().waitFor();
                        } catch (IOException | InterruptedException e) {
                            System.out.println("failed instead: " + e);
                        }
                    }
                    case MAIN -> LibC.ioctlOrErrno(-1, 0xdead, 0);
                }
                System.out.println("survived");
            });
            t.join();
            System.exit(0);
        }
    }
}
