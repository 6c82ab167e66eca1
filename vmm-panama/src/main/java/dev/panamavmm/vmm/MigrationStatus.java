package dev.panamavmm.vmm;

import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.postcopy.Stats;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.SynchronousQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import java.util.function.Supplier;

/**
 * The progress of one TCP migration on the source, as {@code query-migrate} reports it, with
 * QEMU's status names: {@code setup} (connecting, the destination builds the VM), {@code active}
 * (pre-copy passes, guest running), {@code device} (guest paused: last pages and device state),
 * then {@code completed}, {@code failed} or {@code cancelled}; after a switch to post-copy
 * {@code postcopy-active} (the guest runs on the destination, its missing pages served from here)
 * and {@code postcopy-paused} (the connection dropped: both sides wait for a new one). Each change
 * of status goes to the listener (the API's {@code MIGRATION} event). {@link #cancel} asks the
 * sender to stop at its next batch; the guest then runs on here. {@link #startPostcopy} asks it to
 * switch at the end of the current pass; {@link #resume} hands a paused post-copy a new address.
 */
public final class MigrationStatus {
    private final Consumer<String> onStatus;
    private final long startNanos = System.nanoTime();

    private volatile String status = "setup";
    private volatile int pass;
    private volatile long transferred, remaining, total, dirtyPagesRate, expectedDowntimeMillis;
    private volatile long totalMillis = -1, downtimeMillis = -1;
    private volatile int throttlePercent;
    private volatile String error;
    private volatile boolean cancelRequested;
    private final List<Long> dirtyPerPass = new CopyOnWriteArrayList<>();
    private volatile boolean postcopyRequested;
    private volatile Supplier<Stats> postcopyStats;
    private volatile long postcopyPages;
    private final SynchronousQueue<TcpAddress> resumeAt = new SynchronousQueue<>();

    public MigrationStatus(Consumer<String> onStatus) {
        this.onStatus = onStatus;
        onStatus.accept(status);
    }

    public MigrationStatus() {
        this(s -> {});
    }

    void status(String next) {
        if (next.equals("postcopy-active") || next.equals("completed")) error = null;
        status = next;
        if (next.equals("completed") || next.equals("failed") || next.equals("cancelled"))
            totalMillis = (System.nanoTime() - startNanos) / 1_000_000;
        onStatus.accept(next);
    }

    public String status() {
        return status;
    }

    /** Whether the migration has ended, one way or the other. */
    public boolean finished() {
        return status.equals("completed") || status.equals("failed") || status.equals("cancelled");
    }

    void pass(int n) {
        pass = n;
    }

    void transferred(long bytes) {
        transferred = bytes;
    }

    void total(long bytes) {
        total = bytes;
    }

    /** The dirty pages found at the end of each pass (1, 2, ...), as the sender decided on them. */
    public List<Long> dirtyPerPass() {
        return List.copyOf(dirtyPerPass);
    }

    void dirty(long remainingBytes, long pagesPerSecond, long expectedDowntime) {
        dirtyPerPass.add(remainingBytes / MigrationStream.PAGE);
        remaining = remainingBytes;
        dirtyPagesRate = pagesPerSecond;
        expectedDowntimeMillis = expectedDowntime;
    }

    void throttle(int percent) {
        throttlePercent = percent;
    }

    public int throttlePercent() {
        return throttlePercent;
    }

    void downtime(long millis) {
        downtimeMillis = millis;
    }

    /** Why the post-copy connection dropped (the status says {@code postcopy-paused}). */
    void paused(String why) {
        error = why;
        status("postcopy-paused");
    }

    void failed(String why, boolean cancelled) {
        error = why;
        status(cancelled ? "cancelled" : "failed");
    }

    /** The migration could not start (its job was refused): it ends as failed, saying why. */
    public void notStarted(String why) {
        failed(why, false);
    }

    /** Asks the sender to stop (migrate-cancel); false if it has already finished. */
    public boolean cancel() {
        if (finished()) return false;
        cancelRequested = true;
        return true;
    }

    boolean cancelRequested() {
        return cancelRequested;
    }

    /** Whether the guest runs on the destination now (post-copy active or paused): neither cancel nor give-back. */
    public boolean inPostcopy() {
        return status.startsWith("postcopy");
    }

    /** Asks the sender to switch to post-copy at the end of its current pass (at once before the first); false if it ended. */
    public boolean startPostcopy() {
        if (finished()) return false;
        postcopyRequested = true;
        return true;
    }

    boolean postcopyRequested() {
        return postcopyRequested;
    }

    void postcopyPages(long missingPages) {
        postcopyPages = missingPages;
    }

    void postcopy(Supplier<Stats> stats) {
        postcopyStats = stats;
    }

    /** The post-copy source's counts, or null before the switch. */
    public Stats postcopyStats() {
        var s = postcopyStats;
        return s == null ? null : s.get();
    }

    /** Pages the destination missed at the switch (each must arrive exactly once), or 0 before it. */
    public long postcopyPages() {
        return postcopyPages;
    }

    /**
     * Hands a paused post-copy the address of the destination's {@code migrate-recover} listener;
     * false if the migration is not paused (or the sender did not take it within a second).
     */
    public boolean resume(TcpAddress at) throws InterruptedException {
        return status.equals("postcopy-paused") && resumeAt.offer(at, 1, TimeUnit.SECONDS);
    }

    /** The sender waits here, paused, for {@link #resume}. */
    TcpAddress awaitResume() throws InterruptedException {
        return resumeAt.take();
    }

    /** QEMU's {@code query-migrate} shape, plus {@code pass} and {@code auto-converge}. */
    public Map<String, Object> describe() {
        var d = Json.object("status", status, "pass", (long) pass);
        d.put("total-time", totalMillis >= 0 ? totalMillis : (System.nanoTime() - startNanos) / 1_000_000);
        if (downtimeMillis >= 0) d.put("downtime", downtimeMillis);
        if (!finished()) d.put("expected-downtime", expectedDowntimeMillis);
        d.put(
                "ram",
                Json.object(
                        "transferred",
                        transferred,
                        "remaining",
                        remaining,
                        "total",
                        total,
                        "dirty-pages-rate",
                        dirtyPagesRate,
                        "dirty-sync-count",
                        (long) pass));
        d.put("auto-converge", throttlePercent > 0);
        if (throttlePercent > 0) d.put("cpu-throttle-percentage", (long) throttlePercent);
        var pc = postcopyStats();
        if (pc != null) {
            @SuppressWarnings("unchecked")
            var ram = (Map<String, Object>) d.get("ram");
            ram.put("postcopy-requests", pc.pagesRequested());
            d.put(
                    "postcopy",
                    Json.object(
                            "missing-pages",
                            postcopyPages,
                            "pages-requested",
                            pc.pagesRequested(),
                            "pages-streamed",
                            pc.pagesStreamed(),
                            "zero-pages",
                            pc.zeroPages(),
                            "bytes",
                            pc.bytes(),
                            "millis-to-last-page",
                            pc.millisToLastPage()));
        }
        if (error != null) d.put("error-desc", error);
        return d;
    }
}
