package dev.panamavmm.vmm;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.kvm.sys.UnixSocket;
import dev.panamavmm.log.Log;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * Local migration (live update of the VMM): the running VMM hands its guest to a new VMM process
 * on the same host over a Unix socket. Only state moves: the snapshot (vCPU, VM and device state)
 * is written to tmpfs, a memfd-backed guest's RAM goes as the memfd itself (SCM_RIGHTS), a
 * shared file by reference and as its open fd (which carries the file's exclusive lock, see
 * {@code MemoryFileLocks}); private non-memfd RAM is written into the snapshot.
 *
 * <p>Protocol (one JSON message each way per step): source -> {@code {"prepare": ...}} + fds,
 * destination maps the memory and builds the VM shell -> {@code {"prepared": true}}; the source
 * pauses the guest -> {@code {"snapshot": DIR, "resumeBefore": T}}; the destination applies the
 * state and resumes the guest -> {@code {"running": true, "resumedAtNanos": R}} or
 * {@code {"error": ...}}; the source ends its VM. One message crosses during the downtime.
 *
 * <p>{@code T} is the source's deadline (System.nanoTime, which is CLOCK_MONOTONIC: one clock for
 * every process of the host). Without a confirmation by then the source resumes its guest; so
 * the destination resumes only while at least {@link #RESUME_MARGIN_NANOS} is left, otherwise it
 * refuses, and the guest never runs in both. A destination that dies after resuming but before
 * its confirmation arrives is the one case the source cannot tell from one that died before.
 *
 * <p>Older peers: a destination that answers {@code {"ready": true}} (it waits for
 * {@code {"go": true}} before resuming) gets its "go"; a source that sends no deadline gets
 * "ready" and resumes on "go". A VMM can be live-updated to and from the previous version.
 */
public final class LocalMigration {
    private LocalMigration() {}

    private static final Log log = Log.of(LocalMigration.class);

    /** The destination resumes only if this much is left before the source's deadline: time for its confirmation to arrive. */
    static final long RESUME_MARGIN_NANOS = TimeUnit.SECONDS.toNanos(1);

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
        long start = System.nanoTime();
        ScratchDir scratch;
        try {
            scratch = ScratchDir.create(ScratchDir.defaultRoot(), "panama-migrate");
        } catch (IOException e) {
            throw new SnapshotException("cannot create the migration state directory: " + e.getMessage(), e);
        }
        Path dir = scratch.path();
        boolean wasPaused = vm.isPaused();
        long pausedAt = 0;
        long deadline = start + TimeUnit.SECONDS.toNanos(timeoutSeconds);
        try (var peer = UnixSocket.connect(socket)) {
            var watchdog = Watchdog.until(peer, deadline);
            try {
                int[] fds = vm.memory().blocks().stream().filter(b -> b.backing() instanceof Backing.Memfd)
                        .mapToInt(b -> b.fd()).distinct().limit(1).toArray();
                // Phase 1, the guest still running: the destination maps the same memory and builds the VM.
                VmSnapshots.msrsToSave(vm);
                VmSnapshots.warmUp();
                var prepareFds = new java.util.ArrayList<Integer>();
                for (int fd : fds) prepareFds.add(fd); // the memfd first: the state names it as descriptor 0
                var prepare = prepareMessage(vm, prepareFds);
                if (prepare != null) {
                    peer.send(json(Json.object("prepare", prepare)), prepareFds.stream().mapToInt(Integer::intValue).toArray());
                    expect(peer, "prepared");
                }
                // Phase 2, the downtime: only vCPU, VM and device state moves.
                pausedAt = System.nanoTime();
                var saved = VmSnapshots.save(vm, dir, true, VmSnapshots.After.STAY_PAUSED, true, RamWriter.Progress.NONE);
                long savedAt = System.nanoTime();
                peer.send(json(Json.object("snapshot", dir.toString(), "resumeBefore", deadline)), prepare != null ? new int[0] : fds);
                var reply = expect(peer, "running", "ready");
                if (reply.containsKey("ready")) { // an older destination: it resumes on "go"
                    peer.send(json(Json.object("go", true)));
                    reply = expect(peer, "running");
                }
                long now = System.nanoTime();
                long resumedAt = reply.get("resumedAtNanos") instanceof Long t && t >= savedAt && t <= now ? t : now;
                log.debug("migration downtime {} us: save {} us, destination builds and resumes {} us, confirmed after {} us",
                        (resumedAt - pausedAt) / 1000, (savedAt - pausedAt) / 1000, (resumedAt - savedAt) / 1000, (now - resumedAt) / 1000);
                vm.end(new VmExitReason.Stopped("migration to " + socket));
                return new Result((resumedAt - pausedAt) / 1000, (now - pausedAt) / 1_000_000, (now - start) / 1_000_000,
                        Files.size(saved.file()));
            } finally {
                watchdog.cancel();
            }
        } catch (KvmException | SnapshotException | IOException e) {
            if (!wasPaused && !vm.termination().isDone()) vm.resume();
            throw new SnapshotException("migration to " + socket + " failed, the guest runs on here: " + reason(e));
        } finally {
            scratch.close();
        }
    }

    /**
     * What the destination needs to build the VM before the guest stops: vCPU count, RAM size and
     * where each block lives (the memfd passed with the message, or a shared file). Null when a
     * block's pages must travel in the snapshot (private RAM): then the VM is built after the pause.
     */
    private static Map<String, Object> prepareMessage(Vm vm, java.util.List<Integer> fds) {
        var blocks = new java.util.ArrayList<Object>();
        for (var b : vm.memory().blocks()) {
            var row = Json.object("id", b.id(), "guestAddress", b.guestAddress(), "size", b.size(), "fileOffset", b.fileOffset());
            switch (b.backing()) {
                case Backing.Memfd m -> row.put("descriptor", 0L);
                case Backing.SharedFile f -> {
                    // The file's fd goes along: its exclusive lock (flock, held by the open file
                    // description) comes with it, so the destination maps the file while this VMM
                    // still holds it and keeps it locked once this one exits. A destination that
                    // does not know "fileDescriptor" opens "file" by its path.
                    row.put("file", f.path().toAbsolutePath().toString());
                    if (!fds.contains(b.fd())) fds.add(b.fd());
                    row.put("fileDescriptor", (long) fds.indexOf(b.fd()));
                }
                case Backing.PrivateFile f -> {
                    return null;
                }
            }
            blocks.add(row);
        }
        return Json.object("cpus", (long) vm.vcpuCount(), "memory", vm.memory().size(), "ram", blocks);
    }

    private static String reason(Exception e) {
        String m = e.getMessage();
        return m == null ? e.getClass().getSimpleName() : m;
    }

    /** The peer's next message, which must set one of {@code keys} to true (an error message is thrown as a refusal). */
    private static Map<String, Object> expect(UnixSocket peer, String... keys) {
        var message = peer.receive();
        if (message == null) throw new SnapshotException("the destination closed the connection");
        var m = Json.asObject(Json.parse(new String(message.data(), StandardCharsets.UTF_8)), "message");
        if (m.get("error") instanceof String error) throw new SnapshotException("the destination refused: " + error);
        for (String key : keys) if (Boolean.TRUE.equals(m.get(key))) return m;
        throw new SnapshotException("the destination sent " + m + " instead of " + String.join(" or ", keys));
    }

    private static byte[] json(Map<String, Object> m) {
        return Json.write(m).getBytes(StandardCharsets.UTF_8);
    }

    /**
     * Waits on {@code socket} for one incoming VM, builds it with {@code accept} checking the
     * machine it is handed (a mismatch is refused back to the source), confirms, and returns the
     * running VM's owner-to-be: the caller starts nothing, this method starts the guest after "go".
     */
    public static Vm receive(Kvm kvm, Path socket, long timeoutSeconds, OutputStream console, VmListener listener,
                             Function<MachineConfig, String> accept) {
        try (var server = UnixSocket.listen(socket); var peer = server.accept()) {
            try {
                Files.deleteIfExists(socket); // one migration per listening socket
            } catch (IOException ignored) {
                // the path goes with the process anyway
            }
            var message = peer.receive();
            if (message == null) throw new SnapshotException("the source closed the connection before sending a VM");
            var watchdog = Watchdog.start(peer, timeoutSeconds); // every later step is bounded
            try {
                return receiveOn(kvm, peer, message, console, listener, accept);
            } finally {
                watchdog.cancel();
            }
        }
    }

    private static Vm receiveOn(Kvm kvm, UnixSocket peer, UnixSocket.Message message, OutputStream console, VmListener listener,
                                Function<MachineConfig, String> accept) {
        int[] fds = message.fds();
        VmSnapshots.Shell shell = null;
        PrestartedThreads vcpuThreads = null; // created in the prepare phase, handed their vCPUs in the downtime
        Vm vm = null;
        boolean handedOver = false;
        long stateAt = 0, loadedAt = 0; // for the debug log: where the downtime goes on this side
        Long resumeBefore = null; // the source's deadline; null from an older source, which sends "go"
        try {
            var m = Json.asObject(Json.parse(new String(message.data(), StandardCharsets.UTF_8)), "message");
            if (m.get("prepare") != null) {
                var prepare = Json.asObject(m.get("prepare"), "prepare");
                long memory = (Long) prepare.get("memory");
                int cpus = (int) (long) (Long) prepare.get("cpus");
                String refusal = accept.apply(new MachineConfig(memory, cpus, new Backing.Memfd(), "incoming", new byte[0], null, ""));
                if (refusal != null) throw new SnapshotException(refusal);
                handedOver = true; // the shell's memory owns (and on failure closes) the descriptors
                shell = VmSnapshots.Shell.prepare(kvm, sources(prepare, fds), cpus);
                vcpuThreads = PrestartedThreads.start(cpus);
                VmSnapshots.warmUp();
                peer.send(json(Json.object("prepared", true)));
                message = peer.receive();
                if (message == null) throw new SnapshotException("the source closed the connection before sending the VM's state");
                m = Json.asObject(Json.parse(new String(message.data(), StandardCharsets.UTF_8)), "message");
            }
            stateAt = System.nanoTime();
            resumeBefore = m.get("resumeBefore") instanceof Long t ? t : null;
            var dir = Path.of(String.valueOf(m.get("snapshot")));
            var loaded = VmSnapshots.load(dir, fds);
            loadedAt = System.nanoTime();
            String refusal = accept.apply(loaded.config());
            if (refusal != null) throw new SnapshotException(refusal);
            handedOver = true;
            if (shell != null) {
                checkSameRam(shell, loaded);
                var s = shell;
                shell = null; // owned by the VM (or closed by finish) from here
                vm = VmSnapshots.finish(kvm, s, loaded, loaded.config(), console, listener);
            } else {
                vm = VmSnapshots.build(kvm, loaded, VmSnapshots.Mode.CONTINUE, console, listener);
            }
        } catch (RuntimeException e) {
            if (shell != null) shell.close();
            else if (!handedOver) for (int fd : fds) LibC.close(fd);
            if (vcpuThreads != null) vcpuThreads.close();
            peer.send(json(Json.object("error", reason(e))));
            throw e;
        }
        try {
            // vCPU threads are created parked, then released: by the deadline check or an older source's "go".
            long builtAt = System.nanoTime();
            vm.pauseBeforeStart();
            vm.start(vcpuThreads); // one per vCPU: the shell was built for the same count (finish checks it)
            long startedAt = System.nanoTime();
            if (resumeBefore == null) {
                peer.send(json(Json.object("ready", true)));
                expect(peer, "go");
            } else if (startedAt > resumeBefore - RESUME_MARGIN_NANOS) {
                var late = new SnapshotException("the VM's state came too late: the source resumes its guest at its deadline");
                peer.send(json(Json.object("error", late.getMessage())));
                throw late;
            }
            vm.resume();
            long resumedAt = System.nanoTime();
            peer.send(json(Json.object("running", true, "resumedAtNanos", resumedAt)));
            log.debug("incoming state: load {} us, build {} us, vCPU threads {} us, resumed {} us after the state arrived",
                    (loadedAt - stateAt) / 1000, (builtAt - loadedAt) / 1000, (startedAt - builtAt) / 1000, (resumedAt - stateAt) / 1000);
            return vm;
        } catch (RuntimeException e) {
            vm.close();
            throw e;
        } finally {
            if (vcpuThreads != null) vcpuThreads.close(); // ends any thread vm.start did not use
        }
    }

    /** The state's RAM table must describe the memory prepared in phase 1. */
    private static void checkSameRam(VmSnapshots.Shell shell, VmSnapshots.Loaded loaded) {
        var blocks = shell.memory().blocks();
        var rows = loaded.snapshot().ram();
        boolean same = blocks.size() == rows.size();
        for (int i = 0; same && i < rows.size(); i++) {
            same = blocks.get(i).id().equals(rows.get(i).id()) && blocks.get(i).guestAddress() == rows.get(i).guestAddress()
                    && blocks.get(i).size() == rows.get(i).size();
        }
        if (!same) throw new SnapshotException("the VM's state describes other RAM than the source announced");
    }

    /** The block sources a prepare message describes; descriptor blocks map the passed memfd. */
    private static java.util.List<dev.panamavmm.vmm.memory.GuestMemory.BlockSource> sources(Map<String, Object> prepare, int[] fds) {
        var sources = new java.util.ArrayList<dev.panamavmm.vmm.memory.GuestMemory.BlockSource>();
        for (var row : Json.asList(prepare.get("ram"), "ram")) {
            var b = Json.asObject(row, "block");
            String id = String.valueOf(b.get("id"));
            long gpa = (Long) b.get("guestAddress"), size = (Long) b.get("size"), offset = (Long) b.get("fileOffset");
            if (b.get("fileDescriptor") instanceof Long d) { // a shared file passed with its lock
                if (d < 0 || d >= fds.length) throw new SnapshotException("the source named descriptor " + d + " but passed " + fds.length);
                sources.add(new dev.panamavmm.vmm.memory.GuestMemory.BlockSource(id, gpa, size,
                        new Backing.SharedFile(Path.of(String.valueOf(b.get("file")))), offset, fds[(int) (long) d]));
            } else if (b.get("descriptor") instanceof Long d) {
                if (d < 0 || d >= fds.length) throw new SnapshotException("the source named descriptor " + d + " but passed " + fds.length);
                sources.add(new dev.panamavmm.vmm.memory.GuestMemory.BlockSource(id, gpa, size, new Backing.Memfd(), offset, fds[(int) (long) d]));
            } else {
                sources.add(new dev.panamavmm.vmm.memory.GuestMemory.BlockSource(id, gpa, size,
                        new Backing.SharedFile(Path.of(String.valueOf(b.get("file")))), offset));
            }
        }
        return sources;
    }

    /** Closes a socket when a step takes longer than the timeout, so a blocked receive fails instead of hanging. */
    private record Watchdog(Thread thread) {
        static Watchdog start(UnixSocket socket, long seconds) {
            return until(socket, System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds));
        }

        /** Shuts the socket at {@code deadline} (System.nanoTime). */
        static Watchdog until(UnixSocket socket, long deadline) {
            return new Watchdog(Thread.ofPlatform().daemon().name("migration-watchdog").start(() -> {
                try {
                    for (long left; (left = deadline - System.nanoTime()) > 0; ) TimeUnit.NANOSECONDS.sleep(left);
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
