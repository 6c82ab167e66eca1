package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.control.VmControl;
import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.testing.TestCertificates;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Pre-copy migration over TCP (loopback only) between two VMs of this process: the guest proves continuity. */
class TcpMigrationTest {
    private static final InetAddress LOOPBACK = InetAddress.getLoopbackAddress();

    static MachineConfig guest(long memory, int cpus, String options) {
        return new MachineConfig(
                memory,
                cpus,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=150 " + options);
    }

    /** A destination waiting on a port of 127.0.0.1 chosen by the system. */
    record Incoming(CompletableFuture<Vm> vm, int port) {}

    static Incoming incoming(Kvm kvm, MigrationParameters params, OutputStream console) throws Exception {
        return incoming(kvm, params, console, c -> null);
    }

    /** As above, {@code accept} checking the machine (null: accepted, else the refusal). */
    static Incoming incoming(
            Kvm kvm,
            MigrationParameters params,
            OutputStream console,
            java.util.function.Function<MachineConfig, String> accept)
            throws Exception {
        var vm = new CompletableFuture<Vm>();
        var port = new CompletableFuture<Integer>();
        Thread.ofPlatform().start(() -> {
            try {
                vm.complete(TcpMigration.receive(
                        kvm,
                        new TcpAddress("127.0.0.1", 0),
                        params,
                        console,
                        new VmListener() {},
                        accept,
                        port::complete));
            } catch (Throwable t) {
                port.completeExceptionally(t);
                vm.completeExceptionally(t);
            }
        });
        return new Incoming(vm, port.get(30, TimeUnit.SECONDS));
    }

    /** Forwards one connection at a time to {@code port}, counting the bytes from the source; {@link #cut} closes both sides. */
    static final class Proxy implements AutoCloseable {
        final ServerSocket server = new ServerSocket(0, 4, LOOPBACK);
        final AtomicLong fromSource = new AtomicLong();
        final List<Socket> open = new ArrayList<>();
        volatile long cutAfter = Long.MAX_VALUE;

        Proxy(int port) throws IOException {
            Thread.ofPlatform().daemon().start(() -> {
                try {
                    while (true) {
                        var a = server.accept();
                        var b = new Socket(LOOPBACK, port);
                        synchronized (open) {
                            open.add(a);
                            open.add(b);
                        }
                        pump(a, b, true);
                        pump(b, a, false);
                    }
                } catch (IOException e) {
                    // closed
                }
            });
        }

        TcpAddress address() {
            return new TcpAddress("127.0.0.1", server.getLocalPort());
        }

        private void pump(Socket from, Socket to, boolean counted) {
            Thread.ofPlatform().daemon().start(() -> {
                byte[] buffer = new byte[65536];
                try (InputStream in = from.getInputStream();
                        OutputStream out = to.getOutputStream()) {
                    for (int n; (n = in.read(buffer)) > 0; ) {
                        // Counted before they go on: the destination's answer to them may end the test first.
                        long total = counted ? fromSource.addAndGet(n) : 0;
                        out.write(buffer, 0, n);
                        if (total > cutAfter) cut();
                    }
                } catch (IOException e) {
                    // cut or ended
                }
                // This connection only: a later one through the proxy may be open already.
                close(from);
                close(to);
            });
        }

        private static void close(Socket s) {
            try {
                s.close();
            } catch (IOException ignored) {
                // closed
            }
        }

        void cut() {
            synchronized (open) {
                for (var s : open) {
                    try {
                        s.close();
                    } catch (IOException ignored) {
                        // closed
                    }
                }
                open.clear();
            }
        }

        @Override
        public void close() throws IOException {
            cut();
            server.close();
        }
    }

    /** What a test checks of a migration that completed: its result and the VM that arrived. */
    interface Check {
        void check(TcpMigration.Result result, Vm moved) throws Exception;
    }

    /**
     * Boots {@code config} (both vCPUs past their second heartbeat), migrates it over 127.0.0.1
     * through a proxy that counts the bytes, checks the source ended, every byte was counted and
     * {@code check}, then that both vCPUs carry on at the destination with no heartbeat lost.
     */
    private static void migrateRunning(MachineConfig config, MigrationParameters params, Check check) throws Exception {
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open()) {
            var source = VmBuilder.boot(kvm, config, console, new VmListener() {});
            Vm moved = null;
            try {
                source.start();
                console.await("hb 1 2", 60);
                var destination = incoming(kvm, MigrationParameters.DEFAULTS, console);
                try (var toDestination = new Proxy(destination.port())) {
                    var status = new MigrationStatus();
                    var result =
                            TcpMigration.send(source, toDestination.address(), params, status, RamWriter.Progress.NONE);
                    moved = destination.vm().get(30, TimeUnit.SECONDS);
                    assertEquals("completed", status.status());
                    assertTrue(source.termination().isDone(), "the source ends once the destination runs");
                    assertEquals(toDestination.fromSource.get(), result.bytesSent(), "every byte counted");
                    check.check(result, moved);
                    var seen = SnapshotTest.checkHeartbeats(console.text());
                    console.await("hb 0 " + (seen.get(0) + 3), 60);
                    console.await("hb 1 " + (seen.get(1) + 3), 60);
                }
            } finally {
                source.close();
                if (moved != null) moved.close();
            }
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    @KvmTest
    void aTwoCpuGuestRewritingATenthOf512MiBMovesAndCarriesOn() throws Exception {
        migrateRunning(
                guest(512 * GuestMemory.MIB, 2, "testguest.mem=448M testguest.rewrite=10"),
                MigrationParameters.DEFAULTS.withMaxBandwidth(1L << 30),
                // At least the filled memory went once; a tenth of it may have gone again. What the
                // guest dirtied during pass 1 (its tenth, ~45 MiB) fits the 300 ms limit but is at
                // most half of what pass 1 sent and more than 2 ms at 1 GiB/s: pass 2 must follow.
                (result, moved) -> {
                    assertTrue(result.bytesSent() > 448 * GuestMemory.MIB, result.toString());
                    assertTrue(result.passes() >= 2, result.toString());
                });
    }

    @Test
    void preCopyPausesOnlyOnceAnotherPassNoLongerPays() {
        var pass = TcpMigration.Next.PASS;
        var throttled = TcpMigration.Next.THROTTLED_PASS;
        var pause = TcpMigration.Next.PAUSE;
        // Not fitting the limit (300 ms): a pass; from pass 2 a set that did not shrink by a tenth is throttled.
        assertEquals(pass, TcpMigration.nextStep(900, 1000, Long.MAX_VALUE, 400, 300, 1, 0, false));
        assertEquals(pass, TcpMigration.nextStep(899, 1000, 1000, 400, 300, 2, 0, false));
        assertEquals(throttled, TcpMigration.nextStep(901, 1000, 1000, 400, 300, 2, 0, false));
        assertEquals(TcpMigration.Next.POSTCOPY, TcpMigration.nextStep(901, 1000, 1000, 400, 300, 2, 0, true));
        // Fitting: a pass while the last one at least halved what it sent.
        assertEquals(pass, TcpMigration.nextStep(500, 1000, Long.MAX_VALUE, 50, 300, 1, 0, false));
        // Not halved: a pause still above SQUEEZE_MILLIS is worth a throttled pass, a shorter one is not.
        long squeeze = TcpMigration.SQUEEZE_MILLIS;
        assertEquals(throttled, TcpMigration.nextStep(501, 1000, 2000, squeeze + 1, 300, 3, 0, false));
        assertEquals(pause, TcpMigration.nextStep(501, 1000, 2000, squeeze, 300, 3, 0, false));
        // ... unless post-copy is the chosen way to converge: the guest is never throttled then.
        assertEquals(pause, TcpMigration.nextStep(501, 1000, 2000, squeeze + 1, 300, 3, 0, true));
        // At the floor nothing is worth a pass.
        long floor = TcpMigration.PAUSE_FLOOR_MILLIS;
        assertEquals(pause, TcpMigration.nextStep(10, 1000, 2000, floor, 300, 3, 0, false));
        assertEquals(pass, TcpMigration.nextStep(10, 1000, 2000, floor + 1, 300, 3, 0, false));
        // A guest that keeps halving cannot keep the migration going forever.
        int max = TcpMigration.MAX_PASSES_PAST_FIT;
        assertEquals(pass, TcpMigration.nextStep(1, 1000, 2000, 50, 300, 3, max - 1, false));
        assertEquals(pause, TcpMigration.nextStep(1, 1000, 2000, 50, 300, 3, max, false));
        assertEquals(pause, TcpMigration.nextStep(900, 1000, 2000, 50, 300, 3, max, false));
    }

    /**
     * Bypass-shared-memory between hosts: a guest in a shared memory file the destination can map
     * itself (here, the same host) moves with its device state alone, and the file's lock goes with it.
     */
    @KvmTest
    void aGuestInASharedMemoryFileMovesByReferenceWithNoPage(@TempDir Path dir) throws Exception {
        Path file = dir.resolve("ram");
        migrateRunning(
                guest(256 * GuestMemory.MIB, 2, "testguest.mem=192M testguest.rewrite=10")
                        .withBacking(new Backing.SharedFile(file)),
                MigrationParameters.DEFAULTS,
                (result, moved) -> {
                    // The device state and the messages: no page of the 192 MiB the guest filled.
                    assertTrue(result.bytesSent() < GuestMemory.MIB, result.toString());
                    assertEquals(file, result.sharedFile());
                    assertEquals(
                            new Backing.SharedFile(file),
                            moved.memory().blocks().getFirst().backing());
                    // The destination holds the file now: a third user is refused.
                    var e = assertThrows(
                            dev.panamavmm.vmm.memory.MemoryException.class,
                            () -> GuestMemory.create(
                                            256 * GuestMemory.MIB,
                                            new Backing.SharedFile(file),
                                            java.lang.foreign.Arena.ofAuto())
                                    .close());
                    assertTrue(e.getMessage().contains("is in use by PID"), e.getMessage());
                });
    }

    /** A destination that refuses after the source let go of its memory file: the source locks it again and runs on. */
    @KvmTest
    void aRefusedMigrationByReferenceGivesTheSourceItsFileBack(@TempDir Path dir) throws Exception {
        var console = new SnapshotTest.Console();
        var destinationConsole = new SnapshotTest.Console();
        Path file = dir.resolve("ram");
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(
                        kvm,
                        guest(64 * GuestMemory.MIB, 1, "testguest.mem=32M").withBacking(new Backing.SharedFile(file)),
                        console,
                        new VmListener() {})) {
            source.start();
            console.await("hb 0 2", 60);
            // The first check sees the announced machine; the second, after the state, the backing it will run in.
            var destination = incoming(
                    kvm,
                    MigrationParameters.DEFAULTS,
                    destinationConsole,
                    c -> c.backing() instanceof Backing.SharedFile ? "no shared files here" : null);
            var e = assertThrows(
                    SnapshotException.class,
                    () -> TcpMigration.send(
                            source,
                            new TcpAddress("127.0.0.1", destination.port()),
                            MigrationParameters.DEFAULTS,
                            new MigrationStatus(),
                            RamWriter.Progress.NONE));
            assertTrue(e.getMessage().endsWith("the destination refused: no shared files here"), e.getMessage());
            assertEquals(Vm.Status.RUNNING, source.status(), "never left paused");
            var locked = assertThrows(
                    dev.panamavmm.vmm.memory.MemoryException.class,
                    () -> GuestMemory.create(
                                    64 * GuestMemory.MIB,
                                    new Backing.SharedFile(file),
                                    java.lang.foreign.Arena.ofAuto())
                            .close());
            assertTrue(locked.getMessage().contains("is in use by PID"), locked.getMessage());
            int before = SnapshotTest.checkHeartbeats(console.text()).get(0);
            console.await("hb 0 " + (before + 3), 60);
            assertEquals("", destinationConsole.text(), "the guest never ran on the destination");
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    @KvmTest
    void aConnectionCutDuringPrecopyLeavesTheGuestRunningOnTheSource() throws Exception {
        var console = new SnapshotTest.Console();
        var destinationConsole = new SnapshotTest.Console();
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(
                        kvm, guest(128 * GuestMemory.MIB, 1, "testguest.mem=96M"), console, new VmListener() {})) {
            source.start();
            console.await("hb 0 2", 60);
            var destination = incoming(kvm, MigrationParameters.DEFAULTS, destinationConsole);
            try (var proxy = new Proxy(destination.port())) {
                proxy.cutAfter = 8L << 20;
                var status = new MigrationStatus();
                var e = assertThrows(
                        SnapshotException.class,
                        () -> TcpMigration.send(
                                source,
                                proxy.address(),
                                MigrationParameters.DEFAULTS.withMaxBandwidth(32L << 20),
                                status,
                                RamWriter.Progress.NONE));
                assertTrue(
                        e.getMessage()
                                .startsWith("migration to " + proxy.address() + " failed, the guest runs on here"),
                        e.getMessage());
                assertEquals("failed", status.status());
            }
            assertEquals(Vm.Status.RUNNING, source.status(), "never left paused");
            var failed = assertThrows(
                    ExecutionException.class, () -> destination.vm().get(30, TimeUnit.SECONDS));
            assertInstanceOf(SnapshotException.class, failed.getCause());
            assertFalse(
                    failed.getCause().getMessage().contains("\n"),
                    failed.getCause().getMessage());
            assertEquals(
                    "the source closed the connection before the migration completed",
                    failed.getCause().getMessage());
            int before = SnapshotTest.checkHeartbeats(console.text()).get(0);
            console.await("hb 0 " + (before + 3), 60);
            assertEquals("", destinationConsole.text(), "the guest never ran on the destination");
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    /** Waits until the control's jobs have all concluded; returns the last one. */
    @SuppressWarnings("unchecked")
    static Map<String, Object> awaitJob(VmControl control) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
        while (System.nanoTime() < deadline) {
            var jobs = control.jobs();
            var last = (Map<String, Object>) jobs.getLast();
            if ("concluded".equals(last.get("status"))) return last;
            Thread.sleep(20);
        }
        throw new AssertionError("the job did not conclude: " + control.jobs());
    }

    @KvmTest
    void migrateCancelOverTheApiGivesTheGuestBack() throws Exception {
        var console = new SnapshotTest.Console();
        var events = new CopyOnWriteArrayList<String>();
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(
                        kvm, guest(128 * GuestMemory.MIB, 1, "testguest.mem=96M"), console, new VmListener() {})) {
            source.start();
            console.await("hb 0 2", 60);
            var destination = incoming(kvm, MigrationParameters.DEFAULTS, OutputStream.nullOutputStream());
            var control = new VmControl(source, (name, data) -> events.add(name + " " + data));
            control.migrateSetParameters(Map.of("max-bandwidth", 16L << 20));
            var reply = control.migrate("tcp:127.0.0.1:" + destination.port(), true);
            assertTrue(reply.containsKey("job-id"), reply.toString());
            while (!"active".equals(control.queryMigrate().get("status"))) Thread.sleep(10);
            Thread.sleep(300);
            var progress = control.queryMigrate();
            assertTrue(
                    ((Map<?, ?>) progress.get("ram")).get("transferred") instanceof Long t && t > 0,
                    progress.toString());
            control.migrateCancel();
            var job = awaitJob(control);
            assertEquals(
                    "migration to tcp:127.0.0.1:" + destination.port() + " cancelled, the guest runs on here",
                    job.get("error"));
            assertEquals("cancelled", control.queryMigrate().get("status"));
            assertEquals(Vm.Status.RUNNING, source.status());
            assertTrue(
                    events.stream()
                            .filter(e -> e.startsWith("MIGRATION"))
                            .toList()
                            .equals(List.of(
                                    "MIGRATION {status=setup}",
                                    "MIGRATION {status=active}",
                                    "MIGRATION {status=cancelled}")),
                    events.toString());
            assertThrows(ExecutionException.class, () -> destination.vm().get(30, TimeUnit.SECONDS));
            int before = SnapshotTest.checkHeartbeats(console.text()).get(0);
            console.await("hb 0 " + (before + 2), 60);
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    @KvmTest
    void aGuestDirtyingFasterThanTheLinkIsThrottledUntilItConverges() throws Exception {
        var console = new SnapshotTest.Console();
        var events = new CopyOnWriteArrayList<String>();
        Vm moved = null;
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(
                        kvm, guest(64 * GuestMemory.MIB, 1, "testguest.mem=16M"), console, new VmListener() {})) {
            try {
                source.start();
                console.await("hb 0 2", 60);
                var destination = incoming(kvm, MigrationParameters.DEFAULTS, console);
                var control = new VmControl(source, (name, data) -> events.add(name + " " + data));
                // 16 MiB take 0.5 s at 32 MiB/s, while the guest (~2 GB/s unthrottled) rewrites all
                // of them every few ms; at 99 % it dirties ~20 MB/s, less than the link carries.
                control.migrateSetParameters(Map.of("max-bandwidth", 32L << 20, "downtime-limit", 20L));
                control.migrate("tcp:127.0.0.1:" + destination.port(), true);
                var job = awaitJob(control);
                assertTrue(job.get("result") != null, job.toString());
                moved = destination.vm().get(30, TimeUnit.SECONDS);
                var q = control.queryMigrate();
                assertEquals("completed", q.get("status"));
                // The policy: from pass 2, a dirty set that did not shrink by a tenth throttles. On a
                // loaded machine a starved guest may dirty slowly enough to converge without it;
                // then every pass must have shrunk. (A set that fits the 20 ms limit is never above
                // SQUEEZE_MILLIS, so it is not throttled for the pause's sake here.)
                var dirty = control.migrationStatus().dirtyPerPass();
                boolean stalled = false;
                for (int i = 1; i < dirty.size() - 1; i++) stalled |= dirty.get(i) * 10 > dirty.get(i - 1) * 9;
                assertEquals(stalled, q.get("auto-converge"), q + ", dirty pages per pass: " + dirty);
                if (stalled)
                    assertTrue((Long) q.get("cpu-throttle-percentage") >= TcpMigration.THROTTLE_INITIAL, q.toString());
                assertEquals(
                        List.of(
                                "MIGRATION {status=setup}",
                                "MIGRATION {status=active}",
                                "MIGRATION {status=device}",
                                "MIGRATION {status=completed}"),
                        events.stream().filter(e -> e.startsWith("MIGRATION")).toList());
                var seen = SnapshotTest.checkHeartbeats(console.text());
                console.await("hb 0 " + (seen.get(0) + 2), 60);
            } finally {
                if (moved != null) moved.close();
            }
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    @KvmTest
    void aGarbagePeerIsRefusedAndTheDestinationWaitsOn() throws Exception {
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open()) {
            var destination = incoming(kvm, MigrationParameters.DEFAULTS, console);
            try (var garbage = new Socket(LOOPBACK, destination.port())) {
                garbage.getOutputStream().write("GET / HTTP/1.0\r\n\r\n".getBytes(StandardCharsets.US_ASCII));
                var reply = new String(garbage.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
                assertTrue(reply.contains("not a migration: the peer sent a frame of unknown kind 0x47"), reply);
            }
            assertFalse(destination.vm().isDone(), "still waiting");
            try (var source = VmBuilder.boot(
                    kvm, guest(64 * GuestMemory.MIB, 1, "testguest.mem=32M"), console, new VmListener() {})) {
                source.start();
                console.await("hb 0 2", 60);
                TcpMigration.send(
                        source,
                        new TcpAddress("127.0.0.1", destination.port()),
                        MigrationParameters.DEFAULTS,
                        new MigrationStatus(),
                        RamWriter.Progress.NONE);
                try (var _ = destination.vm().get(30, TimeUnit.SECONDS)) {
                    int before = SnapshotTest.checkHeartbeats(console.text()).get(0);
                    console.await("hb 0 " + (before + 2), 60);
                }
            }
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    /**
     * A batch's pages are read straight from the socket's channel, which has no read timeout: a
     * source that stops in the middle of one fails the destination within its timeout, in one line.
     */
    @KvmTest
    void aSourceThatStallsInsideAPageBatchFailsTheDestinationInOneLine() throws Exception {
        try (var kvm = Kvm.open()) {
            var destination =
                    incoming(kvm, MigrationParameters.DEFAULTS.withTimeout(2), OutputStream.nullOutputStream());
            try (var source = new Socket(LOOPBACK, destination.port())) {
                preparedSource(source);
                var raw = new java.io.DataOutputStream(source.getOutputStream());
                raw.writeByte('P');
                raw.writeInt(0);
                raw.writeLong(0);
                raw.writeInt(2);
                raw.write(new byte[4096 + 100]); // a page and a bit of the second, then nothing
                raw.flush();
                long start = System.nanoTime();
                var failed = assertThrows(
                        ExecutionException.class, () -> destination.vm().get(30, TimeUnit.SECONDS));
                assertInstanceOf(SnapshotException.class, failed.getCause());
                assertEquals(
                        "the source sent nothing for 2 s in the middle of a page batch",
                        failed.getCause().getMessage());
                assertTrue(System.nanoTime() - start < TimeUnit.SECONDS.toNanos(10), "within its timeout");
            }
        }
    }

    /** As a source of 64 MiB of private RAM: {@code Prepare} sent and the destination's {@code Prepared} read. */
    private static MigrationStream.Writer preparedSource(Socket source) throws IOException {
        var out = MigrationStream.Writer.on(source, 0);
        out.message(new MigrationProtocol.Prepare(
                MigrationProtocol.VERSION,
                1,
                64 * GuestMemory.MIB,
                List.of(new MigrationProtocol.RamBlock("ram-low", 0, 64 * GuestMemory.MIB, 0, null, null))));
        out.flush();
        var in = MigrationStream.Reader.on(source);
        assertEquals(new MigrationProtocol.Prepared(false), in.message("prepared"));
        return out;
    }

    /** Samples are for a memory file both sides map: a destination on its own memfd refuses them. */
    @KvmTest
    void samplesForMemoryTheDestinationDoesNotShareAreRefused() throws Exception {
        try (var kvm = Kvm.open()) {
            var destination = incoming(kvm, MigrationParameters.DEFAULTS, OutputStream.nullOutputStream());
            try (var source = new Socket(LOOPBACK, destination.port())) {
                var out = preparedSource(source);
                out.message(new MigrationProtocol.Samples(
                        List.of(new MigrationProtocol.BlockPages("ram-low", List.of(0L, 1L)))));
                out.flush();
                var failed = assertThrows(
                        ExecutionException.class, () -> destination.vm().get(30, TimeUnit.SECONDS));
                assertEquals(
                        "the source sent the samples of a memory file this side does not map",
                        failed.getCause().getMessage());
            }
        }
    }

    @KvmTest
    void tlsRefusesAnUntrustedSourceBeforeAnyPageAndMigratesATrustedOne(@TempDir Path dir) throws Exception {
        TestCertificates.keyStore(dir, "source");
        TestCertificates.keyStore(dir, "destination");
        TestCertificates.keyStore(dir, "stranger");
        var trusted = dir.resolve("trust.p12");
        TestCertificates.trust(dir, trusted, "source");
        TestCertificates.trust(dir, trusted, "destination");
        var password = dir.resolve("password");
        Files.writeString(password, "secret\n");
        var destinationTls = MigrationTls.of(dir.resolve("destination.p12"), trusted, password);
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(
                        kvm, guest(64 * GuestMemory.MIB, 1, "testguest.mem=32M"), console, new VmListener() {})) {
            source.start();
            console.await("hb 0 2", 60);
            var destination = incoming(kvm, MigrationParameters.DEFAULTS.withTls(destinationTls), console);
            try (var proxy = new Proxy(destination.port())) {
                var stranger = MigrationParameters.DEFAULTS.withTls(
                        MigrationTls.of(dir.resolve("stranger.p12"), trusted, password));
                var status = new MigrationStatus();
                var e = assertThrows(
                        SnapshotException.class,
                        () -> TcpMigration.send(source, proxy.address(), stranger, status, RamWriter.Progress.NONE));
                assertTrue(e.getMessage().contains("the guest runs on here"), e.getMessage());
                assertEquals(Vm.Status.RUNNING, source.status());
                // The handshake and at most the first message (no guest data): far less than one page batch.
                assertTrue(proxy.fromSource.get() < 16 << 10, "bytes from the source: " + proxy.fromSource.get());
                assertFalse(destination.vm().isDone(), "the destination refused the connection and waits on");
                // Plain TCP into a TLS destination is refused too.
                var plain = assertThrows(
                        SnapshotException.class,
                        () -> TcpMigration.send(
                                source,
                                proxy.address(),
                                MigrationParameters.DEFAULTS.withTimeout(3),
                                new MigrationStatus(),
                                RamWriter.Progress.NONE));
                assertTrue(plain.getMessage().contains("the guest runs on here"), plain.getMessage());
                assertFalse(destination.vm().isDone());
                var right = MigrationParameters.DEFAULTS.withTls(
                        MigrationTls.of(dir.resolve("source.p12"), trusted, password));
                TcpMigration.send(source, proxy.address(), right, new MigrationStatus(), RamWriter.Progress.NONE);
            }
            try (var _ = destination.vm().get(30, TimeUnit.SECONDS)) {
                int before = SnapshotTest.checkHeartbeats(console.text()).get(0);
                console.await("hb 0 " + (before + 2), 60);
            }
        }
        SnapshotTest.checkHeartbeats(console.text());
    }
}
