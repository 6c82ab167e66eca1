package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.regex.Pattern;
import org.junit.jupiter.api.io.TempDir;

/**
 * Clones of a template with a writable disk, the test guest's disk oracle hammering it: each
 * clone writes only its own copy-on-write view, the template's disk never changes, and a clone's
 * snapshot carries its view (the oracle's generations live in guest RAM, so a lost, stale or
 * foreign write prints {@code CORRUPT blk}).
 */
class CloneDiskTest {
    private static final Pattern BLK = Pattern.compile("(?m)^blk (\\d+) reads=");

    private static long completed(SnapshotTest.Console console) {
        var m = BLK.matcher(console.text());
        long last = -1;
        while (m.find()) last = Long.parseLong(m.group(1));
        return last;
    }

    private static void runsClean(SnapshotTest.Console console, String hb) throws Exception {
        console.await(hb, 60);
        assertFalse(console.text().contains("CORRUPT"), console.text());
        SnapshotTest.checkHeartbeats(console.text());
    }

    @KvmTest
    void clonesWriteTheirOwnDisksNeverTheTemplates(@TempDir Path dir) throws Exception {
        var disk = dir.resolve("template.raw");
        try (var f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(16L << 20);
        }
        var config = TemplateTest.guest("testguest.mem=4M testguest.hb=100 testguest.blk=size=8M,qd=8,write=50")
                .withVirtio(List.of(new DiskConfig(disk, false, "tpl")), false);
        var templateDir = dir.resolve("tpl");
        var own = dir.resolve("clone-a.disk");
        var made = new ArrayList<Path>();
        Templates.Created created = null;
        try (var kvm = Kvm.open()) {
            var templateConsole = new SnapshotTest.Console();
            created = Templates.create(
                    kvm, templateDir, config, Path.of("/dev/shm"), templateConsole, new CompletableFuture<>(), 60);
            assertTrue(templateConsole.text().contains("blk capacity="), templateConsole.text());
            String before = TemplateTest.sha256(disk);
            var template = Templates.open(templateDir);

            var consoles = new ArrayList<SnapshotTest.Console>();
            var clones = new ArrayList<Vm>();
            try {
                for (int i = 0; i < 2; i++) {
                    var console = new SnapshotTest.Console();
                    console.write(templateConsole.text().getBytes());
                    consoles.add(console);
                    var clone = Templates.clone(
                            kvm, template, i == 0 ? List.of(own) : List.of(), console, new VmListener() {});
                    clones.add(clone);
                    made.add(clone.config().disks().getFirst().path());
                    clone.start();
                }
                for (var console : consoles) runsClean(console, "hb 0 8");
                assertTrue(completed(consoles.get(0)) > 0 && completed(consoles.get(1)) > 0, "both disks were busy");
            } finally {
                clones.forEach(Vm::close);
            }
            assertEquals(own, made.get(0), "the override names the first clone's disk");
            assertEquals(
                    disk.getFileName() + ".clone-" + ProcessHandle.current().pid(),
                    made.get(1).getFileName().toString().replaceAll("-\\d+$", ""));
            for (var p : made) {
                assertEquals(
                        OverlayBlockBackend.fileLength(16L << 20),
                        Files.size(p),
                        "an overlay (ext4/tmpfs have no reflink)");
            }
            assertEquals(before, TemplateTest.sha256(disk), "the template's disk is unchanged");

            // A clone's own snapshot restores with its view: the guest's generations still match.
            var console = new SnapshotTest.Console();
            var snap = dir.resolve("clone-snap");
            var clone =
                    Templates.clone(kvm, template, List.of(dir.resolve("clone-c.disk")), console, new VmListener() {});
            made.add(dir.resolve("clone-c.disk"));
            try (clone) {
                clone.start();
                runsClean(console, "hb 0 5");
                VmSnapshots.save(clone, snap, false, false, RamWriter.Progress.NONE);
            }
            long atSave = completed(console);
            try (var restored = VmSnapshots.restore(kvm, snap, console, new VmListener() {})) {
                assertEquals(
                        dir.resolve("clone-c.disk"),
                        restored.config().disks().getFirst().path());
                assertEquals(disk, restored.config().disks().getFirst().base());
                restored.start();
                console.await("hb 0 10", 60);
                assertFalse(console.text().contains("CORRUPT"), console.text());
                assertTrue(completed(console) > atSave, "the restored clone's disk goes on working");
            }
        } finally {
            for (var p : made) Files.deleteIfExists(p);
            TemplateTest.deleteTemplate(templateDir, created);
        }
    }
}
