package dev.panamavmm.vmm;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.kvm.sys.UnixSocket;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * Local migration (live update of the VMM): the running VMM hands its guest to a new VMM process
 * on the same host over a Unix socket. Only state moves: the snapshot (vCPU, VM and device state)
 * is written to tmpfs, a memfd-backed guest's RAM goes as the memfd itself (SCM_RIGHTS), a
 * shared file by reference; private non-memfd RAM is written into the snapshot.
 *
 * <p>Protocol (one JSON message each way per step): source -> {@code {"snapshot": DIR}} + fds;
 * destination builds the VM (not running) -> {@code {"ready": true}} or {@code {"error": ...}};
 * source -> {@code {"go": true}}; destination starts the guest -> {@code {"running": true}};
 * the source ends its VM. Until "go" the source can resume its guest safely; after "go" it
 * resumes only if the destination reports an error or disappears without confirming.
 */
public final class LocalMigration {
    private LocalMigration() {}

    /** What a migration did, from the source's point of view. */
    public record Result(long downtimeMillis, long totalMillis, long bytesSent) {}

    /** Migrates {@code vm} to the VMM waiting on {@code socket}; on failure the guest runs on here and the exception says why. */
    public static Result send(Vm vm, Path socket, long timeoutSeconds) throws InterruptedException {
        long start = System.nanoTime();
        Path dir;
        try {
            dir = Files.createTempDirectory(Path.of("/dev/shm"), "panama-migrate-");
        } catch (IOException e) {
            throw new SnapshotException("cannot create the migration state directory: " + e.getMessage(), e);
        }
        boolean wasPaused = vm.isPaused();
        long pausedAt = 0;
        try (var peer = UnixSocket.connect(socket)) {
            var watchdog = Watchdog.start(peer, timeoutSeconds);
            try {
                pausedAt = System.nanoTime();
                var saved = VmSnapshots.save(vm, dir, true, VmSnapshots.After.STAY_PAUSED, true, RamWriter.Progress.NONE);
                int[] fds = vm.memory().blocks().stream().filter(b -> b.backing() instanceof Backing.Memfd)
                        .mapToInt(b -> b.fd()).distinct().limit(1).toArray();
                peer.send(json(Json.object("snapshot", dir.toString())), fds);
                expect(peer, "ready");
                peer.send(json(Json.object("go", true)));
                expect(peer, "running");
                long now = System.nanoTime();
                vm.end(new VmExitReason.Stopped("migration to " + socket));
                return new Result((now - pausedAt) / 1_000_000, (now - start) / 1_000_000, Files.size(saved.file()));
            } finally {
                watchdog.cancel();
            }
        } catch (KvmException | SnapshotException | IOException e) {
            if (!wasPaused && !vm.termination().isDone()) vm.resume();
            throw new SnapshotException("migration to " + socket + " failed, the guest runs on here: " + reason(e));
        } finally {
            deleteTree(dir);
        }
    }

    private static String reason(Exception e) {
        String m = e.getMessage();
        return m == null ? e.getClass().getSimpleName() : m;
    }

    private static Map<String, Object> expect(UnixSocket peer, String key) {
        var message = peer.receive();
        if (message == null) throw new SnapshotException("the destination closed the connection");
        var m = Json.asObject(Json.parse(new String(message.data(), StandardCharsets.UTF_8)), "message");
        if (m.get("error") instanceof String error) throw new SnapshotException("the destination refused: " + error);
        if (!Boolean.TRUE.equals(m.get(key))) throw new SnapshotException("the destination sent " + m + " instead of " + key);
        return m;
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
            Vm vm = null;
            boolean handedOver = false;
            try {
                var m = Json.asObject(Json.parse(new String(message.data(), StandardCharsets.UTF_8)), "message");
                var dir = Path.of(String.valueOf(m.get("snapshot")));
                var loaded = VmSnapshots.load(kvm, dir, message.fds());
                String refusal = accept.apply(loaded.config());
                if (refusal != null) throw new SnapshotException(refusal);
                handedOver = true; // from here the memory mapping owns (and on failure closes) the descriptors
                vm = VmSnapshots.build(kvm, loaded, VmSnapshots.Mode.CONTINUE, console, listener);
            } catch (RuntimeException e) {
                if (!handedOver) for (int fd : message.fds()) LibC.close(fd);
                peer.send(json(Json.object("error", reason(e))));
                throw e;
            }
            var watchdog = Watchdog.start(peer, timeoutSeconds);
            try {
                peer.send(json(Json.object("ready", true)));
                expect(peer, "go");
                vm.start();
                peer.send(json(Json.object("running", true)));
                return vm;
            } catch (RuntimeException e) {
                vm.close();
                throw e;
            } finally {
                watchdog.cancel();
            }
        }
    }

    /** Closes a socket when a step takes longer than the timeout, so a blocked receive fails instead of hanging. */
    private record Watchdog(Thread thread) {
        static Watchdog start(UnixSocket socket, long seconds) {
            return new Watchdog(Thread.ofPlatform().daemon().name("migration-watchdog").start(() -> {
                try {
                    TimeUnit.SECONDS.sleep(seconds);
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

    private static void deleteTree(Path dir) {
        try (var files = Files.walk(dir)) {
            for (var p : files.sorted(Comparator.reverseOrder()).toList()) Files.deleteIfExists(p);
        } catch (IOException e) {
            // a leftover state directory on tmpfs is named panama-migrate-*: harmless
        }
    }
}
