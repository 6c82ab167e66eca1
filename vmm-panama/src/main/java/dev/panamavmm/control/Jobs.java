package dev.panamavmm.control;

import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamWriter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CancellationException;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.BiConsumer;

/**
 * Long operations of one VM (a save, a migration) run as jobs when the client asks
 * ({@code "detach": true}): the command returns the job's id at once, the work runs on a thread of
 * its own, {@code query-jobs} reports status and progress (QEMU's job shape: {@code id},
 * {@code type}, {@code status}, {@code current-progress}, {@code total-progress}, {@code error}),
 * each change of status is a {@code JOB_STATUS_CHANGE} event, and {@code job-cancel} stops the work
 * at its next progress step (a save then gives the guest back and leaves no file).
 */
public final class Jobs {
    /** Concluded jobs kept for query-jobs. */
    static final int KEPT = 16;

    /** The work of a job: reports progress through {@code progress}, which throws once the job is cancelled. */
    @FunctionalInterface
    public interface Work {
        Map<String, Object> run(RamWriter.Progress progress) throws Exception;
    }

    private final class Job {
        final String id;
        final String type;
        final long total;
        final AtomicLong current = new AtomicLong();
        volatile String status = "running";
        /** Its concluding event has been sent (what a VMM that ends waits for). */
        volatile boolean announced;

        volatile boolean cancelled;
        volatile String error;
        volatile Map<String, Object> result;

        Job(String id, String type, long total) {
            this.id = id;
            this.type = type;
            this.total = total;
        }

        Map<String, Object> describe() {
            var d = Json.object(
                    "id",
                    id,
                    "type",
                    type,
                    "status",
                    status,
                    "current-progress",
                    current.get(),
                    "total-progress",
                    total);
            if (error != null) d.put("error", error);
            if (result != null) d.put("result", result);
            return d;
        }
    }

    private final BiConsumer<String, Map<String, Object>> events;
    private final Map<String, Job> jobs = new LinkedHashMap<>();
    private int next;

    /** {@code events} sends an API event (name, data) to the VM's clients. */
    public Jobs(BiConsumer<String, Map<String, Object>> events) {
        this.events = events;
    }

    /**
     * Starts {@code work} as a job of {@code type} ({@code total}: the progress it reaches when
     * done, e.g. bytes of RAM); returns its id. One job at a time: a second is refused while one
     * runs, as a second save or migration of one VM would be.
     */
    public synchronized String start(String type, long total, Work work) {
        for (var j : jobs.values())
            if (j.status.equals("running") || j.status.equals("aborting"))
                throw new IllegalStateException("job " + j.id + " (" + j.type + ") is still running");
        var job = new Job(type + "-" + ++next, type, total);
        jobs.put(job.id, job);
        trim();
        changed(job);
        Thread.ofPlatform().daemon().name("job-" + job.id).start(() -> run(job, work));
        return job.id;
    }

    private void run(Job job, Work work) {
        try {
            job.result = work.run(bytes -> {
                if (job.cancelled) throw new CancellationException("cancelled by job-cancel");
                job.current.addAndGet(bytes);
            });
            job.current.set(Math.max(job.current.get(), job.total));
        } catch (Exception e) {
            job.error = job.cancelled ? "cancelled by job-cancel" : String.valueOf(e.getMessage());
        } finally {
            // Even an Error concludes the job: else it would stay "running", refusing every later
            // job of the VM and holding up the VMM's end (awaitIdle).
            if (job.result == null && job.error == null) job.error = "the job failed";
            job.status = "concluded";
            changed(job);
            job.announced = true;
            synchronized (this) {
                notifyAll();
            }
        }
    }

    /** Asks job {@code id} to stop; it concludes with an error once its work has given the guest back. */
    public synchronized void cancel(String id) {
        var job = jobs.get(id);
        if (job == null) throw new IllegalArgumentException("no job " + id);
        if (!job.status.equals("running")) throw new IllegalStateException("job " + id + " is " + job.status);
        job.cancelled = true;
        job.status = "aborting";
        changed(job);
    }

    /** Every job, oldest first, as {@code query-jobs} returns them. */
    public synchronized List<Object> describe() {
        var all = new ArrayList<Object>();
        for (var j : jobs.values()) all.add(j.describe());
        return all;
    }

    private void trim() {
        var it = jobs.values().iterator();
        int concluded = (int)
                jobs.values().stream().filter(j -> j.status.equals("concluded")).count();
        while (concluded > KEPT && it.hasNext()) {
            if (it.next().status.equals("concluded")) {
                it.remove();
                concluded--;
            }
        }
    }

    /**
     * QEMU's event, plus, once concluded, the job's {@code result} or {@code error}: a client whose
     * VMM ends with the job (a save that stops the VM) has it even if no query follows.
     */
    private void changed(Job job) {
        var data = Json.object("id", job.id, "status", job.status);
        if (job.status.equals("concluded")) {
            if (job.error != null) data.put("error", job.error);
            if (job.result != null) data.put("result", job.result);
        }
        events.accept("JOB_STATUS_CHANGE", data);
    }

    /** Waits up to {@code millis} for every job to conclude (a VMM ending waits so its jobs' last events go out). */
    public synchronized void awaitIdle(long millis) throws InterruptedException {
        long deadline = System.currentTimeMillis() + millis;
        while (jobs.values().stream().anyMatch(j -> !j.announced)) {
            long left = deadline - System.currentTimeMillis();
            if (left <= 0) return;
            wait(left);
        }
    }
}
