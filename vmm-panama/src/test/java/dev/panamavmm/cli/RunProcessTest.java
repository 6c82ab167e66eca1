package dev.panamavmm.cli;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.VmmProcess;
import dev.panamavmm.vmm.TinyElfAccess;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** {@code vmm run} as its own process: signals end the VM cleanly. */
class RunProcessTest {

    @KvmTest
    void ctrlCEndsTheVmWithExitCodeZero(@TempDir Path dir) throws Exception {
        var kernel = Files.write(dir.resolve("spin.elf"), TinyElfAccess.countForever());
        var api = dir.resolve("api.sock");
        try (var vmm = VmmProcess.start("run", "--kernel", kernel.toString(), "--memory", "32M", "--api-socket", api.toString())) {
            long deadline = System.nanoTime() + 20_000_000_000L;
            while (!Files.exists(api) && System.nanoTime() < deadline) Thread.sleep(20);
            assertTrue(Files.exists(api), "the API socket appears: " + vmm.stderr());
            vmm.signal("INT");
            assertEquals(0, vmm.waitFor(20));
            assertEquals("vmm: stopped by signal\n", vmm.stderr());
            assertTrue(Files.notExists(api), "the API socket is removed");
        }
    }
}
