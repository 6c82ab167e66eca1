package dev.panamavmm.cli;

import dev.panamavmm.kvm.testing.KvmTest;
import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The CLI as a user meets it: exit codes, one-line errors, and what {@code info} reports. */
class MainTest {

    record Result(int code, String out, String err) {}

    static Result run(String... args) {
        var out = new ByteArrayOutputStream();
        var err = new ByteArrayOutputStream();
        int code = Main.run(args, new PrintStream(out, true, StandardCharsets.UTF_8), new PrintStream(err, true, StandardCharsets.UTF_8));
        return new Result(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    @KvmTest
    void infoReportsTheFactsOfThisHostsKvm() {
        var r = run("info");
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().contains("API version     12"), r.out());
        assertTrue(r.out().matches("(?s).*host flavour    (VMX|SVM|PVM).*"), r.out());
        assertTrue(r.out().matches("(?s).*vCPUs           \\d+ recommended, \\d+ max.*"), r.out());
        assertTrue(r.out().matches("(?s).*memslots        \\d+.*"), r.out());
        assertTrue(r.out().contains("present  KVM_CAP_IRQCHIP"), r.out());
        assertTrue(r.out().contains("KVM_CAP_TSC_CONTROL"), r.out());
        assertEquals("", r.err());
    }

    @Test
    void aMissingKvmDeviceIsOneLineAndExitCodeOne() {
        var r = run("info", "--kvm-device", "/nonexistent/kvm");
        assertEquals(1, r.code());
        assertEquals("", r.out());
        assertEquals(1, r.err().lines().count(), r.err());
        assertTrue(r.err().startsWith("vmm: open /nonexistent/kvm failed: it does not exist"), r.err());
    }

    @Test
    void aDeviceThatIsNotKvmIsOneLine() {
        var r = run("info", "--kvm-device", "/dev/null");
        assertEquals(1, r.code());
        assertEquals("vmm: KVM_GET_API_VERSION failed: /dev/null is not a KVM device (ENOTTY (Inappropriate ioctl for device))\n", r.err());
    }

    @Test
    void wrongCommandLinesExitWithTwo() {
        assertEquals(2, run().code());
        var unknown = run("frobnicate");
        assertEquals(2, unknown.code());
        assertEquals("vmm: Unmatched argument at index 0: 'frobnicate'\n", unknown.err());
        var badOption = run("info", "--verbose");
        assertEquals(2, badOption.code());
        assertEquals("vmm: Unknown option: '--verbose'\n", badOption.err());
        assertEquals(2, run("info", "--kvm-device").code());
    }

    @Test
    void helpAndVersionSucceed() {
        assertEquals(0, run("help").code());
        assertEquals(0, run("run", "--help").code());
        var v = run("--version");
        assertEquals(0, v.code());
        assertTrue(v.out().startsWith("panama-vmm "), v.out());
    }
}
