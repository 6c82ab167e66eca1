package dev.panamavmm.api;

import java.nio.file.Path;
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
     * stored by reference; unless {@code resume}, the VM ends after the save.
     */
    Map<String, Object> snapshot(Path dir, boolean bypass, boolean resume) throws Exception;

    /** Hands the VM to the VMM waiting on a Unix socket ({@code unix:PATH}); this VMM then ends. */
    Map<String, Object> migrate(String uri) throws Exception;

    /** Sets the memory balloon's target: {@code targetMib} MiB taken from the guest. */
    default void balloon(long targetMib) {
        throw new IllegalArgumentException("this VM has no balloon");
    }

    /** The balloon's target, actual size, counters and the guest's statistics. */
    default Map<String, Object> queryBalloon() {
        throw new IllegalArgumentException("this VM has no balloon");
    }
}
