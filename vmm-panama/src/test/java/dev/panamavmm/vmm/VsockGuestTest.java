package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.control.CloneService;
import dev.panamavmm.devices.virtio.VirtioVsock;
import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.host.VmHost;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Supplier;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The test guest's vsock driver against real host Unix sockets: a host-initiated connection
 * ({@code CONNECT 5000}) and a guest-initiated one (to {@code PATH_6000}), each streaming the
 * driver's pattern both ways with every byte checked on both sides; a third host peer never
 * reads. One live update keeps the very same host sockets open with no byte lost or repeated;
 * a snapshot restore resets the connections (TRANSPORT_RESET) and new ones work.
 */
class VsockGuestTest {

    /** One host end of a stream: a reader that checks every byte and a writer of the pattern. */
    static final class Peer implements AutoCloseable {
        final SocketChannel channel;
        final AtomicLong received = new AtomicLong(), sent = new AtomicLong();
        final AtomicReference<String> error = new AtomicReference<>();
        volatile boolean ended;

        Peer(SocketChannel channel) {
            this.channel = channel;
            Thread.ofPlatform().daemon().start(this::read);
            Thread.ofPlatform().daemon().start(this::write);
        }

        private void read() {
            var buf = ByteBuffer.allocate(64 * 1024);
            try {
                while (true) {
                    buf.clear();
                    int n = channel.read(buf);
                    if (n < 0) break;
                    long at = received.get();
                    for (int i = 0; i < n; i++) {
                        if (buf.get(i) != TestGuest.vsockPattern(at + i)) {
                            error.compareAndSet(null, "byte " + (at + i) + " from the guest is " + buf.get(i));
                            return;
                        }
                    }
                    received.addAndGet(n);
                }
            } catch (IOException e) {
                // closed by the test
            }
            ended = true;
        }

        private void write() {
            var buf = ByteBuffer.allocate(16 * 1024);
            try {
                while (true) {
                    buf.clear();
                    long at = sent.get();
                    for (int i = 0; i < buf.capacity(); i++) buf.put(TestGuest.vsockPattern(at + i));
                    buf.flip();
                    while (buf.hasRemaining()) {
                        int n = channel.write(buf);
                        sent.addAndGet(n);
                    }
                }
            } catch (IOException e) {
                // the connection ended
            }
        }

        /** Waits until both directions moved at least {@code bytes} beyond the given counts. */
        void awaitProgress(long rx, long tx, long bytes) throws InterruptedException {
            awaitProgress(rx, tx, bytes, () -> "");
        }

        /** As above; {@code why} says what the device and the guest show when it fails. */
        void awaitProgress(long rx, long tx, long bytes, Supplier<String> why) throws InterruptedException {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (received.get() < rx + bytes || sent.get() < tx + bytes) {
                assertNull(error.get(), error.get());
                assertTrue(
                        System.nanoTime() < deadline,
                        "no progress: received " + received.get() + " sent " + sent.get() + (ended ? " (ended)" : "")
                                + "\n" + why.get());
                Thread.sleep(10);
            }
            assertNull(error.get());
        }

        @Override
        public void close() throws IOException {
            channel.close();
        }
    }

    /**
     * A host program's connection: {@code CONNECT port}, then the device's {@code OK HOSTPORT} line;
     * tried again for up to 10 s while the guest does not listen on the port yet (its driver takes
     * up its listening ports one by one, and a REQUEST nobody listens to is answered with RST: the
     * device closes the host's socket, as a refused TCP connection would be).
     */
    static SocketChannel connect(Path uds, int port) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + 10_000_000_000L;
        while (true) {
            try {
                return connectOnce(uds, port);
            } catch (IOException refused) {
                if (System.nanoTime() > deadline) throw refused;
                Thread.sleep(50);
            }
        }
    }

    private static SocketChannel connectOnce(Path uds, int port) throws IOException {
        var ch = SocketChannel.open(UnixDomainSocketAddress.of(uds));
        ch.write(ByteBuffer.wrap(("CONNECT " + port + "\n").getBytes(StandardCharsets.US_ASCII)));
        var line = new StringBuilder();
        var one = ByteBuffer.allocate(1);
        while (true) {
            one.clear();
            if (ch.read(one) < 0) throw new IOException("the device closed the connection: " + line);
            char c = (char) one.get(0);
            if (c == '\n') break;
            line.append(c);
        }
        assertTrue(line.toString().matches("OK \\d+"), line.toString());
        return ch;
    }

    @KvmTest
    void streamsSurviveALiveUpdateAndAreResetByARestore(@TempDir Path dir) throws Exception {
        var uds = dir.resolve("v.sock");
        var ram = SnapshotTest.shmFile("vsock-guest");
        var console = new SnapshotTest.Console();
        var config = SnapshotTest.guest(
                        1,
                        new Backing.SharedFile(ram),
                        "testguest.hb=100 testguest.vsock=listen:5000 testguest.vsock=connect:6000"
                                + " testguest.vsock=listen:5001")
                .withVsock(new VsockConfig(7, uds));
        try (var kvm = Kvm.open();
                var hostService = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
            hostService.bind(UnixDomainSocketAddress.of(dir.resolve("v.sock_6000")));
            Vm vm = VmBuilder.boot(kvm, config, console, new VmListener() {});
            try {
                vm.start();
                console.await("vsock cid=7", 30);
                // Guest-initiated: the device connected to PATH_6000.
                var fromGuest = new Peer(hostService.accept());
                // Host-initiated: CONNECT 5000, OK back once the guest accepted.
                var toGuest = new Peer(connect(uds, 5000));
                // A host program that never reads what the guest sends it.
                var deaf = connect(uds, 5001);
                console.await("vsock accepted 5001 .*", 30);
                var booted = vm;
                fromGuest.awaitProgress(0, 0, 1 << 20, () -> diagnose(booted, console));
                toGuest.awaitProgress(0, 0, 1 << 20, () -> diagnose(booted, console));

                // Live update: the same host sockets stay open, every byte checked on both sides.
                var socket = dir.resolve("m.sock");
                var next = LocalMigrationTest.incoming(kvm, socket, console, null);
                LocalMigrationTest.awaitSocket(socket);
                LocalMigration.send(vm, socket, 10);
                vm.close();
                vm = next.get(10, TimeUnit.SECONDS);
                fromGuest.awaitProgress(fromGuest.received.get(), fromGuest.sent.get(), 1 << 20);
                toGuest.awaitProgress(toGuest.received.get(), toGuest.sent.get(), 1 << 20);
                assertFalse(fromGuest.ended || toGuest.ended, "a connection ended");
                assertEquals(1, count(console.text(), "vsock connected 6000"), "no reconnect");
                assertEquals(1, count(console.text(), "vsock accepted 5000"), "no reconnect");

                // The peer that never reads holds at most its credit and one buffer in the VMM.
                var device =
                        (VirtioVsock) vm.virtioDevices().getFirst().transport().device();
                long bound = 3L * (VirtioVsock.BUF_ALLOC + VirtioVsock.TO_GUEST_BUFFER);
                for (int i = 0; i < 20; i++) {
                    assertTrue(device.bufferedBytes() <= bound, device.bufferedBytes() + " bytes buffered");
                    Thread.sleep(50);
                }
                console.await("CORRUPT vsock 5001 rx=0 tx=\\d+ stalled", 30); // the guest sees its peer stall
                deaf.close();

                // Restore from a snapshot: the old sockets are gone, the guest is told, new connections work.
                VmSnapshots.save(vm, dir.resolve("snap"), true, false, RamWriter.Progress.NONE);
                vm.close();
                vm = VmSnapshots.restore(kvm, dir.resolve("snap"), console, new VmListener() {});
                vm.start();
                console.await("vsock transport reset cid=7", 30);
                var fromGuest2 = new Peer(hostService.accept());
                var toGuest2 = new Peer(connect(uds, 5000));
                fromGuest2.awaitProgress(0, 0, 1 << 20);
                toGuest2.awaitProgress(0, 0, 1 << 20);
                assertNull(fromGuest.error.get());
                assertNull(toGuest.error.get());

                String text = console.text();
                // Up to the restore only the deaf peer may stall; after it nothing is reset or stalls.
                int restored = text.indexOf("vsock transport reset");
                var corrupt = TestGuest.CORRUPT_VSOCK.matcher(text.substring(0, restored));
                while (corrupt.find()) assertEquals("5001", corrupt.group(1), "only the deaf peer stalls: " + text);
                assertFalse(
                        TestGuest.CORRUPT_VSOCK
                                .matcher(text.substring(restored))
                                .find(),
                        "a connection after the restore failed: " + text);
                assertFalse(text.contains("CORRUPT 0") || text.contains("CORRUPT 1"), text);
                SnapshotTest.checkHeartbeats(text);
                fromGuest.close();
                toGuest.close();
                fromGuest2.close();
                toGuest2.close();
            } finally {
                vm.close();
                Files.deleteIfExists(ram);
            }
        }
    }

    @KvmTest
    void clonesListenWhereTheirOverrideSaysWithTheirOwnCid(@TempDir Path dir) throws Exception {
        var console = new SnapshotTest.Console();
        var tpl = dir.resolve("tpl");
        try (var kvm = Kvm.open()) {
            var config = TemplateTest.guest("testguest.vsock=listen:5000")
                    .withVsock(new VsockConfig(7, dir.resolve("t.sock")));
            Templates.create(kvm, tpl, config, Path.of("/dev/shm"), console, new CompletableFuture<>(), 60);
            var loaded = Templates.open(tpl);
            var consoles = new SnapshotTest.Console[] {new SnapshotTest.Console(), new SnapshotTest.Console()};
            var vms = new ArrayList<Vm>();
            try {
                for (int i = 0; i < 2; i++) {
                    var vsock = new VsockConfig.ForClone(i == 0 ? 0 : 9, dir.resolve("c" + i + ".sock"));
                    var vm = Templates.clone(
                            kvm, VsockConfig.ForClone.apply(loaded, vsock), consoles[i], new VmListener() {});
                    vms.add(vm);
                    vm.start();
                }
                consoles[0].await("vsock transport reset cid=7", 30); // the template's CID kept
                consoles[1].await("vsock transport reset cid=9", 30); // its own
                for (int i = 0; i < 2; i++) {
                    try (var peer = new Peer(connect(dir.resolve("c" + i + ".sock"), 5000))) {
                        peer.awaitProgress(0, 0, 256 * 1024);
                    }
                }
                // Without an override a second clone would listen where the first does: refused in one line.
                var e = assertThrows(
                        RuntimeException.class,
                        () -> Templates.clone(
                                kvm,
                                VsockConfig.ForClone.apply(loaded, new VsockConfig.ForClone(0, dir.resolve("c0.sock"))),
                                new SnapshotTest.Console(),
                                new VmListener() {}));
                assertTrue(e.getMessage().contains("in use"), e.getMessage());
                var withoutVsock = loaded.withConfig(loaded.config().withVsock(null));
                var refused = assertThrows(
                        SnapshotException.class,
                        () -> VsockConfig.ForClone.apply(
                                withoutVsock, new VsockConfig.ForClone(0, dir.resolve("x.sock"))));
                assertTrue(refused.getMessage().contains("no vsock device"), refused.getMessage());
            } finally {
                for (var vm : vms) vm.close();
                Templates.remove(tpl);
            }
        }
    }

    /**
     * Clones made by {@code vmm serve} and {@code vmm host} without a {@code "vsock"} in their request
     * listen on sockets of their own (next to serve's API socket; in the host's state directory),
     * named in the reply, keep the template's CID, and a destroyed one's socket goes with it.
     */
    @KvmTest
    void theDaemonsGiveEachCloneItsOwnSocket(@TempDir Path dir) throws Exception {
        var tpl = dir.resolve("tpl");
        try (var kvm = Kvm.open()) {
            var config = TemplateTest.guest("testguest.vsock=listen:5000")
                    .withVsock(new VsockConfig(7, dir.resolve("t.sock")));
            Templates.create(
                    kvm, tpl, config, Path.of("/dev/shm"), new SnapshotTest.Console(), new CompletableFuture<>(), 60);
            try {
                var sockets = new ArrayList<Path>();
                try (var serve = new CloneService(kvm, null, dir.resolve("serve.sock"))) {
                    var reply = serve.clone(tpl, 2, List.of(), null);
                    for (var c : (List<?>) reply.get("clones"))
                        sockets.add(Path.of((String) ((Map<?, ?>) c).get("vsock")));
                    assertEquals(
                            List.of(dir.resolve("serve.sock.clone-1.vsock"), dir.resolve("serve.sock.clone-2.vsock")),
                            sockets);
                    for (var uds : sockets) {
                        try (var peer = new Peer(connect(uds, 5000))) {
                            peer.awaitProgress(0, 0, 64 * 1024);
                        }
                    }
                }
                var state = Files.createDirectories(dir.resolve("state"));
                try (var host = VmHost.open(VmHost.Isolation.SHARED, kvm, state, state, 0, List.of())) {
                    var api = host.handler(() -> {});
                    for (int i = 1; i <= 2; i++) {
                        var reply = (Map<?, ?>) api.execute("clone", Map.of("template", tpl.toString()));
                        var uds = Path.of((String) reply.get("vsock"));
                        assertEquals(state.resolve("vm-" + i + ".vsock"), uds);
                        try (var peer = new Peer(connect(uds, 5000))) {
                            peer.awaitProgress(0, 0, 64 * 1024);
                        }
                    }
                    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
                    while (!Files.readString(state.resolve("vm-2.log")).contains("vsock transport reset cid=7")) {
                        assertTrue(
                                System.nanoTime() < deadline,
                                "the template's CID: " + Files.readString(state.resolve("vm-2.log")));
                        Thread.sleep(20);
                    }
                    api.execute("destroy", Map.of("id", "vm-1"));
                    assertFalse(Files.exists(state.resolve("vm-1.vsock")), "a destroyed clone's socket is removed");
                    // A request that names its socket gets that one.
                    var named = (Map<?, ?>) api.execute(
                            "clone",
                            Map.of(
                                    "template",
                                    tpl.toString(),
                                    "vsock",
                                    Map.of("uds", dir.resolve("own.sock").toString())));
                    assertEquals(dir.resolve("own.sock").toString(), named.get("vsock"));
                }
            } finally {
                Templates.remove(tpl);
            }
        }
    }

    @Test
    void aCloneOverrideIsParsedOrRefusedInOneSentence() {
        assertEquals(
                new VsockConfig.ForClone(0, Path.of("/run/c.sock")), VsockConfig.ForClone.parse("uds=/run/c.sock"));
        assertEquals(new VsockConfig.ForClone(12, Path.of("c.sock")), VsockConfig.ForClone.parse("cid=12,uds=c.sock"));
        assertEquals(
                new VsockConfig(12, Path.of("c.sock")),
                VsockConfig.ForClone.fromJson(Map.of("cid", 12L, "uds", "c.sock"))
                        .applyTo(new VsockConfig(7, Path.of("t.sock"))));
        assertEquals(
                new VsockConfig(7, Path.of("c.sock")),
                VsockConfig.ForClone.fromJson(Map.of("uds", "c.sock")).applyTo(new VsockConfig(7, Path.of("t.sock"))));
        for (var bad : List.of("cid=2,uds=x", "uds=", "cid=x,uds=y", "port=3,uds=x"))
            assertThrows(IllegalArgumentException.class, () -> VsockConfig.ForClone.parse(bad), bad);
        for (Object bad :
                List.<Object>of("x", Map.of("cid", 5L), Map.of("uds", "x", "port", 1L), Map.of("uds", "x", "cid", "5")))
            assertThrows(IllegalArgumentException.class, () -> VsockConfig.ForClone.fromJson(bad), String.valueOf(bad));
    }

    /** The device's connection counters and the console's lines but the per-heartbeat ones, for a failure's message. */
    static String diagnose(Vm vm, SnapshotTest.Console console) {
        var device = (VirtioVsock) vm.virtioDevices().getFirst().transport().device();
        var lines = console.text().lines().toList();
        var events =
                lines.stream().filter(l -> !l.matches("hb .*|vsock \\d+ rx=.*")).toList();
        return String.join("\n", device.connectionCounters()) + "\nconsole (no heartbeats):\n"
                + String.join("\n", events.subList(Math.max(0, events.size() - 40), events.size()))
                + "\nconsole (its end):\n"
                + String.join("\n", lines.subList(Math.max(0, lines.size() - 6), lines.size()));
    }

    private static int count(String text, String what) {
        int n = 0;
        for (int i = text.indexOf(what); i >= 0; i = text.indexOf(what, i + 1)) n++;
        return n;
    }
}
