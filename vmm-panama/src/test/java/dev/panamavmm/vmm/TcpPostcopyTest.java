package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.control.VmControl;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.function.LongSupplier;
import java.util.regex.Pattern;

/**
 * Post-copy over the TCP migration (loopback only): {@code migrate-start-postcopy} switches a
 * running migration, the guest runs on the destination before its memory arrived, every page
 * arrives exactly once, and a connection cut during post-copy is recovered with
 * {@code migrate-recover} and {@code migrate "resume"}. The guest rewrites all of its memory and
 * verifies it: a page lost, stale or zero prints CORRUPT.
 */
class TcpPostcopyTest {
    private static final MachineConfig GUEST = TcpMigrationTest.guest(
            512 * GuestMemory.MIB, 2, "testguest.hb=20 testguest.mem=448M testguest.rewrite=100");

    private static final List<Object> POSTCOPY_RAM = List.of(Map.of("capability", "postcopy-ram", "state", true));

    /** The destination's console: notes how many pages were still to come when its first heartbeat appeared. */
    static final class WatchingConsole extends SnapshotTest.Console {
        private static final Pattern HEARTBEAT = Pattern.compile("(?m)^hb 0 \\d+$");
        private volatile LongSupplier missing;
        private volatile long missingAtFirstHeartbeat = -1;

        void watch(LongSupplier missingPages) {
            missing = missingPages;
        }

        @Override
        public synchronized void write(byte[] b, int off, int len) {
            super.write(b, off, len);
            check();
        }

        @Override
        public synchronized void write(int b) {
            super.write(b);
            if (b == '\n') check();
        }

        private void check() {
            var m = missing;
            if (m != null
                    && missingAtFirstHeartbeat < 0
                    && HEARTBEAT.matcher(text()).find()) missingAtFirstHeartbeat = m.getAsLong();
        }
    }

    /** Pages the source has not sent yet: the destination cannot have them. */
    private static long notSentYet(MigrationStatus status) {
        var stats = status.postcopyStats();
        return status.postcopyPages() - (stats == null ? 0 : stats.pages());
    }

    private static void await(BooleanSupplier condition, String what) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
        while (!condition.getAsBoolean()) {
            if (System.nanoTime() > deadline) throw new AssertionError("timed out waiting until " + what);
            Thread.sleep(5);
        }
    }

    /** Waits for 10 more heartbeats on each vCPU of the moved guest, none CORRUPT, the sequence unbroken since the source's. */
    private static void runsOn(Vm vm, SnapshotTest.Console source, SnapshotTest.Console destination) throws Exception {
        var last = Heartbeats.checkLive(source.text() + destination.text());
        for (int cpu = 0; cpu < 2; cpu++) destination.await("hb " + cpu + " " + (last.get(cpu) + 10), 120);
        Heartbeats.checkLive(source.text() + destination.text());
        assertFalse(vm.termination().isDone(), "the guest runs");
    }

    @KvmTest
    void theGuestRunsOnTheDestinationBeforeItsMemoryArrivedAndEveryPageComesOnce() throws Exception {
        var console = new SnapshotTest.Console();
        var destinationConsole = new WatchingConsole();
        Vm moved = null;
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(kvm, GUEST, console, new VmListener() {})) {
            try {
                source.start();
                for (int cpu = 0; cpu < 2; cpu++) console.await("hb " + cpu + " 3", 120);
                var destination = TcpMigrationTest.incoming(kvm, MigrationParameters.DEFAULTS, destinationConsole);
                var control = new VmControl(source);
                control.migrateSetCapabilities(POSTCOPY_RAM);
                try (var proxy = new TcpMigrationTest.Proxy(destination.port())) {
                    control.migrate(
                            "tcp:" + proxy.address().host() + ":"
                                    + proxy.address().port(),
                            true);
                    var status = control.migrationStatus();
                    destinationConsole.watch(() -> notSentYet(status));
                    // During pass 1: the switch comes at its end, with the pages the guest dirtied meanwhile.
                    await(
                            () -> status.describe().get("ram") instanceof Map<?, ?> ram
                                    && ram.get("transferred") instanceof Long sent
                                    && sent > 16L << 20,
                            "pass 1 is under way");
                    control.migrateStartPostcopy();
                    var job = TcpMigrationTest.awaitJob(control);
                    assertEquals(null, job.get("error"), job.toString());
                    assertEquals("completed", status.status());
                    moved = destination.vm().get(30, TimeUnit.SECONDS);
                    assertTrue(source.termination().isDone(), "the source ends once the destination has every page");
                    assertTrue(
                            status.dirtyPerPass().size() == 1,
                            "the switch came after pass 1: " + status.dirtyPerPass());

                    var incoming = moved.postcopyIncoming();
                    await(incoming::complete, "the destination has every page");
                    var received = incoming.stats();
                    long missing = status.postcopyPages();
                    assertTrue(missing > 0, "the rewriting guest dirtied pages during pass 1: " + missing);
                    assertEquals(missing, received.pages(), "every missing page arrived: " + received);
                    assertEquals(0, received.duplicates(), "none twice: " + received);
                    assertEquals(missing, status.postcopyStats().pages(), "each sent once: " + status.postcopyStats());
                    assertTrue(received.pagesRequested() > 0, "the guest faulted pages in: " + received);
                    assertTrue(
                            received.faultWaitMicros() > 0
                                    && received.maxFaultWaitMicros() > 0
                                    && received.maxFaultWaitMicros() <= received.faultWaitMicros(),
                            "the guest's waits for those pages are counted: " + received);
                    assertEquals(
                            proxy.fromSource.get(),
                            status.describe().get("ram") instanceof Map<?, ?> ram ? ram.get("transferred") : null,
                            "every byte from the source counted");
                    assertTrue(
                            destinationConsole.missingAtFirstHeartbeat > 0,
                            "the guest printed on the destination while " + destinationConsole.missingAtFirstHeartbeat
                                    + " pages were still to come");
                }
                runsOn(moved, console, destinationConsole);
            } finally {
                if (moved != null) moved.close();
            }
        }
        Heartbeats.check(console.text() + destinationConsole.text());
    }

    @KvmTest
    void aConnectionCutDuringPostcopyWaitsOnBothSidesAndRecoversOnANewOne() throws Exception {
        var console = new SnapshotTest.Console();
        var destinationConsole = new SnapshotTest.Console();
        Vm moved = null;
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(kvm, GUEST, console, new VmListener() {})) {
            try {
                source.start();
                for (int cpu = 0; cpu < 2; cpu++) console.await("hb " + cpu + " 3", 120);
                var destination = TcpMigrationTest.incoming(kvm, MigrationParameters.DEFAULTS, destinationConsole);
                var control = new VmControl(source);
                control.migrateSetCapabilities(POSTCOPY_RAM);
                MigrationStatus status;
                try (var proxy = new TcpMigrationTest.Proxy(destination.port())) {
                    control.migrate("tcp:127.0.0.1:" + proxy.address().port(), true);
                    status = control.migrationStatus();
                    control.migrateStartPostcopy(); // before any pass ran: at once, every page missing
                    moved = destination.vm().get(60, TimeUnit.SECONDS);
                    var incoming = moved.postcopyIncoming();
                    // Cut once a few thousand pages (of 131072) arrived: the guest has started, most of RAM is missing.
                    await(() -> incoming.stats().pages() > 4000 || incoming.complete(), "4000 pages arrived");
                    proxy.cut();
                    assertFalse(incoming.complete(), "the cut came before every page arrived");
                    await(() -> status.status().equals("postcopy-paused"), "the source pauses");
                    await(() -> incoming.status().equals("postcopy-paused"), "the destination pauses");
                }
                assertEquals(131072, status.postcopyPages(), "no pass ran: every page was missing");
                var incoming = moved.postcopyIncoming();
                long arrived = incoming.stats().pages();
                Thread.sleep(500);
                assertEquals(arrived, incoming.stats().pages(), "nothing arrives without a connection");
                assertFalse(moved.termination().isDone(), "the destination waits");
                assertTrue(source.isPaused(), "the source keeps its guest paused");
                assertFalse(source.termination().isDone(), "and its memory");
                var refused = assertThrows(IllegalStateException.class, control::migrateCancel);
                assertEquals(
                        "post-copy cannot be cancelled: the guest runs on the destination now", refused.getMessage());
                assertEquals("postcopy-paused", control.queryMigrate().get("status"));

                var destinationControl = new VmControl(moved);
                var recover = destinationControl.migrateRecover("tcp:127.0.0.1:0");
                assertEquals(
                        "postcopy-recover", destinationControl.queryMigrate().get("status"));
                control.migrateResume(String.valueOf(recover.get("uri")));
                var job = TcpMigrationTest.awaitJob(control);
                assertEquals(null, job.get("error"), job.toString());
                assertEquals("completed", status.status());
                assertTrue(source.termination().isDone(), "the source ends once the destination has every page");
                // The last page arrives before the destination's stream ends (its request writer
                // stops after the source's END): query-migrate says "completed" from then on.
                await(
                        () -> incoming.complete()
                                && "completed"
                                        .equals(destinationControl
                                                .queryMigrate()
                                                .get("status")),
                        "the destination has every page and its stream ended");
                var received = incoming.stats();
                assertEquals(131072, received.pages(), "every page arrived, over both connections: " + received);
                assertEquals(0, received.duplicates(), "none twice: " + received);
                assertTrue(received.zeroPages() > 0, "zero pages came as markers: " + received);
                assertTrue(
                        received.bytes() < (131072 - received.zeroPages()) * 4096 + 131072 * 2,
                        "zero pages were not sent as bytes: " + received);
                assertTrue(
                        status.postcopyStats().pages() >= 131072,
                        "the source sent every page: " + status.postcopyStats());
                runsOn(moved, console, destinationConsole);
            } finally {
                if (moved != null) moved.close();
            }
        }
        Heartbeats.check(console.text() + destinationConsole.text());
    }

    @KvmTest
    void withPostcopyConvergenceAPassThatDoesNotShrinkSwitchesInsteadOfThrottling() throws Exception {
        var console = new SnapshotTest.Console();
        var events = new java.util.concurrent.CopyOnWriteArrayList<String>();
        Vm moved = null;
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(
                        kvm,
                        TcpMigrationTest.guest(64 * GuestMemory.MIB, 1, "testguest.mem=16M"),
                        console,
                        new VmListener() {})) {
            try {
                source.start();
                console.await("hb 0 2", 60);
                var destination = TcpMigrationTest.incoming(kvm, MigrationParameters.DEFAULTS, console);
                var control = new VmControl(source, (name, data) -> events.add(name + " " + data));
                control.migrateSetCapabilities(POSTCOPY_RAM);
                // As the auto-converge test: the guest rewrites its 16 MiB far faster than 32 MiB/s carries them.
                control.migrateSetParameters(
                        Map.of("max-bandwidth", 32L << 20, "downtime-limit", 20L, "x-convergence", "postcopy"));
                assertEquals("postcopy", control.queryMigrateParameters().get("x-convergence"));
                control.migrate("tcp:127.0.0.1:" + destination.port(), true);
                var job = TcpMigrationTest.awaitJob(control);
                assertTrue(job.get("result") != null, job.toString());
                moved = destination.vm().get(30, TimeUnit.SECONDS);
                var q = control.queryMigrate();
                assertEquals("completed", q.get("status"));
                assertEquals(false, q.get("auto-converge"), "never throttled: " + q);
                var dirty = control.migrationStatus().dirtyPerPass();
                int last = dirty.size() - 1;
                boolean lastStalled = last >= 1 && dirty.get(last) * 10 > dirty.get(last - 1) * 9;
                boolean earlierStalled = false;
                for (int i = 1; i < last; i++) earlierStalled |= dirty.get(i) * 10 > dirty.get(i - 1) * 9;
                assertFalse(earlierStalled, "the first pass that did not shrink switched: " + dirty);
                // A starved guest on a loaded machine may converge instead; then it never switched.
                assertEquals(
                        lastStalled, control.migrationStatus().postcopyPages() > 0, q + ", dirty per pass: " + dirty);
                if (lastStalled) {
                    assertTrue(events.contains("MIGRATION {status=postcopy-active}"), events.toString());
                    assertEquals(
                            control.migrationStatus().postcopyPages(),
                            moved.postcopyIncoming().stats().pages(),
                            "every missing page arrived once");
                }
                var seen = SnapshotTest.checkHeartbeats(console.text());
                console.await("hb 0 " + (seen.get(0) + 2), 60);
            } finally {
                if (moved != null) moved.close();
            }
        }
        SnapshotTest.checkHeartbeats(console.text());
    }

    @KvmTest
    void startPostcopyWithoutTheCapabilityIsRefusedInOneLine() throws Exception {
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(
                        kvm,
                        TcpMigrationTest.guest(64 * GuestMemory.MIB, 1, "testguest.mem=16M"),
                        console,
                        new VmListener() {})) {
            source.start();
            console.await("hb 0 2", 60);
            var control = new VmControl(source);
            var notRunning = assertThrows(IllegalStateException.class, control::migrateStartPostcopy);
            assertEquals("no migration is running", notRunning.getMessage());
            var destination = TcpMigrationTest.incoming(kvm, MigrationParameters.DEFAULTS, console);
            control.migrateSetParameters(Map.of("max-bandwidth", 4L << 20));
            control.migrate("tcp:127.0.0.1:" + destination.port(), true);
            var refused = assertThrows(IllegalStateException.class, control::migrateStartPostcopy);
            assertEquals(
                    "the migration was started without the postcopy-ram capability (migrate-set-capabilities first)",
                    refused.getMessage());
            control.migrateCancel();
            TcpMigrationTest.awaitJob(control);
            assertEquals(Vm.Status.RUNNING, source.status(), "the guest runs on here");
            var bad = assertThrows(
                    IllegalArgumentException.class,
                    () -> control.migrateSetCapabilities(List.of(Map.of("capability", "x-colo", "state", true))));
            assertEquals("this VMM knows only the capability \"postcopy-ram\", not \"x-colo\"", bad.getMessage());
            var convergence = assertThrows(
                    IllegalArgumentException.class,
                    () -> control.migrateSetParameters(Map.of("x-convergence", "pray")));
            assertEquals("\"x-convergence\" must be \"throttle\" or \"postcopy\"", convergence.getMessage());
        }
        Heartbeats.check(console.text());
    }
}
