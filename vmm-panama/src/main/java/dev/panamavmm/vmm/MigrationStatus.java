package dev.panamavmm.vmm;

import dev.panamavmm.migration.Json;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.function.Consumer;

/**
 * The progress of one TCP migration on the source, as {@code query-migrate} reports it, with
 * QEMU's status names: {@code setup} (connecting, the destination builds the VM), {@code active}
 * (pre-copy passes, guest running), {@code device} (guest paused: last pages and device state),
 * then {@code completed}, {@code failed} or {@code cancelled}. Each change of status goes to the
 * listener (the API's {@code MIGRATION} event). {@link #cancel} asks the sender to stop at its
 * next batch; the guest then runs on here.
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

    public MigrationStatus(Consumer<String> onStatus) {
        this.onStatus = onStatus;
        onStatus.accept(status);
    }

    public MigrationStatus() {
        this(s -> {});
    }

    void status(String next) {
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
        if (error != null) d.put("error-desc", error);
        return d;
    }
}
