package dev.panamavmm.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.HostFlavour;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.LinuxGuestFixture;
import dev.panamavmm.testing.VmmProcess;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.io.TempDir;

/**
 * Debian's cloud kernel booted by {@code vmm run} through each of its entries. On this project's
 * PVM hosts a Linux kernel's CPL0 code is emulated and stops at an instruction the emulator
 * lacks, so the test checks the early console (banner, the e820 map the VMM gave, the command
 * line, the CPUs from the MADT) and then that the VMM ends with its one-line emulation-failure
 * message instead of hanging. With VMX or SVM, {@link #busyboxInitRunsOnHardwareVirtualisation}
 * boots to the initramfs's /init.
 */
class LinuxBootTest {
    /** The bzImage's decompressor alone runs for minutes under PVM's instruction emulator. */
    static final long BANNER_SECONDS = 600, END_SECONDS = 900;

    /** {@code cmdline} as given; {@code seen} as the kernel prints it (the VMM appends its virtio-mmio devices). */
    record Boot(String name, List<String> args, String cmdline, String seen) {
        Boot(String name, List<String> args, String cmdline) {
            this(name, args, cmdline, cmdline);
        }
    }

    @KvmTest
    void debianKernelReachesItsConsoleThroughPvhThe64BitEntryAndAsBzImage(@TempDir Path dir) throws Exception {
        var kernel = LinuxGuestFixture.debianKernel();
        var disk = dir.resolve("disk.raw");
        try (var f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        String base = "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr";
        var boots = List.of(
                // With a disk and an entropy device: Linux learns of them from its command line.
                new Boot(
                        "pvh",
                        List.of(
                                "--kernel",
                                kernel.vmlinux().toString(),
                                "--boot",
                                "pvh",
                                "--disk",
                                disk.toString(),
                                "--rng"),
                        base + " panama.entry=pvh",
                        base
                                + " panama.entry=pvh virtio_mmio.device=4K@0xc0000000:5 virtio_mmio.device=4K@0xc0001000:6"),
                new Boot(
                        "linux64",
                        List.of("--kernel", kernel.vmlinux().toString(), "--boot", "linux64"),
                        base + " panama.entry=linux64"),
                new Boot("bzImage", List.of("--kernel", kernel.vmlinuz().toString()), base + " panama.entry=bzimage"));
        // All three at once: each is one busy vCPU thread, and the bzImage alone takes minutes here.
        var processes = new ArrayList<VmmProcess>();
        try {
            for (var boot : boots) {
                var args =
                        new ArrayList<>(List.of("run", "--memory", "256M", "--cpus", "2", "--cmdline", boot.cmdline()));
                args.addAll(boot.args());
                processes.add(VmmProcess.start(args.toArray(String[]::new)));
            }
            boolean pvm = HostFlavour.detect() == HostFlavour.PVM;
            for (int i = 0; i < boots.size(); i++) {
                var boot = boots.get(i);
                var vmm = processes.get(i);
                int banner = vmm.awaitLine(".*Linux version \\d+\\.\\d+.*", BANNER_SECONDS);
                vmm.awaitLine(".*Command line: " + Pattern.quote(boot.seen()), banner, 60);
                int map = vmm.awaitLine(".*BIOS-provided physical RAM map:", banner, 60);
                assertLine(vmm, map + 1, "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable");
                assertLine(vmm, map + 2, "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved");
                assertLine(vmm, map + 3, "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable");
                vmm.awaitLine(".*Hypervisor detected: KVM", banner, 60);
                vmm.awaitLine(".*kvm-clock: Using msrs 4b564d01 and 4b564d00", banner, 60);
                vmm.awaitLine(".*ACPI: Using ACPI \\(MADT\\) for SMP configuration information", banner, 120);
                vmm.awaitLine(".*IOAPIC\\[0\\]: apic_id 2, version 17, address 0xfec00000, GSI 0-23", banner, 120);
                vmm.awaitLine(".*smpboot: Allowing 2 CPUs, 0 hotplug CPUs", banner, 120);
                if (pvm) {
                    int code = vmm.waitFor(END_SECONDS);
                    String err = vmm.stderr();
                    assertEquals(1, code, boot.name() + ": " + err);
                    var last = err.lines()
                            .filter(l -> l.startsWith("vmm: "))
                            .reduce((a, b) -> b)
                            .orElse("");
                    assertTrue(
                            last.matches(
                                    "vmm: KVM internal error on vCPU 0: emulation failure \\(suberror \\d+\\) at RIP 0x[0-9a-f]+, instruction bytes( [0-9a-f]{2})+ \\(PVM host: unmodified kernels stop here, see docs/linux-guests.md\\)"),
                            boot.name() + ": " + err);
                }
            }
        } finally {
            for (var p : processes) p.close();
        }
    }

    /**
     * On a host with VMX or SVM: Debian's kernel boots to a busybox /init, which loads the virtio
     * modules, finds the disk (described in the DSDT: this kernel has no virtio-mmio command-line
     * devices), reads its first sector and writes its second. Never run on this project's PVM hosts.
     */
    @KvmTest
    void busyboxInitRunsOnHardwareVirtualisation(@TempDir Path dir) throws Exception {
        Assumptions.assumeTrue(
                HostFlavour.detect() != HostFlavour.PVM,
                "not applicable on PVM: an unmodified kernel's CPL0 code is emulated and stops before /init (docs/linux-guests.md)");
        var kernel = LinuxGuestFixture.debianKernel();
        var initramfs = LinuxGuestFixture.busyboxInitramfsWithDisks(kernel);
        var disk = dir.resolve("disk.raw");
        var content = new byte[1 << 20];
        byte[] magic = "PANAMA-DISK-MAGI".getBytes(StandardCharsets.US_ASCII);
        System.arraycopy(magic, 0, content, 0, magic.length);
        Files.write(disk, content);
        try (var vmm = VmmProcess.start(
                "run",
                "--memory",
                "512M",
                "--cpus",
                "2",
                "--kernel",
                kernel.vmlinux().toString(),
                "--initrd",
                initramfs.toString(),
                "--disk",
                disk.toString(),
                "--cmdline",
                "console=ttyS0 reboot=k panic=-1 panama.poweroff")) {
            vmm.awaitLine("PANAMA-VMM-INIT-OK \\S+ 2", 120);
            vmm.awaitLine("PANAMA-VMM-DISK 2048 PANAMA-DISK-MAGI", 60);
            vmm.waitFor(60);
        }
        String second = new String(Files.readAllBytes(disk), 512, 21, StandardCharsets.US_ASCII);
        assertEquals("PANAMA-VMM-WROTE-DISK", second, "the guest's write reached the disk file");
    }

    /** Waits for a line ending with {@code expected} and checks that it is console line {@code index}. */
    private static void assertLine(VmmProcess vmm, int index, String expected) throws InterruptedException {
        int at = vmm.awaitLine(".*" + Pattern.quote(expected), index, 60);
        assertEquals(
                index,
                at,
                "'" + expected + "' should be line " + index + ", not " + at + ": "
                        + vmm.lines().subList(index, at + 1));
    }
}
