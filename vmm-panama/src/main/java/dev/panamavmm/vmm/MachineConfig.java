package dev.panamavmm.vmm;

import dev.panamavmm.vmm.memory.Backing;

/**
 * What to build: RAM size and backing, vCPU count, the kernel (an ELF image's bytes and a name for
 * messages), an optional initrd (null for none) and the kernel command line.
 */
public record MachineConfig(long memoryBytes, int cpus, Backing backing, String kernelName, byte[] kernel,
                            byte[] initrd, String cmdline) {
    public MachineConfig {
        if (cpus < 1) throw new IllegalArgumentException("at least one vCPU");
    }
}
