package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.VmmProcess;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The CLI as a user meets it: exit codes, one-line errors, and what {@code info} reports. */
class MainTest {

    record Result(int code, String out, String err) {}

    static Result run(String... args) {
        var out = new ByteArrayOutputStream();
        var err = new ByteArrayOutputStream();
        int code = Main.run(
                args,
                new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8));
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
        assertEquals(
                "vmm: KVM_GET_API_VERSION failed: /dev/null is not a KVM device (ENOTTY (Inappropriate ioctl for device))\n",
                r.err());
    }

    @Test
    void wrongCommandLinesExitWithTwo() {
        assertEquals(2, run().code());
        var unknown = run("frobnicate");
        assertEquals(2, unknown.code());
        assertEquals("vmm: unknown command 'frobnicate'\n", unknown.err());
        var typo = run("runn");
        assertEquals(2, typo.code());
        assertEquals("vmm: unknown command 'runn'; did you mean 'run'?\n", typo.err());
        var help = run("help", "restroe");
        assertEquals(2, help.code());
        assertEquals("vmm: unknown command 'restroe'; did you mean 'restore'?\n", help.err());
        var badOption = run("info", "--verbose");
        assertEquals(2, badOption.code());
        assertEquals("vmm: unknown option '--verbose'\n", badOption.err());
        var extra = run("run", "extra-arg");
        assertEquals(2, extra.code());
        assertEquals("vmm: unexpected argument 'extra-arg' (vmm run takes no parameters)\n", extra.err());
        var brackets = run("template", "inspect", "/tmp/tpl", "[--json]");
        assertEquals(2, brackets.code());
        assertTrue(brackets.err().startsWith("vmm: unexpected argument '[--json]' (square brackets"), brackets.err());
        assertEquals(2, run("info", "--kvm-device").code());
        var sandbox = run("run", "--sandbox", "maybe");
        assertEquals(2, sandbox.code());
        assertEquals("vmm: sandbox mode must be on, off or log, not maybe\n", sandbox.err());
        var noMode = run("info", "--sandbox");
        assertEquals(2, noMode.code());
        assertEquals("vmm: --sandbox needs a mode: on, off or log\n", noMode.err());
    }

    /** --cgroup moves the process into a cgroup v2 directory, and refuses anything else in one line. */
    @Test
    void cgroupPlacesTheProcessInACgroupV2Directory(@TempDir Path notCgroup) throws Exception {
        var refused = run("help", "--cgroup", notCgroup.toString());
        assertEquals(1, refused.code());
        assertTrue(
                refused.err().startsWith("vmm: --cgroup " + notCgroup + ": not a cgroup v2 directory (it is on "),
                refused.err());
        assertEquals(1, refused.err().lines().count());
        // This project's hosts mount cgroup v1 controllers and the v2 hierarchy beside them.
        var v2 = Files.readAllLines(Path.of("/proc/mounts")).stream()
                .map(l -> l.split(" "))
                .filter(f -> f[2].equals("cgroup2"))
                .map(f -> Path.of(f[1]))
                .findFirst()
                .orElseThrow(() -> new AssertionError("no cgroup2 mount on this host"));
        String ours = Files.readAllLines(Path.of("/proc/self/cgroup")).stream()
                .filter(l -> l.startsWith("0::"))
                .findFirst()
                .orElseThrow()
                .substring(3);
        var dir = Files.createDirectory(
                v2.resolve("panama-cgroup-test-" + ProcessHandle.current().pid()));
        try {
            assertEquals(0, run("help", "--cgroup", dir.toString()).code());
            assertTrue(
                    Files.readAllLines(Path.of("/proc/self/cgroup")).contains("0::/" + dir.getFileName()),
                    "moved into " + dir);
        } finally {
            Files.writeString(
                    v2.resolve(ours.substring(1)).resolve("cgroup.procs"),
                    Long.toString(ProcessHandle.current().pid()));
            Files.delete(dir);
        }
    }

    /** Limits are usage errors too: exit 2, the option named, sizes in units. */
    @Test
    void valuesOutOfLimitsNameTheOptionAndExitWithTwo() {
        var huge = run("run", "--memory", "2T", "--overcommit");
        assertEquals(2, huge.code(), huge.err());
        assertEquals("vmm: --memory 2 TiB is above the maximum of 1 TiB\n", huge.err());
        var cpus = run("run", "--cpus", "1000");
        assertEquals(2, cpus.code(), cpus.err());
        assertEquals("vmm: --cpus 1000 is above the maximum of 254 (8-bit APIC IDs)\n", cpus.err());
        var count = run("clone", "/tmp/none", "--count", "5000");
        assertEquals(2, count.code(), count.err());
        assertEquals("vmm: --count 5000 is above the maximum of 1000\n", count.err());
        var wait = run("ctl", "/tmp/none.sock", "query-status", "--wait", "-1");
        assertEquals(2, wait.code(), wait.err());
        assertEquals("vmm: invalid value for --wait: '-1' is out of range (0 to 3600 seconds)\n", wait.err());
    }

    /** A mistyped PANAMA_VMM_LOG gets one warning (in a process of its own: the level is read once per process). */
    @Test
    void aBadLogSettingWarnsOnce() throws Exception {
        try (var vmm = VmmProcess.start(
                Map.of("PANAMA_VMM_LOG", "verbose,Vm=loud,info"), "info", "--kvm-device", "/nonexistent/kvm")) {
            assertEquals(1, vmm.waitFor(60));
            var warnings = vmm.stderr()
                    .lines()
                    .filter(l -> l.contains("PANAMA_VMM_LOG"))
                    .toList();
            assertEquals(1, warnings.size(), vmm.stderr());
            assertTrue(
                    warnings.getFirst()
                            .matches("\\d{4}-\\d\\d-\\d\\dT[0-9:.]+Z vmm: WARN \\[main\\] Log: PANAMA_VMM_LOG: ignored"
                                    + " 'verbose', 'Vm=loud' \\(.*"),
                    warnings.getFirst());
        }
    }

    /** A file error no command words itself is still one line naming the file (at 52b27eb: a stack trace). */
    @Test
    void aTemplateInAnUncreatableDirectoryIsOneLine() {
        var r = run("template", "create", "/proc/panama-no-such/tpl", "--memory", "32M");
        assertEquals(1, r.code(), r.err());
        assertEquals(1, r.err().lines().count(), r.err());
        assertTrue(r.err().startsWith("vmm: /proc/panama-no-such"), r.err());
        assertTrue(r.err().endsWith(": no such file or directory\n"), r.err());
    }

    /** An error about a file names it once and says why; the JDK's exception text is the path alone. */
    @KvmTest
    void anUnwritableConsoleNamesThePathOnce() {
        var r = run("run", "--memory", "32M", "--console", "file:/nonexistent/x.log");
        assertEquals(1, r.code(), r.err());
        assertEquals("vmm: cannot write the console to /nonexistent/x.log: no such file or directory\n", r.err());
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
