package dev.panamavmm.devices;

/**
 * One interrupt output of a device, as a level: {@code set(true)} while the device has an
 * interrupt pending and enabled, {@code set(false)} when that ends. The VMM maps a line to an
 * interrupt controller pin with KVM_IRQ_LINE. Devices in this package call it once on
 * construction (so a restored device re-asserts a pending interrupt) and then on changes, from one
 * thread at a time and never holding a lock: an implementation may block, wait for another thread
 * that uses the device, or call back into the device. When two threads change the level at once,
 * the one already calling the line also sends the other's level, so the line always ends at the
 * newest level; a level may be repeated, which must be harmless (it is for KVM_IRQ_LINE).
 */
@FunctionalInterface
public interface InterruptLine {

    /** Drives the line to {@code asserted}. */
    void set(boolean asserted);
}
