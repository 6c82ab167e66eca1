package dev.panamavmm.cli;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.boot.BootProtocol;
import dev.panamavmm.vmm.boot.KernelImage;
import dev.panamavmm.vmm.boot.MpTable;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.Sizes;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;

/** The options that describe a guest to boot, shared by {@code run} and {@code template create}. */
final class GuestOptions {
    static final String DEFAULT_CMDLINE = "console=ttyS0";

    long memory;
    int cpus;
    Path kernel;
    String boot;
    Path initrd;
    String cmdline;
    boolean overcommit;

    /** Whether any of these options differs from its default (a command that boots nothing refuses them). */
    boolean anyGiven() {
        return memory != Sizes.parse("256M")
                || cpus != 1
                || kernel != null
                || !"auto".equals(boot)
                || initrd != null
                || cmdline != null
                || overcommit;
    }

    /** Declares these options on a command. */
    void declare(Cli.Spec spec) {
        spec.option("--memory", "SIZE", "256M", "guest RAM, e.g. 256M, 8G", v -> memory = Sizes.parse(v))
                .option("--cpus", "N", "1", "vCPUs", v -> cpus = Cli.integer(v))
                .option(
                        "--kernel",
                        "FILE",
                        null,
                        "kernel to boot: an ELF vmlinux or a bzImage (default: the embedded test guest)",
                        v -> kernel = Path.of(v))
                .option(
                        "--boot",
                        "PROTOCOL",
                        "auto",
                        "kernel entry: auto (PVH when the ELF kernel has a PVH note, else the 64-bit entry), linux64 or pvh",
                        v -> boot = v)
                .option("--initrd", "FILE", null, "initial ramdisk", v -> initrd = Path.of(v))
                .option(
                        "--cmdline",
                        "TEXT",
                        null,
                        "kernel command line (default: \"" + DEFAULT_CMDLINE + "\")",
                        v -> cmdline = v)
                .flag("--overcommit", "allow more guest RAM than the host has", () -> overcommit = true);
    }

    /** Checks the options and reads the images: every user mistake becomes one line here, before KVM is touched. */
    MachineConfig config(Backing backing) {
        if (cpus < 1) throw new UsageException("--cpus must be at least 1");
        if (cpus > MpTable.MAX_CPUS)
            throw new UsageException(
                    "--cpus " + cpus + " is above the maximum of " + MpTable.MAX_CPUS + " (8-bit APIC IDs)");
        if (memory > GuestMemory.MAX_SIZE) {
            throw new UsageException("--memory " + Sizes.format(memory) + " is above the maximum of "
                    + Sizes.format(GuestMemory.MAX_SIZE));
        }
        if (memory < GuestMemory.MIN_SIZE) {
            throw new UsageException("--memory " + Sizes.format(memory) + " is below the minimum of 16 MiB");
        }
        if (memory % 4096 != 0) throw new UsageException("--memory must be a multiple of 4 KiB");
        long hostRam = HostMemory.total();
        if (!overcommit && hostRam > 0 && memory > hostRam) {
            throw new UsageException("--memory " + Sizes.format(memory) + " is more than this host's "
                    + Sizes.format(hostRam / (1 << 20) << 20) + " of RAM (add --overcommit to allow it)");
        }
        byte[] image = kernel != null ? readFile(kernel, "kernel") : embeddedGuest();
        String name = kernel != null ? kernel.toString() : "embedded test guest";
        BootProtocol protocol;
        try {
            protocol = BootProtocol.fromLabel(boot);
        } catch (IllegalArgumentException e) {
            throw new UsageException("--boot: " + e.getMessage());
        }
        var parsed = KernelImage.parse(image, name); // a file that is not a kernel fails here, before KVM is touched
        String line = cmdline != null ? cmdline : DEFAULT_CMDLINE;
        if (line.length() > parsed.commandLineMax()) {
            throw new UserException("kernel command line is " + line.length() + " bytes; this kernel accepts at most "
                    + parsed.commandLineMax());
        }
        byte[] initrdBytes = initrd != null ? readFile(initrd, "initrd") : null;
        if (initrdBytes != null && initrdBytes.length >= memory) {
            throw new UserException(
                    "initrd " + initrd + " (" + initrdBytes.length + " bytes) is larger than guest RAM");
        }
        return new MachineConfig(memory, cpus, backing, name, image, initrdBytes, line, protocol);
    }

    private static byte[] readFile(Path path, String what) {
        try {
            if (Files.isDirectory(path)) throw new UsageException("--" + what + " " + path + " is a directory");
            return Files.readAllBytes(path);
        } catch (NoSuchFileException e) {
            throw new UsageException("--" + what + " " + path + " does not exist");
        } catch (IOException e) {
            throw new UserException("cannot read " + what + " " + path + ": " + IoErrors.reason(e));
        }
    }

    static byte[] embeddedGuest() {
        // The guest module reads its own resource: in a named module no other module sees it.
        try (InputStream in = TestGuest.open()) {
            return in.readAllBytes();
        } catch (IllegalStateException e) {
            throw new UserException("the embedded test guest is missing from this build (rebuild with ./mvnw package)");
        } catch (IOException e) {
            throw new UserException("cannot read the embedded test guest: " + e.getMessage());
        }
    }
}
