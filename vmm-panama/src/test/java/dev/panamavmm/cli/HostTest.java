package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.Json;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.testing.TestCertificates;
import dev.panamavmm.testing.VmmProcess;
import dev.panamavmm.vmm.TcpAddress;
import java.io.IOException;
import java.net.ConnectException;
import java.net.Socket;
import java.net.SocketException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code vmm host} in both isolation modes, driven over its API as a user would: VMs booted,
 * snapshotted, restored, cloned, stopped and destroyed, the test guest's heartbeats as the oracle;
 * in process isolation a worker killed with SIGKILL takes only its VM, and a host killed with
 * SIGKILL leaves its VMs running for the next host.
 */
class HostTest {
    static final String GUEST = "console=ttyS0 testguest.mem=8M testguest.hb=100";

    @TempDir
    Path dir;

    private final List<ApiClient> clients = new ArrayList<>();

    /** Every process started for the test names a path under its directory: none may be left behind. */
    @AfterEach
    void endLeftovers() throws Exception {
        clients.forEach(ApiClient::close);
        var left = processesUnder(dir);
        left.forEach(ProcessHandle::destroyForcibly);
        for (var p : left) p.onExit().get(10, TimeUnit.SECONDS);
        if (Files.isDirectory(dir.resolve("tpl"))) TemplateCliTest.deleteTemplate(dir.resolve("tpl"));
    }

    @KvmTest
    void aSharedHostBootsSnapshotsRestoresClonesAndDestroysVms() throws Exception {
        var tpl = TemplateCliTest.createTemplate(dir);
        var api = dir.resolve("host.sock");
        var state = dir.resolve("state");
        try (var host = VmmProcess.start(
                StandbyTest.NO_REHEARSAL,
                "host",
                "--api-socket",
                api.toString(),
                "--state-dir",
                state.toString(),
                "--console-dir",
                dir.resolve("consoles").toString())) {
            host.awaitSocket(api);
            var events = events(api);

            // testguest.fault=port: one access to a port nobody owns, which the VMM logs once.
            var booted = ctl(api, "boot", "{\"memory\": \"64M\", \"cmdline\": \"" + GUEST + " testguest.fault=port\"}");
            assertEquals("vm-1", booted.get("id"), booted.toString());
            assertEquals("shared", booted.get("mode"));
            var console1 = Path.of((String) booted.get("console"));
            var vmApi = Path.of((String) booted.get("api-socket"));
            assertEquals(state.resolve("vm-1.sock"), vmApi);
            assertEquals(dir.resolve("consoles/vm-1.log"), console1);
            events.await("VM_STARTED", "vm-1");
            SnapshotCliTest.awaitText(console1, "hb 0 3", 30);
            assertEquals(
                    "{\"status\":\"running\",\"singlestep\":false,\"running\":true}\n",
                    MainTest.run("ctl", vmApi.toString(), "query-status").out());
            // The host runs many VMs: the warning names the VM (from its vCPU thread's MDC).
            assertTrue(
                    host.stderr()
                            .lines()
                            .anyMatch(
                                    l -> l.matches(
                                            ".* vmm: WARN \\[vcpu-0\\] vm=vm-1 Vm: guest (read|wrote) unknown I/O port 0x2f0.*")),
                    host.stderr());

            ctl(api, "stop", "{\"id\": \"vm-1\"}");
            assertEquals("paused", onlyVm(api).get("status"));
            ctl(api, "cont", "{\"id\": \"vm-1\"}");
            assertEquals("running", onlyVm(api).get("status"));

            var snap = dir.resolve("snap");
            ctl(api, "snapshot", "{\"id\": \"vm-1\", \"path\": \"" + snap + "\"}");
            events.await("VM_STOPPED", "vm-1");
            var restored = ctl(api, "restore", "{\"path\": \"" + snap + "\"}");
            assertEquals("vm-2", restored.get("id"));
            var console2 = Path.of((String) restored.get("console"));
            var seen = Heartbeats.checkLive(Files.readString(console1));
            SnapshotCliTest.awaitText(console2, "hb 0 " + (seen.get(0) + 3), 30);
            Heartbeats.checkLive(Files.readString(console1) + Files.readString(console2));

            var cloned = ctl(api, "clone", "{\"template\": \"" + tpl + "\"}");
            assertEquals("vm-3", cloned.get("id"));
            var console3 = Path.of((String) cloned.get("console"));
            SnapshotCliTest.awaitText(console3, "hb 0 \\d+", 30);
            Heartbeats.checkLive(Files.readString(dir.resolve("template.log")) + Files.readString(console3));
            // The clone latency the benchmarks read: request -> first KVM_RUN, measured in the host
            var firstEntry = vms(api).getLast().get("first-entry-ms");
            assertTrue(
                    firstEntry instanceof Number ms && ms.doubleValue() > 0 && ms.doubleValue() < 30_000,
                    "first-entry-ms " + firstEntry);

            // A live update from one VM of the host to a new one: the guest goes on where it was
            var in = dir.resolve("in.sock");
            var incoming = ctl(api, "incoming", "{\"uri\": \"unix:" + in + "\"}");
            assertEquals("vm-4", incoming.get("id"));
            assertEquals("inmigrate", vms(api).getLast().get("status"));
            ctl(api, "migrate", "{\"id\": \"vm-2\", \"uri\": \"unix:" + in + "\"}");
            events.await("VM_STOPPED", "vm-2");
            events.await("VM_STARTED", "vm-4");
            var console4 = Path.of((String) incoming.get("console"));
            seen = Heartbeats.checkLive(Files.readString(console1) + Files.readString(console2));
            SnapshotCliTest.awaitText(console4, "hb 0 " + (seen.get(0) + 3), 30);
            Heartbeats.checkLive(Files.readString(console1) + Files.readString(console2) + Files.readString(console4));

            var notUnix = MainTest.run("ctl", api.toString(), "incoming", "{\"uri\": \"ftp:localhost:4444\"}");
            assertEquals("vmm: incoming: \"uri\" must be unix:PATH or tcp:[HOST]:PORT\n", notUnix.err());
            var nowhere = MainTest.run(
                    "ctl",
                    api.toString(),
                    "incoming",
                    "{\"uri\": \"unix:" + dir.resolve("no/such/dir/in.sock") + "\"}");
            assertEquals(1, nowhere.code());
            assertTrue(nowhere.err().startsWith("vmm: incoming: "), nowhere.err());

            var listed = vms(api);
            assertEquals(
                    List.of("vm-3", "vm-4"),
                    listed.stream().map(v -> v.get("id")).toList());
            assertEquals("running", listed.getLast().get("status"));

            var unknown = MainTest.run("ctl", api.toString(), "destroy", "{\"id\": \"vm-9\"}");
            assertEquals("vmm: destroy: no VM vm-9\n", unknown.err());
            ctl(api, "destroy", "{\"id\": \"vm-3\"}");
            ctl(api, "destroy", "{\"id\": \"vm-4\"}");
            events.await("VM_STOPPED", "vm-4");
            assertEquals(List.of(), vms(api));
            assertFalse(Files.exists(state.resolve("vm-3.sock")), "a destroyed VM's socket is removed");

            assertEquals(0, MainTest.run("ctl", api.toString(), "quit").code());
            assertEquals(0, host.waitFor(30), host.stderr());
        }
    }

    /** Live update of a shared host: its VMs move to a new host process and run on there without CORRUPT. */
    @KvmTest
    void aSharedHostHandsItsVmsToANewHost() throws Exception {
        var tpl = TemplateCliTest.createTemplate(dir);
        var oldApi = dir.resolve("old.sock");
        var newApi = dir.resolve("new.sock");
        try (var oldHost = VmmProcess.start(
                        StandbyTest.NO_REHEARSAL,
                        "host",
                        "--api-socket",
                        oldApi.toString(),
                        "--state-dir",
                        dir.resolve("old").toString());
                var newHost = VmmProcess.start(
                        StandbyTest.NO_REHEARSAL,
                        "host",
                        "--api-socket",
                        newApi.toString(),
                        "--state-dir",
                        dir.resolve("new").toString())) {
            oldHost.awaitSocket(oldApi);
            newHost.awaitSocket(newApi);
            var booted = ctl(oldApi, "boot", "{\"memory\": \"64M\", \"cpus\": 2, \"cmdline\": \"" + GUEST + "\"}");
            var cloned = ctl(oldApi, "clone", "{\"template\": \"" + tpl + "\"}");
            var bootedConsole = Path.of((String) booted.get("console"));
            var clonedConsole = Path.of((String) cloned.get("console"));
            SnapshotCliTest.awaitText(bootedConsole, "hb 1 3", 30);
            SnapshotCliTest.awaitText(clonedConsole, "hb 0 \\d+", 30);

            var handover = ctl(oldApi, "handover", "{\"host\": \"" + newApi + "\"}");
            var moved = Json.asList(handover.get("moved"), "moved");
            assertEquals(2, moved.size(), handover.toString());
            assertEquals(List.of(), vms(oldApi));
            var there = vms(newApi);
            assertEquals(2, there.size(), there.toString());
            assertTrue(there.stream().allMatch(v -> "running".equals(v.get("status"))), there.toString());

            // Each guest goes on in the new host where it stopped in the old one
            String[] before = {
                Files.readString(bootedConsole),
                Files.readString(dir.resolve("template.log")) + Files.readString(clonedConsole)
            };
            for (int i = 0; i < 2; i++) {
                var console = Path.of((String) there.get(i).get("console"));
                var seen = Heartbeats.checkLive(before[i]);
                SnapshotCliTest.awaitText(console, "hb 0 " + (seen.get(0) + 3), 30);
                Heartbeats.checkLive(before[i] + Files.readString(console));
            }
            assertEquals(0, MainTest.run("ctl", oldApi.toString(), "quit").code());
            assertEquals(0, oldHost.waitFor(30), oldHost.stderr());
            assertEquals(0, MainTest.run("ctl", newApi.toString(), "quit").code());
            assertEquals(0, newHost.waitFor(30), newHost.stderr());
        }
    }

    /**
     * Draining hosts over TCP (loopback): a VM moves from a shared host to a shared host, then on
     * to a process-mode host's worker, its guest going on each time where it stopped; a TCP wait
     * that is destroyed stops listening.
     */
    @KvmTest
    void vmsMoveBetweenHostsOverTcpInBothIsolationModes() throws Exception {
        var apis = new Path[] {dir.resolve("a.sock"), dir.resolve("b.sock"), dir.resolve("c.sock")};
        try (var a = host(apis[0], "a");
                var b = host(apis[1], "b");
                var c = host(apis[2], "c", "--isolation", "process", "--standby", "1")) {
            var eventsA = events(apis[0]);
            var eventsB = events(apis[1]);
            var eventsC = events(apis[2]);
            var booted = ctl(apis[0], "boot", "{\"memory\": \"64M\", \"cmdline\": \"" + GUEST + "\"}");
            var consoleA = Path.of((String) booted.get("console"));
            SnapshotCliTest.awaitText(consoleA, "hb 0 3", 30);

            // The first leg over TLS: each side proves who it is with a certificate the other trusts.
            TestCertificates.keyStore(dir, "source");
            TestCertificates.keyStore(dir, "destination");
            var trusted = dir.resolve("trust.p12");
            TestCertificates.trust(dir, trusted, "source");
            TestCertificates.trust(dir, trusted, "destination");
            Files.writeString(dir.resolve("password"), "secret\n");
            String creds = "{\"key-store\": \"%s\", \"trust-store\": \"" + trusted + "\", \"password-file\": \""
                    + dir.resolve("password") + "\"}";
            ctl(
                    Path.of((String) booted.get("api-socket")),
                    "migrate-set-parameters",
                    "{\"tls-creds\": " + creds.formatted(dir.resolve("source.p12")) + "}");
            var waiting = ctl(
                    apis[1],
                    "incoming",
                    "{\"uri\": \"tcp:127.0.0.1:0\", \"tls-creds\": " + creds.formatted(dir.resolve("destination.p12"))
                            + "}");
            assertEquals("inmigrate", waiting.get("status"), waiting.toString());
            String uri = (String) waiting.get("uri");
            assertTrue(uri.matches("tcp:127\\.0\\.0\\.1:[1-9][0-9]*"), uri);
            assertEquals("inmigrate", vms(apis[1]).getFirst().get("status"));
            ctl(apis[0], "migrate", "{\"id\": \"vm-1\", \"uri\": \"" + uri + "\"}");
            eventsA.await("VM_STOPPED", "vm-1");
            eventsB.await("VM_STARTED", (String) waiting.get("id"));
            var consoleB = Path.of((String) waiting.get("console"));
            var seen = Heartbeats.checkLive(Files.readString(consoleA));
            SnapshotCliTest.awaitText(consoleB, "hb 0 " + (seen.get(0) + 3), 30);
            Heartbeats.checkLive(Files.readString(consoleA) + Files.readString(consoleB));
            assertEquals(List.of(), vms(apis[0]));

            var toWorker = ctl(apis[2], "incoming", "{\"uri\": \"tcp:127.0.0.1:0\"}");
            assertEquals("process", toWorker.get("mode"), toWorker.toString());
            String workerUri = (String) toWorker.get("uri");
            assertTrue(workerUri.matches("tcp:127\\.0\\.0\\.1:[1-9][0-9]*"), toWorker.toString());
            ctl(apis[1], "migrate", "{\"id\": \"" + waiting.get("id") + "\", \"uri\": \"" + workerUri + "\"}");
            eventsC.await("VM_STARTED", (String) toWorker.get("id"));
            var consoleC = Path.of((String) toWorker.get("console"));
            String before = Files.readString(consoleA) + Files.readString(consoleB);
            seen = Heartbeats.checkLive(before);
            SnapshotCliTest.awaitText(consoleC, "hb 0 " + (seen.get(0) + 3), 60);
            Heartbeats.checkLive(before + Files.readString(consoleC));

            // A TCP wait that is destroyed stops listening: no source can reach it.
            var gone = ctl(apis[1], "incoming", "{\"uri\": \"tcp:127.0.0.1:0\"}");
            var port = TcpAddress.parse((String) gone.get("uri")).port();
            ctl(apis[1], "destroy", "{\"id\": \"" + gone.get("id") + "\"}");
            assertNoLongerListening(port);
            var bad = MainTest.run("ctl", apis[1].toString(), "incoming", "{\"uri\": \"tcp:nohost\"}");
            assertEquals("vmm: incoming: the address must be tcp:[HOST]:PORT, not 'tcp:nohost'\n", bad.err());
            bad = MainTest.run(
                    "ctl",
                    apis[1].toString(),
                    "incoming",
                    "{\"uri\": \"unix:" + dir.resolve("in.sock") + "\", \"tls-creds\": "
                            + creds.formatted(dir.resolve("destination.p12")) + "}");
            assertEquals("vmm: incoming: \"tls-creds\" is for tcp: addresses\n", bad.err());
            bad = MainTest.run(
                    "ctl",
                    apis[1].toString(),
                    "incoming",
                    "{\"uri\": \"tcp:127.0.0.1:0\", \"tls-creds\": " + creds.formatted(dir.resolve("none.p12")) + "}");
            assertEquals(1, bad.code());
            assertTrue(
                    bad.err().startsWith("vmm: incoming: ") && bad.err().lines().count() == 1, bad.err());
            for (var api : apis)
                assertEquals(0, MainTest.run("ctl", api.toString(), "quit").code());
            for (var h : List.of(a, b, c)) assertEquals(0, h.waitFor(30), h.stderr());
        }
    }

    @KvmTest
    void processWorkersTakeOnlyTheirVmWhenKilledAndOutliveTheirHost() throws Exception {
        var tpl = TemplateCliTest.createTemplate(dir);
        var api = dir.resolve("host.sock");
        var state = dir.resolve("state");
        String[] args = {
            "host",
            "--api-socket",
            api.toString(),
            "--state-dir",
            state.toString(),
            "--isolation",
            "process",
            "--standby",
            "2"
        };
        Path restoredConsole;
        Path bootedConsole;
        Path middleConsole;
        long restoredPid;
        try (var host = VmmProcess.start(StandbyTest.NO_REHEARSAL, args)) {
            host.awaitSocket(api);
            var events = events(api);

            var booted = ctl(api, "boot", "{\"memory\": \"64M\", \"cmdline\": \"" + GUEST + "\"}");
            assertEquals("process", booted.get("mode"));
            long bootedPid = (Long) booted.get("pid");
            var console1 = Path.of((String) booted.get("console"));
            bootedConsole = console1;
            events.await("VM_STARTED", (String) booted.get("id"));
            SnapshotCliTest.awaitText(console1, "hb 0 3", 60);
            var snap = dir.resolve("snap");
            ctl(api, "snapshot", "{\"id\": \"" + booted.get("id") + "\", \"path\": \"" + snap + "\"}");
            var stopped = events.await("VM_STOPPED", (String) booted.get("id"));
            assertTrue(String.valueOf(stopped.get("reason")).contains("ended in its worker"), stopped.toString());
            assertFalse(ProcessHandle.of(bootedPid).map(ProcessHandle::isAlive).orElse(false));

            var restored = ctl(api, "restore", "{\"path\": \"" + snap + "\"}");
            var restoredFirst = Path.of((String) restored.get("console"));
            middleConsole = restoredFirst;
            var seen = Heartbeats.checkLive(Files.readString(console1));
            SnapshotCliTest.awaitText(restoredFirst, "hb 0 " + (seen.get(0) + 3), 60);

            // A live update into another worker: the guest moves between two processes of the host
            var in = dir.resolve("in.sock");
            var incoming = ctl(api, "incoming", "{\"uri\": \"unix:" + in + "\"}");
            assertEquals("inmigrate", incoming.get("status"));
            ctl(api, "migrate", "{\"id\": \"" + restored.get("id") + "\", \"uri\": \"unix:" + in + "\"}");
            events.await("VM_STOPPED", (String) restored.get("id"));
            events.await("VM_STARTED", (String) incoming.get("id"));
            restored = incoming;
            restoredPid = (Long) restored.get("pid");
            restoredConsole = Path.of((String) restored.get("console"));
            SnapshotCliTest.awaitText(restoredConsole, "hb 0 " + (lastHeartbeat(console1, restoredFirst) + 3), 60);

            var cloned = ctl(api, "clone", "{\"template\": \"" + tpl + "\"}");
            String cloneId = (String) cloned.get("id");
            SnapshotCliTest.awaitText(Path.of((String) cloned.get("console")), "hb 0 \\d+", 60);
            assertTrue(
                    Files.readString(state.resolve(cloneId + ".json")).contains("\"adopted\":true"),
                    "the worker's record says it runs a VM");

            kill9((Long) cloned.get("pid"));
            var failed = events.await("VM_FAILED", cloneId);
            assertTrue(String.valueOf(failed.get("reason")).contains("killed by signal 9"), failed.toString());
            assertFalse(Files.exists(state.resolve(cloneId + ".json")), "a dead worker's record is removed");
            assertTrue(Files.exists(state.resolve(cloneId + ".err")), "a failed worker's stderr stays");
            assertEquals(
                    List.of(restored.get("id")),
                    vms(api).stream().map(v -> v.get("id")).toList());
            int before = lastHeartbeat(bootedConsole, middleConsole, restoredConsole);
            SnapshotCliTest.awaitText(restoredConsole, "hb 0 " + (before + 3), 30); // the other VM runs on
            awaitWarmPool(api, 2);

            kill9(host.pid());
            host.waitFor(10);
        }
        // The host is gone; its process-mode VM is not. A new host on the same state directory takes it over.
        int before = lastHeartbeat(bootedConsole, middleConsole, restoredConsole);
        SnapshotCliTest.awaitText(restoredConsole, "hb 0 " + (before + 3), 30);
        try (var host = VmmProcess.start(StandbyTest.NO_REHEARSAL, args)) {
            host.awaitSocket(api);
            var vm = onlyVm(api);
            assertEquals(restoredPid, vm.get("pid"));
            assertEquals("running", vm.get("status"));
            String id = (String) vm.get("id");
            ctl(api, "stop", "{\"id\": \"" + id + "\"}");
            assertEquals("paused", onlyVm(api).get("status"));
            ctl(api, "cont", "{\"id\": \"" + id + "\"}");
            int now = lastHeartbeat(bootedConsole, middleConsole, restoredConsole);
            SnapshotCliTest.awaitText(restoredConsole, "hb 0 " + (now + 2), 30);
            Heartbeats.checkLive(Files.readString(bootedConsole)
                    + Files.readString(middleConsole)
                    + Files.readString(restoredConsole));
            awaitWarmPool(api, 2); // the earlier host's standby workers, re-attached

            ctl(api, "destroy", "{\"id\": \"" + id + "\"}");
            assertFalse(
                    ProcessHandle.of(restoredPid).map(ProcessHandle::isAlive).orElse(false));
            for (String file : new String[] {".json", ".sock", ".err"})
                assertFalse(Files.exists(state.resolve(id + file)), "a destroyed VM's " + file + " is removed");
            assertTrue(Files.exists(restoredConsole), "its console stays");
            assertEquals(0, MainTest.run("ctl", api.toString(), "quit").code());
            assertEquals(0, host.waitFor(30), host.stderr());
        }
        // quit ended the standby workers too: nothing of this host runs any more
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
        while (!processesUnder(dir).isEmpty() && System.nanoTime() < deadline) Thread.sleep(50);
        assertEquals(
                List.of(), processesUnder(dir).stream().map(ProcessHandle::pid).toList());
    }

    @KvmTest
    void aStateDirectoryServesOneHostAtATimeAndARecordOfAReusedPidIsForgotten() throws Exception {
        var state = Files.createDirectories(dir.resolve("state"));
        // A record an earlier host left: its pid now names another process (this test's JVM, start time differs).
        var stale = state.resolve("vm-7.json");
        Files.writeString(
                stale,
                Json.write(Json.object(
                        "id",
                        "vm-7",
                        "pid",
                        ProcessHandle.current().pid(),
                        "start-time",
                        1L,
                        "api-socket",
                        state.resolve("vm-7.sock").toString(),
                        "console",
                        state.resolve("vm-7.log").toString(),
                        "adopted",
                        true)));
        var api = dir.resolve("a.sock");
        try (var host = VmmProcess.start(
                StandbyTest.NO_REHEARSAL, "host", "--api-socket", api.toString(), "--state-dir", state.toString())) {
            host.awaitSocket(api);
            assertEquals(List.of(), vms(api));
            assertFalse(Files.exists(stale), "the record of a pid that names another process is removed");
            assertTrue(ProcessHandle.current().isAlive()); // and that process was left alone

            var second = MainTest.run(
                    "host", "--api-socket", dir.resolve("b.sock").toString(), "--state-dir", state.toString());
            assertEquals(1, second.code());
            assertEquals(
                    "vmm: the state directory " + state.toAbsolutePath() + " is in use by another vmm host\n",
                    second.err());
        }
        var bad = MainTest.run(
                "host", "--api-socket", api.toString(), "--state-dir", state.toString(), "--isolation", "vm");
        assertEquals("vmm: --isolation must be shared or process, not 'vm'\n", bad.err());
        assertEquals(2, bad.code());
        var shared =
                MainTest.run("host", "--api-socket", api.toString(), "--state-dir", state.toString(), "--standby", "3");
        assertEquals("vmm: --standby is for --isolation process (shared VMs need no worker processes)\n", shared.err());
        assertEquals(2, shared.code());
    }

    /**
     * Clone and destroy over and over: the host's fds, threads and mappings stay where they were
     * (a VM's API socket, console, vCPU threads or RAM mapping left behind would add up), and in
     * process isolation every worker taken ends with its VM and leaves no file.
     */
    @KvmTest
    void cloneAndDestroyCyclesLeakNothingInEitherMode() throws Exception {
        var tpl = TemplateCliTest.createTemplate(dir);
        for (var mode : List.of("shared", "process")) {
            var api = dir.resolve(mode + ".sock");
            var state = dir.resolve(mode + "-state");
            int cycles = mode.equals("shared") ? 100 : 8;
            try (var host = VmmProcess.start(
                            StandbyTest.NO_REHEARSAL,
                            "host",
                            "--api-socket",
                            api.toString(),
                            "--state-dir",
                            state.toString(),
                            "--isolation",
                            mode);
                    var client = TemplateCliTest.awaitClient(host, api)) {
                cycle(client, tpl, 3);
                // A warm worker holds a connection the host keeps for it: count with the pool warm, both times.
                if (mode.equals("process")) awaitWarmPool(api, 2);
                Thread.sleep(200); // and the host has closed the connections of the clients that asked
                long fds = TemplateCliTest.count("fds", host.pid()),
                        threads = TemplateCliTest.count("threads", host.pid()),
                        maps = TemplateCliTest.count("mappings", host.pid());
                var threadsBefore = TemplateCliTest.threadNames(host.pid());
                cycle(client, tpl, cycles);
                if (mode.equals("process")) awaitWarmPool(api, 2);
                Thread.sleep(200);
                assertEquals(fds, TemplateCliTest.count("fds", host.pid()), mode + ": file descriptors");
                assertEquals(
                        threads,
                        TemplateCliTest.count("threads", host.pid()),
                        mode + ": threads, before " + threadsBefore + ", after "
                                + TemplateCliTest.threadNames(host.pid()));
                long mapsAfter = TemplateCliTest.count("mappings", host.pid());
                assertTrue(
                        Math.abs(mapsAfter - maps) <= 5,
                        mode + ": mappings " + maps + " before " + cycles + " cycles, " + mapsAfter + " after");
                assertEquals(List.of(), client.execute("query-vms", null).get("return"));
                // Files of the VMs are gone; only the pool's own workers (process isolation) have some.
                var pool = ((List<?>)
                                Json.asObject(client.execute("query-host", null).get("return"), "host")
                                        .get("standby"))
                        .stream()
                                .map(w -> Json.asObject(w, "worker").get("id") + ".")
                                .toList();
                try (var files = Files.list(state)) {
                    var left = files.map(f -> f.getFileName().toString())
                            .filter(f -> !f.endsWith(".log") && !f.equals("host.lock"))
                            .filter(f -> pool.stream().noneMatch(f::startsWith))
                            .toList();
                    assertEquals(List.of(), left, mode + ": files of VMs that are gone");
                }
                client.execute("quit", null);
                assertEquals(0, host.waitFor(30), host.stderr());
            }
        }
    }

    private static void cycle(ApiClient client, Path tpl, int n) {
        for (int i = 0; i < n; i++) {
            var reply = client.execute("clone", Json.object("template", tpl.toString()));
            var vm = Json.asObject(reply.get("return"), reply.toString());
            var destroyed = client.execute("destroy", Json.object("id", vm.get("id")));
            assertTrue(destroyed.containsKey("return"), destroyed.toString());
        }
    }

    private static void kill9(long pid) throws Exception {
        assertEquals(
                0, new ProcessBuilder("kill", "-9", Long.toString(pid)).start().waitFor());
    }

    /** CPU 0's last heartbeat in a guest's consoles (before and after a restore), checked for gaps. */
    private static int lastHeartbeat(Path... consoles) throws IOException {
        var text = new StringBuilder();
        for (var c : consoles) text.append(Files.readString(c));
        return Heartbeats.checkLive(text.toString()).getOrDefault(0, 0);
    }

    private static void awaitWarmPool(Path api, int size) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(90);
        while (true) {
            var standby = (List<?>) ctl(api, "query-host", null).get("standby");
            if (standby.size() == size
                    && standby.stream().allMatch(w -> Boolean.TRUE.equals(((Map<?, ?>) w).get("ready")))) return;
            if (System.nanoTime() > deadline) throw new AssertionError("the pool is not refilled: " + standby);
            Thread.sleep(100);
        }
    }

    private static Map<String, Object> onlyVm(Path api) {
        var vms = vms(api);
        assertEquals(1, vms.size(), vms.toString());
        return vms.getFirst();
    }

    private static List<Map<String, Object>> vms(Path api) {
        var r = MainTest.run("ctl", api.toString(), "query-vms");
        assertEquals(0, r.code(), r.err());
        return Json.asList(Json.parse(r.out()), "vms").stream()
                .map(v -> Json.asObject(v, "a VM"))
                .toList();
    }

    static Map<String, Object> ctl(Path api, String command, String json) {
        var r = json == null
                ? MainTest.run("ctl", api.toString(), command)
                : MainTest.run("ctl", api.toString(), command, json);
        assertEquals(0, r.code(), command + ": " + r.err());
        return Json.asObject(Json.parse(r.out()), command);
    }

    /**
     * Nobody listens on {@code port} any more: tried until a connection is refused, 5 s at most. A
     * connection the listener took while it closed must end without a byte.
     */
    private static void assertNoLongerListening(int port) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
        while (true) {
            try (var probe = new Socket("127.0.0.1", port)) {
                probe.setSoTimeout(5000);
                assertEquals(-1, probe.getInputStream().read(), "the closing listener sent something");
            } catch (ConnectException e) {
                return;
            } catch (SocketException e) {
                // reset as the listener closed
            }
            assertTrue(System.nanoTime() < deadline, "port " + port + " still takes connections");
            Thread.sleep(50);
        }
    }

    /** A host on {@code api} with state directory {@code name} under the test's, its socket listening. */
    private VmmProcess host(Path api, String name, String... more) throws IOException, InterruptedException {
        var args = new ArrayList<>(List.of(
                "host",
                "--api-socket",
                api.toString(),
                "--state-dir",
                dir.resolve(name).toString()));
        args.addAll(List.of(more));
        var host = VmmProcess.start(StandbyTest.NO_REHEARSAL, args.toArray(String[]::new));
        try {
            host.awaitSocket(api);
        } catch (AssertionError | InterruptedException e) {
            host.close();
            throw e;
        }
        return host;
    }

    /** The host's events, collected by a client of its own. */
    final class Events {
        private final List<Map<String, Object>> seen = new ArrayList<>();

        Events(ApiClient client) {
            Thread.ofPlatform().daemon().start(() -> {
                try {
                    while (true) {
                        var message = client.readMessage();
                        if (message.containsKey("event")) {
                            synchronized (this) {
                                seen.add(message);
                                notifyAll();
                            }
                        }
                    }
                } catch (IOException | RuntimeException e) {
                    // the host closed the connection
                }
            });
        }

        /** The data of event {@code name} for VM {@code id}, waiting up to 30 s for it. */
        synchronized Map<String, Object> await(String name, String id) throws InterruptedException {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (true) {
                for (var e : seen) {
                    var data = Json.asObject(e.get("data"), "data");
                    if (name.equals(e.get("event")) && id.equals(data.get("id"))) return data;
                }
                long left = deadline - System.nanoTime();
                if (left <= 0) throw new AssertionError("no " + name + " for " + id + ": " + seen);
                TimeUnit.NANOSECONDS.timedWait(this, left);
            }
        }
    }

    private Events events(Path api) {
        var client = ApiClient.connect(api, 5000, ApiClient.GREETING_MILLIS);
        clients.add(client);
        return new Events(client);
    }

    /** Processes whose command line names a path under {@code dir} (hosts and their workers). */
    static List<ProcessHandle> processesUnder(Path dir) {
        String needle = dir.toAbsolutePath().toString();
        return ProcessHandle.allProcesses()
                .filter(p -> p.pid() != ProcessHandle.current().pid())
                .filter(p -> {
                    try {
                        return new String(
                                        Files.readAllBytes(Path.of("/proc", Long.toString(p.pid()), "cmdline")),
                                        StandardCharsets.UTF_8)
                                .contains(needle);
                    } catch (IOException e) {
                        return false;
                    }
                })
                .toList();
    }
}
