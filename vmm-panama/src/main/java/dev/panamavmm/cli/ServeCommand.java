package dev.panamavmm.cli;

import dev.panamavmm.api.ApiHandler;
import dev.panamavmm.api.ApiServer;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.LoadedSnapshot;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.VmSnapshots;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;

/**
 * {@code vmm serve}: one long-running process that keeps templates loaded and starts clones on
 * request. Everything that does not depend on the clone (the template's parsed state, its memory
 * file's identity check, the KVM fd) is done once; a clone costs a VM fd, memslots, vCPUs and a
 * private mapping of the template file.
 */
final class ServeCommand implements Cli.Command {
    Path apiSocket;

    Path consoleDir;

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec("serve", "Serve clones of templates over the control API: clone, query-clones, destroy, quit.")
                .required("--api-socket", "PATH", "the control API socket", v -> apiSocket = Path.of(v))
                .option("--console-dir", "DIR", null, "each clone's console goes to DIR/ID.log (created if missing; default: discarded)", v -> consoleDir = Path.of(v));
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        if (consoleDir != null) Cli.createDirectories("--console-dir", consoleDir);
        var quit = new CountDownLatch(1);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE); var clones = new Clones(kvm, consoleDir)) {
            var previous = Signals.onTermination(name -> quit.countDown());
            Rehearsal.startInBackground(kvm); // the first clone then runs warm code too
            try (var api = ApiServer.start(apiSocket, clones.handler(quit::countDown))) {
                quit.await();
            } finally {
                Signals.restore(previous);
            }
        }
        return Main.OK;
    }

    /** The clones of one serve process, and the templates they come from. */
    static final class Clones implements AutoCloseable {
        private final Kvm kvm;
        private final Path consoleDir;
        private final Map<Path, LoadedSnapshot> templates = new ConcurrentHashMap<>();
        private final Map<String, Clone> clones = new ConcurrentHashMap<>();
        private final AtomicLong ids = new AtomicLong();
        /** Closes VMs whose guest ended by itself: never on the vCPU thread that reported it. */
        private final ExecutorService reaper = Executors.newSingleThreadExecutor(r -> Thread.ofPlatform().daemon().name("clone-reaper").unstarted(r));

        record Clone(String id, Vm vm, OutputStream console, long generationId, long requestNanos) {}

        Clones(Kvm kvm, Path consoleDir) {
            this.kvm = kvm;
            this.consoleDir = consoleDir;
        }

        ApiHandler handler(Runnable quit) {
            return (command, args) -> switch (command) {
                case "clone" -> clone(Path.of(ApiHandler.requireString(args, "template", "DIRECTORY")),
                        (int) ApiHandler.number(args, "count", 1));
                case "query-clones" -> clones.values().stream().map(c -> Json.object("id", c.id(),
                        "status", c.vm().termination().isDone() ? "shutdown" : c.vm().isPaused() ? "paused" : "running",
                        "generation-id", String.format("0x%016x", c.generationId()),
                        "first-entry-ms", c.vm().firstEntryNanos() == 0 ? null : (c.vm().firstEntryNanos() - c.requestNanos()) / 1e6)).toList();
                case "destroy" -> {
                    String id = ApiHandler.requireString(args, "id", "a clone id");
                    var c = clones.remove(id);
                    if (c == null) throw new IllegalArgumentException("no clone " + id);
                    destroy(c);
                    yield Map.of();
                }
                case "quit" -> {
                    quit.run();
                    yield Map.of();
                }
                default -> null;
            };
        }

        /** Starts {@code count} clones of a template; returns when all of them run. */
        Map<String, Object> clone(Path template, int count) throws IOException {
            if (count < 1 || count > 1000) throw new IllegalArgumentException("\"count\" must be 1 to 1000");
            long start = System.nanoTime();
            var loaded = templates.computeIfAbsent(template.toAbsolutePath().normalize(), p -> Templates.open(p));
            var started = new ArrayList<Object>();
            for (int i = 0; i < count; i++) {
                String id = "clone-" + ids.incrementAndGet();
                OutputStream console = consoleDir == null ? OutputStream.nullOutputStream()
                        : Files.newOutputStream(consoleDir.resolve(id + ".log"));
                Vm vm;
                try {
                    vm = Templates.clone(kvm, loaded, console, new VmListener() {});
                } catch (RuntimeException e) {
                    console.close();
                    throw e;
                }
                var c = new Clone(id, vm, console, vm.vmmPort().generationId(), start);
                clones.put(id, c);
                vm.termination().thenRun(() -> reaper.execute(() -> {
                    if (clones.remove(id, c)) destroy(c);
                }));
                vm.start();
                started.add(Json.object("id", id, "generation-id", String.format("0x%016x", c.generationId()),
                        "console", consoleDir == null ? null : consoleDir.resolve(id + ".log").toString()));
            }
            return Json.object("clones", started, "duration-ms", (System.nanoTime() - start) / 1_000_000.0);
        }

        private static void destroy(Clone c) {
            c.vm().end(new VmExitReason.Stopped("destroy"));
            c.vm().close();
            try {
                c.console().close();
            } catch (IOException e) {
                // a console file that fails to close loses nothing the guest needs
            }
        }

        @Override
        public void close() {
            for (var id : new ArrayList<>(clones.keySet())) {
                var c = clones.remove(id);
                if (c != null) destroy(c);
            }
            reaper.shutdown();
        }
    }
}
