package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.postcopy.PageSet;
import dev.panamavmm.vmm.postcopy.PostcopyDestination;
import dev.panamavmm.vmm.postcopy.PostcopySource;
import dev.panamavmm.vmm.postcopy.Stats;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import org.junit.jupiter.api.io.TempDir;

/**
 * Post-copy migration of the test guest between two VMs of this process, pages over loopback TCP:
 * the destination runs the guest before its memory arrived, every page arrives exactly once, and
 * a connection cut in the middle is recovered on a new one. The guest is the oracle: it rewrites
 * and verifies all of its memory continually, so a page lost, stale or zero prints CORRUPT.
 */
class PostcopyMigrationTest {
    private static final long MEMORY = 512 * GuestMemory.MIB;

    private static MachineConfig guest() {
        return new MachineConfig(
                MEMORY,
                2,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=20 testguest.mem=448M testguest.rewrite=100");
    }

    /** A console that notes how many pages were still missing when a line first appeared. */
    static final class WatchingConsole extends SnapshotTest.Console {
        private volatile Pattern line;
        private volatile PageSet missing;
        private volatile long missingAtLine = -1;

        void watch(String regex, PageSet missing) {
            this.missing = missing;
            this.line = Pattern.compile("(?m)^" + regex + "$");
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
            var p = line;
            if (p != null && missingAtLine < 0 && p.matcher(text()).find()) missingAtLine = missing.count();
        }

        long missingAtLine() {
            return missingAtLine;
        }
    }

    /**
     * Pauses the source and builds the destination from its device and vCPU state, RAM empty. The
     * state goes through a snapshot without RAM (blocks by descriptor) in a directory: a stand-in
     * for the TCP migration protocol, which will carry it once post-copy is wired into it. The
     * destination's memory is registered before its devices are built or any vCPU runs.
     */
    static VmBuilder.Postcopy moveState(Kvm kvm, Vm source, Path dir, SnapshotTest.Console console) throws Exception {
        source.pause();
        VmSnapshots.save(
                source,
                dir,
                new VmSnapshots.Request(false, VmSnapshots.After.STAY_PAUSED, true, -1, false, false, -1),
                RamWriter.Progress.NONE);
        int memfd = LibC.memfdCreate("postcopy-destination", LibcConstants.MFD_CLOEXEC);
        LibC.ftruncate(memfd, source.memory().size());
        return VmBuilder.forPostcopy(kvm, VmSnapshots.load(dir, new int[] {memfd}), console, new VmListener() {});
    }

    /** One loopback TCP connection: the source's end and the destination's. */
    record Link(Socket source, Socket destination) implements AutoCloseable {
        static Link open() throws IOException {
            try (var server = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
                var destination = new Socket(server.getInetAddress(), server.getLocalPort());
                return new Link(server.accept(), destination);
            }
        }

        @Override
        public void close() throws IOException {
            source.close();
            destination.close();
        }
    }

    /** An IO task on a thread of its own (the common pool has one worker on this 2-core host: serve would starve receive). */
    interface Io {
        Stats run() throws IOException;
    }

    static CompletableFuture<Stats> onThread(String name, Io task) {
        var result = new CompletableFuture<Stats>();
        Thread.ofPlatform().daemon().name(name).start(() -> {
            try {
                result.complete(task.run());
            } catch (IOException | RuntimeException e) {
                result.completeExceptionally(e);
            }
        });
        return result;
    }

    static CompletableFuture<Stats> serve(PostcopySource source, Link link) {
        return onThread(
                "test-serve",
                () -> source.serve(link.source().getInputStream(), link.source().getOutputStream()));
    }

    static CompletableFuture<Stats> receive(PostcopyDestination destination, Link link) {
        return onThread(
                "test-receive",
                () -> destination.receive(
                        link.destination().getInputStream(), link.destination().getOutputStream()));
    }

    /** Waits for the guest to run on: 30 more heartbeats on each CPU (several passes over its memory), none CORRUPT. */
    static void runsOn(Vm vm, SnapshotTest.Console console) throws Exception {
        var last = Heartbeats.checkLive(console.text());
        for (int cpu = 0; cpu < 2; cpu++) console.await("hb " + cpu + " " + (last.get(cpu) + 30), 120);
        Heartbeats.checkLive(console.text());
        assertFalse(vm.termination().isDone(), "the guest runs");
    }

    @KvmTest
    void theGuestRunsBeforeItsMemoryArrivedAndEveryPageArrivesOnce(@TempDir Path dir) throws Exception {
        try (var kvm = Kvm.open()) {
            var console = new WatchingConsole();
            try (var source = VmBuilder.boot(kvm, guest(), console, new VmListener() {})) {
                source.start();
                for (int cpu = 0; cpu < 2; cpu++) console.await("hb " + cpu + " 3", 120);
                var d = moveState(kvm, source, dir.resolve("state"), console);
                try (var destination = d.vm()) {
                    var toSend = PageSet.all(source.memory());
                    long total = toSend.count();
                    var sourceSide = new PostcopySource(source.memory(), toSend);
                    var before = Heartbeats.checkLive(console.text());
                    console.watch("hb 0 " + (before.get(0) + 1), d.missing());
                    destination.start(); // before any page arrived
                    try (var link = Link.open()) {
                        var served = serve(sourceSide, link);
                        var received = receive(d.fill(), link).get(120, TimeUnit.SECONDS);
                        var sent = served.get(30, TimeUnit.SECONDS);
                        assertEquals(total, received.pages(), "every page arrived: " + received);
                        assertEquals(0, received.duplicates(), "none twice: " + received);
                        assertEquals(total, sent.pages(), "every page was sent once: " + sent);
                        assertTrue(received.pagesRequested() > 0, "the guest faulted pages in: " + received);
                        assertTrue(received.zeroPages() > 0, "zero pages came as markers: " + received);
                        assertTrue(
                                received.bytes() < (total - received.zeroPages()) * 4096 + total * 2,
                                "zero pages were not sent as bytes: " + received);
                    }
                    console.await("hb 0 " + (before.get(0) + 1), 60);
                    assertTrue(
                            console.missingAtLine() > 0,
                            "the guest printed while " + console.missingAtLine() + " pages were still missing");
                    assertEquals(0, d.missing().count());
                    assertTrue(source.isPaused(), "the source stays paused");
                    runsOn(destination, console);
                }
            }
            Heartbeats.check(console.text());
        }
    }

    @KvmTest
    void aConnectionCutDuringPostcopyIsRecoveredOnANewOne(@TempDir Path dir) throws Exception {
        try (var kvm = Kvm.open()) {
            var console = new SnapshotTest.Console();
            try (var source = VmBuilder.boot(kvm, guest(), console, new VmListener() {})) {
                source.start();
                for (int cpu = 0; cpu < 2; cpu++) console.await("hb " + cpu + " 3", 120);
                var d = moveState(kvm, source, dir.resolve("state"), console);
                try (var destination = d.vm()) {
                    var toSend = PageSet.all(source.memory());
                    long total = toSend.count();
                    var sourceSide = new PostcopySource(source.memory(), toSend);
                    destination.start();
                    var link = Link.open();
                    var served = serve(sourceSide, link);
                    var receiving = receive(d.fill(), link);
                    // Cut once a few thousand pages (of 131072) arrived: the guest has started, most of RAM is missing.
                    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
                    while (d.fill().stats().pages() < 4000 && !receiving.isDone() && System.nanoTime() < deadline)
                        Thread.sleep(1);
                    link.close();
                    var cut = assertFails(receiving);
                    assertFails(served);
                    long missingAfterCut = d.missing().count();
                    assertTrue(missingAfterCut > 0, "pages were still missing when the connection was cut");
                    Thread.sleep(500);
                    assertFalse(destination.termination().isDone(), "the destination waits: " + cut);
                    assertTrue(source.isPaused(), "the source stays paused");
                    assertFalse(d.fill().complete());
                    assertTrue(d.missing().count() > 0, "nothing arrives without a connection");

                    try (var again = Link.open()) {
                        var servedAgain = serve(sourceSide, again);
                        var received = receive(d.fill(), again).get(120, TimeUnit.SECONDS);
                        var sent = servedAgain.get(30, TimeUnit.SECONDS);
                        assertEquals(total, received.pages(), "every page arrived, over both connections: " + received);
                        assertEquals(0, received.duplicates(), "none twice: " + received);
                        assertTrue(sent.pages() >= total, sent.toString());
                    }
                    assertEquals(0, d.missing().count());
                    runsOn(destination, console);
                }
            }
            Heartbeats.check(console.text());
        }
    }

    /** The future's failure (an IOException from the connection): a message, never a hang. */
    private static String assertFails(CompletableFuture<Stats> future) throws Exception {
        try {
            var stats = future.get(30, TimeUnit.SECONDS);
            throw new AssertionError("completed despite the cut: " + stats);
        } catch (ExecutionException e) {
            assertTrue(e.getCause() instanceof IOException, "an IOException: " + e.getCause());
            return e.getCause().getMessage();
        }
    }
}
