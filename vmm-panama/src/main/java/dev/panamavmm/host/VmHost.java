package dev.panamavmm.host;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.api.ApiCommands;
import dev.panamavmm.api.ApiHandler;
import dev.panamavmm.api.ApiServer;
import dev.panamavmm.control.ApiEvents;
import dev.panamavmm.control.Standby;
import dev.panamavmm.control.VmControl;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.log.VmmLogProvider;
import dev.panamavmm.migration.IoErrors;
import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.LoadedSnapshot;
import dev.panamavmm.vmm.LocalMigration;
import dev.panamavmm.vmm.MigrationParameters;
import dev.panamavmm.vmm.NetOverrides;
import dev.panamavmm.vmm.TcpAddress;
import dev.panamavmm.vmm.TcpMigration;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmSnapshots;
import dev.panamavmm.vmm.VsockConfig;
import java.io.IOException;
import java.io.OutputStream;
import java.net.ServerSocket;
import java.nio.channels.FileChannel;
import java.nio.channels.OverlappingFileLockException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.slf4j.MDC;

/**
 * The host daemon ({@code vmm host}): many VMs, each with its own API socket (the single-VM API)
 * and console file. With {@link Isolation#SHARED} they run in this JVM; with
 * {@link Isolation#PROCESS} each runs in a warm {@code vmm standby} worker taken from a
 * {@link StandbyPool}, which outlives this process and is re-attached from the state directory by
 * the next host. Events on the host's own API: {@code VM_STARTED}, {@code VM_STOPPED} and
 * {@code VM_FAILED} (with the reason).
 */
public final class VmHost implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(VmHost.class);
    /** How long a request waits for a warm worker when the pool is empty (a worker warms up in ~1-3 s). */
    static final long TAKE_MILLIS = 60_000;
    /** How long a new host waits for the state directory's previous host to finish ending. */
    static final long LOCK_WAIT_MILLIS = 5_000;

    /** Where a host's VMs run. */
    public enum Isolation {
        SHARED,
        PROCESS;

        public String label() {
            return name().toLowerCase();
        }
    }

    /** How the host sends one of its VMs a command: to the VM's own API in this JVM, or to its worker. */
    @FunctionalInterface
    private interface VmApi {
        Object execute(String command, Map<String, Object> args) throws Exception;
    }

    /** A VM of this host: in this JVM or in a worker process. */
    private sealed interface Hosted permits InProcess, InWorker, Arriving {
        String id();

        VmApi api();

        Map<String, Object> describe();
    }

    /** {@code requestNanos}: when the request that made it arrived (0 for a VM that came by live update). */
    private record InProcess(
            String id,
            Vm vm,
            ApiHandler handler,
            ApiServer server,
            OutputStream out,
            VmFiles.Names names,
            long requestNanos)
            implements Hosted {
        @Override
        public VmApi api() {
            return handler::execute;
        }

        @Override
        public Map<String, Object> describe() {
            var described = Json.object(
                    "id",
                    id,
                    "mode",
                    Isolation.SHARED.label(),
                    "status",
                    vm.status().qmpName(),
                    "api-socket",
                    names.apiSocket().toString(),
                    "console",
                    names.console().toString());
            // Request -> first KVM_RUN, as serve's query-clones reports it: the clone latency benchmarks read it.
            long entered = vm.firstEntryNanos();
            if (requestNanos != 0)
                described.put("first-entry-ms", entered == 0 ? null : (entered - requestNanos) / 1e6);
            return described;
        }
    }

    /** A VM of this JVM that an incoming live update will bring. */
    private record Arriving(VmFiles.Names names, String from, Runnable stopWaiting) implements Hosted {
        @Override
        public String id() {
            return names.id();
        }

        @Override
        public VmApi api() {
            return (command, args) -> {
                throw new IllegalStateException(
                        "VM " + names.id() + " has not arrived yet (it waits for a migration on " + from + ")");
            };
        }

        @Override
        public Map<String, Object> describe() {
            return Json.object(
                    "id",
                    names.id(),
                    "mode",
                    Isolation.SHARED.label(),
                    "status",
                    "inmigrate",
                    "api-socket",
                    names.apiSocket().toString(),
                    "console",
                    names.console().toString());
        }
    }

    private record InWorker(Worker worker) implements Hosted {
        @Override
        public String id() {
            return worker.id;
        }

        @Override
        public VmApi api() {
            return (command, args) -> forward(worker, command, args);
        }

        @Override
        public Map<String, Object> describe() {
            String status = statusOf(worker, "unreachable");
            return Json.object(
                    "id",
                    worker.id,
                    "mode",
                    Isolation.PROCESS.label(),
                    "pid",
                    worker.pid,
                    "status",
                    status,
                    "api-socket",
                    worker.apiSocket.toString(),
                    "console",
                    worker.console.toString());
        }
    }

    private final Isolation isolation;
    private final Kvm kvm;
    private final VmFiles files;
    private final StandbyPool pool;
    private final FileChannel lockFile;
    private final Map<String, Hosted> vms = new ConcurrentHashMap<>();
    private final Map<Path, LoadedSnapshot> templates = new ConcurrentHashMap<>();
    private final AtomicReference<ApiServer> events = new AtomicReference<>();
    /** Closes VMs that ended by themselves and reports worker exits: never on a vCPU thread, which close joins. */
    private final ExecutorService reaper = Executors.newSingleThreadExecutor(
            r -> Thread.ofPlatform().daemon().name("host-reaper").unstarted(r));

    private VmHost(Isolation isolation, Kvm kvm, VmFiles files, int standby, List<String> launch, FileChannel lock) {
        this.isolation = isolation;
        this.kvm = kvm;
        this.files = files;
        this.lockFile = lock;
        this.pool = isolation == Isolation.PROCESS ? new StandbyPool(launch, standby, files, this::watch) : null;
    }

    /**
     * Opens a host on {@code stateDir} (locked: one host per state directory), re-attaches the
     * workers an earlier host left running there and forgets the dead ones, and starts filling
     * the pool. {@code kvm} runs the VMs of shared isolation (null in process isolation);
     * {@code launch} starts a VMM process as this one was started.
     */
    public static VmHost open(
            Isolation isolation, Kvm kvm, Path stateDir, Path consoleDir, int standby, List<String> launch) {
        FileChannel lock;
        try {
            lock = FileChannel.open(stateDir.resolve("host.lock"), StandardOpenOption.CREATE, StandardOpenOption.WRITE);
        } catch (IOException e) {
            throw new HostException("cannot use the state directory " + stateDir + ": " + IoErrors.reason(e));
        }
        if (!lock(lock)) {
            close(lock);
            throw new HostException("the state directory " + stateDir + " is in use by another vmm host");
        }
        var host = new VmHost(isolation, kvm, new VmFiles(stateDir, consoleDir), standby, launch, lock);
        host.reattach(stateDir);
        if (host.pool != null) host.pool.start();
        return host;
    }

    /**
     * Locks the state directory, waiting up to {@link #LOCK_WAIT_MILLIS} for a host that is ending
     * (its quit is answered before it has ended its standby workers and let go of the lock).
     */
    private static boolean lock(FileChannel lock) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(LOCK_WAIT_MILLIS);
        while (true) {
            try {
                if (lock.tryLock() != null) return true;
            } catch (OverlappingFileLockException | IOException e) {
                return false;
            }
            if (System.nanoTime() - deadline > 0) return false;
            try {
                Thread.sleep(50);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return false;
            }
        }
    }

    /** The host API server, which gets the VM_* events. */
    public void attach(ApiServer server) {
        events.set(server);
    }

    /** The host's commands; {@code quit} ends the host. */
    public ApiHandler handler(Runnable quit) {
        return new ApiCommands()
                .add(
                        "boot",
                        List.of("memory", "cpus", "cmdline", "kernel", "mem-path", "shared"),
                        args -> start("boot", args))
                .add("restore", List.of("path", "resume"), args -> {
                    ApiHandler.requireString(args, "path", "a snapshot directory");
                    return start("restore", args);
                })
                .add("clone", List.of("template", "resume", "net", "vsock"), args -> {
                    ApiHandler.requireString(args, "template", "a template directory");
                    // Refused here, before a worker is taken.
                    NetOverrides.fromJson(args.get("net"));
                    VsockConfig.ForClone.fromJson(args.get("vsock"));
                    return start("clone", args);
                })
                .add(
                        "incoming",
                        List.of("uri", "tls-creds"),
                        args -> incoming(ApiHandler.requireString(args, "uri", "unix:PATH or tcp:[HOST]:PORT"), args))
                .add("destroy", List.of("id"), args -> {
                    destroy(find(args));
                    return Map.of();
                })
                .add("stop", List.of("id"), args -> forward("stop", args))
                .add("query-metrics", List.of("id"), args -> forward("query-metrics", args))
                .add("cont", List.of("id"), args -> forward("cont", args))
                .add(
                        "snapshot",
                        List.of("id", "path", "bypass-shared-memory", "resume", "type", "live", "detach"),
                        args -> forward("snapshot", args))
                .add("migrate", List.of("id", "uri", "detach"), args -> forward("migrate", args))
                .add("balloon", List.of("id", "target-mib"), args -> forward("balloon", args))
                .add("query-balloon", List.of("id"), args -> forward("query-balloon", args))
                .add(
                        "handover",
                        List.of("host"),
                        args -> handover(Path.of(ApiHandler.requireString(args, "host", "the new host's API socket"))))
                .add(
                        "query-vms",
                        args -> vms.values().stream()
                                .sorted(Comparator.comparingLong(h -> number(h.id())))
                                .map(Hosted::describe)
                                .toList())
                .add(
                        "query-host",
                        args -> Json.object(
                                "isolation",
                                isolation.label(),
                                "state-dir",
                                files.stateDir().toString(),
                                "vms",
                                vms.size(),
                                "standby",
                                pool == null
                                        ? List.of()
                                        : pool.workers().stream()
                                                .map(Worker::describe)
                                                .toList()))
                .add("quit", args -> {
                    quit.run();
                    return Map.of();
                });
    }

    /**
     * Live update of the host: every VM of this JVM moves to the host at {@code target} (a new
     * {@code vmm host}, its {@code incoming} then this VM's {@code migrate}, one VM at a time);
     * VMs in worker processes stay where they are. A VM that fails to move keeps running here,
     * and the handover stops there with that error.
     */
    private Map<String, Object> handover(Path target) throws Exception {
        var moved = new ArrayList<Object>();
        var stayed = new ArrayList<Object>();
        var ordered = vms.values().stream()
                .sorted(Comparator.comparingLong(h -> number(h.id())))
                .toList();
        try (var client = ApiClient.connect(target, 0, ApiClient.GREETING_MILLIS)) {
            for (var hosted : ordered) {
                if (!(hosted instanceof InProcess vm)) {
                    stayed.add(hosted.id());
                    continue;
                }
                var socket = files.stateDir().resolve("handover-" + vm.id() + ".sock");
                var there = Json.asObject(
                        execute(client, "incoming", Json.object("uri", "unix:" + socket)), "the new host's reply");
                var result = Json.asObject(
                        vm.api().execute("migrate", Json.object("uri", "unix:" + socket)), "the migration's result");
                // Gone from this host before the reply, not when the reaper gets to it: a query-vms
                // right after the handover must not list it (seen under load: it was still "shutdown").
                var reason = vm.vm().termination().join();
                if (vms.remove(vm.id(), vm)) {
                    closeShared(vm);
                    ended(vm.id(), false, reason.describe());
                }
                moved.add(Json.object(
                        "id",
                        vm.id(),
                        "to",
                        there.get("id"),
                        "api-socket",
                        there.get("api-socket"),
                        "downtime-ms",
                        result.get("downtime-ms")));
            }
        }
        return Json.object("moved", moved, "stayed", stayed);
    }

    private Hosted find(Map<String, Object> args) {
        String id = ApiHandler.requireString(args, "id", "a VM id");
        var vm = vms.get(id);
        if (vm == null) throw new IllegalArgumentException("no VM " + id);
        return vm;
    }

    /** A command of one VM's own API, given with its {@code id}. */
    private Object forward(String command, Map<String, Object> args) throws Exception {
        var vm = find(args);
        var rest = new LinkedHashMap<>(args);
        rest.remove("id");
        return vm.api().execute(command, rest);
    }

    /** Sends a command to a worker's API; its error becomes this request's. */
    static Object forward(Worker worker, String command, Map<String, Object> args) {
        try (var client = ApiClient.connect(worker.apiSocket, 0, ApiClient.GREETING_MILLIS)) {
            return execute(client, command, args);
        }
    }

    /** The request that gives a worker its VM, on the connection the pool made while it waited. */
    private static Object adopt(Worker worker, String command, Map<String, Object> args) {
        var client = worker.takeClient();
        if (client == null) return forward(worker, command, args);
        try (client) {
            return execute(client, command, args);
        }
    }

    private static Object execute(ApiClient client, String command, Map<String, Object> args) {
        var reply = client.execute(command, args.isEmpty() ? null : args);
        if (reply.get("error") instanceof Map<?, ?> error)
            throw new IllegalStateException(String.valueOf(error.get("desc")));
        return reply.get("return");
    }

    /** A new VM from {@code boot}, {@code restore} or {@code clone}; returns once it runs (or is paused). */
    private Map<String, Object> start(String command, Map<String, Object> args) throws Exception {
        long started = System.nanoTime();
        var result = isolation == Isolation.SHARED ? startShared(command, args, started) : startInWorker(command, args);
        result.put("duration-ms", (System.nanoTime() - started) / 1e6);
        return result;
    }

    private Map<String, Object> startShared(String command, Map<String, Object> args, long requestNanos)
            throws Exception {
        boolean resume = ApiHandler.flag(args, "resume", true);
        var names = files.claim();
        // The VM's threads (vCPUs, devices) are started below and inherit its id for their log lines.
        try (var _ = MDC.putCloseable(VmmLogProvider.VM_KEY, names.id())) {
            return startShared(command, args, requestNanos, resume, names);
        }
    }

    private Map<String, Object> startShared(
            String command, Map<String, Object> args, long requestNanos, boolean resume, VmFiles.Names names)
            throws Exception {
        var out = Files.newOutputStream(names.console(), StandardOpenOption.WRITE, StandardOpenOption.APPEND);
        var listener = new ApiEvents();
        Vm vm;
        try {
            args = withOwnVsock(command, args, names.id());
            vm = switch (command) {
                case "restore" ->
                    VmBuilder.fromSnapshot(
                            kvm,
                            VmSnapshots.load(Path.of((String) args.get("path"))),
                            VmBuilder.Mode.CONTINUE,
                            out,
                            listener);
                case "clone" ->
                    Templates.clone(
                            kvm,
                            VsockConfig.ForClone.apply(
                                    NetOverrides.apply(
                                            template(Path.of((String) args.get("template"))),
                                            NetOverrides.fromJson(args.get("net"))),
                                    VsockConfig.ForClone.fromJson(args.get("vsock"))),
                            out,
                            listener);
                default -> VmBuilder.boot(kvm, Standby.machine(args), out, listener);
            };
        } catch (Exception e) {
            close(out);
            Files.deleteIfExists(names.console()); // nothing ran: the name is free again
            throw e;
        }
        var hosted = register(names, out, listener, vm, requestNanos);
        try {
            if (!resume) vm.pauseBeforeStart();
            vm.start();
        } catch (RuntimeException e) {
            vms.remove(hosted.id(), hosted);
            closeShared(hosted);
            throw e;
        }
        event("VM_STARTED", Json.object("id", names.id(), "mode", isolation.label()));
        var result = Json.object(
                "id",
                names.id(),
                "mode",
                isolation.label(),
                "status",
                resume ? "running" : "paused",
                "api-socket",
                names.apiSocket().toString(),
                "console",
                names.console().toString());
        if (args.get("vsock") instanceof Map<?, ?> vsock) result.put("vsock", vsock.get("uds"));
        return result;
    }

    /**
     * A clone's request with {@code "vsock": {"uds": STATE/ID.vsock}} added when its template has
     * a vsock device and the request names no socket: each clone listens on a path of its own
     * (the template's is the template's; two VMMs cannot listen on one). The CID stays the
     * template's unless the request's {@code "vsock"} gives one: a CID only has to be unique within
     * one VM's socket, since every VM's host side is its own Unix socket.
     */
    private Map<String, Object> withOwnVsock(String command, Map<String, Object> args, String id) {
        if (!"clone".equals(command) || args.get("vsock") != null) return args;
        var template = template(Path.of((String) args.get("template")));
        if (template.config().vsock() == null) return args;
        var with = new LinkedHashMap<>(args);
        with.put("vsock", Json.object("uds", files.vsock(id).toString()));
        return with;
    }

    /** Gives a VM of this JVM its API socket and a place in the list; a guest that ends is reaped. */
    private InProcess register(VmFiles.Names names, OutputStream out, ApiEvents listener, Vm vm, long requestNanos) {
        var api = ApiHandler.forVm(new VmControl(vm, listener::emit));
        ApiServer server;
        try {
            server = ApiServer.start(names.apiSocket(), api);
        } catch (RuntimeException e) {
            vm.close();
            close(out);
            throw e;
        }
        listener.attach(server);
        var hosted = new InProcess(names.id(), vm, api, server, out, names, requestNanos);
        vms.put(names.id(), hosted);
        vm.termination()
                .thenAccept(reason -> reaper.execute(() -> {
                    if (vms.remove(hosted.id(), hosted)) {
                        closeShared(hosted);
                        ended(hosted.id(), reason instanceof VmExitReason.Failed, reason.describe());
                    }
                }));
        return hosted;
    }

    /**
     * Waits for a VM: a live update ({@code migrate} of a VMM, or of another VM of a host) on a
     * Unix socket, or a migration from another host over TCP ({@code tcp:[HOST]:PORT}, TLS with
     * {@code tls-creds}; port 0: any, the reply's {@code uri} says which); answers once it listens, as QEMU's
     * migrate-incoming does. The VM is listed as {@code inmigrate} until it arrives
     * ({@code VM_STARTED}) or the migration fails ({@code VM_FAILED}).
     */
    private Map<String, Object> incoming(String uri, Map<String, Object> args) throws Exception {
        if (uri.startsWith("tcp:")) {
            var address = TcpAddress.parse(uri);
            if (isolation != Isolation.SHARED) return incomingInWorker(args);
            var params = MigrationParameters.DEFAULTS.withTls(VmControl.tlsCredentials(args.get("tls-creds")));
            return incomingSharedTcp(address, params);
        }
        if (!uri.startsWith("unix:") || uri.length() == 5)
            throw new IllegalArgumentException("\"uri\" must be unix:PATH or tcp:[HOST]:PORT");
        if (args.get("tls-creds") != null) throw new IllegalArgumentException("\"tls-creds\" is for tcp: addresses");
        var socket = Path.of(uri.substring(5)).toAbsolutePath();
        if (isolation != Isolation.SHARED) return incomingInWorker(args);
        var result = incomingShared(
                socket.toString(),
                () -> close(socket), // no source finds it now
                (out, listener, listening) ->
                        LocalMigration.receive(kvm, socket, 10, out, listener, config -> null, listening));
        result.put("socket", socket.toString());
        return result;
    }

    private Map<String, Object> incomingSharedTcp(TcpAddress address, MigrationParameters params) throws Exception {
        var server = new TcpListening();
        var result = incomingShared(
                address.toString(),
                server::stop,
                (out, listener, listening) ->
                        TcpMigration.receiveStoppable(kvm, address, params, out, listener, config -> null, s -> {
                            server.listening(s);
                            listening.run();
                        }));
        result.put("uri", new TcpAddress(address.host(), server.port()).toString());
        return result;
    }

    /** How a VM of this JVM arrives; {@code listening} runs once a source can connect. */
    private interface Arrival {
        Vm receive(OutputStream console, ApiEvents listener, Runnable listening) throws Exception;
    }

    /** A TCP arrival's listening socket, closed by a destroy that comes before or after it listens. */
    private static final class TcpListening {
        private ServerSocket server;
        private boolean stopped;

        synchronized void listening(ServerSocket s) {
            server = s;
            if (stopped) close(s);
        }

        synchronized void stop() {
            stopped = true;
            if (server != null) close(server);
        }

        synchronized int port() {
            return server.getLocalPort();
        }
    }

    private Map<String, Object> incomingShared(String from, Runnable stopWaiting, Arrival arrival) throws Exception {
        var names = files.claim();
        var out = Files.newOutputStream(names.console(), StandardOpenOption.WRITE, StandardOpenOption.APPEND);
        var listener = new ApiEvents();
        var arriving = new Arriving(names, from, stopWaiting);
        vms.put(names.id(), arriving);
        var listening = new CompletableFuture<Void>();
        Thread.ofPlatform().name("incoming-" + names.id()).daemon().start(() -> {
            Vm vm;
            try {
                vm = arrival.receive(out, listener, () -> listening.complete(null));
            } catch (Throwable e) {
                close(out);
                // Never listened: the request fails with this. Else it was answered: the failure is an event.
                if (!listening.completeExceptionally(e) && vms.remove(names.id(), arriving))
                    ended(names.id(), true, "the incoming migration failed: " + e.getMessage());
                return;
            }
            if (!vms.remove(names.id(), arriving)) { // destroyed while it waited
                vm.end(new VmExitReason.Stopped("destroy"));
                vm.close();
                close(out);
                return;
            }
            try {
                register(names, out, listener, vm, 0);
                event("VM_STARTED", Json.object("id", names.id(), "mode", isolation.label()));
            } catch (RuntimeException e) {
                ended(names.id(), true, e.getMessage());
            }
        });
        try {
            listening.get(); // the socket exists when the reply goes: the source may connect at once
        } catch (ExecutionException e) {
            vms.remove(names.id(), arriving);
            Files.deleteIfExists(names.console()); // nothing came: the name is free again
            throw e.getCause() instanceof Exception x ? x : e;
        }
        return Json.object(
                "id",
                names.id(),
                "mode",
                isolation.label(),
                "status",
                "inmigrate",
                "api-socket",
                names.apiSocket().toString(),
                "console",
                names.console().toString());
    }

    private Map<String, Object> incomingInWorker(Map<String, Object> args) throws Exception {
        var worker = pool.take(TAKE_MILLIS);
        Object reply;
        try {
            reply = adopt(worker, "incoming", args);
        } catch (RuntimeException e) {
            pool.giveBack(worker);
            throw e;
        }
        var hosted = new InWorker(worker);
        vms.put(worker.id, hosted);
        worker.markAdopted();
        if (worker.exited()) workerEnded(worker);
        // The worker answers at once; the VM comes with the migration. Its status says when.
        Thread.ofPlatform().name("incoming-" + worker.id).daemon().start(() -> awaitArrival(hosted));
        var result = Json.object("id", worker.id, "mode", isolation.label(), "pid", worker.pid, "status", "inmigrate");
        if (reply instanceof Map<?, ?> m) {
            if (m.get("socket") != null) result.put("socket", m.get("socket"));
            if (m.get("uri") != null) result.put("uri", m.get("uri"));
        }
        result.put("api-socket", worker.apiSocket.toString());
        result.put("console", worker.console.toString());
        return result;
    }

    /** Polls a worker that waits for a migration until its VM runs, or it is on standby again (failed). */
    private void awaitArrival(InWorker hosted) {
        var worker = hosted.worker();
        while (vms.get(worker.id) == hosted && !worker.exited()) {
            String status = statusOf(worker, "inmigrate"); // busy, or ending: the exit watch reports an end
            if (status.equals(Standby.WAITING_STATUS)) {
                if (vms.remove(worker.id, hosted)) {
                    ended(
                            worker.id,
                            true,
                            "the incoming migration failed"
                                    + lastError(worker).map(e -> ": " + e).orElse(""));
                    try {
                        endWorker(
                                worker,
                                true); // back on standby, but its name and console are used: a fresh one replaces it
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                    }
                }
                return;
            }
            if (!status.equals("inmigrate")) {
                event("VM_STARTED", Json.object("id", worker.id, "mode", isolation.label(), "pid", worker.pid));
                return;
            }
            try {
                Thread.sleep(20);
            } catch (InterruptedException e) {
                return;
            }
        }
    }

    private LoadedSnapshot template(Path dir) {
        return templates.computeIfAbsent(dir.toAbsolutePath().normalize(), Templates::open);
    }

    private Map<String, Object> startInWorker(String command, Map<String, Object> args) throws Exception {
        var worker = pool.take(TAKE_MILLIS);
        Object reply;
        try {
            args = withOwnVsock(command, args, worker.id);
            reply = adopt(worker, command, args); // the standby's own restore, clone or boot
        } catch (RuntimeException e) {
            pool.giveBack(worker); // a failed adoption leaves a standby free for the next request
            throw e;
        }
        var hosted = new InWorker(worker);
        vms.put(worker.id, hosted);
        worker.markAdopted();
        if (worker.exited()) workerEnded(worker); // it died between the reply and now: report it once
        event("VM_STARTED", Json.object("id", worker.id, "mode", isolation.label(), "pid", worker.pid));
        var result = Json.object(
                "id",
                worker.id,
                "mode",
                isolation.label(),
                "pid",
                worker.pid,
                "status",
                reply instanceof Map<?, ?> m ? m.get("status") : null,
                "api-socket",
                worker.apiSocket.toString(),
                "console",
                worker.console.toString());
        if (args.get("vsock") instanceof Map<?, ?> vsock) result.put("vsock", vsock.get("uds"));
        if (reply instanceof Map<?, ?> m) result.put("worker-ms", m.get("duration-ms"));
        return result;
    }

    private void destroy(Hosted vm) throws InterruptedException {
        if (!vms.remove(vm.id(), vm)) throw new IllegalArgumentException("no VM " + vm.id());
        switch (vm) {
            case InProcess p -> {
                p.vm().end(new VmExitReason.Stopped("destroy"));
                closeShared(p);
            }
            case InWorker w -> endWorker(w.worker(), false);
            case Arriving a -> a.stopWaiting().run(); // no source finds it now; a VM that arrives anyway is ended
        }
        ended(vm.id(), false, "destroyed");
    }

    /**
     * Asks a worker to end its VM (quit), then waits for the process; kills it if it does not end
     * within 10 s. {@code failed}: its stderr file stays.
     */
    private static void endWorker(Worker worker, boolean failed) throws InterruptedException {
        worker.markDestroying();
        try {
            forward(worker, "quit", Map.of());
        } catch (RuntimeException e) {
            log.debug("worker {} did not take quit: {}", worker.id, e.getMessage());
        }
        var handle = ProcessHandle.of(worker.pid);
        if (handle.isPresent() && worker.alive()) {
            try {
                handle.get().onExit().get(10, TimeUnit.SECONDS);
            } catch (Exception e) {
                if (e instanceof InterruptedException i) throw i;
                if (worker.alive()) handle.get().destroyForcibly();
            }
        }
        if (failed) worker.forgetFailed();
        else worker.forget();
    }

    private static void closeShared(InProcess p) {
        p.server().close();
        p.vm().close();
        close(p.out());
    }

    /** Notices a worker's exit, whether this host started it or re-attached to it. */
    private void watch(Worker worker) {
        CompletableFuture<?> exit = worker.process != null
                ? worker.process.onExit()
                : ProcessHandle.of(worker.pid)
                        .map(ProcessHandle::onExit)
                        .orElse(CompletableFuture.completedFuture(null));
        exit.thenRun(() -> reaper.execute(() -> workerEnded(worker)));
    }

    private void workerEnded(Worker worker) {
        worker.markExited();
        if (pool != null && pool.remove(worker)) {
            log.warn(
                    "standby worker {} (pid {}) ended{}{}",
                    worker.id,
                    worker.pid,
                    exitStatus(worker),
                    lastError(worker).map(e -> ": " + e).orElse(""));
            worker.forgetFailed();
            return;
        }
        var hosted = vms.get(worker.id);
        if (!(hosted instanceof InWorker w) || w.worker() != worker || !vms.remove(worker.id, hosted)) return;
        // A worker that ends normally (its guest exited, its own API's quit) removes its API socket;
        // one killed or crashed cannot.
        boolean crashed = Files.exists(worker.apiSocket);
        String said = lastError(worker).map(e -> ": " + e).orElse("");
        if (crashed) worker.forgetFailed();
        else worker.forget();
        if (crashed) {
            ended(worker.id, true, "the worker process " + worker.pid + " ended" + exitStatus(worker) + said);
        } else {
            ended(worker.id, false, "the VM ended in its worker process " + worker.pid + exitStatus(worker) + said);
        }
    }

    /** The last line a worker wrote to its stderr file, without the "vmm: " prefix. */
    private static Optional<String> lastError(Worker worker) {
        try {
            var err = worker.record.resolveSibling(worker.id + ".err");
            return Files.readString(err)
                    .lines()
                    .filter(l -> !l.isBlank())
                    .reduce((a, b) -> b)
                    .map(l -> l.startsWith("vmm: ") ? l.substring(5) : l);
        } catch (IOException e) {
            return Optional.empty();
        }
    }

    private static String exitStatus(Worker worker) {
        if (worker.process == null) return "";
        int code = worker.process.exitValue();
        return code > 128 ? " (killed by signal " + (code - 128) + ")" : " (exit code " + code + ")";
    }

    private void ended(String id, boolean failed, String reason) {
        if (failed) log.warn("VM {} failed: {}", id, reason);
        event(failed ? "VM_FAILED" : "VM_STOPPED", Json.object("id", id, "reason", reason));
    }

    private void event(String name, Map<String, Object> data) {
        var server = events.get();
        if (server != null) server.event(name, data);
    }

    /**
     * Takes over the workers an earlier host recorded in {@code stateDir}: those still running
     * (same pid and start time) with a VM become this host's VMs, those on standby join the pool
     * (or are ended, in shared isolation); records of dead ones are removed.
     */
    private void reattach(Path stateDir) {
        List<Path> records;
        try (var list = Files.list(stateDir)) {
            records = list.filter(p -> p.getFileName().toString().matches("vm-\\d+\\.json"))
                    .toList();
        } catch (IOException e) {
            throw new HostException("cannot read the state directory " + stateDir + ": " + IoErrors.reason(e));
        }
        for (var record : records) {
            var worker = Worker.load(record);
            if (worker == null || !worker.alive()) {
                if (worker != null) worker.forgetFailed(); // it ended while no host watched: its stderr may say why
                else close(record);
                log.info("forgot {}: its worker is gone", record.getFileName());
                continue;
            }
            String status = null;
            if (Files.exists(worker.apiSocket)) {
                try {
                    if (forward(worker, "query-status", Map.of()) instanceof Map<?, ?> m)
                        status = String.valueOf(m.get("status"));
                } catch (RuntimeException e) {
                    status = null; // still warming up, or busy: a standby until it says otherwise
                }
            }
            boolean onStandby = status == null || status.equals(Standby.WAITING_STATUS);
            if (onStandby && pool == null) {
                ProcessHandle.of(worker.pid).ifPresent(ProcessHandle::destroy);
                worker.forget();
                continue;
            }
            if (onStandby) {
                pool.adoptIdle(worker);
            } else {
                vms.put(worker.id, new InWorker(worker));
                if (!worker.adopted()) worker.markAdopted();
            }
            watch(worker);
            log.info(
                    "re-attached {} (pid {}){}",
                    worker.id,
                    worker.pid,
                    onStandby ? " on standby" : ", its VM " + status);
        }
    }

    private static long number(String id) {
        try {
            return Long.parseLong(id.substring(id.lastIndexOf('-') + 1));
        } catch (RuntimeException e) {
            return Long.MAX_VALUE;
        }
    }

    private static void close(AutoCloseable c) {
        try {
            c.close();
        } catch (Exception e) {
            // nothing is lost: the file is complete or unused
        }
    }

    private static void close(Path leftover) {
        try {
            Files.deleteIfExists(leftover);
        } catch (IOException e) {
            // the next host tries again
        }
    }

    /**
     * Ends the host: VMs in this JVM end with it, standby workers are ended, and workers that run a
     * VM keep running (a new host on the same state directory re-attaches to them).
     */
    @Override
    public void close() {
        if (pool != null) pool.close();
        for (var hosted : new ArrayList<>(vms.values())) {
            if (hosted instanceof InProcess p && vms.remove(p.id(), p)) {
                p.vm().end(new VmExitReason.Stopped("the host's end"));
                closeShared(p);
            }
        }
        reaper.shutdown();
        close(lockFile);
    }

    /** The worker's VM status as its API says, or {@code unanswered} when it does not answer. */
    private static String statusOf(Worker worker, String unanswered) {
        try {
            return forward(worker, "query-status", Map.of()) instanceof Map<?, ?> m
                    ? String.valueOf(m.get("status"))
                    : "unknown";
        } catch (RuntimeException e) {
            return unanswered;
        }
    }
}
