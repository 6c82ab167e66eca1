package dev.panamavmm.vmm;

/**
 * The configuration of one virtio-mmio device a machine asks for. Each type is one case of
 * {@link VirtioHost}'s device switch and one place in {@link DeviceTable#virtio}'s slot order.
 */
public sealed interface VirtioConfig permits DiskConfig, VirtioConfig.Rng, VsockConfig {
    /** The entropy device (virtio-rng): no options, from the host's {@code getrandom}. */
    record Rng() implements VirtioConfig {}
}
