package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.SnapshotFormat;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;

/**
 * Every snapshot an earlier version wrote (src/test/fixtures/snapshots, one directory each) still
 * restores, and its guest goes on: each CPU's first heartbeat is the one after the last it printed
 * before the save ({@code next-heartbeats}), the rest follow without a gap, nothing is CORRUPT.
 */
class SnapshotCompatibilityTest {
    static final Path FIXTURES = Path.of("src/test/fixtures/snapshots");

    @KvmTest
    void everyEarlierSnapshotRestoresAndItsGuestContinues(@TempDir Path temp) throws Exception {
        List<Path> fixtures;
        try (Stream<Path> dirs = Files.list(FIXTURES)) {
            fixtures = dirs.filter(Files::isDirectory).sorted().toList();
        }
        assertFalse(fixtures.isEmpty(), "no snapshot fixtures in " + FIXTURES.toAbsolutePath());
        try (var kvm = Kvm.open()) {
            for (var fixture : fixtures) {
                // A copy: a restore maps the snapshot's RAM; the committed file must never be what a guest runs in.
                var dir = Files.createDirectory(temp.resolve(fixture.getFileName()));
                Files.copy(fixture.resolve(SnapshotFormat.FILE_NAME), dir.resolve(SnapshotFormat.FILE_NAME));
                var next = expected(fixture.resolve("next-heartbeats"));
                var console = new SnapshotTest.Console();
                try (var vm = VmSnapshots.restore(kvm, dir, console, new VmListener() {})) {
                    vm.start();
                    for (var e : next.entrySet()) console.await("hb " + e.getKey() + " " + (e.getValue() + 3), 30);
                }
                check(fixture.getFileName().toString(), console.text(), next);
            }
        }
    }

    /** The first heartbeat each CPU prints after the restore ("CPU SEQ" per line). */
    static Map<Integer, Integer> expected(Path file) throws Exception {
        var next = new HashMap<Integer, Integer>();
        for (var line : Files.readAllLines(file)) {
            var parts = line.trim().split(" ");
            next.put(Integer.parseInt(parts[0]), Integer.parseInt(parts[1]));
        }
        return next;
    }

    static void check(String fixture, String console, Map<Integer, Integer> next) {
        var expect = new HashMap<>(next);
        for (var line : console.lines().toList()) {
            assertFalse(
                    TestGuest.CORRUPT.matcher(line).matches(), fixture + ": the guest reported corruption: " + line);
            var m = TestGuest.HEARTBEAT.matcher(line);
            if (!m.matches()) continue;
            int cpu = Integer.parseInt(m.group(1)), seq = Integer.parseInt(m.group(2));
            assertTrue(expect.containsKey(cpu), fixture + ": a heartbeat of unexpected CPU " + cpu);
            assertEquals(expect.get(cpu), seq, fixture + ": CPU " + cpu + " heartbeat in:\n" + console);
            expect.put(cpu, seq + 1);
        }
    }
}
