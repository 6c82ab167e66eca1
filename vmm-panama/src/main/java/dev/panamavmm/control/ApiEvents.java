package dev.panamavmm.control;

import dev.panamavmm.api.ApiServer;
import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmListener;
import java.time.Instant;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;

/**
 * A VM's events on its control API ({@code READY}, {@code STOP}, {@code RESUME},
 * {@code SHUTDOWN} with the reason), once a server is attached: the listener of every VM that has
 * an API socket, in a VMM process of its own or in a host.
 */
public final class ApiEvents implements VmListener {
    private final AtomicReference<ApiServer> api = new AtomicReference<>();
    private final Runnable onResume;

    /** {@code onResume} runs after each RESUME event (on the thread that resumed the VM). */
    public ApiEvents(Runnable onResume) {
        this.onResume = onResume;
    }

    public ApiEvents() {
        this(() -> {});
    }

    public void attach(ApiServer server) {
        api.set(server);
    }

    @Override
    public void ready() {
        event("READY", null);
    }

    @Override
    public void paused() {
        event("STOP", null);
    }

    @Override
    public void resumed(Instant at) {
        event("RESUME", null, at);
        onResume.run();
    }

    @Override
    public void ended(VmExitReason reason) {
        // QEMU's members, and the VMM's sentence for people (a QMP client ignores members it does not know).
        event(
                "SHUTDOWN",
                Json.object("guest", reason.byGuest(), "reason", reason.qmpReason(), "detail", reason.describe()));
    }

    /** Sends event {@code name} to the attached server's clients (none before one is attached). */
    public void emit(String name, Map<String, Object> data) {
        event(name, data);
    }

    private void event(String name, Map<String, Object> data) {
        event(name, data, Instant.now());
    }

    private void event(String name, Map<String, Object> data, Instant at) {
        var a = api.get();
        if (a != null) a.event(name, data, at);
    }
}
