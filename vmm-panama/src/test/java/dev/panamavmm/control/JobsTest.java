package dev.panamavmm.control;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.Json;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.memory.Backing;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.io.TempDir;

/** Saves as jobs: an id at once, progress and events, and a cancel that gives the guest back. */
class JobsTest {

    static Map<String, Object> job(VmControl control, String id) {
        for (var j : control.jobs()) {
            var job = Json.asObject(j, "job");
            if (id.equals(job.get("id"))) return job;
        }
        throw new AssertionError("no job " + id + " in " + control.jobs());
    }

    static Map<String, Object> awaitConcluded(VmControl control, String id) throws InterruptedException {
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (System.nanoTime() < deadline) {
            var job = job(control, id);
            if ("concluded".equals(job.get("status"))) return job;
            Thread.sleep(10);
        }
        throw new AssertionError("job " + id + " did not conclude: " + control.jobs());
    }

    @KvmTest
    void aSaveRunsAsAJobAndACancelledOneGivesTheGuestBack(@TempDir Path dir) throws Exception {
        var events = new ArrayList<String>();
        var config = new MachineConfig(
                256L << 20,
                1,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=100 testguest.mem=200M");
        try (var kvm = Kvm.open();
                Vm vm = VmBuilder.boot(kvm, config, OutputStream.nullOutputStream(), new VmListener() {})) {
            vm.start();
            Thread.sleep(1500); // the guest fills its memory (on a loaded machine not all of it by now)
            var control = new VmControl(vm, (name, data) -> {
                synchronized (events) {
                    events.add(name + " " + data.get("id") + " " + data.get("status"));
                }
            });

            // Cancelled: the save stops at its next step, the guest runs on, no snapshot is left.
            Map<String, Object> cancelled = null;
            for (int attempt = 0; attempt < 5 && cancelled == null; attempt++) {
                var snap = dir.resolve("cancelled-" + attempt);
                String id = (String)
                        control.snapshot(snap, false, true, false, false, true).get("job-id");
                try {
                    control.cancelJob(id);
                } catch (IllegalStateException finishedFirst) {
                    awaitConcluded(control, id);
                    continue; // the save won the race: try again
                }
                cancelled = awaitConcluded(control, id);
                assertEquals("cancelled by job-cancel", cancelled.get("error"), cancelled.toString());
                assertFalse(Files.exists(snap.resolve("snapshot.pvm")), "no snapshot left behind");
            }
            assertTrue(cancelled != null, "a save was cancelled in one of 5 attempts: " + control.jobs());
            assertEquals(Vm.Status.RUNNING, vm.status(), "the guest was given back");

            // Completed: progress reaches the total, the result is the save's.
            var snap = dir.resolve("done");
            String id = (String)
                    control.snapshot(snap, false, true, false, false, true).get("job-id");
            var done = awaitConcluded(control, id);
            assertEquals(done.get("total-progress"), done.get("current-progress"), done.toString());
            var result = Json.asObject(done.get("result"), "result");
            // More than the guest's image and tables: the memory it filled (~100 MiB of 200 under load, seen).
            assertTrue((Long) result.get("ram-bytes-written") > 32L << 20, result.toString());
            assertTrue(Files.exists(snap.resolve("snapshot.pvm")));
            assertThrows(
                    IllegalStateException.class, () -> control.cancelJob(id), "a concluded job cannot be cancelled");
            synchronized (events) {
                assertTrue(events.contains("JOB_STATUS_CHANGE " + id + " running"), events.toString());
                assertTrue(events.contains("JOB_STATUS_CHANGE " + id + " concluded"), events.toString());
            }
            assertEquals(Vm.Status.RUNNING, vm.status());
            List<Object> all = control.jobs();
            assertTrue(all.size() >= 2, all.toString());
        }
    }
}
