package dev.panamavmm.control;

import dev.panamavmm.api.ApiHandler;
import dev.panamavmm.api.ControlTarget;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.vmm.Balloons;
import dev.panamavmm.vmm.LocalMigration;
import dev.panamavmm.vmm.MigrationParameters;
import dev.panamavmm.vmm.MigrationStatus;
import dev.panamavmm.vmm.MigrationTls;
import dev.panamavmm.vmm.TcpAddress;
import dev.panamavmm.vmm.TcpMigration;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmSnapshots;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.function.BiConsumer;

/** The control API of one VM: what {@code query-status}, {@code stop}, {@code snapshot}, ... do to it. */
public final class VmControl implements ControlTarget {
    private final Vm vm;
    private final Jobs jobs;
    private final BiConsumer<String, Map<String, Object>> events;
    private volatile MigrationParameters migrationParameters = MigrationParameters.DEFAULTS;
    private volatile MigrationStatus migration;
    private volatile boolean runningPostcopyRam;

    /** {@code events} sends the VM's API events (a job's {@code JOB_STATUS_CHANGE}) to its clients. */
    public VmControl(Vm vm, BiConsumer<String, Map<String, Object>> events) {
        this.vm = vm;
        this.jobs = new Jobs(events);
        this.events = events;
    }

    /** Without events: for an owner whose clients do not wait on jobs. */
    public VmControl(Vm vm) {
        this(vm, (name, data) -> {});
    }

    @Override
    public Map<String, Object> status() {
        var status = vm.status();
        return Json.object("status", status.qmpName(), "singlestep", false, "running", status == Vm.Status.RUNNING);
    }

    @Override
    public Map<String, Object> metrics() {
        return vm.metricsReport();
    }

    @Override
    public void stop() throws InterruptedException {
        vm.pause();
    }

    @Override
    public void cont() {
        vm.resume();
    }

    @Override
    public void quit() {
        vm.end(new VmExitReason.Stopped("the API (quit)"));
    }

    @Override
    public Map<String, Object> migrate(String uri, boolean detach) throws Exception {
        if (uri.startsWith("tcp:")) return migrateTcp(TcpAddress.parse(uri), detach);
        if (!uri.startsWith("unix:") || uri.length() == 5)
            throw new IllegalArgumentException("\"uri\" must be unix:PATH or tcp:HOST:PORT");
        var socket = Path.of(uri.substring(5));
        if (detach) return Json.object("job-id", jobs.start("migrate", 0, progress -> migrate(socket)));
        return migrate(socket);
    }

    private Map<String, Object> migrate(Path socket) throws Exception {
        var r = LocalMigration.send(vm, socket, 10);
        return Json.object(
                "downtime-ms",
                r.downtimeMillis(),
                "downtime-us",
                r.downtimeMicros(),
                "confirmed-ms",
                r.confirmedMillis(),
                "total-ms",
                r.totalMillis(),
                "bytes-sent",
                r.bytesSent());
    }

    private synchronized Map<String, Object> migrateTcp(TcpAddress target, boolean detach) throws Exception {
        var running = migration;
        if (running != null && !running.finished())
            throw new IllegalStateException("a migration is running already (migrate-cancel stops it)");
        var params = migrationParameters;
        var status = new MigrationStatus(s -> events.accept("MIGRATION", Json.object("status", s)));
        migration = status;
        runningPostcopyRam = params.postcopyRam();
        Jobs.Work work = progress -> {
            var r = TcpMigration.send(vm, target, params, status, progress);
            var result = Json.object(
                    "downtime-ms",
                    r.downtimeMillis(),
                    "total-ms",
                    r.totalMillis(),
                    "bytes-sent",
                    r.bytesSent(),
                    "passes",
                    (long) r.passes(),
                    "cpu-throttle-percentage",
                    (long) r.throttlePercent(),
                    "postcopy-pages",
                    status.postcopyPages());
            if (r.sharedFile() != null) result.put("memory-file", r.sharedFile().toString());
            return result;
        };
        if (!detach) return work.run(RamWriter.Progress.NONE);
        try {
            return Json.object("job-id", jobs.start("migrate", vm.memory().size(), work));
        } catch (RuntimeException e) {
            status.notStarted(e.getMessage()); // another job runs: this migration never started
            throw e;
        }
    }

    @Override
    public void migrateSetCapabilities(List<Object> capabilities) {
        var p = migrationParameters;
        for (var c : capabilities) {
            var row = Json.asObject(c, "a capability");
            ApiHandler.expect("capabilities", row, "capability", "state");
            String name = ApiHandler.requireString(row, "capability", "a capability name");
            if (!name.equals("postcopy-ram"))
                throw new IllegalArgumentException(
                        "this VMM knows only the capability \"postcopy-ram\", not \"" + name + "\"");
            if (!(row.get("state") instanceof Boolean on))
                throw new IllegalArgumentException("\"state\" must be true or false");
            p = p.withPostcopyRam(on);
        }
        var running = migration;
        if (running != null && !running.finished())
            throw new IllegalStateException("a migration is running: set capabilities before migrate");
        migrationParameters = p;
    }

    @Override
    public List<Object> queryMigrateCapabilities() {
        return List.of(Json.object("capability", "postcopy-ram", "state", migrationParameters.postcopyRam()));
    }

    @Override
    public void migrateStartPostcopy() {
        var m = migration;
        if (m == null || m.finished()) throw new IllegalStateException("no migration is running");
        if (!runningPostcopyRam)
            throw new IllegalStateException(
                    "the migration was started without the postcopy-ram capability (migrate-set-capabilities first)");
        if (m.inPostcopy()) throw new IllegalStateException("the migration is in post-copy already");
        m.startPostcopy();
    }

    @Override
    public void migrateResume(String uri) throws Exception {
        var at = TcpAddress.parse(uri);
        var m = migration;
        if (m == null || !m.resume(at))
            throw new IllegalStateException("no post-copy migration is paused (query-migrate says postcopy-paused)");
    }

    @Override
    public Map<String, Object> migrateRecover(String uri) {
        var incoming = vm.postcopyIncoming();
        if (incoming == null)
            throw new IllegalStateException("this VM did not arrive by post-copy: nothing to recover");
        var address = TcpAddress.parse(uri);
        int port = incoming.recover(address);
        return Json.object("uri", new TcpAddress(address.host(), port).toString());
    }

    @Override
    public void migrateSetParameters(Map<String, Object> a) {
        var p = migrationParameters;
        if (a.get("x-convergence") != null)
            p = p.withConvergence(MigrationParameters.Convergence.parse(String.valueOf(a.get("x-convergence"))));
        if (a.containsKey("max-bandwidth")) p = p.withMaxBandwidth(ApiHandler.number(a, "max-bandwidth", 0));
        if (a.containsKey("downtime-limit")) p = p.withDowntimeLimit(ApiHandler.number(a, "downtime-limit", 300));
        if (a.containsKey("tls-creds")) p = p.withTls(tlsCredentials(a.get("tls-creds")));
        migrationParameters = p;
    }

    /**
     * {@code "tls-creds": {"key-store", "trust-store", "password-file"}} of a TCP migration (null:
     * plain TCP); a wrong store or password is refused now, not when the migration starts.
     */
    public static MigrationTls tlsCredentials(Object json) {
        if (json == null) return null;
        var creds = Json.asObject(json, "\"tls-creds\"");
        ApiHandler.expect("tls-creds", creds, "key-store", "trust-store", "password-file");
        var tls = MigrationTls.of(
                Path.of(ApiHandler.requireString(creds, "key-store", "a PKCS12 file")),
                Path.of(ApiHandler.requireString(creds, "trust-store", "a PKCS12 file")),
                Path.of(ApiHandler.requireString(creds, "password-file", "a file")));
        tls.context();
        return tls;
    }

    @Override
    public Map<String, Object> queryMigrateParameters() {
        var p = migrationParameters;
        return Json.object(
                "max-bandwidth",
                p.maxBandwidth(),
                "downtime-limit",
                p.downtimeLimitMillis(),
                "x-convergence",
                p.convergence().apiName(),
                "tls-creds",
                p.tls() == null
                        ? null
                        : Json.object(
                                "key-store",
                                p.tls().keyStore().toString(),
                                "trust-store",
                                p.tls().trustStore().toString()));
    }

    @Override
    public Map<String, Object> queryMigrate() {
        var m = migration;
        if (m == null && vm.postcopyIncoming() != null)
            return vm.postcopyIncoming().describe();
        if (m == null && vm.arrival() != null) { // the destination of a pre-copy: QEMU's says completed too
            var a = vm.arrival();
            var d = Json.object(
                    "status", "completed", "total-time", a.totalMillis(), "ram", Json.object("pages", a.pages()));
            if (a.sharedFile() != null) d.put("memory-file", a.sharedFile().toString());
            return d;
        }
        return m == null ? Json.object() : m.describe();
    }

    /** The last TCP migration's progress, or null before any. */
    public MigrationStatus migrationStatus() {
        return migration;
    }

    @Override
    public void migrateCancel() {
        var m = migration;
        if (m != null && m.inPostcopy())
            throw new IllegalStateException("post-copy cannot be cancelled: the guest runs on the destination now");
        if (m == null || !m.cancel()) throw new IllegalStateException("no migration is running");
    }

    @Override
    public void balloon(long targetMib) {
        Balloons.setTarget(vm, targetMib);
    }

    @Override
    public Map<String, Object> queryBalloon() {
        return Balloons.query(vm);
    }

    @Override
    public Map<String, Object> snapshot(
            Path dir, boolean bypass, boolean resume, boolean diff, boolean live, boolean detach) throws Exception {
        var request = VmSnapshots.Request.of(bypass, resume ? VmSnapshots.After.RESUME : VmSnapshots.After.STOP)
                .diff(diff)
                .live(live);
        if (detach)
            return Json.object(
                    "job-id",
                    jobs.start("snapshot", vm.memory().size(), progress -> snapshot(dir, request, resume, progress)));
        return snapshot(dir, request, resume, RamWriter.Progress.NONE);
    }

    private Map<String, Object> snapshot(
            Path dir, VmSnapshots.Request request, boolean resume, RamWriter.Progress progress)
            throws InterruptedException {
        var saved = VmSnapshots.save(vm, dir, request, progress);
        return Json.object(
                "path",
                saved.file().toString(),
                "type",
                saved.type(),
                "ram-bytes-written",
                saved.ramBytesWritten(),
                "ram-blocks-by-reference",
                saved.ramBlocksByReference(),
                "duration-ms",
                saved.millis(),
                "pause-ms",
                saved.pauseMicros() / 1000,
                "pause-us",
                saved.pauseMicros(),
                "live-passes",
                (long) saved.passes(),
                "resumed",
                resume);
    }

    @Override
    public Map<String, Object> templateCreate(Path dir) throws Exception {
        if (!dir.isAbsolute())
            throw new IllegalArgumentException("\"path\" must be absolute (the VMM's directory is not yours)");
        var made = Templates.createFromClone(vm, dir);
        return Json.object(
                "path",
                made.dir().toString(),
                "parent",
                made.parent().toString(),
                "depth",
                (long) made.depth(),
                "layer-bytes",
                made.layerBytes(),
                "layer-runs",
                (long) made.layerRuns(),
                "paused-ms",
                made.pausedMillis());
    }

    /** Waits up to {@code millis} for its jobs to conclude, so their last events reach the clients. */
    public void awaitJobs(long millis) throws InterruptedException {
        jobs.awaitIdle(millis);
    }

    @Override
    public List<Object> jobs() {
        return jobs.describe();
    }

    @Override
    public void cancelJob(String id) {
        jobs.cancel(id);
    }
}
