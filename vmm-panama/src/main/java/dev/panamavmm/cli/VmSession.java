package dev.panamavmm.cli;

import dev.panamavmm.api.ApiServer;
import dev.panamavmm.control.Rehearsal;
import dev.panamavmm.control.VmControl;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmListener;

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
                    if (apiSocket != null) api.set(ApiServer.start(apiSocket, new VmControl(vm, bytes -> new ProgressBar("saving RAM", bytes))));
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
}
