package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.Json;
import dev.panamavmm.testing.NetNamespace;
import dev.panamavmm.testing.VmmProcess;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * virtio-net end to end: VMMs in a network namespace of the test's own, the test guest exchanging
 * frames with {@code guest/net-peer.py} through a real tap, every frame counted by the guest (a
 * frame lost, duplicated or damaged is a {@code CORRUPT net} line) across save, restore, live
 * update and clone.
 */
class NetCliTest {
    static final String MAC = "02:00:00:00:00:01";
    static final String CLONE_MAC = "02:00:00:00:00:02";
    static final String SERVE_MAC = "02:00:00:00:00:03";
    static final Pattern NET = TestGuest.NET;

    /** Waits until the guest has had {@code echoed} echoes; returns the line. */
    static Matcher awaitEchoed(VmmProcess vmm, long echoed, long seconds) throws InterruptedException {
        int i = vmm.awaitLine("net (\\d*[1-9]\\d*) .*", 0, seconds);
        long deadline = System.nanoTime() + seconds * 1_000_000_000L;
        while (true) {
            var m = NET.matcher(vmm.lines().get(i));
            if (m.matches() && Long.parseLong(m.group(3)) >= echoed) return m;
            if (System.nanoTime() > deadline)
                throw new AssertionError("fewer than " + echoed + " echoes: " + vmm.lines());
            i = vmm.awaitLine("net .*", i + 1, Math.max(1, (deadline - System.nanoTime()) / 1_000_000_000L));
        }
    }

    static long lastEchoed(VmmProcess vmm) {
        var lines = vmm.lines();
        for (int i = lines.size() - 1; i >= 0; i--) {
            var m = NET.matcher(lines.get(i));
            if (m.matches()) return echoed(m);
        }
        return 0;
    }

    static long echoed(Matcher m) {
        return Long.parseLong(m.group(3));
    }

    static void noCorruption(VmmProcess... vmms) {
        for (var vmm : vmms)
            for (var line : vmm.lines()) assertTrue(!line.startsWith("CORRUPT"), line + "\n" + vmm.lines());
    }

    static String cmdline(String net) {
        return "console=ttyS0 testguest.hb=200 testguest.mem=8M testguest.net=" + net;
    }

    @KvmTest
    void framesSurviveASnapshotAndALiveUpdateWithNoneLost(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var api2 = dir.resolve("api2.sock");
        var incoming = dir.resolve("in.sock");
        try (var ns = NetNamespace.create(1);
                var first = VmmProcess.startIn(
                        ns.prefix(),
                        "run",
                        "--memory",
                        "128M",
                        "--api-socket",
                        api.toString(),
                        "--net",
                        "tap=tap0,mac=" + MAC,
                        "--cmdline",
                        cmdline("echo"));
                var second = VmmProcess.startIn(
                        ns.prefix(),
                        "incoming",
                        "unix:" + incoming,
                        "--api-socket",
                        api2.toString(),
                        "--memory",
                        "128M")) {
            first.awaitLine("net mac=" + MAC + " link=1 echo window=8 size=256", 60);
            long before = echoed(awaitEchoed(first, 100, 60));
            first.awaitSocket(api);
            var r = MainTest.run(
                    "snapshot",
                    "--api-socket",
                    api.toString(),
                    dir.resolve("snap").toString(),
                    "--resume");
            assertEquals(0, r.code(), r.err());
            awaitEchoed(first, before + 200, 60);
            ns.peer(0).probe(MAC, 7);
            ns.peer(0).await("answer mac=" + MAC + " seq=7", 30);

            // Live update: the tap's descriptor moves with the memory; no frame may be lost.
            second.awaitSocket(incoming);
            long moved = lastEchoed(first);
            r = MainTest.run("migrate", "--api-socket", api.toString(), "unix:" + incoming);
            assertEquals(0, r.code(), r.err());
            assertEquals(0, first.waitFor(30), first.stderr());
            var after = awaitEchoed(second, moved + 500, 60);
            ns.peer(0).probe(MAC, 8);
            ns.peer(0).await("answer mac=" + MAC + " seq=8", 30);
            second.signal("TERM");
            second.waitFor(30);
            noCorruption(first, second);
            for (var vmm : List.of(first, second))
                for (var line : vmm.lines()) {
                    var m = NET.matcher(line);
                    if (m.matches()) assertEquals("0", m.group(4), line);
                }
            // The peer echoed every frame the guest saw echoed (and at most a window more).
            var stats = ns.peer(0).stats(10);
            var m = Pattern.compile("stats echoed=(\\d+) .*").matcher(stats);
            assertTrue(m.matches(), stats);
            assertTrue(Long.parseLong(m.group(1)) >= echoed(after), stats + " / " + after.group());
        }
    }

    @KvmTest
    void aRestoreReopensTheTapByNameAndTheEchoesGoOn(@TempDir Path dir) throws Exception {
        var api = dir.resolve("api.sock");
        var snap = dir.resolve("snap");
        try (var ns = NetNamespace.create(1)) {
            long saved;
            try (var first = VmmProcess.startIn(
                    ns.prefix(),
                    "run",
                    "--memory",
                    "128M",
                    "--api-socket",
                    api.toString(),
                    "--net",
                    "tap=tap0,mac=" + MAC,
                    "--cmdline",
                    cmdline("echo,lossok"))) {
                saved = echoed(awaitEchoed(first, 100, 60));
                first.awaitSocket(api);
                var r = MainTest.run("snapshot", "--api-socket", api.toString(), snap.toString());
                assertEquals(0, r.code(), r.err());
                assertEquals(0, first.waitFor(30), first.stderr());
                noCorruption(first);
            }
            try (var restored = VmmProcess.startIn(ns.prefix(), "restore", snap.toString())) {
                var m = awaitEchoed(restored, saved + 300, 60);
                // Frames in flight when the old tap descriptor closed may be lost: at most the window.
                assertTrue(Long.parseLong(m.group(4)) <= 8, m.group());
                ns.peer(0).probe(MAC, 9);
                ns.peer(0).await("answer mac=" + MAC + " seq=9", 30);
                noCorruption(restored);
            }
        }
    }

    @KvmTest
    void aCloneNeedsItsOwnTapAndAnswersWithItsOwnMac(@TempDir Path dir) throws Exception {
        var template = dir.resolve("tpl");
        Path shm = Files.createTempDirectory(Path.of("/dev/shm"), "net-test-");
        try (var ns = NetNamespace.create(2)) {
            try (var create = VmmProcess.startIn(
                    ns.prefix(),
                    "template",
                    "create",
                    template.toString(),
                    "--memory",
                    "128M",
                    "--mem-dir",
                    shm.toString(),
                    "--net",
                    "tap=tap0,mac=" + MAC,
                    "--cmdline",
                    cmdline("echo,lossok"))) {
                assertEquals(0, create.waitFor(120), create.stderr());
            }
            try (var refused = VmmProcess.startIn(ns.prefix(), "clone", template.toString())) {
                assertNotEquals(0, refused.waitFor(60));
                assertTrue(refused.stderr().contains("give each clone its own tap and MAC"), refused.stderr());
                assertEquals(1, refused.stderr().strip().lines().count(), refused.stderr());
            }
            try (var clone = VmmProcess.startIn(
                    ns.prefix(), "clone", template.toString(), "--net", "tap=tap1,mac=" + CLONE_MAC)) {
                clone.awaitLine("net mac=" + CLONE_MAC, 60);
                awaitEchoed(clone, 200, 60);
                ns.peer(1).probe(CLONE_MAC, 11);
                ns.peer(1).await("answer mac=" + CLONE_MAC + " seq=11", 30);
                noCorruption(clone);
            }
            // The same through a clone request to vmm serve.
            var api = dir.resolve("serve.sock");
            var consoles = dir.resolve("consoles");
            try (var serve = VmmProcess.startIn(
                            ns.prefix(),
                            "serve",
                            "--api-socket",
                            api.toString(),
                            "--console-dir",
                            consoles.toString());
                    var client = TemplateCliTest.awaitClient(serve, api)) {
                var refused = client.execute("clone", Json.object("template", template.toString()));
                assertTrue(
                        String.valueOf(refused.get("error")).contains("give each clone its own tap and MAC"),
                        refused.toString());
                var many = client.execute(
                        "clone",
                        Json.object(
                                "template",
                                template.toString(),
                                "count",
                                2L,
                                "net",
                                List.of(Json.object("tap", "tap1"))));
                assertTrue(String.valueOf(many.get("error")).contains("not with a \"count\" above 1"), many.toString());
                var reply = client.execute(
                        "clone",
                        Json.object(
                                "template",
                                template.toString(),
                                "net",
                                List.of(Json.object("tap", "tap1", "mac", SERVE_MAC))));
                var clones = (List<?>) Json.asObject(reply.get("return"), "r").get("clones");
                var id = (String) Json.asObject(clones.getFirst(), "c").get("id");
                SnapshotCliTest.awaitText(consoles.resolve(id + ".log"), "net mac=" + SERVE_MAC, 60);
                ns.peer(1).probe(SERVE_MAC, 12);
                ns.peer(1).await("answer mac=" + SERVE_MAC + " seq=12", 30);
                client.execute("quit", null);
                assertEquals(0, serve.waitFor(30), serve.stderr());
            }
        } finally {
            try (var files = Files.list(shm)) {
                for (var f : files.toList()) Files.delete(f);
            }
            Files.delete(shm);
        }
    }

    /** Opens the tap named by argv[1] with IFF_VNET_HDR, then runs the rest of argv with {fd} replaced by its number. */
    static final String OPEN_TAP_THEN_EXEC = String.join(
            "\n",
            "import fcntl, os, struct, sys",
            "fd = os.open('/dev/net/tun', os.O_RDWR)",
            "fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', sys.argv[1].encode(), 0x0002 | 0x1000 | 0x4000))",
            "os.set_inheritable(fd, True)",
            "args = [a.replace('{fd}', str(fd)) for a in sys.argv[2:]]",
            "os.execvp(args[0], args)");

    @KvmTest
    void aTapDescriptorGivenWithFdWorksAndAMissingTapIsOneLine(@TempDir Path dir) throws Exception {
        try (var ns = NetNamespace.create(1)) {
            var prefix = new java.util.ArrayList<>(ns.prefix());
            prefix.addAll(List.of("python3", "-c", OPEN_TAP_THEN_EXEC, "tap0"));
            try (var vmm = VmmProcess.startIn(
                    prefix, "run", "--memory", "64M", "--net", "fd={fd},mac=" + MAC, "--cmdline", cmdline("echo"))) {
                awaitEchoed(vmm, 100, 60);
                ns.peer(0).probe(MAC, 5);
                ns.peer(0).await("answer mac=" + MAC + " seq=5", 30);
                noCorruption(vmm);
            }
            try (var vmm = VmmProcess.startIn(ns.prefix(), "run", "--memory", "64M", "--net", "tap=nosuchtap")) {
                assertEquals(1, vmm.waitFor(60));
                assertEquals(
                        "vmm: the tap nosuchtap does not exist here (create it: ip tuntap add dev nosuchtap mode tap)",
                        vmm.stderr().strip());
            }
            try (var vmm = VmmProcess.startIn(ns.prefix(), "run", "--memory", "64M", "--net", "fd=0")) {
                assertEquals(1, vmm.waitFor(60));
                assertTrue(vmm.stderr().strip().startsWith("vmm: descriptor 0 is not a tap: "), vmm.stderr());
                assertEquals(1, vmm.stderr().strip().lines().count(), vmm.stderr());
            }
        }
    }

    /**
     * A tap's frames go through two io_urings, one per queue (the VMM holds them: {@code
     * anon_inode:[io_uring]} among its descriptors), or with {@code PANAMA_VMM_IO_URING=off} one
     * {@code writev} or {@code readv} each (no ring); every frame arrives either way.
     */
    @KvmTest
    void framesGoThroughTheTapsIoUringOrOneWritevEachWhenItIsOff() throws Exception {
        try (var ns = NetNamespace.create(1)) {
            for (var ring : List.of(true, false)) {
                var env = ring ? java.util.Map.<String, String>of() : java.util.Map.of("PANAMA_VMM_IO_URING", "off");
                try (var vmm = VmmProcess.startIn(
                        ns.prefix(),
                        env,
                        "run",
                        "--memory",
                        "64M",
                        "--net",
                        "tap=tap0,mac=" + MAC,
                        "--cmdline",
                        cmdline("echo"))) {
                    awaitEchoed(vmm, 300, 60);
                    ns.peer(0).probe(MAC, ring ? 11 : 12);
                    ns.peer(0).await("answer mac=" + MAC + " seq=" + (ring ? 11 : 12), 30);
                    assertEquals(ring ? 2 : 0, ioUrings(vmm.pid()), "io_uring descriptors (transmit, receive)");
                    noCorruption(vmm);
                }
            }
        }
    }

    /** How many io_uring descriptors process {@code pid} has open. */
    static long ioUrings(long pid) throws java.io.IOException {
        try (var fds = Files.list(Path.of("/proc", Long.toString(pid), "fd"))) {
            return fds.filter(fd -> {
                        try {
                            return Files.readSymbolicLink(fd).toString().equals("anon_inode:[io_uring]");
                        } catch (java.io.IOException e) {
                            return false; // closed meanwhile
                        }
                    })
                    .count();
        }
    }

    @Test
    void badNetOptionsAreOneLineErrors() {
        for (var spec : List.of(
                "tap=", "mac=02:00:00:00:00:01", "tap=a,fd=3", "tap=x,mac=01:00:00:00:00:01", "tap=x,speed=9")) {
            var r = MainTest.run("run", "--net", spec);
            assertEquals(2, r.code(), spec + ": " + r.err());
            assertEquals(1, r.err().strip().lines().count(), r.err());
            assertTrue(r.err().contains("--net " + spec), r.err());
        }
    }
}
