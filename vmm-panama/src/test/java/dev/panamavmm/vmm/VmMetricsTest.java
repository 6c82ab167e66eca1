package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.vmm.memory.Backing;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import jdk.jfr.Recording;
import jdk.jfr.consumer.RecordedEvent;
import jdk.jfr.consumer.RecordingFile;
import org.junit.jupiter.api.io.TempDir;

/** {@code query-metrics}' counters and operation timings, and the JFR events, on the test guest. */
class VmMetricsTest {

    @KvmTest
    void exitsPausesAndOperationsAreCountedAndEachOperationIsAJfrEvent(@TempDir Path dir) throws Exception {
        var console = new SnapshotTest.Console();
        var jfr = dir.resolve("ops.jfr");
        try (var recording = new Recording();
                var kvm = Kvm.open()) {
            recording.enable("dev.panamavmm.VmOperation");
            recording.start();
            try (var vm =
                    VmBuilder.boot(kvm, SnapshotTest.guest(2, new Backing.Memfd(), ""), console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 2", 30);
                vm.pause();
                vm.resume();
                console.await("hb 0 3", 30);
                VmSnapshots.save(vm, dir.resolve("snap"), true, true, RamWriter.Progress.NONE);
                var m = vm.metrics();
                // The guest prints on COM1 (port I/O) from CPU 0; the two pauses kicked the vCPUs out
                // of the guest (each that was in KVM_RUN then: the busy guest keeps them there).
                assertTrue(m.exits(0, VmMetrics.Exit.IO) > 10, "I/O exits of vCPU 0");
                assertTrue(
                        m.exits(0, VmMetrics.Exit.INTERRUPTED) + m.exits(1, VmMetrics.Exit.INTERRUPTED) >= 1, "kicks");
                var report = vm.metricsReport();
                assertEquals(2L, report.get("pauses"), report.toString()); // ours and the save's
                assertEquals(2, ((List<?>) report.get("vcpus")).size());
                var save = m.last("save");
                assertNotNull(save);
                assertEquals(
                        List.of("live-copy", "pause", "state", "ram", "commit"),
                        List.copyOf(save.phases().keySet()));
                long phases = save.phases().values().stream()
                        .mapToLong(Long::longValue)
                        .sum();
                assertTrue(phases <= save.micros() && save.micros() - phases < 100_000, save.toString());
                var operations = (Map<?, ?>) report.get("operations");
                assertEquals(1L, ((Map<?, ?>) operations.get("save")).get("count"));
            }
            try (var vm = VmSnapshots.restore(kvm, dir.resolve("snap"), console, new VmListener() {})) {
                var restore = vm.metrics().last("restore");
                assertNotNull(restore, "a restore times itself");
                assertEquals(
                        List.of("disks", "memory", "state"),
                        List.copyOf(restore.phases().keySet()));
            }
            recording.stop();
            recording.dump(jfr);
        }
        var names = RecordingFile.readAllEvents(jfr).stream()
                .filter(e -> e.getEventType().getName().equals("dev.panamavmm.VmOperation"))
                .map((RecordedEvent e) -> e.getString("operation"))
                .toList();
        assertEquals(List.of("save", "restore"), names);
    }
}
