package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.kvm.sys.UnixSocket;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.io.TempDir;

/** Live update: the guest moves between VMMs (here: between VM objects over real sockets) with only state copied. */
class LocalMigrationTest {

    static CompletableFuture<Vm> incoming(Kvm kvm, Path socket, SnapshotTest.Console console, Long expectMemory) {
        var future = new CompletableFuture<Vm>();
        Thread.ofPlatform().start(() -> {
            try {
                future.complete(LocalMigration.receive(
                        kvm,
                        socket,
                        10,
                        console,
                        new VmListener() {},
                        c -> expectMemory != null && expectMemory != c.memoryBytes()
                                ? "expected another RAM size"
                                : null));
            } catch (Throwable t) {
                future.completeExceptionally(t);
            }
        });
        return future;
    }

    static void awaitSocket(Path socket) throws InterruptedException {
        while (!Files.exists(socket)) Thread.sleep(2);
    }

    @KvmTest
    void aGuestLiveUpdatesThreeTimesWithoutAGap(@TempDir Path dir) throws Exception {
        runThreeUpdates(dir, new Backing.Memfd());
    }

    @KvmTest
    void sharedFileRamLiveUpdatesToo(@TempDir Path dir) throws Exception {
        var ram = SnapshotTest.shmFile("migrate");
        try {
            runThreeUpdates(dir, new Backing.SharedFile(ram));
        } finally {
            Files.deleteIfExists(ram);
        }
    }

    private static void runThreeUpdates(Path dir, Backing backing) throws Exception {
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open()) {
            Vm current = VmBuilder.boot(kvm, SnapshotTest.guest(2, backing, ""), console, new VmListener() {});
            try {
                current.start();
                console.await("hb 1 2", 30);
                for (int i = 0; i < 3; i++) {
                    var socket = dir.resolve("m" + i + ".sock");
                    var next = incoming(kvm, socket, console, null);
                    awaitSocket(socket);
                    var result = LocalMigration.send(current, socket, 10);
                    assertTrue(result.downtimeMicros() > 0, "the guest was paused for some time");
                    assertTrue(
                            result.downtimeMillis() <= result.confirmedMillis()
                                    && result.confirmedMillis() <= result.totalMillis(),
                            "pause -> resumed -> confirmed -> done: " + result);
                    assertTrue(current.termination().isDone(), "the source ends once the destination runs");
                    current.close();
                    current = next.get(10, TimeUnit.SECONDS);
                    var seen = SnapshotTest.checkHeartbeats(console.text());
                    console.await("hb 0 " + (seen.get(0) + 2), 30);
                    console.await("hb 1 " + (seen.get(1) + 2), 30);
                }
            } finally {
                current.close();
            }
        }
        var last = SnapshotTest.checkHeartbeats(console.text());
        assertTrue(last.get(0) >= 8, console.text());
    }

    @KvmTest
    void aDestinationThatDiesOrRefusesLeavesTheGuestRunningHere(@TempDir Path dir) throws Exception {
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(
                        kvm, SnapshotTest.guest(1, new Backing.Memfd(), ""), console, new VmListener() {})) {
            vm.start();
            console.await("hb 0 2", 30);

            // A destination that takes the VM and dies before confirming.
            var dying = dir.resolve("dying.sock");
            var server = UnixSocket.listen(dying);
            Thread.ofPlatform().start(() -> {
                try (server;
                        var peer = server.accept()) {
                    var m = peer.receive();
                    for (int fd : m.fds()) LibC.close(fd);
                }
            });
            var e = assertThrows(SnapshotException.class, () -> LocalMigration.send(vm, dying, 10));
            assertEquals(
                    "migration to " + dying + " failed, the guest runs on here: the destination closed the connection",
                    e.getMessage());
            assertFalse(vm.termination().isDone());
            int at = SnapshotTest.checkHeartbeats(console.text()).get(0);
            console.await("hb 0 " + (at + 2), 30);

            // A destination that refuses the VM (it expects another RAM size).
            var refusing = dir.resolve("refusing.sock");
            var refused = incoming(kvm, refusing, new SnapshotTest.Console(), 1L << 30);
            awaitSocket(refusing);
            var r = assertThrows(SnapshotException.class, () -> LocalMigration.send(vm, refusing, 10));
            assertEquals(
                    "migration to " + refusing
                            + " failed, the guest runs on here: the destination refused: expected another RAM size",
                    r.getMessage());
            // The destination's receive ends after it sent the refusal: wait for it, do not race it.
            var failure = assertThrows(ExecutionException.class, () -> refused.get(10, TimeUnit.SECONDS));
            assertTrue(
                    failure.getCause().getMessage().contains("expected another RAM size"),
                    failure.getCause().toString());
            at = SnapshotTest.checkHeartbeats(console.text()).get(0);
            console.await("hb 0 " + (at + 2), 30);
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    @KvmTest
    void aDestinationTooLateForTheSourcesDeadlineRefusesInsteadOfResuming(@TempDir Path dir) throws Exception {
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(
                        kvm, SnapshotTest.guest(1, new Backing.Memfd(), ""), console, new VmListener() {})) {
            vm.start();
            console.await("hb 0 2", 30);
            // The source gives up 4 s after it starts; this destination takes 3.2 s over the state,
            // leaving less than the 1 s margin: it must not resume the guest the source will resume.
            var socket = dir.resolve("late.sock");
            var calls = new AtomicInteger();
            var late = new CompletableFuture<Vm>();
            Thread.ofPlatform().start(() -> {
                try {
                    late.complete(LocalMigration.receive(
                            kvm, socket, 10, new SnapshotTest.Console(), new VmListener() {}, c -> {
                                if (calls.incrementAndGet()
                                        == 2) { // the second check is the state's, inside the downtime
                                    try {
                                        Thread.sleep(3200);
                                    } catch (InterruptedException e) {
                                        Thread.currentThread().interrupt();
                                    }
                                }
                                return null;
                            }));
                } catch (Throwable t) {
                    late.completeExceptionally(t);
                }
            });
            awaitSocket(socket);
            var e = assertThrows(SnapshotException.class, () -> LocalMigration.send(vm, socket, 4));
            assertEquals(
                    "migration to " + socket + " failed, the guest runs on here: the destination refused: "
                            + "the VM's state came too late: the source resumes its guest at its deadline",
                    e.getMessage());
            var failure = assertThrows(ExecutionException.class, () -> late.get(10, TimeUnit.SECONDS));
            assertTrue(
                    failure.getCause().getMessage().contains("came too late"),
                    failure.getCause().toString());
            int at = SnapshotTest.checkHeartbeats(console.text()).get(0);
            console.await("hb 0 " + (at + 2), 30);
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    @KvmTest
    void aSourceOfThePreviousProtocolIsStillReceived(@TempDir Path dir) throws Exception {
        // Protocol 1 (52b27eb) sent untyped objects: {"prepare": ...} with the memfd, then
        // {"snapshot": DIR, "resumeBefore": T}; it reads {"prepared": true} and {"running": true}.
        // CrossVersionTest runs that release itself; this is the same exchange without a build.
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open()) {
            var source =
                    VmBuilder.boot(kvm, SnapshotTest.guest(1, new Backing.Memfd(), ""), console, new VmListener() {});
            source.start();
            console.await("hb 0 2", 30);
            var socket = dir.resolve("old.sock");
            var received = incoming(kvm, socket, console, null);
            awaitSocket(socket);
            try (source;
                    var peer = UnixSocket.connect(socket)) {
                var block = source.memory().blocks().getFirst();
                var prepare = new MigrationProtocol.Prepare(
                        1,
                        1,
                        source.memory().size(),
                        List.of(new MigrationProtocol.RamBlock(
                                block.id(), block.guestAddress(), block.size(), block.fileOffset(), 0, null)));
                peer.send(MigrationProtocol.encode(prepare, 1), block.fd());
                assertEquals("{\"prepared\":true}", new String(peer.receive().data(), StandardCharsets.UTF_8));
                var state = dir.resolve("state");
                VmSnapshots.save(source, state, true, VmSnapshots.After.STAY_PAUSED, true, null);
                peer.send(MigrationProtocol.encode(
                        new MigrationProtocol.State(state, System.nanoTime() + TimeUnit.SECONDS.toNanos(10)), 1));
                assertTrue(new String(peer.receive().data(), StandardCharsets.UTF_8).startsWith("{\"running\":true"));
                source.end(new VmExitReason.Stopped("migrated"));
            }
            try (var _ = received.get(10, TimeUnit.SECONDS)) { // the moved VM, closed at the end
                int at = SnapshotTest.checkHeartbeats(console.text()).get(0);
                console.await("hb 0 " + (at + 2), 30);
            }
        }
        SnapshotTest.checkHeartbeats(console.text());
    }
}
