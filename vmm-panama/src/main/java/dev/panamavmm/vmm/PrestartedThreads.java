package dev.panamavmm.vmm;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;

/**
 * Platform threads started before their work is known. A live update's destination starts its
 * vCPU threads while the source guest still runs, and inside the downtime only hands each one its
 * vCPU ({@link Vm#start(PrestartedThreads)}): creating a thread costs 0.1-5 ms on a busy host,
 * handing it work a wake-up. A thread whose work never comes ends when this is closed.
 */
public final class PrestartedThreads implements AutoCloseable {
    private final List<Thread> threads = new ArrayList<>();
    private final List<CompletableFuture<Runnable>> work = new ArrayList<>();

    private PrestartedThreads() {}

    /** Starts {@code count} threads that wait for their work. */
    public static PrestartedThreads start(int count) {
        var p = new PrestartedThreads();
        for (int i = 0; i < count; i++) {
            var job = new CompletableFuture<Runnable>();
            p.work.add(job);
            // Daemon: a thread whose work never comes must not keep the process alive (the VM's
            // owner waits for the VM itself, and Vm.close joins its vCPU threads).
            p.threads.add(Thread.ofPlatform()
                    .daemon()
                    .name("vcpu-" + i + "-waiting")
                    .start(() -> job.join().run()));
        }
        return p;
    }

    public int size() {
        return threads.size();
    }

    /** Gives thread {@code index} its work and name; returns the thread. */
    Thread run(int index, String name, Runnable task) {
        var t = threads.get(index);
        t.setName(name);
        // Named again by itself: only a thread's own setName reaches the OS (top -H, perf, /proc),
        // which would show a running vCPU as "vcpu-0-waiting".
        Runnable named = () -> {
            Thread.currentThread().setName(name);
            task.run();
        };
        if (!work.get(index).complete(named))
            throw new IllegalStateException("thread " + index + " already has its work");
        return t;
    }

    /** Ends the threads that got no work. */
    @Override
    public void close() {
        for (var job : work) job.complete(() -> {});
    }
}
