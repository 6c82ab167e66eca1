package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.Json;
import dev.panamavmm.testing.VmmProcess;
import dev.panamavmm.vmm.TinyElfAccess;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.DigestOutputStream;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.io.TempDir;

/** vmm template create/inspect, vmm clone and vmm serve as users run them. */
class TemplateCliTest {

    static Path createTemplate(Path dir) {
        var tpl = dir.resolve("tpl");
        var r = MainTest.run(
                "template",
                "create",
                tpl.toString(),
                "--memory",
                "64M",
                "--cmdline",
                "console=ttyS0 testguest.hb=100 testguest.mem=16M",
                "--console",
                "file:" + dir.resolve("template.log"));
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().startsWith("template " + tpl + ": memory file /dev/shm/"), r.out());
        return tpl;
    }

    static void deleteTemplate(Path tpl) throws Exception {
        var link = tpl.resolve("memory.ram");
        if (Files.isSymbolicLink(link)) Files.deleteIfExists(Files.readSymbolicLink(link));
    }

    @KvmTest
    void createInspectAndCloneInItsOwnProcess(@TempDir Path dir) throws Exception {
        var tpl = createTemplate(dir);
        try {
            var inspect = MainTest.run("template", "inspect", tpl.toString(), "--json");
            assertEquals(0, inspect.code(), inspect.err());
            var info = Json.asObject(Json.parse(inspect.out().strip()), "info");
            assertEquals(true, info.get("template"));
            assertEquals(1L, info.get("cpus"));
            assertEquals(
                    "reference",
                    Json.asObject(((List<?>) info.get("ram")).getFirst(), "ram").get("storage"));
            assertEquals(0, MainTest.run("template", "inspect", tpl.toString()).code());

            var templateConsole = Files.readString(dir.resolve("template.log"));
            assertTrue(templateConsole.endsWith("ready\n"), templateConsole);
            var console = dir.resolve("clone.log");
            try (var clone = VmmProcess.start("clone", tpl.toString(), "--console", "file:" + console)) {
                SnapshotCliTest.awaitText(console, "hb 0 3", 30);
                clone.signal("TERM");
                assertEquals(0, clone.waitFor(30), clone.stderr());
            }
            String text = Files.readString(console);
            SnapshotCliTest.heartbeats(templateConsole + text);
            assertTrue(
                    text.lines().anyMatch(l -> l.matches("genid 0x[0-9a-f]{16}") && !l.endsWith("0000000000000000")),
                    text);
        } finally {
            deleteTemplate(tpl);
        }
    }

    @KvmTest
    void cloneCountStartsOneProcessEach(@TempDir Path dir) throws Exception {
        var tpl = createTemplate(dir);
        // Directories that do not exist yet, nor their parents: created like mkdir -p.
        var consoles = dir.resolve("new/consoles");
        var sockets = dir.resolve("new/sockets");
        try {
            var r = MainTest.run(
                    "clone",
                    tpl.toString(),
                    "--count",
                    "3",
                    "--console-dir",
                    consoles.toString(),
                    "--api-socket-dir",
                    sockets.toString());
            assertEquals(0, r.code(), r.err());
            assertEquals(3, r.out().lines().count(), r.out());
            var pids = new HashSet<Long>();
            for (int i = 1; i <= 3; i++) {
                SnapshotCliTest.awaitText(consoles.resolve("clone-" + i + ".log"), "hb 0 2", 30);
                try (var c = ApiClient.connect(sockets.resolve("clone-" + i + ".sock"))) {
                    assertEquals(
                            "running",
                            Json.asObject(c.execute("query-status", null).get("return"), "r")
                                    .get("status"));
                    c.execute("quit", null);
                }
                pids.add(Long.parseLong(
                        r.out().lines().toList().get(i - 1).replaceAll("^clone-\\d+: pid (\\d+),.*", "$1")));
            }
            assertEquals(3, pids.size(), "one process per clone");
        } finally {
            deleteTemplate(tpl);
        }
    }

    /**
     * A second launch into the same directories while the first one's clones run: it takes the
     * next numbers, and the running clones' logs are neither truncated nor shared (at 52b27eb
     * the second launch reused clone-1..N: NUL bytes, then another guest's heartbeats).
     */
    @KvmTest
    void aSecondCloneCountLeavesTheFirstLaunchsLogsIntact(@TempDir Path dir) throws Exception {
        var tpl = createTemplate(dir);
        var consoles = dir.resolve("consoles"); // created by clone
        var sockets = dir.resolve("sockets");
        var pids = new ArrayList<Long>();
        try {
            var first = MainTest.run(
                    "clone",
                    tpl.toString(),
                    "--count",
                    "2",
                    "--console-dir",
                    consoles.toString(),
                    "--api-socket-dir",
                    sockets.toString());
            assertEquals(0, first.code(), first.err());
            first.out()
                    .lines()
                    .forEach(l -> pids.add(Long.parseLong(l.replaceAll("^clone-\\d+: pid (\\d+),.*", "$1"))));
            SnapshotCliTest.awaitText(consoles.resolve("clone-1.log"), "hb 0 3", 30);
            String before = Files.readString(consoles.resolve("clone-1.log"));

            var second = MainTest.run(
                    "clone",
                    tpl.toString(),
                    "--count",
                    "2",
                    "--console-dir",
                    consoles.toString(),
                    "--api-socket-dir",
                    sockets.toString());
            assertEquals(0, second.code(), second.err());
            second.out()
                    .lines()
                    .forEach(l -> pids.add(Long.parseLong(l.replaceAll("^clone-\\d+: pid (\\d+),.*", "$1"))));
            assertTrue(second.out().startsWith("clone-3: pid "), second.out());
            assertTrue(second.out().lines().toList().get(1).startsWith("clone-4: pid "), second.out());
            SnapshotCliTest.awaitText(consoles.resolve("clone-3.log"), "hb 0 2", 30);
            SnapshotCliTest.awaitText(consoles.resolve("clone-1.log"), "hb 0 " + (heartbeatsIn(before) + 3), 30);
            for (int i = 1; i <= 2; i++) {
                String log = Files.readString(consoles.resolve("clone-" + i + ".log"));
                if (i == 1) assertTrue(log.startsWith(before), "the first launch's log kept its start:\n" + log);
                assertTrue(log.indexOf('\0') < 0, "no NUL bytes in clone-" + i + ".log");
                // One guest per log: its heartbeats run on without a gap or a restart.
                var complete = log.substring(0, log.lastIndexOf('\n') + 1);
                long previous = -1;
                for (var line :
                        complete.lines().filter(l -> l.startsWith("hb 0 ")).toList()) {
                    long n = Long.parseLong(line.substring(5));
                    if (previous >= 0) assertEquals(previous + 1, n, "clone-" + i + ".log:\n" + log);
                    previous = n;
                }
                assertTrue(previous > 0, log);
            }
            for (int i = 1; i <= 4; i++) {
                try (var c = ApiClient.connect(sockets.resolve("clone-" + i + ".sock"))) {
                    c.execute("quit", null);
                }
            }
        } finally {
            for (long pid : pids) ProcessHandle.of(pid).ifPresent(ProcessHandle::destroyForcibly);
            deleteTemplate(tpl);
        }
    }

    private static long heartbeatsIn(String console) {
        return console.lines()
                .filter(l -> l.startsWith("hb 0 "))
                .mapToLong(l -> Long.parseLong(l.substring(5).trim()))
                .max()
                .orElse(0);
    }

    /** A clone that dies at start is reported with its own reason and a non-zero exit (at 52b27eb: "clone 1: pid N", exit 0). */
    @KvmTest
    void cloneCountReportsAClonesFailureAndItsReason(@TempDir Path dir) throws Exception {
        var notATemplate = Files.createDirectories(dir.resolve("corrupt"));
        Files.writeString(notATemplate.resolve("snapshot.pvm"), "garbage");
        var r = MainTest.run(
                "clone",
                notATemplate.toString(),
                "--count",
                "2",
                "--console-dir",
                dir.resolve("c").toString(),
                "--api-socket-dir",
                dir.resolve("s").toString());
        assertEquals(1, r.code(), r.err());
        assertEquals("", r.out());
        var lines = r.err().lines().toList();
        assertEquals(3, lines.size(), r.err());
        for (int i = 1; i <= 2; i++) {
            assertTrue(lines.get(i - 1).startsWith("vmm: clone-" + i + " failed: "), r.err());
            assertTrue(
                    lines.get(i - 1).contains("snapshot")
                            && lines.get(i - 1).endsWith("(" + dir.resolve("c/clone-" + i + ".err") + ")"),
                    r.err());
        }
        assertEquals("vmm: 2 of 2 clones failed to start", lines.get(2));
    }

    @KvmTest
    void cloningFromAMissingCorruptOrUnfinishedTemplateIsOneLine(@TempDir Path dir) throws Exception {
        var missing = MainTest.run("clone", dir.resolve("none").toString());
        assertEquals(1, missing.code());
        assertEquals("vmm: no template directory " + dir.resolve("none") + "\n", missing.err());
        var corrupt = Files.createDirectories(dir.resolve("corrupt"));
        Files.writeString(corrupt.resolve("snapshot.pvm"), "garbage");
        var bad = MainTest.run("clone", corrupt.toString());
        assertEquals(1, bad.code());
        assertEquals(1, bad.err().lines().count(), bad.err());
        // A template whose guest never reaches its ready point is still being created.
        var spin = Files.write(dir.resolve("spin.elf"), TinyElfAccess.countForever());
        var creating = dir.resolve("creating");
        try (var create = VmmProcess.start(
                "template",
                "create",
                creating.toString(),
                "--kernel",
                spin.toString(),
                "--memory",
                "32M",
                "--timeout",
                "60")) {
            long deadline = System.nanoTime() + 20_000_000_000L;
            while (!Files.exists(creating.resolve(".creating")) && System.nanoTime() < deadline) Thread.sleep(10);
            var r = MainTest.run("clone", creating.toString());
            assertEquals(1, r.code());
            assertEquals(
                    "vmm: template " + creating + " is still being created (process " + create.pid() + " is running)\n",
                    r.err());
            create.signal("TERM");
            assertEquals(1, create.waitFor(30));
            assertTrue(
                    create.stderr().contains("the template's guest ended before its ready point: stopped by signal"),
                    create.stderr());
        }
        try (var shm = Files.list(Path.of("/dev/shm"))) {
            assertEquals(
                    List.of(),
                    shm.filter(p -> p.getFileName().toString().startsWith("panama-template-creating-"))
                            .toList(),
                    "a failed template creation leaves no memory file");
        }
        assertTrue(Files.notExists(creating.resolve(".creating")));
    }

    static String sha256(Path file) throws Exception {
        var digest = MessageDigest.getInstance("SHA-256");
        try (var in = Files.newInputStream(file)) {
            in.transferTo(new DigestOutputStream(OutputStream.nullOutputStream(), digest));
        }
        return HexFormat.of().formatHex(digest.digest());
    }

    /** Issue 21 item 2: `restore TEMPLATE` ran the guest in the template's memory file and destroyed the template. */
    @KvmTest
    void aTemplateIsNeverRunInPlaceAndClonesStillWorkAfterTheAttempts(@TempDir Path dir) throws Exception {
        var tpl = createTemplate(dir);
        try {
            Path memory = Files.readSymbolicLink(tpl.resolve("memory.ram"));
            String before = sha256(memory);
            var r = MainTest.run("restore", tpl.toString(), "--console", "file:" + dir.resolve("restore.log"));
            assertEquals(1, r.code());
            assertEquals("vmm: " + tpl + " is a template: use vmm clone " + tpl + "\n", r.err());
            assertTrue(Files.notExists(dir.resolve("restore.log")), "refused before the console is opened");
            // The template's snapshot copied elsewhere: its memory file is read-only, so it is refused too.
            var copy = Files.createDirectory(dir.resolve("copy"));
            Files.copy(tpl.resolve("snapshot.pvm"), copy.resolve("snapshot.pvm"));
            var copied = MainTest.run("restore", copy.toString(), "--console", "file:/dev/null");
            assertEquals(1, copied.code());
            assertEquals(
                    "vmm: the memory file " + memory + " is read-only, as a template's is: clone it (vmm clone DIR)"
                            + " instead of continuing in it\n",
                    copied.err());
            // And a new guest does not run in it either.
            var run = MainTest.run(
                    "run",
                    "--mem-path",
                    memory.toString(),
                    "--shared",
                    "--memory",
                    "64M",
                    "--console",
                    "file:/dev/null");
            assertEquals(1, run.code());
            assertEquals(
                    "vmm: memory file " + memory
                            + " is read-only (a template's memory is): a guest runs in it only if it is"
                            + " writable\n",
                    run.err());
            assertEquals(before, sha256(memory), "the template's memory, byte for byte");
            // Clones side by side; while they run, a writer is refused by the lock they hold shared.
            var c1 = dir.resolve("c1.log");
            var c2 = dir.resolve("c2.log");
            try (var one = VmmProcess.start("clone", tpl.toString(), "--console", "file:" + c1);
                    var two = VmmProcess.start("clone", tpl.toString(), "--console", "file:" + c2)) {
                SnapshotCliTest.awaitText(c1, "hb 0 3", 30);
                SnapshotCliTest.awaitText(c2, "hb 0 3", 30);
                var again = MainTest.run("restore", tpl.toString());
                assertEquals(1, again.code());
                one.signal("TERM");
                two.signal("TERM");
                assertEquals(0, one.waitFor(30), one.stderr());
                assertEquals(0, two.waitFor(30), two.stderr());
            }
            String template = Files.readString(dir.resolve("template.log"));
            SnapshotCliTest.heartbeats(template + Files.readString(c1));
            SnapshotCliTest.heartbeats(template + Files.readString(c2));
            assertEquals(before, sha256(memory), "the template's memory after its clones ran");
        } finally {
            deleteTemplate(tpl);
        }
    }

    /** Issue 14 item 7: `rm -rf` of a template left its memory file in /dev/shm; `template rm` leaves nothing. */
    @KvmTest
    void templateListShowsItAndTemplateRmLeavesNothingBehindWhileAClonesRunsOn(@TempDir Path dir) throws Exception {
        var tpl = createTemplate(dir);
        Path memory = Files.readSymbolicLink(tpl.resolve("memory.ram"));
        try {
            var console = dir.resolve("clone.log");
            try (var clone = VmmProcess.start("clone", tpl.toString(), "--console", "file:" + console)) {
                SnapshotCliTest.awaitText(console, "hb 0 2", 30);
                var list = MainTest.run("template", "list", dir.toString(), "--json");
                assertEquals(0, list.code(), list.err());
                var rows = (List<?>) Json.parse(list.out().strip());
                assertEquals(1, rows.size(), list.out());
                var row = Json.asObject(rows.getFirst(), "row");
                assertEquals(tpl.toString(), row.get("directory"));
                assertEquals(memory.toString(), row.get("memoryFile"));
                assertEquals(64L << 20, row.get("memory"));
                assertEquals(1L, row.get("clones"));
                assertTrue(
                        Math.abs(System.currentTimeMillis() - (Long) row.get("createdAtMillis")) < 600_000, list.out());
                var text = MainTest.run("template", "list", dir.toString());
                assertTrue(
                        text.out().lines().anyMatch(l -> l.startsWith(tpl.toString()) && l.contains("64 MiB")),
                        text.out());

                var notTemplate = MainTest.run("template", "rm", dir.toString());
                assertEquals(1, notTemplate.code());
                assertEquals(
                        "vmm: " + dir + " is not a template (no memory.ram link): nothing removed\n",
                        notTemplate.err());
                assertTrue(Files.exists(dir.resolve("template.log")), "nothing removed");

                var rm = MainTest.run("template", "rm", tpl.toString());
                assertEquals(0, rm.code(), rm.err());
                assertEquals(
                        "removed template " + tpl + " and its memory file " + memory
                                + "; 1 running clone(s) keep their copy until they end\n",
                        rm.out());
                assertTrue(Files.notExists(tpl), "the directory is gone");
                assertTrue(Files.notExists(memory), "the memory file is gone from /dev/shm");
                int at = SnapshotCliTest.heartbeats(Files.readString(console)).get(0);
                SnapshotCliTest.awaitText(console, "hb 0 " + (at + 3), 30);
                clone.signal("TERM");
                assertEquals(0, clone.waitFor(30), clone.stderr());
            }
            SnapshotCliTest.heartbeats(Files.readString(dir.resolve("template.log")) + Files.readString(console));
            assertEquals("", MainTest.run("template", "list", dir.toString()).out());
            var gone = MainTest.run("clone", tpl.toString());
            assertEquals("vmm: no template directory " + tpl + "\n", gone.err());
        } finally {
            Files.deleteIfExists(memory);
        }
    }

    static long count(String what, long pid) throws Exception {
        var proc = Path.of("/proc", Long.toString(pid));
        return switch (what) {
            case "fds" -> Files.list(proc.resolve("fd")).count();
            // Not the JIT's compiler threads: the JVM starts and retires them with its compile queue
            // (a host's count once moved by one between two quiet moments); a leak is the VMM's threads.
            case "threads" -> {
                try (var tasks = Files.list(proc.resolve("task"))) {
                    yield tasks.filter(t -> !compilerThread(t)).count();
                }
            }
            case "mappings" -> Files.readAllLines(proc.resolve("maps")).size();
            default -> throw new IllegalArgumentException(what);
        };
    }

    /** The names of a process's threads (the JIT's compiler threads left out, as {@link #count} does), sorted. */
    static List<String> threadNames(long pid) throws Exception {
        try (var tasks = Files.list(Path.of("/proc", Long.toString(pid), "task"))) {
            return tasks.filter(t -> !compilerThread(t))
                    .map(t -> {
                        try {
                            return Files.readString(t.resolve("comm")).strip();
                        } catch (java.io.IOException e) {
                            return "(ended)";
                        }
                    })
                    .sorted()
                    .toList();
        }
    }

    private static boolean compilerThread(Path task) {
        try {
            return Files.readString(task.resolve("comm")).matches("C[12] CompilerThre.*\\s*");
        } catch (java.io.IOException e) {
            return true; // the thread ended while it was listed: not one to count
        }
    }

    /** serve: clones on request; 200 clone-and-destroy cycles leak no fds, mappings or threads. */
    @KvmTest
    void serveClonesOnRequestAndLeaksNothing(@TempDir Path dir) throws Exception {
        var tpl = createTemplate(dir);
        var api = dir.resolve("serve.sock");
        var consoles = dir.resolve("missing/consoles"); // created by serve
        // The rehearsal done before the socket appears, so the counts below see only the clones.
        try (var serve = VmmProcess.start(
                        Map.of("PANAMA_VMM_REHEARSAL", "sync"),
                        "serve",
                        "--api-socket",
                        api.toString(),
                        "--console-dir",
                        consoles.toString());
                var client = awaitClient(serve, api)) {
            // A log left by another launch (a clone --count, another serve) keeps its name and its bytes: serve skips
            // that ID.
            Files.writeString(consoles.resolve("clone-1.log"), "another launch's clone\n");
            var reply = client.execute("clone", Json.object("template", tpl.toString(), "count", 2L));
            var clones = (List<?>) Json.asObject(reply.get("return"), "r").get("clones");
            assertEquals(2, clones.size(), reply.toString());
            assertEquals("clone-2", Json.asObject(clones.getFirst(), "c").get("id"), reply.toString());
            assertEquals("another launch's clone\n", Files.readString(consoles.resolve("clone-1.log")));
            for (var c : clones) {
                var id = (String) Json.asObject(c, "c").get("id");
                SnapshotCliTest.awaitText(consoles.resolve(id + ".log"), "hb 0 2", 30);
                assertTrue(client.execute("destroy", Json.object("id", id)).containsKey("return"));
            }
            // Warm up, then count, cycle, count again.
            cycle(client, tpl, 5);
            long fds = count("fds", serve.pid()),
                    threads = count("threads", serve.pid()),
                    maps = count("mappings", serve.pid());
            cycle(client, tpl, 200);
            Thread.sleep(200);
            assertEquals(fds, count("fds", serve.pid()), "file descriptors");
            assertEquals(threads, count("threads", serve.pid()), "threads");
            // The JVM's own mappings (malloc arenas, code cache, heap) move by a few either way; a clone's
            // leaked RAM mapping would add one per cycle, 200 in all.
            long mapsAfter = count("mappings", serve.pid());
            assertTrue(
                    Math.abs(mapsAfter - maps) <= 5,
                    "mappings: " + maps + " before 200 cycles, " + mapsAfter + " after");
            assertEquals(List.of(), client.execute("query-clones", null).get("return"));
            client.execute("quit", null);
            assertEquals(0, serve.waitFor(30), serve.stderr());
        } finally {
            deleteTemplate(tpl);
        }
    }

    /**
     * A chained template made from one of serve's clones with template create --from-clone: cloned
     * (without leaking a layer's fd or mapping), inspected, listed, and removed only child first.
     */
    @KvmTest
    void aChainedTemplateOfAServeCloneIsClonedInspectedListedAndRemovedChildFirst(@TempDir Path dir) throws Exception {
        var tpl = createTemplate(dir);
        var tpl2 = dir.resolve("tpl2");
        var api = dir.resolve("serve.sock");
        var consoles = dir.resolve("consoles");
        try (var serve = VmmProcess.start(
                        Map.of("PANAMA_VMM_REHEARSAL", "sync"),
                        "serve",
                        "--api-socket",
                        api.toString(),
                        "--console-dir",
                        consoles.toString());
                var client = awaitClient(serve, api)) {
            assertTrue(client.execute("clone", Json.object("template", tpl.toString()))
                    .containsKey("return"));
            var clone1 = consoles.resolve("clone-1.log");
            SnapshotCliTest.awaitText(clone1, "hb 0 \\d+", 30);
            var story = Files.readString(dir.resolve("template.log"));

            var bootOption = MainTest.run(
                    "template", "create", "--from-clone", api.toString(), "--memory", "1G", tpl2.toString());
            assertEquals(Main.USAGE, bootOption.code());
            assertTrue(bootOption.err().contains("--from-clone boots nothing, so it takes no guest"), bootOption.err());
            var noId = MainTest.run("template", "create", "--from-clone", api.toString(), tpl2.toString());
            assertEquals(1, noId.code());
            assertEquals("vmm: template create failed: \"id\" is required (a clone id)\n", noId.err(), noId.err());
            var made = MainTest.run(
                    "template", "create", "--from-clone", api.toString(), "--id", "clone-1", tpl2.toString());
            assertEquals(0, made.code(), made.err());
            assertTrue(
                    made.out().startsWith("template " + tpl2 + " at depth 2 over " + tpl + ": layer of "), made.out());
            int at =
                    SnapshotCliTest.heartbeats(story + Files.readString(clone1)).get(0);
            SnapshotCliTest.awaitText(clone1, "hb 0 " + (at + 2), 30); // it runs on

            var reply = client.execute("clone", Json.object("template", tpl2.toString()));
            var id = (String) Json.asObject(
                            ((List<?>) Json.asObject(reply.get("return"), "r").get("clones")).getFirst(), "c")
                    .get("id");
            SnapshotCliTest.awaitText(consoles.resolve(id + ".log"), "hb 0 \\d+", 30);
            assertTrue(client.execute("destroy", Json.object("id", id)).containsKey("return"));
            assertTrue(!Files.readString(consoles.resolve(id + ".log")).contains("CORRUPT"));
            cycle(client, tpl2, 3);
            long fds = count("fds", serve.pid()), maps = count("mappings", serve.pid());
            cycle(client, tpl2, 30);
            Thread.sleep(200);
            assertEquals(fds, count("fds", serve.pid()), "file descriptors (a layer's fd per clone)");
            long mapsAfter = count("mappings", serve.pid());
            assertTrue(Math.abs(mapsAfter - maps) <= 5, "mappings: " + maps + " before 30 cycles, " + mapsAfter);

            var inspect = MainTest.run("template", "inspect", tpl2.toString(), "--json");
            assertEquals(0, inspect.code(), inspect.err());
            var chain = Json.asObject(
                    Json.asObject(Json.parse(inspect.out().strip()), "info").get("chain"), "chain");
            assertEquals(2L, chain.get("depth"));
            assertEquals(tpl.toString(), chain.get("parent"));
            assertEquals(1, ((List<?>) chain.get("layers")).size());
            var parentInfo = MainTest.run("template", "inspect", tpl.toString());
            assertTrue(parentInfo.out().contains("child         " + tpl2), parentInfo.out());
            var list = MainTest.run("template", "list", dir.toString(), "--json");
            var depths = ((List<?>) Json.parse(list.out().strip()))
                    .stream().map(r -> Json.asObject(r, "row").get("depth")).toList();
            assertEquals(List.of(1L, 2L), depths, list.out());

            var refused = MainTest.run("template", "rm", tpl.toString());
            assertEquals(1, refused.code());
            assertEquals(
                    "vmm: template " + tpl + " has 1 chained template(s) made from its clones (" + tpl2
                            + "): remove them first; nothing removed\n",
                    refused.err());
            var rm = MainTest.run("template", "rm", tpl2.toString());
            assertEquals(0, rm.code(), rm.err());
            assertEquals(
                    "removed template " + tpl2 + " and its layer file " + tpl2.resolve("layer.pvl") + "\n", rm.out());
            assertTrue(Files.exists(Files.readSymbolicLink(tpl.resolve("memory.ram"))), "the root's memory stays");
            assertEquals(0, MainTest.run("template", "rm", tpl.toString()).code());
            client.execute("quit", null);
            assertEquals(0, serve.waitFor(30), serve.stderr());
        } finally {
            if (Files.exists(tpl2)) tpl2.toFile().setWritable(true);
            if (Files.exists(tpl)) deleteTemplate(tpl);
        }
    }

    static ApiClient awaitClient(VmmProcess vmm, Path socket) throws Exception {
        vmm.awaitSocket(socket);
        return ApiClient.connect(socket);
    }

    static void cycle(ApiClient client, Path tpl, int n) {
        for (int i = 0; i < n; i++) {
            var reply = client.execute("clone", Json.object("template", tpl.toString()));
            assertTrue(reply.containsKey("return"), reply.toString());
            var id = (String) Json.asObject(
                            ((List<?>) Json.asObject(reply.get("return"), "r").get("clones")).getFirst(), "c")
                    .get("id");
            var destroyed = client.execute("destroy", Json.object("id", id));
            assertTrue(destroyed.containsKey("return"), destroyed.toString());
        }
    }
}
