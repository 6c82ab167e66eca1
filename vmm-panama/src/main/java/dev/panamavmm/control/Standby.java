package dev.panamavmm.control;

import dev.panamavmm.api.ApiCommands;
import dev.panamavmm.api.ApiHandler;
import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.LocalMigration;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.MigrationParameters;
import dev.panamavmm.vmm.NetOverrides;
import dev.panamavmm.vmm.TcpAddress;
import dev.panamavmm.vmm.TcpMigration;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.VmSnapshots;
import dev.panamavmm.vmm.VsockConfig;
import dev.panamavmm.vmm.boot.MpTable;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.MemoryLoad;
import dev.panamavmm.vmm.memory.Sizes;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Function;
import java.util.function.Supplier;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A VMM that has no VM yet and adopts exactly one over its control API, as Firecracker's
 * process loads a snapshot and QEMU's {@code -incoming defer} waits for {@code migrate-incoming}:
 * the process starts (and warms up) before anyone needs it, so a restore or clone costs only the
 * work on the VM itself. Commands: {@code restore {"path": DIR, "resume": true, "memory-load": "mapped"}}, {@code clone
 * {"template": DIR}}, {@code boot {"memory", "cpus", "cmdline", "kernel", "mem-path", "shared"}}
 * and {@code incoming {"uri": "unix:PATH"}} (answers at once; the VM arrives with the migration),
 * plus {@code query-status} ({@code prelaunch}, {@code inmigrate}), {@code query-migrate} ({@code setup},
 * {@code active} while a migration comes in) and {@code quit}. Once it has a VM,
 * the API is that VM's ({@link VmControl}); a second adoption is refused.
 */
public final class Standby implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(Standby.class);

    /** What the process is doing. */
    public enum State {
        STANDBY,
        INMIGRATE,
        ADOPTED
    }

    /**
     * What {@code query-status} says while it waits for a VM: QEMU's name for a machine that has
     * not started ({@code -S}); {@code inmigrate} while it waits for a live update.
     */
    public static final String WAITING_STATUS = "prelaunch";

    /** The commands that give a standby VMM its VM. */
    private static final Set<String> ADOPTING = Set.of("restore", "clone", "boot", "incoming");

    private final Kvm kvm;
    private final OutputStream console;
    private final VmListener listener;
    private final Runnable quit;
    private final AtomicReference<State> state = new AtomicReference<>(State.STANDBY);
    private final CompletableFuture<Vm> adopted = new CompletableFuture<>();
    private volatile ApiHandler vmApi;
    private volatile Path incomingSocket;
    private volatile boolean sourceAccepted; // an incoming migration's source machine was accepted

    /** {@code listener} hears the adopted VM's events; {@code quit} ends the process (the API's quit before a VM came). */
    public Standby(Kvm kvm, OutputStream console, VmListener listener, Runnable quit) {
        this.kvm = kvm;
        this.console = console;
        this.listener = listener;
        this.quit = quit;
    }

    /** Completes with the VM once one is adopted and started. */
    public CompletableFuture<Vm> adopted() {
        return adopted;
    }

    public State state() {
        return state.get();
    }

    /** The control API: standby commands until a VM is adopted, then the VM's. */
    public ApiHandler handler() {
        var own = new ApiCommands()
                .add(
                        "query-status",
                        args -> Json.object(
                                "status",
                                state.get() == State.INMIGRATE ? "inmigrate" : WAITING_STATUS,
                                "singlestep",
                                false,
                                "running",
                                false))
                // A destination's query-migrate, as QEMU's: nothing before a migration, "setup"
                // while it waits for its source, "active" once the source's machine was accepted;
                // the VM's own API says the rest (it is handed over just after the guest resumes).
                .add(
                        "query-migrate",
                        args -> state.get() != State.INMIGRATE
                                ? Map.of()
                                : Json.object("status", sourceAccepted ? "active" : "setup"))
                .add("quit", args -> {
                    quit.run();
                    return Map.of();
                })
                .add("restore", List.of("path", "resume", "memory-load"), args -> {
                    var dir = Path.of(ApiHandler.requireString(args, "path", "a snapshot directory"));
                    var load = args.get("memory-load") == null
                            ? MemoryLoad.MAPPED
                            : MemoryLoad.parse(ApiHandler.requireString(args, "memory-load", "mapped, lazy or eager"));
                    return adopt(
                            () -> VmBuilder.fromSnapshot(
                                    kvm, VmSnapshots.load(dir), VmBuilder.Mode.CONTINUE, load, console, listener),
                            ApiHandler.flag(args, "resume", true));
                })
                .add("clone", List.of("template", "resume", "net"), args -> {
                    var dir = Path.of(ApiHandler.requireString(args, "template", "a template directory"));
                    var nets = NetOverrides.fromJson(args.get("net"));
                    var vsock = VsockConfig.ForClone.fromJson(args.get("vsock"));
                    return adopt(
                            () -> Templates.clone(
                                    kvm,
                                    VsockConfig.ForClone.apply(NetOverrides.apply(Templates.open(dir), nets), vsock),
                                    console,
                                    listener),
                            ApiHandler.flag(args, "resume", true));
                })
                .add("boot", List.of("memory", "cpus", "cmdline", "kernel", "mem-path", "shared"), args -> {
                    var config = machine(args);
                    return adopt(() -> VmBuilder.boot(kvm, config, console, listener), true);
                })
                .add(
                        "incoming",
                        List.of("uri", "tls-creds"),
                        args -> incoming(
                                ApiHandler.requireString(args, "uri", "unix:PATH or tcp:[HOST]:PORT"),
                                args.get("tls-creds")));
        for (var vmCommand : List.of("stop", "cont", "snapshot", "migrate")) {
            own.add(vmCommand, List.of("path", "bypass-shared-memory", "resume", "uri"), args -> {
                throw new IllegalStateException("this VMM has no VM yet (it is on "
                        + (state.get() == State.INMIGRATE ? "incoming" : "standby")
                        + "): restore, clone, boot or incoming gives it one");
            });
        }
        return new ApiHandler() {
            @Override
            public Object execute(String command, Map<String, Object> args) throws Exception {
                var api = vmApi;
                if (api == null) return own.execute(command, args);
                if (ADOPTING.contains(command)) throw alreadyTaken();
                return api.execute(command, args);
            }

            @Override
            public List<String> commands() {
                var api = vmApi;
                return api == null ? own.commands() : api.commands();
            }
        };
    }

    /** Builds the VM (the caller's request waits), starts it, and turns the API into the VM's. */
    private Map<String, Object> adopt(Supplier<Vm> build, boolean run) {
        if (!state.compareAndSet(State.STANDBY, State.ADOPTED)) throw alreadyTaken();
        long start = System.nanoTime();
        Vm vm;
        try {
            vm = build.get();
        } catch (RuntimeException e) {
            state.set(State.STANDBY); // nothing was built: still free for the next request
            throw e;
        }
        try {
            if (!run) vm.pauseBeforeStart();
            vm.start();
        } catch (RuntimeException e) {
            vm.close(); // no half-started VM stays behind; still free for the next request
            state.set(State.STANDBY);
            throw e;
        }
        handOver(vm);
        return Json.object("status", run ? "running" : "paused", "duration-ms", (System.nanoTime() - start) / 1e6);
    }

    private void handOver(Vm vm) {
        // The VM's API first: a query-status from here on answers for the VM. Marking the state
        // first let a poll in between read "prelaunch", and vmm host took the live update for failed.
        vmApi = ApiHandler.forVm(
                listener instanceof ApiEvents events ? new VmControl(vm, events::emit) : new VmControl(vm));
        state.set(State.ADOPTED);
        adopted.complete(vm);
    }

    private IllegalStateException alreadyTaken() {
        return new IllegalStateException(
                state.get() == State.INMIGRATE
                        ? "this VMM is already waiting for an incoming VM"
                        : "this VMM already runs a VM: one VM per process");
    }

    /** Listens for a live update in the background; answers at once, as QEMU's migrate-incoming does. */
    private Map<String, Object> incoming(String uri, Object tlsCreds) {
        if (uri.startsWith("tcp:")) {
            var address = TcpAddress.parse(uri);
            var params = MigrationParameters.DEFAULTS.withTls(VmControl.tlsCredentials(tlsCreds));
            var incoming = startIncomingTcp(address, params, config -> null);
            incoming.vm().exceptionally(e -> {
                log.error("the incoming migration on {} failed, back on standby: {}", uri, e.getMessage());
                return null;
            });
            int port = incoming.port();
            return Json.object("status", "inmigrate", "uri", new TcpAddress(address.host(), port).toString());
        }
        if (!uri.startsWith("unix:") || uri.length() == 5)
            throw new IllegalArgumentException("\"uri\" must be unix:PATH or tcp:[HOST]:PORT");
        if (tlsCreds != null) throw new IllegalArgumentException("\"tls-creds\" is for tcp: addresses");
        var socket = Path.of(uri.substring(5)).toAbsolutePath();
        startIncoming(socket, config -> null).exceptionally(e -> {
            log.error("the incoming migration on {} failed, back on standby: {}", socket, e.getMessage());
            return null;
        });
        return Json.object("status", "inmigrate", "socket", socket.toString());
    }

    /**
     * Waits on {@code socket} for a live update in the background ({@code accept} may refuse the
     * machine it is handed, see {@link LocalMigration#receive}); returns once the socket exists.
     * The future completes with the running VM, or with the failure, after which this VMM is on
     * standby again (no guest was taken from the source).
     */
    public CompletableFuture<Vm> startIncoming(Path socket, Function<MachineConfig, String> accept) {
        if (!state.compareAndSet(State.STANDBY, State.INMIGRATE)) throw alreadyTaken();
        sourceAccepted = false;
        incomingSocket = socket;
        var listening = new CompletableFuture<Void>();
        var result = new CompletableFuture<Vm>();
        Thread.ofPlatform().name("incoming").daemon().start(() -> {
            try {
                var vm = LocalMigration.receive(
                        kvm, socket, 10, console, listener, noting(accept), () -> listening.complete(null));
                handOver(vm);
                result.complete(vm);
            } catch (Throwable e) {
                state.set(State.STANDBY);
                listening.completeExceptionally(e);
                result.completeExceptionally(e);
            } finally {
                incomingSocket = null;
            }
        });
        try {
            listening.get(); // the socket exists when this returns: the source may connect at once
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while starting to listen on " + socket);
        } catch (ExecutionException e) {
            throw e.getCause() instanceof RuntimeException r
                    ? r
                    : new IllegalStateException(e.getCause().getMessage(), e.getCause());
        }
        return result;
    }

    /** {@code accept}, noting for query-migrate that a source's machine was accepted. */
    private Function<MachineConfig, String> noting(Function<MachineConfig, String> accept) {
        return config -> {
            String refusal = accept.apply(config);
            if (refusal == null) sourceAccepted = true;
            return refusal;
        };
    }

    /** An incoming TCP migration: the port it listens on, and the VM once it arrived. */
    public record IncomingTcp(int port, CompletableFuture<Vm> vm) {}

    /**
     * Waits at {@code address} for a TCP migration in the background ({@link TcpMigration#receive});
     * returns once it listens. A failed migration (the source vanished, refused) puts this VMM
     * back on standby; the guest never ran here.
     */
    public IncomingTcp startIncomingTcp(
            TcpAddress address, MigrationParameters params, Function<MachineConfig, String> accept) {
        if (!state.compareAndSet(State.STANDBY, State.INMIGRATE)) throw alreadyTaken();
        sourceAccepted = false;
        var listening = new CompletableFuture<Integer>();
        var result = new CompletableFuture<Vm>();
        Thread.ofPlatform().name("incoming").daemon().start(() -> {
            try {
                var vm = TcpMigration.receive(
                        kvm, address, params, console, listener, noting(accept), listening::complete);
                handOver(vm);
                result.complete(vm);
            } catch (Throwable e) {
                state.set(State.STANDBY);
                listening.completeExceptionally(e);
                result.completeExceptionally(e);
            }
        });
        try {
            return new IncomingTcp(listening.get(), result);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while starting to listen on " + address);
        } catch (ExecutionException e) {
            throw e.getCause() instanceof RuntimeException r
                    ? r
                    : new IllegalStateException(e.getCause().getMessage(), e.getCause());
        }
    }

    /** The machine of a {@code boot} command (here and in {@code vmm host}): the embedded test guest unless a kernel is named. */
    public static MachineConfig machine(Map<String, Object> args) throws IOException {
        long memory =
                args.get("memory") instanceof String s ? Sizes.parse(s) : ApiHandler.number(args, "memory", 256L << 20);
        if (memory < GuestMemory.MIN_SIZE || memory > GuestMemory.MAX_SIZE || memory % 4096 != 0) {
            throw new IllegalArgumentException("\"memory\" must be a multiple of 4 KiB from "
                    + Sizes.format(GuestMemory.MIN_SIZE) + " to " + Sizes.format(GuestMemory.MAX_SIZE));
        }
        long cpus = ApiHandler.number(args, "cpus", 1);
        if (cpus < 1 || cpus > MpTable.MAX_CPUS)
            throw new IllegalArgumentException("\"cpus\" must be 1 to " + MpTable.MAX_CPUS);
        String cmdline = args.get("cmdline") instanceof String s ? s : "console=ttyS0";
        Backing backing = new Backing.Memfd();
        if (args.get("mem-path") instanceof String p) {
            backing = ApiHandler.flag(args, "shared", false)
                    ? new Backing.SharedFile(Path.of(p))
                    : new Backing.PrivateFile(Path.of(p));
        }
        if (args.get("kernel") instanceof String k) {
            return new MachineConfig(memory, (int) cpus, backing, k, Files.readAllBytes(Path.of(k)), null, cmdline);
        }
        return new MachineConfig(memory, (int) cpus, backing, "embedded test guest", TestGuest.elf(), null, cmdline);
    }

    /** Removes an incoming socket nobody used (the process ends while it waits). */
    @Override
    public void close() {
        var socket = incomingSocket;
        if (socket != null) {
            try {
                Files.deleteIfExists(socket);
            } catch (IOException e) {
                // the process is ending anyway
            }
        }
    }
}
