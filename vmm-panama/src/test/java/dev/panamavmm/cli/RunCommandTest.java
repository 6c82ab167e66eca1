package dev.panamavmm.cli;

import static dev.panamavmm.cli.MainTest.run;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.vmm.TinyElfAccess;
import dev.panamavmm.vmm.boot.SyntheticBzImage;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code vmm run}: bad input is one line and a non-zero exit; a guest's exit code becomes the VMM's. */
class RunCommandTest {

    static void assertOneLineError(int code, MainTest.Result r, String start) {
        assertEquals(code, r.code(), r.err());
        assertEquals(1, r.err().lines().count(), r.err());
        assertTrue(r.err().startsWith("vmm: " + start), r.err());
    }

    @Test
    void badOptionsAreOneLineErrors(@TempDir Path dir) throws Exception {
        assertOneLineError(2, run("run", "--memory", "0"), "--memory 0 bytes is below the minimum of 16 MiB");
        assertOneLineError(2, run("run", "--memory", "1T"), "--memory 1 TiB is more than this host's");
        assertOneLineError(2, run("run", "--memory", "lots"), "invalid value for --memory: 'lots' is not a size");
        assertOneLineError(
                2, run("run", "--mem-path", dir.toString(), "--shared"), "--mem-path " + dir + " is a directory");
        assertOneLineError(
                2,
                run("run", "--kernel", dir.resolve("missing").toString()),
                "--kernel " + dir.resolve("missing") + " does not exist");
        assertOneLineError(2, run("run", "--shared"), "--shared needs --mem-path FILE");
        assertOneLineError(2, run("run", "--frobnicate"), "unknown option '--frobnicate'");
        assertOneLineError(2, run("run", "--console", "tcp:1234"), "--console must be stdout, file:PATH or unix:PATH");
        var notElf = Files.writeString(dir.resolve("vmlinuz"), "not a kernel");
        assertOneLineError(
                1,
                run("run", "--kernel", notElf.toString()),
                notElf + " is not a kernel: neither an ELF executable nor a bzImage");
        assertOneLineError(
                2, run("run", "--boot", "uefi"), "--boot: unknown boot protocol 'uefi' (auto, linux64 or pvh)");
    }

    @Test
    void badDisksAreOneLineErrors(@TempDir Path dir) throws Exception {
        var missing = dir.resolve("missing.raw");
        assertOneLineError(2, run("run", "--disk", missing.toString()), "--disk " + missing + " does not exist");
        assertOneLineError(2, run("run", "--disk", dir.toString()), "--disk " + dir + " is a directory");
        var disk = Files.write(dir.resolve("disk.raw"), new byte[4096]);
        assertOneLineError(
                2,
                run("run", "--disk", disk + ",fast"),
                "--disk " + disk + ",fast: unknown disk option \"fast\" (readonly, id=ID or cache=writeback|none)");
        assertOneLineError(
                2,
                run("run", "--disk", disk + ",id=" + "x".repeat(21)),
                "--disk " + disk + ",id=" + "x".repeat(21) + ": a disk id has at most 20 characters");
        var tiny = Files.write(dir.resolve("tiny.raw"), new byte[100]);
        assertOneLineError(
                2, run("run", "--disk", tiny.toString()), "--disk " + tiny + " is smaller than one 512-byte sector");
    }

    @Test
    void badKernelsInitrdsAndCommandLinesAreOneLineErrors(@TempDir Path dir) throws Exception {
        byte[] bz = SyntheticBzImage.standard().build();
        var truncated = Files.write(dir.resolve("truncated"), Arrays.copyOf(bz, bz.length - 1000));
        assertOneLineError(1, run("run", "--kernel", truncated.toString()), "truncated bzImage: its header declares");
        var kernel = Files.write(dir.resolve("vmlinuz"), bz);
        assertOneLineError(
                1,
                run("run", "--kernel", kernel.toString(), "--cmdline", "x".repeat(256)),
                "kernel command line is 256 bytes; this kernel accepts at most 255");
        assertOneLineError(
                1,
                run("run", "--cmdline", "x".repeat(2048)),
                "kernel command line is 2048 bytes; this kernel accepts at most 2047");
        var initrd = Files.write(dir.resolve("initrd"), new byte[17 << 20]);
        assertOneLineError(
                1,
                run("run", "--kernel", kernel.toString(), "--memory", "16M", "--initrd", initrd.toString()),
                "initrd " + initrd + " (" + (17 << 20) + " bytes) is larger than guest RAM");
    }

    @KvmTest
    void theGuestsExitCodeIsTheVmmsAndItsConsoleGoesWhereAsked(@TempDir Path dir) throws Exception {
        var kernel = Files.write(dir.resolve("tiny.elf"), TinyElfAccess.printHiAndExit(42));
        var console = dir.resolve("console.txt");
        var r = run("run", "--kernel", kernel.toString(), "--memory", "32M", "--console", "file:" + console);
        assertEquals(42, r.code(), r.err());
        assertEquals("", r.err());
        assertEquals("Hi\n", Files.readString(console));
    }

    @KvmTest
    void theTestGuestRunsWithDisksAndRngAndTheVmmEndsCleanly(@TempDir Path dir) throws Exception {
        var disk = Files.write(dir.resolve("disk.raw"), new byte[1 << 20]);
        var ro = Files.write(dir.resolve("ro.raw"), new byte[4096]);
        var console = dir.resolve("console.txt");
        var r = run(
                "run",
                "--disk",
                disk + ",id=data",
                "--disk",
                ro + ",readonly",
                "--rng",
                "--console",
                "file:" + console,
                "--cmdline",
                "console=ttyS0 testguest.hb=100 testguest.exit_after=2 testguest.exit_code=42");
        assertEquals(42, r.code(), r.err());
        assertEquals("", r.err());
        assertTrue(Files.readString(console).contains("hb 0 2"), Files.readString(console));
    }

    @KvmTest
    void anUnwritableApiSocketIsOneLine(@TempDir Path dir) throws Exception {
        var kernel = Files.write(dir.resolve("tiny.elf"), TinyElfAccess.printHiAndExit(0));
        var r = run(
                "run",
                "--kernel",
                kernel.toString(),
                "--memory",
                "32M",
                "--console",
                "file:" + dir.resolve("c"),
                "--api-socket",
                dir.resolve("no/such/dir/api.sock").toString());
        assertOneLineError(
                1, r, "cannot create API socket " + dir.resolve("no/such/dir/api.sock") + ": no such directory");
    }
}
