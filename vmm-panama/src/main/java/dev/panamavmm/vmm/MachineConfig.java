package dev.panamavmm.vmm;

import dev.panamavmm.vmm.boot.BootProtocol;
import dev.panamavmm.vmm.memory.Backing;

/**
 * What to build: RAM size and backing, vCPU count, the kernel (an ELF image's or a bzImage's
 * bytes and a name for messages), an optional initrd (null for none), the kernel command line and
 * which of the kernel's entries to boot.
 */
public record MachineConfig(
        long memoryBytes,
        int cpus,
        Backing backing,
        String kernelName,
        byte[] kernel,
        byte[] initrd,
        String cmdline,
        BootProtocol boot) {
    public MachineConfig {
        if (cpus < 1) throw new IllegalArgumentException("at least one vCPU");
    }

    /** A machine booted through the kernel's default entry ({@link BootProtocol#AUTO}). */
    public MachineConfig(
            long memoryBytes,
            int cpus,
            Backing backing,
            String kernelName,
            byte[] kernel,
            byte[] initrd,
            String cmdline) {
        this(memoryBytes, cpus, backing, kernelName, kernel, initrd, cmdline, BootProtocol.AUTO);
    }

    /** The same machine with its RAM in {@code other} (a clone's private view, a template's shared file). */
    public MachineConfig withBacking(Backing other) {
        return new MachineConfig(memoryBytes, cpus, other, kernelName, kernel, initrd, cmdline, boot);
    }
}
