package dev.panamavmm.host;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.migration.Json;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;

/**
 * A {@code vmm standby} process of a host in process isolation: warm and waiting in the pool, or
 * running its one VM. Its record in the state directory ({@code ID.json}: pid, start time, API
 * socket, console) is how a restarted host finds it again; the pid alone could by then name
 * another process, the start time cannot.
 */
final class Worker {
    final String id;
    final long pid;
    final long startTime;
    final Path apiSocket;
    final Path console;
    final Path record;
    /** The process when this host started it (its exit code is known), else null (re-attached). */
    final Process process;

    private volatile boolean adopted;
    private volatile boolean ready;
    private volatile boolean destroying;
    private volatile boolean exited;
    /** A connection made while the worker waited, for the request that gives it its VM (no connect, no greeting on that path). */
    private final AtomicReference<ApiClient> warmClient = new AtomicReference<>();

    Worker(String id, long pid, long startTime, Path apiSocket, Path console, Path record, Process process) {
        this.id = id;
        this.pid = pid;
        this.startTime = startTime;
        this.apiSocket = apiSocket;
        this.console = console;
        this.record = record;
        this.process = process;
    }

    boolean adopted() {
        return adopted;
    }

    boolean ready() {
        return ready;
    }

    void markReady() {
        ready = true;
    }

    boolean destroying() {
        return destroying;
    }

    void markDestroying() {
        destroying = true;
    }

    boolean exited() {
        return exited;
    }

    void markExited() {
        exited = true;
    }

    /** It runs a VM now; the record says so, so that a restarted host lists it as a VM. */
    void markAdopted() {
        adopted = true;
        save();
    }

    /** Writes the record atomically: a host killed mid-write leaves the old record or the new one. */
    void save() {
        var json = Json.write(Json.object(
                "id",
                id,
                "pid",
                pid,
                "start-time",
                startTime,
                "api-socket",
                apiSocket.toString(),
                "console",
                console.toString(),
                "adopted",
                adopted));
        var temporary = record.resolveSibling("." + record.getFileName() + ".tmp");
        try {
            Files.writeString(temporary, json + "\n");
            Files.move(temporary, record, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write the worker record " + record + ": " + IoErrors.reason(e), e);
        }
    }

    /** The worker a record names, or null when the record cannot be read. */
    static Worker load(Path record) {
        try {
            var json = Json.asObject(Json.parse(Files.readString(record)), "a worker record");
            var worker = new Worker(
                    (String) json.get("id"),
                    (Long) json.get("pid"),
                    (Long) json.get("start-time"),
                    Path.of((String) json.get("api-socket")),
                    Path.of((String) json.get("console")),
                    record,
                    null);
            worker.adopted = Boolean.TRUE.equals(json.get("adopted"));
            return worker;
        } catch (IOException | RuntimeException e) {
            return null;
        }
    }

    /** Connects to the warm worker ahead of its request, and checks that it answers (it warms this host's client code too). */
    void preconnect() {
        var client = ApiClient.connect(apiSocket, 0, ApiClient.GREETING_MILLIS);
        try {
            client.execute("query-status", null);
        } catch (RuntimeException e) {
            client.close();
            throw e;
        }
        var old = warmClient.getAndSet(client);
        if (old != null) old.close();
    }

    /** The connection {@link #preconnect} made, once; null if there is none. */
    ApiClient takeClient() {
        return warmClient.getAndSet(null);
    }

    /** Still this worker: the pid exists and started when the record says. */
    boolean alive() {
        var now = ProcStat.startTime(pid);
        return now.isPresent() && now.getAsLong() == startTime;
    }

    /** Removes what the state directory holds of a worker that ended normally: record, socket, stderr file; the console stays. */
    void forget() {
        forget(false);
    }

    /** As {@link #forget()}, keeping its stderr file ({@code ID.err}): the worker failed, and that says why. */
    void forgetFailed() {
        forget(true);
    }

    private void forget(boolean keepErr) {
        var client = takeClient();
        if (client != null) client.close();
        try {
            Files.deleteIfExists(record);
            Files.deleteIfExists(apiSocket); // left behind by a worker that was killed
            if (!keepErr) Files.deleteIfExists(record.resolveSibling(id + ".err"));
        } catch (IOException e) {
            // a leftover file: the next host start removes it again
        }
    }

    Map<String, Object> describe() {
        return Json.object("id", id, "pid", pid, "ready", ready, "api-socket", apiSocket.toString());
    }
}
