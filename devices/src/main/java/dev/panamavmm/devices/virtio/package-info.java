/**
 * virtio-mmio devices in pure Java: the transport ({@link dev.panamavmm.devices.virtio.VirtioMmio}),
 * the split virtqueue, and the block, entropy and balloon devices. Guest RAM, notifications, interrupts,
 * entropy, the disk and the balloon's RAM are handed in by the VMM (segments, callbacks, a {@link
 * dev.panamavmm.devices.virtio.BlockBackend}, a {@link dev.panamavmm.devices.virtio.BalloonMemory}); nothing here needs /dev/kvm. The threat table is in
 * {@code devices/README.md}.
 */
package dev.panamavmm.devices.virtio;
