package dev.panamavmm.vmm.memory;

import java.util.function.Consumer;

/**
 * Guest RAM that is still being filled while the guest runs, through {@link Userfaults}: a lazy
 * restore ({@link RamLoader}) or a post-copy migration's destination. A vCPU that touches a
 * missing page waits in the kernel until the page is copied in. A VMM thread must not: a Java
 * thread stuck in a page fault cannot reach a safepoint, so the next garbage collection would
 * stop every other thread of the VMM, the one that fills the page included. So
 * {@link GuestMemory} asks {@link #awaitPresent} before it hands a range to the VMM's own code
 * (devices, the boot loader, reads and writes), and the caller waits in Java instead.
 */
public interface MemoryFill extends AutoCloseable {

    /** Returns once every page of guest range {@code [gpa, gpa + length)} is present (or the fill has stopped). */
    void awaitPresent(long gpa, long length);

    /** Waits until every page is present; throws a {@link MemoryException} when the fill failed or was closed first. */
    void awaitLoaded() throws InterruptedException;

    /** Whom to tell, with a one-line reason, when the fill fails for good (the VM then has to end). */
    void onFailure(Consumer<String> callback);

    /** Stops filling and wakes every waiting thread (missing pages then read as zeros: the VM is ending). Idempotent. */
    @Override
    void close();
}
