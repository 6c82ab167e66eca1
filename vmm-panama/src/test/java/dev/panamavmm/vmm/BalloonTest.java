package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.Predicate;
import java.util.regex.Matcher;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The balloon with the test guest as the oracle: pages it reports free go back to the host (a
 * clone's to its template, a shared file's as holes), inflate and deflate follow the target,
 * statistics arrive, bad frame numbers are ignored, and target, actual and counters survive a
 * snapshot and restore and a live update; the guest's own checks of what it wrote never fail.
 */
class BalloonTest {
    static final long MIB = GuestMemory.MIB;
    static final long REGION_PAGES = 64 * MIB / 4096;

    static MachineConfig guest(Backing backing, String balloonOptions) {
        return new MachineConfig(
                        192 * MIB,
                        1,
                        backing,
                        "test guest",
                        TestGuest.elf(),
                        null,
                        "console=ttyS0 testguest.hb=300 testguest.mem=8M testguest.rewrite=0 testguest.balloon=size=64M,"
                                + balloonOptions)
                .withBalloon(new VirtioConfig.Balloon(true, 1, true));
    }

    /**
     * Pss and Private_Dirty of this process's mappings of {@code vm}'s RAM (/proc/self/smaps; a
     * template's tmpfs pages that only this clone maps count in both), and its anonymous bytes.
     */
    static long[] ramFootprint(Vm vm) throws Exception {
        long pss = 0, dirty = 0;
        boolean inside = false;
        for (String line : Files.readAllLines(Path.of("/proc/self/smaps"))) {
            int dash = line.indexOf('-');
            int space = line.indexOf(' ');
            if (dash > 0 && space > dash && line.substring(0, dash).matches("[0-9a-f]+")) {
                long start = Long.parseUnsignedLong(line.substring(0, dash), 16);
                inside = false;
                for (var b : vm.memory().blocks()) {
                    long at = b.segment().address();
                    inside |= start >= at && start < at + b.size();
                }
            } else if (inside && line.startsWith("Pss:")) {
                pss += kib(line);
            } else if (inside && line.startsWith("Private_Dirty:")) {
                dirty += kib(line);
            }
        }
        return new long[] {pss, dirty, anonymousBytes(vm)};
    }

    /**
     * Bytes of {@code vm}'s RAM that are this process's own anonymous pages (/proc/self/pagemap:
     * present, not a file or shared page): a clone's copies of template pages.
     */
    static long anonymousBytes(Vm vm) throws Exception {
        long pages = 0;
        try (var pagemap = FileChannel.open(Path.of("/proc/self/pagemap"))) {
            for (var b : vm.memory().blocks()) {
                var entries = ByteBuffer.allocate((int) (b.size() / 4096 * 8)).order(ByteOrder.LITTLE_ENDIAN);
                pagemap.read(entries, b.segment().address() / 4096 * 8);
                for (int i = 0; i < entries.capacity(); i += 8) {
                    long e = entries.getLong(i);
                    if (e < 0 && ((e >>> 61) & 1) == 0) pages++; // bit 63 present, bit 61 file-page or shared
                }
            }
        }
        return pages * 4096;
    }

    private static String mib(long[] footprint) {
        return (footprint[0] >> 20) + "/" + (footprint[1] >> 20) + "/" + (footprint[2] >> 20);
    }

    private static long kib(String line) {
        return Long.parseLong(line.replaceAll("[^0-9]", "")) * 1024;
    }

    /** The guest's last balloon line. */
    static Matcher lastBalloonLine(String console) {
        Matcher last = null;
        for (String line : console.lines().toList()) {
            var m = TestGuest.BALLOON.matcher(line);
            if (m.matches()) last = m;
        }
        if (last == null) throw new AssertionError("no balloon line in:\n" + console);
        return last;
    }

    static void noCorruption(String console) {
        SnapshotTest.checkHeartbeats(console);
        assertFalse(console.contains("CORRUPT"), console);
    }

    static Map<String, Object> awaitQuery(Vm vm, Predicate<Map<String, Object>> until, String what) throws Exception {
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (true) {
            var q = Balloons.query(vm);
            if (until.test(q)) return q;
            if (System.nanoTime() > deadline) throw new AssertionError("no " + what + ": " + q);
            Thread.sleep(50);
        }
    }

    @Test
    void optionsParseAndTravelInSnapshotMetadata() {
        assertEquals(new VirtioConfig.Balloon(false, 0, false), VirtioConfig.Balloon.parse(""));
        var all = VirtioConfig.Balloon.parse("deflate-on-oom,stats=5,reporting");
        assertEquals(new VirtioConfig.Balloon(true, 5, true), all);
        assertEquals(all, Balloons.fromJson(Json.parse(Json.write(Balloons.toJson(all)))));
        assertNull(Balloons.fromJson(null), "a snapshot from before balloons has none");
        assertEquals(
                "unknown balloon option \"x\" (deflate-on-oom, stats=SECONDS, reporting)",
                assertThrows(IllegalArgumentException.class, () -> VirtioConfig.Balloon.parse("reporting,x"))
                        .getMessage());
        assertThrows(IllegalArgumentException.class, () -> VirtioConfig.Balloon.parse("stats=0"));
        assertThrows(IllegalArgumentException.class, () -> VirtioConfig.Balloon.parse("stats=soon"));
        assertThrows(SnapshotException.class, () -> Balloons.fromJson("yes"));
    }

    @KvmTest
    void aCloneThatReportsWhatItDirtiedGivesItBackToTheTemplate(@TempDir Path dir) throws Exception {
        var templateDir = dir.resolve("tpl");
        Templates.Created created = null;
        try (var kvm = Kvm.open()) {
            created = Templates.create(
                    kvm,
                    templateDir,
                    guest(new Backing.Memfd(), "dirty=4,hold=4,reuse=5"),
                    Path.of("/dev/shm"),
                    new SnapshotTest.Console(),
                    new CompletableFuture<>(),
                    60);
            var console = new SnapshotTest.Console();
            try (var clone = Templates.clone(kvm, Templates.open(templateDir), console, new VmListener() {})) {
                clone.start();
                console.await("hb 0 3", 60); // the memory checker has mapped the template pages it reads
                long[] fresh = ramFootprint(clone);
                console.await("balloon reported=0 reused=0 dirtied=" + REGION_PAGES + " .*", 60);
                long[] dirty = ramFootprint(clone);
                console.await("balloon reported=" + REGION_PAGES + " .*", 60);
                long[] reported = ramFootprint(clone);
                String at = String.format(
                        "Pss/Private_Dirty/anonymous MiB: fresh %s, dirtied %s, reported %s",
                        mib(fresh), mib(dirty), mib(reported));
                assertTrue(dirty[2] >= fresh[2] + 60 * MIB, "dirtying 64 MiB copied them: " + at);
                assertTrue(reported[0] <= fresh[0] + 2 * MIB, "reported free, the clone is back to fresh: " + at);
                assertTrue(reported[1] <= fresh[1] + 2 * MIB, at);
                assertTrue(reported[2] <= fresh[2] + 2 * MIB, at);
                var q = Balloons.query(clone);
                assertEquals(REGION_PAGES, q.get("pages-reported"));
                assertEquals(REGION_PAGES, q.get("pages-returned"));
                assertEquals(0L, q.get("pages-ignored"));
                // The guest writes the pages again and checks them every heartbeat: its own bytes, not the template's.
                console.await("balloon reported=" + REGION_PAGES + " reused=" + REGION_PAGES + " .*", 60);
                int hb = Integer.parseInt(lastHeartbeat(console.text()));
                console.await("hb 0 " + (hb + 2), 60);
            }
            noCorruption(console.text());
        } finally {
            TemplateTest.deleteTemplate(templateDir, created);
        }
    }

    private static String lastHeartbeat(String console) {
        return console.lines()
                .filter(l -> l.startsWith("hb 0 "))
                .reduce((a, b) -> b)
                .orElseThrow()
                .substring(5);
    }

    @KvmTest
    void inflateDeflateStatisticsAndBadFramesSurviveASnapshot(@TempDir Path dir) throws Exception {
        var ram = SnapshotTest.shmFile("balloon-test");
        var snap = dir.resolve("snap");
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open()) {
            Map<String, Object> before;
            try (var vm = VmBuilder.boot(
                    kvm,
                    guest(new Backing.SharedFile(ram), "dirty=2,hold=1,reuse=2,bad"),
                    console,
                    new VmListener() {})) {
                vm.start();
                console.await("balloon reported=" + REGION_PAGES + " .*", 60);
                long afterReport = SnapshotTest.allocated(ram);
                assertTrue(
                        afterReport < 192 * MIB - 60 * MIB,
                        "the reported pages are holes in the shared file: " + (afterReport >> 20) + " MiB left");
                Balloons.setTarget(vm, 16);
                var q = awaitQuery(vm, m -> m.get("actual-pages").equals(4096L), "actual of 16 MiB");
                assertEquals(16L, q.get("target-mib"));
                assertEquals(4096L, q.get("pages-inflated"));
                assertEquals(3L, q.get("pages-ignored"), "page 1, the 32-bit hole and a frame far beyond RAM");
                assertEquals(0L, q.get("pages-kept"));
                q = awaitQuery(
                        vm,
                        m -> (Long) m.get("stats-updates") >= 3
                                && ((Map<?, ?>) m.get("stats")).get("total-memory") instanceof Long,
                        "statistics");
                assertEquals(64 * MIB, ((Map<?, ?>) q.get("stats")).get("total-memory"));
                before = Balloons.query(vm);
                VmSnapshots.save(vm, snap, true, false, RamWriter.Progress.NONE);
            }
            try (var vm = VmSnapshots.restore(kvm, snap, console, new VmListener() {})) {
                var restored = Balloons.query(vm);
                for (var key :
                        new String[] {"target-mib", "actual-pages", "pages-inflated", "pages-reported", "pages-ignored"
                        }) assertEquals(before.get(key), restored.get(key), key + " after the restore");
                vm.start();
                Balloons.setTarget(vm, 0);
                var q = awaitQuery(vm, m -> m.get("actual-pages").equals(0L), "deflated balloon");
                assertEquals(4096L, q.get("pages-deflated"));
                int hb = Integer.parseInt(lastHeartbeat(console.text()));
                console.await("hb 0 " + (hb + 6), 60);
            }
            var last = lastBalloonLine(console.text());
            assertEquals("0", last.group(5), "actual");
            assertTrue(Long.parseLong(last.group(2)) > 0, "pages were reused after a report: " + last.group());
        } finally {
            Files.deleteIfExists(ram);
        }
        noCorruption(console.text());
    }

    @KvmTest
    void targetActualAndCountersMoveWithALiveUpdate(@TempDir Path dir) throws Exception {
        var console = new SnapshotTest.Console();
        try (var kvm = Kvm.open()) {
            Vm current = VmBuilder.boot(
                    kvm, guest(new Backing.Memfd(), "dirty=2,hold=1,reuse=2"), console, new VmListener() {});
            try {
                current.start();
                Balloons.setTarget(current, 8);
                var before = awaitQuery(
                        current,
                        m -> m.get("actual-pages").equals(2048L) && (Long) m.get("pages-reported") > 0,
                        "inflated and reported");
                var socket = dir.resolve("m.sock");
                var next = LocalMigrationTest.incoming(kvm, socket, console, null);
                LocalMigrationTest.awaitSocket(socket);
                LocalMigration.send(current, socket, 10);
                current.close();
                current = next.get(10, TimeUnit.SECONDS);
                var after = Balloons.query(current);
                assertEquals(8L, after.get("target-mib"));
                assertEquals(2048L, after.get("actual-pages"));
                assertTrue((Long) after.get("pages-reported") >= (Long) before.get("pages-reported"), after.toString());
                Balloons.setTarget(current, 0);
                awaitQuery(current, m -> m.get("actual-pages").equals(0L), "deflated in the new VMM");
                int hb = Integer.parseInt(lastHeartbeat(console.text()));
                console.await("hb 0 " + (hb + 4), 60);
            } finally {
                current.close();
            }
        }
        noCorruption(console.text());
        assertTrue(Long.parseLong(lastBalloonLine(console.text()).group(2)) > 0, "pages reused after reports");
    }
}
