package dev.panamavmm.vmm;

import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

/**
 * What the vCPU threads should be doing (running, paused, stopped) and how many of them are
 * parked. The VM changes the request and kicks the vCPUs; each vCPU thread reads the request
 * between two KVM_RUNs, parks when paused and reports it, so {@link #awaitParked} returns only
 * when no vCPU is inside the guest.
 */
final class VcpuControl {
    enum Request {
        RUN,
        PAUSE,
        STOP
    }

    private final ReentrantLock lock = new ReentrantLock();
    private final Condition changed = lock.newCondition();
    private volatile Request request = Request.RUN;
    private int parked;
    private int live;

    Request request() {
        return request;
    }

    void set(Request r) {
        lock.lock();
        try {
            if (request == Request.STOP) return; // stopping is final
            request = r;
            changed.signalAll();
        } finally {
            lock.unlock();
        }
    }

    void started() {
        lock.lock();
        try {
            live++;
        } finally {
            lock.unlock();
        }
    }

    void exited() {
        lock.lock();
        try {
            live--;
            changed.signalAll();
        } finally {
            lock.unlock();
        }
    }

    /** Called by a vCPU thread: parks while paused; returns the request that ended the pause. */
    Request park() {
        lock.lock();
        try {
            parked++;
            changed.signalAll();
            while (request == Request.PAUSE) changed.awaitUninterruptibly();
            parked--;
            return request;
        } finally {
            lock.unlock();
        }
    }

    /** Waits until every live vCPU is parked (or gone). */
    boolean awaitParked(long timeout, TimeUnit unit) throws InterruptedException {
        long deadline = System.nanoTime() + unit.toNanos(timeout);
        lock.lock();
        try {
            while (parked < live && request == Request.PAUSE) {
                long left = deadline - System.nanoTime();
                if (left <= 0) return false;
                changed.awaitNanos(left);
            }
            return parked >= live;
        } finally {
            lock.unlock();
        }
    }
}
