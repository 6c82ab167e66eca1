/**
 * virtio-mmio devices in pure Java: the transport ({@link dev.panamavmm.devices.virtio.VirtioMmio}),
 * the split virtqueue, and the block and entropy devices. Guest RAM, notifications, interrupts,
 * entropy and the disk are handed in by the VMM (segments, callbacks, a {@link
 * dev.panamavmm.devices.virtio.BlockBackend}); nothing here needs /dev/kvm. The threat table is in
 * {@code devices/README.md}.
 */
package dev.panamavmm.devices.virtio;
