package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.io.TempDir;

/** Templates and clones with the test guest as the oracle. */
class TemplateTest {

    static MachineConfig guest(String options) {
        return new MachineConfig(
                64 * GuestMemory.MIB,
                1,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=150 " + options);
    }

    static Templates.Created createTemplate(Kvm kvm, Path dir, SnapshotTest.Console console, String options)
            throws Exception {
        return Templates.create(kvm, dir, guest(options), Path.of("/dev/shm"), console, new CompletableFuture<>(), 60);
    }

    static String sha256(Path file) throws Exception {
        var md = MessageDigest.getInstance("SHA-256");
        try (InputStream in = Files.newInputStream(file)) {
            byte[] buf = new byte[1 << 20];
            for (int n; (n = in.read(buf)) > 0; ) md.update(buf, 0, n);
        }
        return HexFormat.of().formatHex(md.digest());
    }

    static void deleteTemplate(Path dir, Templates.Created t) throws Exception {
        if (t != null) Files.deleteIfExists(t.memoryFile());
        dir.toFile().setWritable(true);
    }

    @KvmTest
    void clonesContinueFromTheTemplateAndNeverChangeItsMemory(@TempDir Path dir) throws Exception {
        var templateDir = dir.resolve("tpl");
        var templateConsole = new SnapshotTest.Console();
        Templates.Created created = null;
        try (var kvm = Kvm.open()) {
            created = createTemplate(kvm, templateDir, templateConsole, "testguest.mem=48M");
            assertTrue(templateConsole.text().contains("ready\n"));
            assertEquals(
                    "r--r--r--", PosixFilePermissions.toString(Files.getPosixFilePermissions(created.memoryFile())));
            String before = sha256(created.memoryFile());
            var template = Templates.open(templateDir);
            var ids = new HashSet<String>();
            for (int i = 0; i < 2; i++) {
                var console = new SnapshotTest.Console();
                console.write(templateConsole.text().getBytes()); // the clone's story starts with the template's
                try (var clone = Templates.clone(kvm, template, console, new VmListener() {})) {
                    clone.start();
                    console.await("genid 0x[0-9a-f]{16}", 30);
                    console.await("hb 0 5", 30); // the template stopped at its ready point, before hb 0 1
                }
                SnapshotTest.checkHeartbeats(console.text());
                var genids = console.text()
                        .lines()
                        .filter(l -> l.startsWith("genid "))
                        .toList();
                String mine = genids.getLast();
                assertNotEquals("genid 0x0000000000000000", mine);
                assertTrue(ids.add(mine), "each clone has its own generation id: " + genids);
            }
            assertEquals(
                    before,
                    sha256(created.memoryFile()),
                    "clones wrote to all their memory; the template file is unchanged");
        } finally {
            deleteTemplate(templateDir, created);
        }
    }

    @KvmTest
    void twentyClonesRunAtOnceWithDistinctGenerationIds(@TempDir Path dir) throws Exception {
        var templateDir = dir.resolve("tpl");
        Templates.Created created = null;
        var clones = new ArrayList<Vm>();
        var consoles = new ArrayList<SnapshotTest.Console>();
        try (var kvm = Kvm.open()) {
            created = createTemplate(kvm, templateDir, new SnapshotTest.Console(), "testguest.mem=4M");
            var template = Templates.open(templateDir);
            for (int i = 0; i < 20; i++) {
                var console = new SnapshotTest.Console();
                consoles.add(console);
                var clone = Templates.clone(kvm, template, console, new VmListener() {});
                clones.add(clone);
                clone.start();
            }
            var ids = new HashSet<String>();
            for (var console : consoles) {
                console.await("hb 0 1", 120);
                console.await("genid 0x[0-9a-f]{16}", 120);
                ids.add(console.text()
                        .lines()
                        .filter(l -> l.startsWith("genid"))
                        .reduce((a, b) -> b)
                        .orElseThrow());
                SnapshotTest.checkHeartbeats(console.text());
            }
            assertEquals(20, ids.size(), "distinct generation ids: " + ids);
        } finally {
            clones.forEach(Vm::close);
            deleteTemplate(templateDir, created);
        }
    }

    @KvmTest
    void cloningFromMissingCorruptUnfinishedOrPlainSnapshotsIsRefused(@TempDir Path dir) throws Exception {
        try (var kvm = Kvm.open()) {
            assertEquals(
                    "no template directory " + dir.resolve("none"),
                    assertThrows(SnapshotException.class, () -> Templates.open(dir.resolve("none")))
                            .getMessage());
            var creating = Files.createDirectories(dir.resolve("creating"));
            Files.writeString(
                    creating.resolve(".creating"),
                    Long.toString(ProcessHandle.current().pid()));
            assertEquals(
                    "template " + creating + " is still being created (process "
                            + ProcessHandle.current().pid() + " is running)",
                    assertThrows(SnapshotException.class, () -> Templates.open(creating))
                            .getMessage());
            // A marker that names no live process (or no process at all): a creation that did not finish.
            for (String content : new String[] {"", "not a pid", "99999999999999999999"}) {
                Files.writeString(creating.resolve(".creating"), content);
                assertEquals(
                        "template " + creating + " is incomplete: its creation did not finish",
                        assertThrows(SnapshotException.class, () -> Templates.open(creating))
                                .getMessage());
            }
            var empty = Files.createDirectories(dir.resolve("empty"));
            assertEquals(
                    empty + " is not a template (no snapshot.pvm)",
                    assertThrows(SnapshotException.class, () -> Templates.open(empty))
                            .getMessage());
            var corrupt = Files.createDirectories(dir.resolve("corrupt"));
            Files.write(corrupt.resolve("snapshot.pvm"), new byte[100]);
            assertTrue(assertThrows(SnapshotException.class, () -> Templates.open(corrupt))
                    .getMessage()
                    .contains("is not a Panama VMM snapshot"));

            var plain = dir.resolve("plain");
            try (var vm = VmBuilder.boot(
                    kvm, guest("testguest.mem=4M"), OutputStream.nullOutputStream(), new VmListener() {})) {
                vm.start();
                VmSnapshots.save(vm, plain, true, false, RamWriter.Progress.NONE);
            }
            assertEquals(
                    plain + " is a snapshot, not a template: its RAM is not in a shared memory file",
                    assertThrows(SnapshotException.class, () -> Templates.open(plain))
                            .getMessage());
        }
    }
}
