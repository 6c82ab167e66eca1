/**
 * Device models of the machine, in pure Java: each is a {@link dev.panamavmm.devices.PortIoDevice}
 * with read/write entry points, drives an {@link dev.panamavmm.devices.InterruptLine} it is
 * handed (where it has one), and exposes its guest-visible state as a record that a snapshot
 * saves and a constructor restores. Host resources (streams, listeners, interrupt lines) are
 * constructor arguments, never state. Nothing here needs /dev/kvm or native code; the VMM maps
 * ports to devices and lines to KVM interrupts.
 */
package dev.panamavmm.devices;
