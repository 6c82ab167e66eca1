package dev.panamavmm.cli;

import dev.panamavmm.api.ApiServer;
import dev.panamavmm.api.ControlTarget;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.VmSnapshots;

import java.io.OutputStream;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Runs one VM in this process until it ends, for {@code vmm run} and {@code vmm restore}: the
 * console, the control API, SIGINT/SIGTERM, and the exit code.
 */
final class VmSession {
    private VmSession() {}

    /** Builds the VM once the console and listener exist. */
    @FunctionalInterface
    interface VmFactory {
        Vm create(OutputStream console, VmListener listener);
    }

    /**
     * Runs the VM the factory builds. With {@code rehearse} (the process's KVM handle), a
     * {@link Rehearsal} warms the save and restore paths in the background once the guest runs
     * (after the first {@code cont} when it starts paused); null skips it.
     */
    static int serve(String consoleSpec, Path apiSocket, boolean startPaused, PrintWriter err, Kvm rehearse, VmFactory factory)
            throws Exception {
        return serve(consoleSpec, apiSocket, startPaused, false, err, rehearse, factory);
    }

    /** For a VM the factory already started (an incoming migration: it rehearses while it waits, see IncomingCommand). */
    static int serveStarted(String consoleSpec, Path apiSocket, PrintWriter err, VmFactory factory) throws Exception {
        return serve(consoleSpec, apiSocket, false, true, err, null, factory);
    }

    private static int serve(String consoleSpec, Path apiSocket, boolean startPaused, boolean started, PrintWriter err,
                             Kvm rehearse, VmFactory factory) throws Exception {
        try (var io = ConsoleIo.open(consoleSpec)) {
            var api = new AtomicReference<ApiServer>();
            var rehearsal = new AtomicBoolean(rehearse == null); // true once started (or not wanted)
            var listener = new VmListener() {
                @Override
                public void ready() {
                    event("READY", null);
                }

                @Override
                public void paused() {
                    event("STOP", null);
                }

                @Override
                public void resumed() {
                    event("RESUME", null);
                    if (!rehearsal.getAndSet(true)) Rehearsal.startInBackground(rehearse);
                }

                @Override
                public void ended(VmExitReason reason) {
                    event("SHUTDOWN", Json.object("reason", reason.describe()));
                }

                private void event(String name, Map<String, Object> data) {
                    var a = api.get();
                    if (a != null) a.event(name, data);
                }
            };
            try (var vm = factory.create(io.output(), listener)) {
                // SIGINT/SIGTERM end the VM like the API's quit: the VMM then exits normally (0),
                // instead of the JVM's own shutdown on a signal (exit 130/143, mid-cleanup).
                var previous = Signals.onTermination(name -> vm.end(new VmExitReason.Stopped("signal")));
                try {
                    if (apiSocket != null) api.set(ApiServer.start(apiSocket, target(vm)));
                    io.startInput(vm.serial(), () -> vm.end(new VmExitReason.Stopped("the console (Ctrl-A x)")));
                    if (startPaused) vm.pauseBeforeStart();
                    if (!started) vm.start();
                    if (!startPaused && !rehearsal.getAndSet(true)) Rehearsal.startInBackground(rehearse);
                    var reason = vm.termination().get();
                    vm.serial().flush();
                    if (!(reason instanceof VmExitReason.GuestExit)) {
                        err.println("vmm: " + reason.describe());
                        err.flush();
                    }
                    return reason.exitCode();
                } finally {
                    var a = api.get();
                    if (a != null) a.close();
                    Signals.restore(previous);
                }
            }
        }
    }

    static ControlTarget target(Vm vm) {
        return new ControlTarget() {
            @Override
            public Map<String, Object> status() {
                boolean ended = vm.termination().isDone();
                String status = ended ? "shutdown" : vm.isPaused() ? "paused" : "running";
                return Json.object("status", status, "running", status.equals("running"));
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
            public Map<String, Object> migrate(String uri) throws Exception {
                if (!uri.startsWith("unix:") || uri.length() == 5) throw new IllegalArgumentException("\"uri\" must be unix:PATH");
                var r = dev.panamavmm.vmm.LocalMigration.send(vm, Path.of(uri.substring(5)), 10);
                return Json.object("downtime-ms", r.downtimeMillis(), "downtime-us", r.downtimeMicros(),
                        "confirmed-ms", r.confirmedMillis(), "total-ms", r.totalMillis(), "bytes-sent", r.bytesSent());
            }

            @Override
            public Map<String, Object> snapshot(Path dir, boolean bypass, boolean resume) throws Exception {
                var progress = new ProgressBar("saving RAM", vm.memory().size());
                var saved = VmSnapshots.save(vm, dir, bypass, resume, progress);
                progress.done();
                return Json.object("path", saved.file().toString(), "ram-bytes-written", saved.ramBytesWritten(),
                        "ram-blocks-by-reference", saved.ramBlocksByReference(), "duration-ms", saved.millis(),
                        "resumed", resume);
            }
        };
    }
}
