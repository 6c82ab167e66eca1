package dev.panamavmm.api;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/** What the control API acts on: one VM today (later also templates and clones). */
public interface ControlTarget {
    /** {@code {"status": "running" | "paused" | "shutdown", "running": bool}}. */
    Map<String, Object> status();

    void stop() throws Exception;

    void cont() throws Exception;

    /** Ends the VM and the VMM process. */
    void quit();

    /**
     * Saves the VM into {@code dir}; returns what was written. With {@code bypass}, shared RAM is
     * stored by reference; unless {@code resume}, the VM ends after the save; {@code diff}: only
     * the pages changed since the VM's last snapshot, as a layer over it; {@code live}: RAM copied
     * while the guest runs. With {@code detach} it returns {@code {"job-id": ID}} at once and the
     * save runs as a job.
     */
    Map<String, Object> snapshot(Path dir, boolean bypass, boolean resume, boolean diff, boolean live, boolean detach)
            throws Exception;

    /** Counters and operation timings ({@code query-metrics}). */
    Map<String, Object> metrics();

    /**
     * Hands the VM to the VMM waiting on a Unix socket ({@code unix:PATH}: live update) or at
     * {@code tcp:HOST:PORT} (pre-copy); this VMM then ends. With {@code detach}, as a job.
     */
    Map<String, Object> migrate(String uri, boolean detach) throws Exception;

    /**
     * Sets how the next TCP migration runs ({@code migrate-set-parameters}, QEMU's names):
     * {@code max-bandwidth} (bytes/s, 0: none), {@code downtime-limit} (ms), {@code tls-creds}
     * ({@code {"key-store", "trust-store", "password-file"}}, or null for plain TCP).
     */
    default void migrateSetParameters(Map<String, Object> parameters) {
        throw new IllegalArgumentException("this VMM does not migrate over TCP");
    }

    /** The parameters {@link #migrateSetParameters} set ({@code query-migrate-parameters}). */
    default Map<String, Object> queryMigrateParameters() {
        throw new IllegalArgumentException("this VMM does not migrate over TCP");
    }

    /** The last TCP migration's progress ({@code query-migrate}); {@code {}} before any. */
    default Map<String, Object> queryMigrate() {
        return Map.of();
    }

    /**
     * Sets migration capabilities ({@code migrate-set-capabilities}): a list of
     * {@code {"capability": NAME, "state": bool}}; this VMM knows {@code postcopy-ram}.
     */
    default void migrateSetCapabilities(List<Object> capabilities) {
        throw new IllegalArgumentException("this VMM does not migrate over TCP");
    }

    /** The capabilities ({@code query-migrate-capabilities}), QEMU's shape. */
    default List<Object> queryMigrateCapabilities() {
        throw new IllegalArgumentException("this VMM does not migrate over TCP");
    }

    /** Switches the running TCP migration to post-copy at the end of its pass ({@code migrate-start-postcopy}). */
    default void migrateStartPostcopy() {
        throw new IllegalArgumentException("no migration is running");
    }

    /** A paused post-copy reconnects to the destination's {@code migrate-recover} address ({@code migrate "resume"}). */
    default void migrateResume(String uri) throws Exception {
        throw new IllegalArgumentException("no post-copy migration is paused");
    }

    /** Destination: listens at {@code uri} for the source of a dropped post-copy ({@code migrate-recover}). */
    default Map<String, Object> migrateRecover(String uri) {
        throw new IllegalArgumentException("this VM is not receiving a post-copy migration");
    }

    /** Stops the running TCP migration ({@code migrate-cancel}): the guest runs on here. */
    default void migrateCancel() {
        throw new IllegalArgumentException("no migration is running");
    }

    /** Its jobs, as {@code query-jobs} lists them. */
    List<Object> jobs();

    /** Asks job {@code id} to stop ({@code job-cancel}): the guest is given back. */
    void cancelJob(String id);

    /** Sets the memory balloon's target: {@code targetMib} MiB taken from the guest. */
    default void balloon(long targetMib) {
        throw new IllegalArgumentException("this VM has no balloon");
    }

    /** The balloon's target, actual size, counters and the guest's statistics. */
    default Map<String, Object> queryBalloon() {
        throw new IllegalArgumentException("this VM has no balloon");
    }

    /**
     * Makes a chained template in {@code dir} out of this VM, a clone: its written pages into a
     * layer file, the rest a reference to its template. A running VM is paused for it and runs on.
     */
    Map<String, Object> templateCreate(Path dir) throws Exception;
}
