package dev.panamavmm.host;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.sys.LibC;
import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The warm {@code vmm standby} processes of a host in process isolation. Each is started at nice
 * 19 in a session of its own ({@code setsid}: no signal to the host's process group or terminal
 * reaches it, and it outlives the host), warms up, and is set back to nice 0 once its API socket
 * appears, so the VM it adopts runs at normal priority. A worker taken for a VM is replaced in the
 * background.
 */
final class StandbyPool implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(StandbyPool.class);

    private final List<String> launch;
    private final int size;
    private final VmFiles files;
    private final Consumer<Worker> watch;
    private final List<Worker> idle = new ArrayList<>();
    private final Thread refiller;
    private volatile boolean closed;
    /** Workers warm up at nice 19, as long as this process may set them back to 0 once warm. */
    private volatile boolean niceWorkers = true;
    /** Workers in a row that ended before they were warm (no KVM, a bad launcher): the next start waits longer. */
    private int failures;

    /**
     * {@code launch} starts the VMM as this process was started (JVM, options, jar or class path),
     * {@code watch} is told of every worker this pool starts (to notice its exit).
     */
    StandbyPool(List<String> launch, int size, VmFiles files, Consumer<Worker> watch) {
        this.launch = List.copyOf(launch);
        this.size = size;
        this.files = files;
        this.watch = watch;
        this.refiller = Thread.ofPlatform().daemon().name("standby-pool").unstarted(this::keepFilled);
    }

    void start() {
        refiller.start();
    }

    /** A worker found on standby by a restarted host. */
    synchronized void adoptIdle(Worker worker) {
        idle.add(worker);
        notifyAll();
    }

    /** The pool's workers, ready or warming. */
    synchronized List<Worker> workers() {
        return List.copyOf(idle);
    }

    /** Takes a ready worker out of the pool, waiting up to {@code timeoutMillis} for one to be warm. */
    synchronized Worker take(long timeoutMillis) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
        while (true) {
            for (var w : idle) {
                if (w.ready()) {
                    idle.remove(w);
                    notifyAll(); // the refiller starts a replacement
                    return w;
                }
            }
            long left = deadline - System.nanoTime();
            if (closed || left <= 0)
                throw new IllegalStateException("no warm standby worker within " + timeoutMillis / 1000 + " s");
            TimeUnit.NANOSECONDS.timedWait(this, Math.min(left, TimeUnit.MILLISECONDS.toNanos(20)));
        }
    }

    /** A worker that refused its VM (it stays on standby) goes back; one that died meanwhile is forgotten. */
    synchronized void giveBack(Worker worker) {
        if (worker.alive()) idle.add(worker);
        else worker.forgetFailed(); // its exit found it in neither the pool nor the host's VMs
        notifyAll();
    }

    /** A worker that ended while in the pool. */
    synchronized boolean remove(Worker worker) {
        boolean was = idle.remove(worker);
        if (was && !worker.ready()) failures++;
        notifyAll();
        return was;
    }

    /**
     * Keeps {@code size} workers in the pool and marks them ready when their socket appears. This
     * thread keeps its own priority: a process inherits the nice value of the thread that starts
     * it, and the workers' own is set by {@code nice}.
     */
    private void keepFilled() {
        while (!closed) {
            try {
                List<Worker> warming;
                boolean spawn;
                int failed;
                synchronized (this) {
                    spawn = idle.size() < size;
                    warming = idle.stream().filter(w -> !w.ready()).toList();
                    failed = failures;
                    if (!spawn && warming.isEmpty()) wait(1000);
                }
                if (spawn && failed > 0) Thread.sleep(Math.min(30, failed) * 1000L); // not a fork loop
                for (var w : warming) {
                    if (Files.exists(w.apiSocket)) becameReady(w);
                }
                if (spawn && !closed) spawn();
                else if (!warming.isEmpty()) Thread.sleep(20);
            } catch (InterruptedException e) {
                return;
            } catch (RuntimeException | IOException e) {
                log.error("cannot start a standby worker: {}", e.getMessage());
                try {
                    Thread.sleep(1000); // and try again: the pool is what the host promised
                } catch (InterruptedException i) {
                    return;
                }
            }
        }
    }

    private void becameReady(Worker w) {
        try {
            w.preconnect();
        } catch (RuntimeException e) {
            log.debug("standby worker {} does not answer yet: {}", w.id, e.getMessage());
            return; // still warming up; looked at again in a moment
        }
        if (niceWorkers) {
            try {
                LibC.niceProcessGroup(w.pid, 0); // setsid made it its group's leader: every thread of it
            } catch (KvmException e) {
                // Raising a priority needs CAP_SYS_NICE (root): without it a VM would run at nice 19.
                niceWorkers = false;
                log.warn(
                        "cannot set standby worker {} (pid {}) back to nice 0 ({}): it stays at nice 19, and later"
                                + " workers warm up at normal priority",
                        w.id,
                        w.pid,
                        e.getMessage());
            }
        }
        synchronized (this) {
            w.markReady();
            failures = 0;
            notifyAll();
        }
        log.debug("standby worker {} (pid {}) is warm", w.id, w.pid);
    }

    private void spawn() throws IOException {
        var names = files.claim();
        var command = new ArrayList<String>(niceWorkers ? List.of("nice", "-n", "19", "setsid") : List.of("setsid"));
        command.addAll(launch);
        command.addAll(List.of(
                "standby", "--api-socket", names.apiSocket().toString(), "--console", "file:" + names.console()));
        var process = new ProcessBuilder(command)
                .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
                .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                .redirectError(ProcessBuilder.Redirect.appendTo(names.err().toFile()))
                .start();
        // nice and setsid exec, they do not fork: the pid is the worker's. Its start time is read
        // once it is the JVM, which is the same process: exec keeps the start time.
        var started = ProcStat.startTime(process.pid());
        if (started.isEmpty()) {
            throw new IOException("the standby worker " + names.id() + " ended at once (see " + names.err() + ")");
        }
        var worker = new Worker(
                names.id(),
                process.pid(),
                started.getAsLong(),
                names.apiSocket(),
                names.console(),
                names.record(),
                process);
        try {
            worker.save();
        } catch (RuntimeException e) {
            process.destroyForcibly();
            throw e;
        }
        synchronized (this) {
            idle.add(worker);
        }
        watch.accept(worker);
        log.debug("started standby worker {} (pid {})", worker.id, worker.pid);
    }

    /** Ends the workers still on standby (they have no VM to keep); workers with a VM are not the pool's. */
    @Override
    public void close() {
        closed = true;
        refiller.interrupt();
        List<Worker> left;
        synchronized (this) {
            left = List.copyOf(idle);
            idle.clear();
            notifyAll();
        }
        for (var w : left) {
            w.markDestroying();
            if (w.alive()) ProcessHandle.of(w.pid).ifPresent(ProcessHandle::destroy); // SIGTERM: it ends cleanly
        }
        for (var w : left) {
            ProcessHandle.of(w.pid).ifPresent(p -> {
                try {
                    p.onExit().get(10, TimeUnit.SECONDS);
                } catch (Exception e) {
                    if (w.alive()) p.destroyForcibly();
                }
            });
            w.forget();
        }
    }
}
