package dev.panamavmm.cli;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.api.ApiException;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamVerifier;
import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.vmm.VmSnapshots;
import dev.panamavmm.vmm.memory.Sizes;
import java.io.IOException;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;

/** {@code vmm snapshot --api-socket S DIR}: asks a running VMM to save its VM; {@code vmm snapshot verify DIR} checks a saved one. */
final class SnapshotCommand implements Cli.Command {
    Path apiSocket;
    Path dir;
    boolean noBypass;
    final ApiWait wait = new ApiWait();

    boolean stop, resume, diff, live;

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec("snapshot", "Save a running VM (through its control API) into a snapshot directory.")
                .required("--api-socket", "PATH", "the running VMM's --api-socket", v -> apiSocket = Path.of(v))
                .parameter("DIR", "the snapshot directory (created if missing)", v -> dir = Path.of(v))
                .flag(
                        "--no-bypass",
                        "write shared RAM too, so the snapshot does not depend on the memory file",
                        () -> noBypass = true)
                .flag("--stop", "end the VM after saving (the default)", () -> stop = true)
                .flag("--resume", "let the guest run on after saving", () -> resume = true)
                .flag(
                        "--diff",
                        "write only the pages changed since the VM's last snapshot, as a layer over it",
                        () -> diff = true)
                .flag("--live", "copy RAM while the guest runs; pause it only for the last pages", () -> live = true)
                .include(wait::declare)
                .subcommand("verify", Verify::new)
                .subcommand("merge", Merge::new);
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        if (stop && resume) throw new UsageException("--stop and --resume are mutually exclusive");
        try (var client = wait.connect(apiSocket)) {
            // A job: the VMM answers at once and the progress is drawn here, on the client's terminal.
            var reply = client.execute(
                    "snapshot",
                    Json.object(
                            "path",
                            dir.toAbsolutePath().toString(),
                            "bypass-shared-memory",
                            !noBypass,
                            "resume",
                            resume,
                            "type",
                            diff ? "diff" : "full",
                            "live",
                            live,
                            "detach",
                            true));
            if (reply.containsKey("error")) {
                var error = Json.asObject(reply.get("error"), "error");
                io.err().println("vmm: snapshot failed: " + error.get("desc"));
                return Main.FAILED;
            }
            String job =
                    String.valueOf(Json.asObject(reply.get("return"), "return").get("job-id"));
            var done = awaitJob(client, job);
            if (done.get("error") != null) {
                io.err().println("vmm: snapshot failed: " + done.get("error"));
                return Main.FAILED;
            }
            var r = Json.asObject(done.get("result"), "result");
            io.out()
                    .printf(
                            "saved %s (%s) in %s ms, guest paused %s ms: %s bytes of RAM written, %s block(s) by reference%n",
                            r.get("path"),
                            r.get("type"),
                            r.get("duration-ms"),
                            r.get("pause-ms"),
                            r.get("ram-bytes-written"),
                            r.get("ram-blocks-by-reference"));
            return Main.OK;
        }
    }

    /** {@code vmm snapshot merge DIR OUT}: folds a diff snapshot and the bases under it into one full snapshot. */
    static final class Merge implements Cli.Command {
        static final String DESCRIPTION =
                "Fold a diff snapshot and its chain of bases into one full snapshot (the chain is not changed).";
        Path dir, out;

        @Override
        public Cli.Spec spec() {
            return new Cli.Spec("merge", DESCRIPTION)
                    .parameter("DIR", "the newest diff snapshot of the chain", v -> dir = Path.of(v))
                    .parameter("OUT", "the directory of the full snapshot (created if missing)", v -> out = Path.of(v));
        }

        @Override
        public int call(Cli.Io io) {
            var merged = VmSnapshots.merge(dir, out);
            io.out()
                    .printf(
                            "merged %d snapshot(s) into %s in %d ms: %d bytes of RAM%n",
                            merged.snapshots(), merged.file(), merged.millis(), merged.ramBytesWritten());
            io.out().flush();
            return Main.OK;
        }
    }

    /** Whether {@code message} is the event of job {@code id} concluding. */
    private static boolean concludes(Map<String, Object> message, String id) {
        return "JOB_STATUS_CHANGE".equals(message.get("event"))
                && message.get("data") instanceof Map<?, ?> data
                && id.equals(data.get("id"))
                && "concluded".equals(data.get("status"));
    }

    /**
     * Follows job {@code id} until it concludes, drawing its progress on stderr (a terminal only);
     * Ctrl-C or SIGTERM asks the VMM to cancel it (the guest is given back). Returns the job's entry.
     */
    static Map<String, Object> awaitJob(ApiClient client, String id) throws InterruptedException {
        return awaitJob(client, id, "saving RAM");
    }

    /** As {@link #awaitJob(ApiClient, String)}, the bar labelled {@code label}. */
    static Map<String, Object> awaitJob(ApiClient client, String id, String label) throws InterruptedException {
        var cancel = new AtomicBoolean();
        var previous = Signals.onTermination(name -> cancel.set(true));
        ProgressBar bar = null;
        long shown = 0;
        // The job's last event carries its result: a VMM that ends with the job (a save that stops
        // the VM) closes the connection after it, and a query would find nobody.
        var concluded = new AtomicReference<Map<String, Object>>();
        client.onEvent(e -> {
            if (concludes(e, id)) concluded.set(Json.asObject(e.get("data"), "event data"));
        });
        try {
            while (true) {
                if (concluded.get() != null) return concluded.get();
                Map<String, Object> reply;
                try {
                    if (cancel.getAndSet(false)) client.execute("job-cancel", Json.object("id", id));
                    reply = client.execute("query-jobs", null);
                } catch (ApiException closed) {
                    // The VMM ended: its last lines (the job's event) may still be unread.
                    try {
                        while (concluded.get() == null) {
                            var message = client.readMessage();
                            if (concludes(message, id)) concluded.set(Json.asObject(message.get("data"), "event data"));
                        }
                    } catch (IOException | RuntimeException end) {
                        // nothing more to read
                    }
                    if (concluded.get() != null) return concluded.get();
                    throw closed;
                }
                if (reply.get("error") instanceof Map<?, ?> error)
                    throw new UserException("query-jobs failed: " + error.get("desc"));
                Map<String, Object> job = null;
                for (var entry : Json.asList(reply.get("return"), "jobs")) {
                    var j = Json.asObject(entry, "job");
                    if (id.equals(j.get("id"))) job = j;
                }
                if (job == null) throw new UserException("the VMM no longer lists job " + id);
                long total = ((Number) job.get("total-progress")).longValue();
                long current = ((Number) job.get("current-progress")).longValue();
                if (total > 0 && current > shown) {
                    if (bar == null) bar = new ProgressBar(label, total);
                    bar.advance(current - shown);
                    shown = current;
                }
                if ("concluded".equals(job.get("status"))) return job;
                Thread.sleep(100);
            }
        } finally {
            if (bar != null) bar.done();
            Signals.restore(previous);
        }
    }

    /** {@code vmm snapshot verify DIR}: reads the whole snapshot and checks every checksum in it. */
    static final class Verify implements Cli.Command {
        static final String DESCRIPTION = "Check a snapshot's header, sections and stored RAM against its checksums"
                + " (exit 1 names the first damaged extent; format 1 RAM has none: said, exit 0).";
        Path dir;

        @Override
        public Cli.Spec spec() {
            return new Cli.Spec("verify", DESCRIPTION)
                    .parameter("DIR", "the snapshot directory", v -> dir = Path.of(v));
        }

        @Override
        public int call(Cli.Io io) {
            var snapshot = SnapshotReader.open(dir);
            io.out().println(summary(snapshot, RamVerifier.verify(snapshot)));
            io.out().flush();
            return Main.OK;
        }

        /** The line saying what was checked: "snapshot F is intact: 1 RAM block, 1 GiB checked in 310 ms". */
        static String summary(SnapshotReader snapshot, RamVerifier.Verified v) {
            String references = v.blocksByReference() == 0
                    ? ""
                    : "; " + v.blocksByReference()
                            + " RAM block(s) by reference to a memory file: its identity checked, not its contents";
            if (!v.checksums()) {
                return "snapshot " + snapshot.file() + " has format version " + snapshot.version()
                        + ": header and sections intact, its RAM carries no checksums" + references;
            }
            String ram = v.blocksChecked() == 0
                    ? "no RAM stored in it"
                    : v.blocksChecked() + " RAM block(s), " + Sizes.format(v.bytesChecked()) + " checked in "
                            + v.nanos() / 1_000_000 + " ms";
            return "snapshot " + snapshot.file() + " is intact: " + ram + references;
        }
    }
}
