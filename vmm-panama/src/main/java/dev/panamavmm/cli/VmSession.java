package dev.panamavmm.cli;

import dev.panamavmm.api.ApiServer;
import dev.panamavmm.control.ApiEvents;
import dev.panamavmm.control.Rehearsal;
import dev.panamavmm.control.Standby;
import dev.panamavmm.control.VmControl;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmListener;
import java.io.OutputStream;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.Function;

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
    static int serve(
            String consoleSpec, Path apiSocket, boolean startPaused, PrintWriter err, Kvm rehearse, VmFactory factory)
            throws Exception {
        try (var io = ConsoleIo.open(consoleSpec)) {
            var rehearsal = new AtomicBoolean(rehearse == null); // true once started (or not wanted)
            Runnable rehearseOnce = () -> {
                if (!rehearsal.getAndSet(true)) Rehearsal.startInBackground(rehearse);
            };
            var events = new ApiEvents(rehearseOnce);
            try (var vm = factory.create(io.output(), events)) {
                // SIGINT/SIGTERM end the VM like the API's quit: the VMM then exits normally (0),
                // instead of the JVM's own shutdown on a signal (exit 130/143, mid-cleanup). Before
                // the API socket appears: whoever sees the socket may signal at once.
                var previous = Signals.onTermination(
                        name -> vm.end(new VmExitReason.Stopped("signal", VmExitReason.Stopped.Cause.SIGNAL)));
                ApiServer api = null;
                var control = new VmControl(vm, events::emit);
                try {
                    if (apiSocket != null) {
                        api = ApiServer.start(apiSocket, control);
                    }
                    events.attach(api);
                    if (startPaused) vm.pauseBeforeStart();
                    vm.start();
                    if (!startPaused) rehearseOnce.run();
                    try (var _ = MetricsFile.startIfAsked(vm)) {
                        return runToEnd(io, vm, err);
                    }
                } finally {
                    // A save that ended the VM concludes its job just after: its event goes out first.
                    control.awaitJobs(10_000);
                    if (api != null) api.close();
                    Signals.restore(previous);
                }
            }
        }
    }

    /**
     * Runs a started VM until it ends: console input, the last console bytes, and the exit code
     * (the guest's, or 0/1 from the reason, which is printed unless the guest asked to exit). The
     * caller has SIGINT/SIGTERM end the VM.
     */
    static int runToEnd(ConsoleIo io, Vm vm, PrintWriter err) throws Exception {
        io.startInput(
                vm.serial(),
                () -> vm.end(new VmExitReason.Stopped("the console (Ctrl-A x)", VmExitReason.Stopped.Cause.CONSOLE)));
        var reason = vm.termination().get();
        vm.serial().flush();
        if (!(reason instanceof VmExitReason.GuestExit)) {
            err.println("vmm: " + reason.describe());
            err.flush();
        }
        return reason.exitCode();
    }

    /**
     * A standby VMM's life: its API (if {@code apiSocket}) from the start, SIGINT/SIGTERM or the
     * API's quit end it before a VM came ({@code stoppedMessage}, if any, is printed), and the VM
     * that {@code arrival} brings then runs to its end as in {@link #runToEnd}.
     */
    static int serveStandby(
            Kvm kvm,
            String consoleSpec,
            Path apiSocket,
            PrintWriter err,
            Function<Standby, CompletableFuture<Vm>> arrival,
            String stoppedMessage)
            throws Exception {
        try (var io = ConsoleIo.open(consoleSpec)) {
            var events = new ApiEvents();
            var stopped = new CompletableFuture<Vm>();
            try (var standby = new Standby(kvm, io.output(), events, () -> stopped.complete(null))) {
                // Before the API socket appears, for the whole life: a signal before a VM came ends
                // the process, one after ends the VM.
                var previous = Signals.onTermination(name -> {
                    var adopted = standby.adopted().getNow(null);
                    if (adopted != null)
                        adopted.end(new VmExitReason.Stopped("signal", VmExitReason.Stopped.Cause.SIGNAL));
                    else stopped.complete(null);
                });
                try (var api = apiSocket == null ? null : ApiServer.start(apiSocket, standby.handler())) {
                    events.attach(api);
                    Vm vm;
                    try {
                        vm = (Vm) CompletableFuture.anyOf(arrival.apply(standby), stopped)
                                .get();
                    } catch (ExecutionException e) {
                        throw e.getCause() instanceof Exception x ? x : e;
                    }
                    if (vm == null) {
                        if (stoppedMessage != null) {
                            err.println("vmm: " + stoppedMessage);
                            err.flush();
                        }
                        return Main.OK;
                    }
                    try (vm;
                            var _ = MetricsFile.startIfAsked(vm)) {
                        return runToEnd(io, vm, err);
                    }
                } finally {
                    Signals.restore(previous);
                }
            }
        }
    }
}
