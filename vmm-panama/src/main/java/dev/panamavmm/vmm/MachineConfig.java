package dev.panamavmm.vmm;

import dev.panamavmm.vmm.boot.BootProtocol;
import dev.panamavmm.vmm.memory.Backing;
import java.util.List;

/**
 * What to build: RAM size and backing, vCPU count, the kernel (an ELF image's or a bzImage's
 * bytes and a name for messages), an optional initrd (null for none), the kernel command line,
 * which of the kernel's entries to boot, and the optional virtio devices: disks in order, then an
 * entropy device, then network devices, then a vsock device (null for none), then a memory balloon
 * ({@code balloon}, null for none).
 */
public record MachineConfig(
        long memoryBytes,
        int cpus,
        Backing backing,
        String kernelName,
        byte[] kernel,
        byte[] initrd,
        String cmdline,
        BootProtocol boot,
        List<DiskConfig> disks,
        boolean rng,
        List<NetConfig> nets,
        VsockConfig vsock,
        VirtioConfig.Balloon balloon) {
    public MachineConfig {
        if (cpus < 1) throw new IllegalArgumentException("at least one vCPU");
        disks = List.copyOf(disks);
        nets = List.copyOf(nets);
    }

    /** A machine without network devices, vsock or a balloon. */
    public MachineConfig(
            long memoryBytes,
            int cpus,
            Backing backing,
            String kernelName,
            byte[] kernel,
            byte[] initrd,
            String cmdline,
            BootProtocol boot,
            List<DiskConfig> disks,
            boolean rng) {
        this(memoryBytes, cpus, backing, kernelName, kernel, initrd, cmdline, boot, disks, rng, List.of(), null, null);
    }

    /** A machine without virtio devices. */
    public MachineConfig(
            long memoryBytes,
            int cpus,
            Backing backing,
            String kernelName,
            byte[] kernel,
            byte[] initrd,
            String cmdline,
            BootProtocol boot) {
        this(memoryBytes, cpus, backing, kernelName, kernel, initrd, cmdline, boot, List.of(), false);
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
        return new MachineConfig(
                memoryBytes, cpus, other, kernelName, kernel, initrd, cmdline, boot, disks, rng, nets, vsock, balloon);
    }

    /** The same machine with these virtio disks and entropy device. */
    public MachineConfig withVirtio(List<DiskConfig> disks, boolean rng) {
        return new MachineConfig(
                memoryBytes,
                cpus,
                backing,
                kernelName,
                kernel,
                initrd,
                cmdline,
                boot,
                disks,
                rng,
                nets,
                vsock,
                balloon);
    }

    /** The same machine with these network devices. */
    public MachineConfig withNets(List<NetConfig> nets) {
        return new MachineConfig(
                memoryBytes,
                cpus,
                backing,
                kernelName,
                kernel,
                initrd,
                cmdline,
                boot,
                disks,
                rng,
                nets,
                vsock,
                balloon);
    }

    /** The same machine with this vsock device (null for none). */
    public MachineConfig withVsock(VsockConfig vsock) {
        return new MachineConfig(
                memoryBytes,
                cpus,
                backing,
                kernelName,
                kernel,
                initrd,
                cmdline,
                boot,
                disks,
                rng,
                nets,
                vsock,
                balloon);
    }

    /** The same machine with this balloon (null: none). */
    public MachineConfig withBalloon(VirtioConfig.Balloon balloon) {
        return new MachineConfig(
                memoryBytes,
                cpus,
                backing,
                kernelName,
                kernel,
                initrd,
                cmdline,
                boot,
                disks,
                rng,
                nets,
                vsock,
                balloon);
    }
}
