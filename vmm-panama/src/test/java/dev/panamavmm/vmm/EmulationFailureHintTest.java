package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.HostFlavour;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.VmmProcess;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.io.TempDir;

/**
 * The line a KVM emulation failure ends a VM with. On a PVM host an unmodified Linux kernel ends
 * so (its slab allocator's {@code lock cmpxchg16b}, which KVM's emulator does not implement); at
 * 52b27eb the line named neither PVM nor where to read, and read as a VMM crash.
 */
class EmulationFailureHintTest {
    /** {@code lock cmpxchg16b [0x200000]} at CPL0: emulated on PVM, where the emulator gives up on it. */
    private static final byte[] LOCK_CMPXCHG16B = {
        (byte) 0xf0, 0x48, 0x0f, (byte) 0xc7, 0x0c, 0x25, 0x00, 0x00, 0x20, 0x00
    };

    @KvmTest
    void anEmulationFailureOnPvmSaysWhyAndWhereToRead(@TempDir Path dir) throws Exception {
        var kernel = Files.write(
                dir.resolve("cmpxchg16b.elf"), TinyElf.of(VmTest.concat(LOCK_CMPXCHG16B, VmTest.exitWith(7)), false));
        try (var vmm = VmmProcess.start("run", "--memory", "32M", "--kernel", kernel.toString())) {
            int code = vmm.waitFor(120);
            if (Kvm.hostFlavour() == HostFlavour.PVM) {
                assertEquals(1, code, vmm.stderr());
                var line = vmm.stderr()
                        .lines()
                        .filter(l -> l.contains("KVM internal error"))
                        .findFirst()
                        .orElseThrow(() -> new AssertionError("no internal-error line; stderr:\n" + vmm.stderr()));
                assertTrue(
                        line.matches(
                                "vmm: KVM internal error on vCPU 0: emulation failure \\(suberror 1\\) at RIP 0x100000,"
                                        + " instruction bytes f0 48 0f c7 0c 25 00 00 20 00.* \\(PVM host: unmodified kernels stop here,"
                                        + " see docs/linux-guests.md\\)"),
                        line);
            } else {
                // VMX and SVM run it natively: the guest goes on to its exit, and there is nothing to explain.
                assertEquals(7, code, vmm.stderr());
                assertFalse(vmm.stderr().contains("PVM host"), vmm.stderr());
            }
        }
    }
}
