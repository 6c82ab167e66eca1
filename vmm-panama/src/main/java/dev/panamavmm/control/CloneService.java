package dev.panamavmm.control;

import dev.panamavmm.api.ApiCommands;
import dev.panamavmm.api.ApiHandler;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.log.VmmLogProvider;
import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.Balloons;
import dev.panamavmm.vmm.LoadedSnapshot;
import dev.panamavmm.vmm.NetConfig;
import dev.panamavmm.vmm.NetOverrides;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.VsockConfig;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;
import org.slf4j.MDC;

/**
 * The clones of one process ({@code vmm serve}), and the templates they come from: each clone is a
 * VM in this JVM, started from a template's memory copy-on-write, destroyed on request or when its
 * guest ends.
 */
public final class CloneService implements AutoCloseable {
    private final Kvm kvm;
    private final Path consoleDir;
    private final Path apiSocket;
    private final Map<Path, LoadedSnapshot> templates = new ConcurrentHashMap<>();
    private final Map<String, Clone> clones = new ConcurrentHashMap<>();
    private final AtomicLong ids = new AtomicLong();
    /** Closes VMs whose guest ended by itself: never on the vCPU thread that reported it. */
    private final ExecutorService reaper = Executors.newSingleThreadExecutor(
            r -> Thread.ofPlatform().daemon().name("clone-reaper").unstarted(r));

    record Clone(String id, Vm vm, OutputStream console, long generationId, long requestNanos) {}

    public CloneService(Kvm kvm, Path consoleDir) {
        this(kvm, consoleDir, null);
    }

    /**
     * As above; a clone of a template with a vsock device whose request names no socket listens
     * on {@code API_SOCKET.clone-N.vsock}, next to the server's {@code apiSocket} (null: on the
     * template's path, so only one such clone at a time).
     */
    public CloneService(Kvm kvm, Path consoleDir, Path apiSocket) {
        this.kvm = kvm;
        this.consoleDir = consoleDir;
        this.apiSocket = apiSocket;
    }

    /**
     * The vsock device of clone {@code id}: {@code vsock} when the request named one, else a socket
     * of its own next to the API socket when the template has a vsock device (clones of one
     * template must not share its path; the CID stays the template's, which is enough: each VM's
     * host side is its own Unix socket, not the host kernel's vsock address space).
     */
    private VsockConfig.ForClone vsockFor(String id, LoadedSnapshot template, VsockConfig.ForClone vsock) {
        if (vsock != null || apiSocket == null || template.config().vsock() == null) return vsock;
        return new VsockConfig.ForClone(0, Path.of(apiSocket + "." + id + ".vsock"));
    }

    /**
     * The commands of a clone server: clone, query-clones, destroy, balloon and query-balloon (of
     * a clone, by id), template-create (a chained template of one of its clones, by id), and quit
     * (which runs {@code quit}).
     */
    public ApiHandler handler(Runnable quit) {
        return new ApiCommands()
                .add(
                        "clone",
                        List.of("template", "count", "net", "vsock"),
                        args -> clone(
                                Path.of(ApiHandler.requireString(args, "template", "DIRECTORY")),
                                (int) ApiHandler.number(args, "count", 1),
                                NetOverrides.fromJson(args.get("net")),
                                VsockConfig.ForClone.fromJson(args.get("vsock"))))
                .add(
                        "query-clones",
                        args -> clones.values().stream()
                                .map(c -> Json.object(
                                        "id",
                                        c.id(),
                                        "status",
                                        c.vm().status().qmpName(),
                                        "generation-id",
                                        String.format("0x%016x", c.generationId()),
                                        "first-entry-ms",
                                        c.vm().firstEntryNanos() == 0
                                                ? null
                                                : (c.vm().firstEntryNanos() - c.requestNanos()) / 1e6))
                                .toList())
                .add("destroy", List.of("id"), args -> {
                    String id = ApiHandler.requireString(args, "id", "a clone id");
                    var c = clones.remove(id);
                    if (c == null) throw new IllegalArgumentException("no clone " + id);
                    destroy(c);
                    return Map.of();
                })
                .add("balloon", List.of("id", "target-mib"), args -> {
                    if (!args.containsKey("target-mib"))
                        throw new IllegalArgumentException("\"target-mib\" is required (MiB)");
                    Balloons.setTarget(find(args).vm(), ApiHandler.number(args, "target-mib", 0));
                    return Map.of();
                })
                .add(
                        "query-balloon",
                        List.of("id"),
                        args -> Balloons.query(find(args).vm()))
                .add(
                        "template-create",
                        List.of("id", "path"),
                        args -> new VmControl(find(args).vm())
                                .templateCreate(Path.of(ApiHandler.requireString(args, "path", "DIRECTORY"))))
                .add("quit", args -> {
                    quit.run();
                    return Map.of();
                });
    }

    private Clone find(Map<String, Object> args) {
        String id = ApiHandler.requireString(args, "id", "a clone id");
        var c = clones.get(id);
        if (c == null) throw new IllegalArgumentException("no clone " + id);
        return c;
    }

    /** Starts {@code count} clones of a template; returns when all of them run. */
    public Map<String, Object> clone(Path template, int count) throws IOException {
        return clone(template, count, List.of(), null);
    }

    /**
     * As above, the clone's network devices on the taps and MACs of {@code nets}, and its vsock
     * device on {@code vsock}'s socket (null: the template's); both name one clone's resources, so
     * they are for a {@code count} of 1 only.
     */
    public Map<String, Object> clone(Path template, int count, List<NetConfig> nets, VsockConfig.ForClone vsock)
            throws IOException {
        if (count < 1 || count > 1000) throw new IllegalArgumentException("\"count\" must be 1 to 1000");
        if (count > 1 && !nets.isEmpty())
            throw new IllegalArgumentException("\"net\" names one clone's taps: not with a \"count\" above 1");
        if (vsock != null && count != 1)
            throw new IllegalArgumentException("\"vsock\" names one clone's socket: \"count\" must be 1");
        long start = System.nanoTime();
        var loaded = templates.computeIfAbsent(template.toAbsolutePath().normalize(), p -> Templates.open(p));
        var started = new ArrayList<Object>();
        for (int i = 0; i < count; i++) {
            String id;
            OutputStream console;
            while (true) {
                id = "clone-" + ids.incrementAndGet();
                if (consoleDir == null) {
                    console = OutputStream.nullOutputStream();
                    break;
                }
                Path log = consoleDir.resolve(id + ".log");
                try {
                    // CREATE_NEW: a log another launch's clone still writes is never truncated; its ID is skipped.
                    console = Files.newOutputStream(log, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
                    break;
                } catch (FileAlreadyExistsException e) {
                    // taken: try the next ID
                } catch (IOException e) {
                    throw new IllegalStateException(
                            "cannot create the console file " + log + ": " + IoErrors.reason(e));
                }
            }
            // The clone's threads (vCPUs, devices) are started below and inherit its id for their log lines.
            var logId = MDC.putCloseable(VmmLogProvider.VM_KEY, id);
            Vm vm;
            VsockConfig.ForClone ownVsock;
            try {
                ownVsock = vsockFor(id, loaded, vsock);
                vm = Templates.clone(
                        kvm,
                        VsockConfig.ForClone.apply(NetOverrides.apply(loaded, nets), ownVsock),
                        console,
                        new VmListener() {});
            } catch (RuntimeException e) {
                logId.close();
                console.close();
                throw e;
            }
            var c = new Clone(id, vm, console, vm.vmmPort().generationId(), start);
            clones.put(id, c);
            vm.termination()
                    .thenRun(() -> reaper.execute(() -> {
                        if (clones.remove(c.id(), c)) destroy(c);
                    }));
            try {
                vm.start();
            } finally {
                logId.close();
            }
            started.add(Json.object(
                    "id",
                    id,
                    "generation-id",
                    String.format("0x%016x", c.generationId()),
                    "console",
                    consoleDir == null ? null : consoleDir.resolve(id + ".log").toString(),
                    "vsock",
                    ownVsock == null ? null : ownVsock.uds().toString()));
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
