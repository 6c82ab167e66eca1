package dev.panamavmm.vmm;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.kvm.sys.UnixSocket;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Local migration (live update of the VMM): the running VMM hands its guest to a new VMM process
 * on the same host over a Unix socket. Only state moves: the snapshot (vCPU, VM and device state)
 * is written to tmpfs, a memfd-backed guest's RAM goes as the memfd itself (SCM_RIGHTS), a
 * shared file by reference and as its open fd (which carries the file's exclusive lock, see
 * {@code MemoryFileLocks}); private non-memfd RAM is written into the snapshot.
 *
 * <p>The messages are {@link MigrationProtocol}'s: source -> {@code Prepare} (+ fds), the
 * destination maps the memory and builds the VM shell -> {@code Prepared}; the source pauses the
 * guest -> {@code State(DIR, T)}; the destination applies the state and resumes the guest ->
 * {@code Running(R)} or {@code Refused}; the source ends its VM. One message crosses during the
 * downtime.
 *
 * <p>{@code T} is the source's deadline (System.nanoTime, which is CLOCK_MONOTONIC: one clock for
 * every process of the host). Without a confirmation by then the source resumes its guest; so
 * the destination resumes only while at least {@link #RESUME_MARGIN_NANOS} is left, otherwise it
 * refuses, and the guest never runs in both. A destination that dies after resuming but before
 * its confirmation arrives is the one case the source cannot tell from one that died before.
 *
 * <p>The source gives its guest back by construction: until the destination has confirmed, any
 * failure (a refusal, a malformed or unknown reply, a closed or silent peer, a bug) resumes the
 * guest here in a {@code finally}.
 */
public final class LocalMigration {
    private LocalMigration() {}

    private static final Logger log = LoggerFactory.getLogger(LocalMigration.class);

    /** The destination resumes only if this much is left before the source's deadline: time for its confirmation to arrive. */
    static final long RESUME_MARGIN_NANOS = TimeUnit.SECONDS.toNanos(1);

    /** How long a waiting destination gives a new connection to send its first message before it drops it and waits on. */
    static final long FIRST_MESSAGE_MILLIS = 5_000;

    /**
     * What a migration did, from the source's point of view. {@code downtimeMicros}: from the
     * source pausing the guest to the destination resuming it (the destination reports its resume
     * time; System.nanoTime is CLOCK_MONOTONIC on Linux, one clock for every process of the host).
     * {@code confirmedMillis}: from the pause until the source has the destination's confirmation.
     */
    public record Result(long downtimeMicros, long confirmedMillis, long totalMillis, long bytesSent) {
        public long downtimeMillis() {
            return downtimeMicros / 1000;
        }
    }

    /** Migrates {@code vm} to the VMM waiting on {@code socket}; on failure the guest runs on here and the exception says why. */
    public static Result send(Vm vm, Path socket, long timeoutSeconds) throws InterruptedException {
        var timing = VmMetrics.begin("live-update-out");
        long start = timing.startNanos();
        long deadline = start + TimeUnit.SECONDS.toNanos(timeoutSeconds);
        // The memfd goes over as it is: a lazily restored guest's pages not yet loaded would be holes there.
        vm.memory().awaitLoaded();
        boolean wasPaused = vm.isPaused();
        boolean handedOver = false;
        ScratchDir scratch = null;
        try {
            scratch = ScratchDir.create(ScratchDir.defaultRoot(), "panama-migrate");
            Path dir = scratch.path();
            try (var peer = UnixSocket.connect(socket)) { // an absent or wrong peer fails here, before the guest stops
                var watchdog = Watchdog.until(peer, deadline);
                try {
                    // The memfd first: the state names it as descriptor 0.
                    var fds = new ArrayList<Integer>();
                    vm.memory().blocks().stream()
                            .filter(b -> b.backing() instanceof Backing.Memfd)
                            .limit(1)
                            .forEach(b -> fds.add(b.fd()));
                    // Phase 1, the guest still running: the destination maps the same memory and builds the VM.
                    VmSnapshots.probeHost(vm);
                    VmSnapshots.warmUp(dir);
                    var prepare = prepareMessage(vm, fds);
                    // The disks' fds go along too, so the new process reopens nothing.
                    int firstDisk = fds.size();
                    for (var disk : vm.disks()) fds.add(disk.fd());
                    // And the taps' (after the disks'): frames the kernel queued wait for the new process.
                    for (var tap : vm.taps()) fds.add(tap.fd());
                    peer.send(
                            MigrationProtocol.encode(prepare, MigrationProtocol.VERSION),
                            fds.stream().mapToInt(Integer::intValue).toArray());
                    expect(peer, MigrationProtocol.Prepared.class);
                    // Phase 2, the downtime: only vCPU, VM and device state moves.
                    // The memfd and the disks go by descriptor; the vsock sockets follow the ones sent so far.
                    var saved = VmSnapshots.save(
                            vm,
                            dir,
                            new VmSnapshots.Request(
                                    true, VmSnapshots.After.STAY_PAUSED, true, firstDisk, false, false, fds.size()),
                            RamWriter.Progress.NONE);
                    long pausedAt = saved.pausedAtNanos();
                    long savedAt = System.nanoTime();
                    // The vsock sockets go with the state: the device's connections change until the pause.
                    peer.send(
                            MigrationProtocol.encode(
                                    new MigrationProtocol.State(dir, deadline), MigrationProtocol.VERSION),
                            vm.vsockDescriptors().stream()
                                    .mapToInt(Integer::intValue)
                                    .toArray());
                    var running = expect(peer, MigrationProtocol.Running.class);
                    handedOver = true; // the guest runs there now; from here on it must never resume here
                    long now = System.nanoTime();
                    long resumedAt = running.resumedAtNanos() >= savedAt && running.resumedAtNanos() <= now
                            ? running.resumedAtNanos()
                            : now;
                    timing.end(
                            vm.metrics(),
                            VmMetrics.phases(
                                    "prepare",
                                    pausedAt - timing.startNanos(),
                                    "save",
                                    savedAt - pausedAt,
                                    "destination",
                                    resumedAt - savedAt,
                                    "confirmed",
                                    now - resumedAt));
                    log.debug(
                            "migration downtime {} us: save {} us, destination builds and resumes {} us, confirmed after {} us",
                            (resumedAt - pausedAt) / 1000,
                            (savedAt - pausedAt) / 1000,
                            (resumedAt - savedAt) / 1000,
                            (now - resumedAt) / 1000);
                    vm.end(new VmExitReason.Stopped("migration to " + socket));
                    return new Result(
                            (resumedAt - pausedAt) / 1000,
                            (now - pausedAt) / 1_000_000,
                            (now - start) / 1_000_000,
                            Files.size(saved.file()));
                } finally {
                    watchdog.cancel();
                }
            }
        } catch (IOException | RuntimeException e) {
            throw new SnapshotException("migration to " + socket + " failed, the guest runs on here: " + reason(e), e);
        } finally {
            if (!handedOver && !wasPaused) VmSnapshots.giveBack(vm);
            if (scratch != null) scratch.close();
        }
    }

    /**
     * The first message: vCPU count, RAM size and where each block lives (the memfd passed with
     * the message, or a shared file), or no RAM table when a block's pages must travel in the
     * snapshot (private RAM): then the destination builds the VM after the pause.
     */
    private static MigrationProtocol.Prepare prepareMessage(Vm vm, List<Integer> fds) {
        var blocks = new ArrayList<MigrationProtocol.RamBlock>();
        for (var b : vm.memory().blocks()) {
            switch (b.backing()) {
                case Backing.Memfd m ->
                    blocks.add(new MigrationProtocol.RamBlock(
                            b.id(), b.guestAddress(), b.size(), b.fileOffset(), 0, null));
                case Backing.SharedFile f -> {
                    // The file's fd goes along: its exclusive lock (flock, held by the open file
                    // description) comes with it, so the destination maps the file while this VMM
                    // still holds it, and keeps it locked once this one exits.
                    if (!fds.contains(b.fd())) fds.add(b.fd());
                    blocks.add(new MigrationProtocol.RamBlock(
                            b.id(),
                            b.guestAddress(),
                            b.size(),
                            b.fileOffset(),
                            fds.indexOf(b.fd()),
                            f.path().toAbsolutePath()));
                }
                case Backing.PrivateFile f -> {
                    return new MigrationProtocol.Prepare(
                            MigrationProtocol.VERSION,
                            vm.vcpuCount(),
                            vm.memory().size(),
                            null);
                }
            }
        }
        return new MigrationProtocol.Prepare(
                MigrationProtocol.VERSION, vm.vcpuCount(), vm.memory().size(), List.copyOf(blocks));
    }

    private static String reason(Exception e) {
        String m = e.getMessage();
        return m == null ? e.getClass().getSimpleName() : m;
    }

    /** The peer's next message, which must be a {@code type} (a refusal is thrown with its reason). */
    private static <M extends MigrationProtocol.Message> M expect(UnixSocket peer, Class<M> type) {
        var message = peer.receive();
        if (message == null) throw new SnapshotException("the destination closed the connection");
        for (int fd : message.fds()) LibC.close(fd); // nothing the source expects carries descriptors
        var m = MigrationProtocol.decode(message.data());
        if (m instanceof MigrationProtocol.Refused r)
            throw new SnapshotException("the destination refused: " + r.reason());
        if (!type.isInstance(m)) {
            throw new SnapshotException(
                    "the destination sent " + m.getClass().getSimpleName().toLowerCase() + " instead of "
                            + type.getSimpleName().toLowerCase());
        }
        return type.cast(m);
    }

    /**
     * Waits on {@code socket} for one incoming VM, builds it with {@code accept} checking the
     * machine it is handed (a mismatch is refused back to the source), resumes it and confirms.
     * A connection that sends nothing within {@link #FIRST_MESSAGE_MILLIS}, closes, or sends
     * something that is not the start of a migration is dropped, and the wait goes on.
     */
    public static Vm receive(
            Kvm kvm,
            Path socket,
            long timeoutSeconds,
            OutputStream console,
            VmListener listener,
            Function<MachineConfig, String> accept) {
        return receive(kvm, socket, timeoutSeconds, console, listener, accept, () -> {});
    }

    /** As {@link #receive(Kvm, Path, long, OutputStream, VmListener, Function)}; {@code listening} runs once the socket exists. */
    public static Vm receive(
            Kvm kvm,
            Path socket,
            long timeoutSeconds,
            OutputStream console,
            VmListener listener,
            Function<MachineConfig, String> accept,
            Runnable listening) {
        try (var server = UnixSocket.listen(socket)) {
            listening.run();
            while (true) {
                var peer = server.accept();
                UnixSocket.Message message;
                MigrationProtocol.Message first;
                var firstWait =
                        Watchdog.until(peer, System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(FIRST_MESSAGE_MILLIS));
                try {
                    message = peer.receive();
                    first = message == null ? null : MigrationProtocol.decode(message.data());
                } catch (RuntimeException e) {
                    message = null;
                    first = null;
                    log.warn("{}: ignored a connection that did not start a migration ({})", socket, reason(e));
                } finally {
                    firstWait.cancel();
                }
                if (!(first instanceof MigrationProtocol.Prepare) && !(first instanceof MigrationProtocol.State)) {
                    if (message != null) for (int fd : message.fds()) LibC.close(fd);
                    if (first != null)
                        log.warn(
                                "{}: ignored a connection that sent {} first",
                                socket,
                                first.getClass().getSimpleName());
                    peer.close();
                    continue;
                }
                try (peer) {
                    try {
                        Files.deleteIfExists(socket); // one migration per listening socket
                    } catch (IOException ignored) {
                        // the path goes with the process anyway
                    }
                    var watchdog = Watchdog.until(
                            peer,
                            System.nanoTime()
                                    + TimeUnit.SECONDS.toNanos(timeoutSeconds)); // every later step is bounded
                    try {
                        return receiveOn(kvm, peer, first, message.fds(), console, listener, accept);
                    } finally {
                        watchdog.cancel();
                    }
                }
            }
        }
    }

    private static int[] concat(int[] a, int[] b) {
        int[] all = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, all, a.length, b.length);
        return all;
    }

    private static Vm receiveOn(
            Kvm kvm,
            UnixSocket peer,
            MigrationProtocol.Message first,
            int[] fds,
            OutputStream console,
            VmListener listener,
            Function<MachineConfig, String> accept) {
        VmBuilder.Shell shell = null;
        PrestartedThreads vcpuThreads = null; // created in the prepare phase, handed their vCPUs in the downtime
        Vm vm = null;
        boolean handedOver = false;
        // Descriptors the shell's memory owns; the others (disks) are owned by the VM build from its start.
        var ramDescriptors = new HashSet<Integer>();
        LoadedSnapshot loaded = null; // its vsock sockets are closed on failure if no device took them
        boolean disksHandedOver = false;
        int protocol = MigrationProtocol.OLDEST; // a protocol-1 source may start with the state itself
        long stateAt, loadedAt; // for the debug log and the metrics: where the downtime goes on this side
        VmMetrics.Timing timing;
        MigrationProtocol.State state;
        try {
            if (first instanceof MigrationProtocol.Prepare prepare) {
                protocol = prepare.protocol();
                if (protocol < MigrationProtocol.OLDEST || protocol > MigrationProtocol.VERSION) {
                    int theirs = protocol;
                    protocol = MigrationProtocol.VERSION;
                    throw new SnapshotException("this VMM speaks local-migration protocols " + MigrationProtocol.OLDEST
                            + " to " + MigrationProtocol.VERSION + ", the source speaks " + theirs);
                }
                String refusal = accept.apply(new MachineConfig(
                        prepare.memory(), prepare.cpus(), new Backing.Memfd(), "incoming", new byte[0], null, ""));
                if (refusal != null) throw new SnapshotException(refusal);
                if (prepare.ram() != null) {
                    for (var b : prepare.ram()) if (b.descriptor() != null) ramDescriptors.add(b.descriptor());
                    handedOver = true; // the shell's memory owns (and on failure closes) the descriptors
                    shell = VmBuilder.shell(kvm, sources(prepare.ram(), fds), prepare.cpus());
                }
                vcpuThreads = PrestartedThreads.start(prepare.cpus());
                warmUpStatePath();
                peer.send(MigrationProtocol.encode(new MigrationProtocol.Prepared(), protocol));
                var next = peer.receive();
                if (next == null)
                    throw new SnapshotException("the source closed the connection before sending the VM's state");
                fds = concat(fds, next.fds()); // a vsock device's sockets, numbered after the first message's
                var m = MigrationProtocol.decode(next.data());
                if (!(m instanceof MigrationProtocol.State s))
                    throw new SnapshotException("the source sent " + m + " instead of the state");
                state = s;
            } else {
                state = (MigrationProtocol.State) first;
            }
            timing = VmMetrics.begin("live-update-in");
            stateAt = timing.startNanos();
            loaded = VmSnapshots.load(state.snapshot(), fds);
            loadedAt = System.nanoTime();
            String refusal = accept.apply(loaded.config());
            if (refusal != null) throw new SnapshotException(refusal);
            handedOver = true;
            if (shell != null) checkSameRam(shell, loaded);
            disksHandedOver = true; // the build owns the disks' descriptors (and closes them if it fails)
            if (shell != null) {
                var s = shell;
                shell = null; // owned by the VM (or closed by finish) from here
                vm = VmBuilder.finish(kvm, s, loaded, loaded.config(), console, listener);
            } else {
                vm = VmBuilder.fromSnapshot(kvm, loaded, VmBuilder.Mode.MOVE, console, listener);
            }
        } catch (RuntimeException e) {
            if (shell != null) shell.close();
            else if (!handedOver) for (int fd : fds) LibC.close(fd);
            if (handedOver && !disksHandedOver) {
                for (int i = 0; i < fds.length; i++) if (!ramDescriptors.contains(i)) LibC.close(fds[i]);
            }
            if (disksHandedOver && loaded != null && loaded.config().vsock() != null)
                loaded.config().vsock().closeUnclaimed(); // a build that failed before the vsock device took them
            if (vcpuThreads != null) vcpuThreads.close();
            peer.send(MigrationProtocol.encode(new MigrationProtocol.Refused(reason(e)), protocol));
            throw e;
        }
        try {
            // vCPU threads are created parked, then released once the deadline check passed.
            long builtAt = System.nanoTime();
            vm.pauseBeforeStart();
            if (vcpuThreads != null)
                vm.start(vcpuThreads); // one per vCPU: the shell was built for the same count (finish checks it)
            else vm.start();
            long startedAt = System.nanoTime();
            if (startedAt > state.resumeBefore() - RESUME_MARGIN_NANOS) {
                var late = new SnapshotException(
                        "the VM's state came too late: the source resumes its guest at its deadline");
                peer.send(MigrationProtocol.encode(new MigrationProtocol.Refused(late.getMessage()), protocol));
                throw late;
            }
            vm.resume();
            long resumedAt = System.nanoTime();
            peer.send(MigrationProtocol.encode(new MigrationProtocol.Running(resumedAt), protocol));
            timing.end(
                    vm.metrics(),
                    VmMetrics.phases(
                            "load",
                            loadedAt - stateAt,
                            "build",
                            builtAt - loadedAt,
                            "vcpu-threads",
                            startedAt - builtAt,
                            "resume",
                            resumedAt - startedAt));
            log.debug(
                    "incoming state: load {} us, build {} us, vCPU threads {} us, resumed {} us after the state arrived",
                    (loadedAt - stateAt) / 1000,
                    (builtAt - loadedAt) / 1000,
                    (startedAt - builtAt) / 1000,
                    (resumedAt - stateAt) / 1000);
            return vm;
        } catch (RuntimeException e) {
            vm.close();
            throw e;
        } finally {
            if (vcpuThreads != null) vcpuThreads.close(); // ends any thread vm.start did not use
        }
    }

    /**
     * {@link VmSnapshots#warmUp} once per process, in a scratch directory of its own: a live update's
     * destination runs it before the state arrives (a TCP migration warms the in-memory path instead,
     * {@link VmSnapshots#warmUpInMemory}).
     */
    static void warmUpStatePath() {
        if (VmSnapshots.warm()) return; // once per process: later migrations make no scratch directory for it
        try (var scratch = ScratchDir.create(ScratchDir.defaultRoot(), "panama-warm")) {
            VmSnapshots.warmUp(scratch.path());
        } catch (IOException | RuntimeException e) {
            log.debug("warming the state path failed: {}", e.getMessage());
        }
    }

    /** The state's RAM table must describe the memory prepared in phase 1. */
    static void checkSameRam(VmBuilder.Shell shell, LoadedSnapshot loaded) {
        var blocks = shell.memory().blocks();
        var rows = loaded.snapshot().ram();
        boolean same = blocks.size() == rows.size();
        for (int i = 0; same && i < rows.size(); i++) {
            same = blocks.get(i).id().equals(rows.get(i).id())
                    && blocks.get(i).guestAddress() == rows.get(i).guestAddress()
                    && blocks.get(i).size() == rows.get(i).size();
        }
        if (!same) throw new SnapshotException("the VM's state describes other RAM than the source announced");
    }

    /** The block sources a prepare message describes; descriptor blocks map the passed memfd. */
    private static List<GuestMemory.BlockSource> sources(List<MigrationProtocol.RamBlock> ram, int[] fds) {
        var sources = new ArrayList<GuestMemory.BlockSource>();
        for (var b : ram) {
            if (b.descriptor() != null) {
                int d = b.descriptor();
                if (d < 0 || d >= fds.length)
                    throw new SnapshotException("the source named descriptor " + d + " but passed " + fds.length);
                // A shared file passed as an fd comes with its lock; a memfd has no path.
                var backing = b.file() != null ? new Backing.SharedFile(b.file()) : new Backing.Memfd();
                sources.add(new GuestMemory.BlockSource(
                        b.id(), b.guestAddress(), b.size(), backing, b.fileOffset(), fds[d]));
            } else if (b.file() != null) {
                sources.add(new GuestMemory.BlockSource(
                        b.id(), b.guestAddress(), b.size(), new Backing.SharedFile(b.file()), b.fileOffset()));
            } else {
                throw new SnapshotException(
                        "the source announced RAM block " + b.id() + " with neither a descriptor nor a file");
            }
        }
        return sources;
    }

    /** Closes a socket when a step takes longer than the timeout, so a blocked receive fails instead of hanging. */
    private record Watchdog(Thread thread) {
        /** Shuts the socket at {@code deadline} (System.nanoTime). */
        static Watchdog until(UnixSocket socket, long deadline) {
            return new Watchdog(Thread.ofPlatform()
                    .daemon()
                    .name("migration-watchdog")
                    .start(() -> {
                        try {
                            for (long left; (left = deadline - System.nanoTime()) > 0; )
                                TimeUnit.NANOSECONDS.sleep(left);
                            LibC.shutdown(socket.fd());
                        } catch (InterruptedException e) {
                            // cancelled: the step finished in time
                        }
                    }));
        }

        void cancel() {
            thread.interrupt();
        }
    }
}
