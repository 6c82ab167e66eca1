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

    /**
     * As {@link #snapshot(Path, boolean, boolean)}; {@code diff}: only the pages changed since the
     * VM's last snapshot, as a layer over it; {@code live}: RAM copied while the guest runs. A
     * target that cannot do either refuses them.
     */
    default Map<String, Object> snapshot(Path dir, boolean bypass, boolean resume, boolean diff, boolean live)
            throws Exception {
        if (diff || live) throw new IllegalArgumentException("this target takes only full, paused snapshots");
        return snapshot(dir, bypass, resume);
    }

    /** Hands the VM to the VMM waiting on a Unix socket ({@code unix:PATH}); this VMM then ends. */
    Map<String, Object> migrate(String uri) throws Exception;
}
