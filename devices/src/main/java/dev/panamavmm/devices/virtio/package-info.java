/**
 * virtio-mmio devices in pure Java: the transport ({@link dev.panamavmm.devices.virtio.VirtioMmio}),
 * the split virtqueue, and the block, entropy, network, vsock and balloon devices. Guest RAM,
 * notifications, interrupts, entropy, the disk, the tap, the host sockets and the balloon's RAM are
 * handed in by the VMM (segments, callbacks, a {@link dev.panamavmm.devices.virtio.BlockBackend}, a
 * {@link dev.panamavmm.devices.virtio.NetBackend}, a {@link dev.panamavmm.devices.virtio.VsockBackend},
 * a {@link dev.panamavmm.devices.virtio.BalloonMemory}); nothing here needs /dev/kvm. The threat table
 * (vsock: bad packets dropped or answered with RST, bytes held per connection bounded by the credit
 * and a 64 KiB buffer, at most 64 connections) is in {@code devices/README.md}.
 */
package dev.panamavmm.devices.virtio;
