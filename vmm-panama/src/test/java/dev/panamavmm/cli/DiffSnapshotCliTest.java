package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.VmSnapshots;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.io.TempDir;

/** {@code vmm snapshot merge} and a diff whose base is gone, as a user meets them: output, exit codes, one-line errors. */
class DiffSnapshotCliTest {

    @KvmTest
    void mergeFoldsAChainAndAMissingBaseIsOneLine(@TempDir Path dir) throws Exception {
        Path base = dir.resolve("base"), diff = dir.resolve("diff"), merged = dir.resolve("merged");
        var config = new MachineConfig(
                32 * GuestMemory.MIB,
                1,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=100 testguest.mem=8M");
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(kvm, config, OutputStream.nullOutputStream(), new VmListener() {})) {
            vm.start();
            Thread.sleep(1500); // past "ready": the guest rewrites its memory
            var resume = VmSnapshots.Request.of(true, VmSnapshots.After.RESUME);
            VmSnapshots.save(vm, base, resume.diff(true), RamWriter.Progress.NONE);
            Thread.sleep(300);
            var saved = VmSnapshots.save(
                    vm,
                    diff,
                    VmSnapshots.Request.of(true, VmSnapshots.After.STOP).diff(true),
                    RamWriter.Progress.NONE);
            assertEquals("diff", saved.type());
        }
        var ok = MainTest.run("snapshot", "merge", diff.toString(), merged.toString());
        assertEquals(0, ok.code(), ok.err());
        assertTrue(ok.out().startsWith("merged 2 snapshot(s) into " + merged.resolve("snapshot.pvm")), ok.out());
        assertTrue(!SnapshotReader.open(merged).isLayer());

        Files.move(base, dir.resolve("elsewhere"));
        for (var args : new String[][] {
            {"snapshot", "merge", diff.toString(), dir.resolve("m2").toString()}, {"restore", diff.toString()}
        }) {
            var r = MainTest.run(args);
            assertEquals(1, r.code(), r.out());
            assertEquals(
                    "vmm: the base snapshot " + base.toAbsolutePath() + " of the diff snapshot " + diff.toAbsolutePath()
                            + " is missing\n",
                    r.err());
        }
        assertTrue(Files.notExists(dir.resolve("m2").resolve("snapshot.pvm")), "no half-written merge");
    }
}
