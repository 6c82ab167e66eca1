package dev.panamavmm.vmm;

import java.time.Instant;

/** What a VM tells its owner (the CLI, the control API). Called from vCPU or control threads; keep it short. */
public interface VmListener {
    /** The guest reached its ready point (VMM port event 1): the template point. */
    default void ready() {}

    /** Every vCPU is parked: no guest code runs until {@code resume}. */
    default void paused() {}

    /**
     * The vCPUs were released {@code at}, stamped just before (as QEMU stamps its RESUME): the
     * thread that released them may get the CPU back only after the guest has run a while.
     */
    default void resumed(Instant at) {}

    /** The guest wrote a VMM port event other than ready. */
    default void guestEvent(int event) {}

    /** A vCPU entered the guest for the first time in this VM (System.nanoTime): for start-latency measurements; called once. */
    default void entered(long nanos) {}

    /** The VM ended; called once. */
    default void ended(VmExitReason reason) {}
}
