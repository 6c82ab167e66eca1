package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.kvm.sys.UnixSocket;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.vmm.memory.Backing;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Consumer;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;

/**
 * Every operation that pauses a guest gives it back when it fails, whatever the failure: each
 * test injects one into a running 2-vCPU test guest and watches both CPUs' heartbeats go on.
 */
class FailurePathsTest {

    /** Counts pauses, so a test can tell a failure that came before the guest stopped. */
    static final class Pauses implements VmListener {
        final AtomicInteger paused = new AtomicInteger();

        @Override
        public void paused() {
            paused.incrementAndGet();
        }
    }

    /** A console whose writes block while it is held: a vCPU printing then cannot leave its exit handler. */
    static final class StallingConsole extends SnapshotTest.Console {
        private boolean held;
        private int waiting;

        synchronized void hold() {
            held = true;
        }

        synchronized void release() {
            held = false;
            notifyAll();
        }

        synchronized void awaitAWriterStalled() throws InterruptedException {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (waiting == 0) {
                if (System.nanoTime() > deadline) throw new AssertionError("no vCPU wrote to the console");
                wait(100);
            }
        }

        private synchronized void gate() {
            while (held) {
                waiting++;
                notifyAll();
                try {
                    wait();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return;
                } finally {
                    waiting--;
                }
            }
        }

        @Override
        public void write(int b) {
            gate();
            super.write(b);
        }

        @Override
        public void write(byte[] b, int off, int len) {
            gate();
            super.write(b, off, len);
        }
    }

    /** Both CPUs print two more heartbeats, all in order, none CORRUPT. */
    static void guestRunsOn(SnapshotTest.Console console) throws InterruptedException {
        var at = Heartbeats.checkLive(console.text());
        console.await("hb 0 " + (at.getOrDefault(0, 0) + 2), 30);
        console.await("hb 1 " + (at.getOrDefault(1, 0) + 2), 30);
        Heartbeats.checkLive(console.text());
    }

    static Vm runningGuest(Kvm kvm, SnapshotTest.Console console, VmListener listener) throws InterruptedException {
        var vm = VmBuilder.boot(kvm, SnapshotTest.guest(2, new Backing.Memfd(), ""), console, listener);
        vm.start();
        console.await("hb 0 2", 30);
        console.await("hb 1 2", 30);
        return vm;
    }

    @KvmTest
    void aPauseThatTimesOutGivesTheGuestBack(@TempDir Path dir) throws Exception {
        var console = new StallingConsole();
        try (var kvm = Kvm.open();
                var vm = runningGuest(kvm, console, new VmListener() {})) {
            vm.pauseTimeout(Duration.ofMillis(300));
            console.hold();
            console.awaitAWriterStalled(); // that vCPU cannot park until the console moves again
            var e = assertThrows(
                    IllegalStateException.class,
                    () -> VmSnapshots.save(vm, dir.resolve("snap"), false, true, RamWriter.Progress.NONE));
            assertEquals("the vCPUs did not pause within 300 ms", e.getMessage());
            assertFalse(vm.isPaused(), "the failed save resumed the guest");
            console.release();
            guestRunsOn(console);
            try (var files = Files.list(dir.resolve("snap"))) {
                assertEquals(List.of(), files.toList(), "nothing is left of the failed save");
            }
        }
    }

    /** An owner that fails while told of the end (the vCPU thread ending the VM met a class it could not load, once) must not leave the VM's waiters hanging. */
    @KvmTest
    void aListenerThatFailsAtTheEndStillEndsTheVm() throws Exception {
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open();
                var vm = runningGuest(kvm, console, new VmListener() {
                    @Override
                    public void ended(VmExitReason reason) {
                        throw new NoClassDefFoundError("a class the owner could not load");
                    }
                })) {
            assertThrows(NoClassDefFoundError.class, () -> vm.end(new VmExitReason.Stopped("test")));
            assertEquals(new VmExitReason.Stopped("test"), vm.termination().get(10, TimeUnit.SECONDS));
        }
    }

    @KvmTest
    void aSnapshotToAPlaceThatCannotHoldOneFailsBeforeTheGuestStops(@TempDir Path dir) throws Exception {
        var console = new SnapshotTest.Console();
        var pauses = new Pauses();
        var file = Files.writeString(dir.resolve("a-file"), "x");
        try (var kvm = Kvm.open();
                var vm = runningGuest(kvm, console, pauses)) {
            var e = assertThrows(
                    SnapshotException.class, () -> VmSnapshots.save(vm, file, true, false, RamWriter.Progress.NONE));
            assertEquals("cannot write a snapshot in " + file + ": it is not a directory", e.getMessage());
            var proc = assertThrows(
                    SnapshotException.class,
                    () -> VmSnapshots.save(vm, Path.of("/proc/self"), true, false, RamWriter.Progress.NONE));
            assertTrue(proc.getMessage().startsWith("cannot write a snapshot in /proc/self"), proc.getMessage());
            assertEquals(0, pauses.paused.get(), "the guest was never paused");
            guestRunsOn(console);
        }
    }

    @KvmTest
    void aSaveWhoseDiskFillsHalfWayGivesTheGuestBackAndLeavesNothing(@TempDir Path dir) throws Exception {
        var small = Files.createDirectory(dir.resolve("small"));
        mount(small, "size=2m"); // the guest's 8 MiB of pages cannot fit
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open();
                var vm = runningGuest(kvm, console, new VmListener() {})) {
            var e = assertThrows(
                    SnapshotException.class,
                    () -> VmSnapshots.save(vm, small.resolve("snap"), false, true, RamWriter.Progress.NONE));
            assertTrue(e.getMessage().contains("No space left on device"), e.getMessage());
            guestRunsOn(console);
            try (Stream<Path> files = Files.walk(small)) {
                assertEquals(
                        List.of(small, small.resolve("snap")), files.sorted().toList(), "no temporary file is left");
            }
        } finally {
            umount(small);
        }
    }

    static void mount(Path dir, String options) throws IOException, InterruptedException {
        var p = new ProcessBuilder("mount", "-t", "tmpfs", "-o", options, "tmpfs", dir.toString())
                .redirectErrorStream(true)
                .start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, p.waitFor(), "this test mounts a small tmpfs (it needs root, as CI has): " + out);
    }

    static void umount(Path dir) throws IOException, InterruptedException {
        new ProcessBuilder("umount", dir.toString()).inheritIO().start().waitFor();
    }

    /**
     * A destination that takes the prepare message, answers it as this version would, takes the
     * state (the source's guest is paused by then) and then does {@code afterState} with the
     * connection.
     */
    static CompletableFuture<Void> destination(Path socket, Consumer<UnixSocket> afterState) {
        var server = UnixSocket.listen(socket);
        return CompletableFuture.runAsync(() -> {
            try (server;
                    var peer = server.accept()) {
                var prepare = peer.receive();
                for (int fd : prepare.fds()) LibC.close(fd);
                peer.send(MigrationProtocol.encode(new MigrationProtocol.Prepared(), MigrationProtocol.VERSION));
                var state = peer.receive();
                assertTrue(MigrationProtocol.decode(state.data()) instanceof MigrationProtocol.State);
                afterState.accept(peer);
            }
        });
    }

    static void send(UnixSocket peer, String text) {
        peer.send(text.getBytes(StandardCharsets.UTF_8));
    }

    @KvmTest
    void aDestinationThatFailsInTheDowntimeGivesTheGuestBack(@TempDir Path dir) throws Exception {
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open();
                var vm = runningGuest(kvm, console, new VmListener() {})) {
            record Case(String name, Consumer<UnixSocket> behaviour, String reason, int timeoutSeconds) {}
            var cases = List.of(
                    new Case(
                            "malformed",
                            peer -> send(peer, "{\"type\": \"running\", "),
                            "the peer sent a malformed message",
                            10),
                    new Case(
                            "unknown",
                            peer -> send(peer, "{\"type\": \"teleported\"}"),
                            "the peer sent a message of unknown type 'teleported'",
                            10),
                    new Case(
                            "wrong",
                            peer -> send(peer, "{\"type\": \"prepared\"}"),
                            "the destination sent prepared instead of running",
                            10),
                    new Case("not-a-message", peer -> send(peer, "[1, 2]"), "the peer sent a malformed message", 10),
                    new Case("closes", peer -> {}, "the destination closed the connection", 10),
                    new Case("silent", peer -> sleep(4000), "the destination closed the connection", 2));
            for (var c : cases) {
                var socket = dir.resolve(c.name() + ".sock");
                var destination = destination(socket, c.behaviour());
                var e = assertThrows(
                        SnapshotException.class, () -> LocalMigration.send(vm, socket, c.timeoutSeconds()), c.name());
                assertTrue(
                        e.getMessage()
                                .startsWith(
                                        "migration to " + socket + " failed, the guest runs on here: " + c.reason()),
                        c.name() + ": " + e.getMessage());
                assertFalse(vm.termination().isDone(), c.name());
                assertFalse(vm.isPaused(), c.name() + ": the guest was given back");
                guestRunsOn(console);
                destination.get(10, TimeUnit.SECONDS);
            }
        }
    }

    @KvmTest
    void aSourceOfAFutureProtocolIsRefusedAndTheDestinationBuildsNothing(@TempDir Path dir) throws Exception {
        var socket = dir.resolve("in.sock");
        try (var kvm = Kvm.open()) {
            var received = LocalMigrationTest.incoming(kvm, socket, new SnapshotTest.Console(), null);
            LocalMigrationTest.awaitSocket(socket);
            try (var peer = UnixSocket.connect(socket)) {
                send(
                        peer,
                        "{\"type\": \"prepare\", \"protocol\": 3, \"cpus\": 1, \"memory\": 67108864, \"ram\": null}");
                var reply = MigrationProtocol.decode(peer.receive().data());
                assertEquals(
                        new MigrationProtocol.Refused(
                                "this VMM speaks local-migration protocols 1 to 2, the source speaks 3"),
                        reply);
            }
            var failure = assertThrows(ExecutionException.class, () -> received.get(10, TimeUnit.SECONDS));
            assertTrue(
                    failure.getCause().getMessage().contains("the source speaks 3"),
                    failure.getCause().toString());
        }
    }

    @KvmTest
    void aWaitingDestinationIgnoresConnectionsThatAreNotMigrations(@TempDir Path dir) throws Exception {
        var console = new SnapshotTest.Console();
        var socket = dir.resolve("in.sock");
        try (var kvm = Kvm.open();
                var vm = runningGuest(kvm, console, new VmListener() {})) {
            var received = LocalMigrationTest.incoming(kvm, socket, console, null);
            LocalMigrationTest.awaitSocket(socket);
            try (var garbage = UnixSocket.connect(socket)) {
                send(garbage, "{\"execute\": \"query-status\"}"); // a control-API client at the wrong socket
            }
            try (var _ = UnixSocket.connect(socket)) {
                // connects and goes away without a word
            }
            assertFalse(received.isDone(), "the destination still waits");
            var result = LocalMigration.send(vm, socket, 10);
            assertTrue(result.downtimeMicros() > 0);
            try (var _ = received.get(10, TimeUnit.SECONDS)) { // the moved VM, closed at the end
                guestRunsOn(console);
            }
        }
    }

    private static void sleep(long millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
