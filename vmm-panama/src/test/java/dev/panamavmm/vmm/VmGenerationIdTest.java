package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmIoapicState;
import dev.panamavmm.kvm.bindings.KvmIrqchip;
import dev.panamavmm.kvm.bindings.KvmLapicState;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.vmm.boot.AcpiTables;
import dev.panamavmm.vmm.memory.Backing;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.Set;
import org.junit.jupiter.api.io.TempDir;

/** The ACPI VM generation ID: new where the same guest state may run twice, unchanged where one guest runs on. */
class VmGenerationIdTest {
    private static String id(Vm vm) {
        return HexFormat.of().formatHex(VmGenerationId.read(vm.memory()));
    }

    /** A renewal is an edge on the event device's pin: routed to vCPU 0, it is pending in its local APIC. */
    @KvmTest
    void aRenewalChangesTheIdAndInterruptsTheGuest() throws Exception {
        var console = new SnapshotTest.Console();
        int vector = 0x41;
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(
                        kvm, SnapshotTest.guest(1, new Backing.Memfd(), ""), console, new VmListener() {});
                var arena = Arena.ofConfined()) {
            String booted = id(vm);
            assertNotEquals("00".repeat(16), booted, "boot writes a random ID");
            vm.start();
            console.await("ready", 30); // the guest has enabled its local APIC
            vm.pause();

            var chip = arena.allocate(KvmIrqchip.LAYOUT);
            KvmIrqchip.chipId(chip, KvmConstants.KVM_IRQCHIP_IOAPIC);
            vm.vmFd().ioctl(Ioctls.KVM_GET_IRQCHIP, chip);
            // Pin 23: fixed delivery of `vector` to APIC ID 0, physical, edge, active high, unmasked.
            chip.set(
                    ValueLayout.JAVA_LONG_UNALIGNED,
                    KvmIrqchip.CHIP + KvmIoapicState.REDIRTBL + 8L * AcpiTables.GED_GSI,
                    vector);
            vm.vmFd().ioctl(Ioctls.KVM_SET_IRQCHIP, chip);

            VmGenerationId.renew(vm);

            assertNotEquals(booted, id(vm));
            var lapic = arena.allocate(KvmLapicState.LAYOUT);
            vm.vcpuFds().getFirst().ioctl(Ioctls.KVM_GET_LAPIC, lapic);
            int irr = lapic.get(ValueLayout.JAVA_INT_UNALIGNED, 0x200 + 0x10 * (vector / 32));
            assertTrue((irr & (1 << (vector % 32))) != 0, "vector 0x41 pending in the local APIC's IRR");
        }
    }

    /** Every clone gets its own ID; the template's memory file keeps the template's. */
    @KvmTest
    void everyCloneHasItsOwnId(@TempDir Path dir) throws Exception {
        var templateDir = dir.resolve("tpl");
        Templates.Created created = null;
        try (var kvm = Kvm.open()) {
            created = TemplateTest.createTemplate(kvm, templateDir, new SnapshotTest.Console(), "testguest.mem=8M");
            String templateId = fileId(created.memoryFile());
            var template = Templates.open(templateDir);
            Set<String> ids = new HashSet<>(Set.of(templateId));
            for (int i = 0; i < 2; i++) {
                try (var clone = Templates.clone(kvm, template, new SnapshotTest.Console(), new VmListener() {})) {
                    assertTrue(ids.add(id(clone)), "clone " + i + " has a new ID");
                }
            }
            assertEquals(templateId, fileId(created.memoryFile()), "the template's memory file is unchanged");
        } finally {
            TemplateTest.deleteTemplate(templateDir, created);
        }
    }

    /** A snapshot that holds its RAM can be restored again: each restore is a new generation. A bypass restore continues the one guest. */
    @KvmTest
    void restoresThatMayRepeatGetNewIdsBypassRestoresKeepTheirs(@TempDir Path dir) throws Exception {
        var ram = SnapshotTest.shmFile("genid");
        try (var kvm = Kvm.open()) {
            String saved;
            try (var vm = VmBuilder.boot(
                    kvm,
                    SnapshotTest.guest(1, new Backing.SharedFile(ram), ""),
                    new SnapshotTest.Console(),
                    new VmListener() {})) {
                vm.start();
                saved = id(vm);
                VmSnapshots.save(vm, dir.resolve("full"), false, true, RamWriter.Progress.NONE);
                VmSnapshots.save(vm, dir.resolve("bypass"), true, false, RamWriter.Progress.NONE);
            }
            String first, second;
            try (var vm =
                    VmSnapshots.restore(kvm, dir.resolve("full"), new SnapshotTest.Console(), new VmListener() {})) {
                first = id(vm);
            }
            try (var vm =
                    VmSnapshots.restore(kvm, dir.resolve("full"), new SnapshotTest.Console(), new VmListener() {})) {
                second = id(vm);
            }
            assertNotEquals(saved, first);
            assertNotEquals(first, second);
            try (var vm =
                    VmSnapshots.restore(kvm, dir.resolve("bypass"), new SnapshotTest.Console(), new VmListener() {})) {
                assertEquals(saved, id(vm), "a bypass restore continues the same guest");
            }
        } finally {
            Files.deleteIfExists(ram);
        }
    }

    private static String fileId(Path memoryFile) throws Exception {
        try (var f = new RandomAccessFile(memoryFile.toFile(), "r")) {
            var bytes = new byte[AcpiTables.VMGENID_SIZE];
            f.seek(AcpiTables.VMGENID_ADDRESS);
            f.readFully(bytes);
            assertFalse(Arrays.equals(new byte[bytes.length], bytes), "an ID was written at boot");
            return HexFormat.of().formatHex(bytes);
        }
    }
}
