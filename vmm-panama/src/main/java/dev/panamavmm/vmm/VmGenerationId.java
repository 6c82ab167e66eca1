package dev.panamavmm.vmm;

import dev.panamavmm.vmm.boot.AcpiTables;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.security.SecureRandom;

/**
 * The VM generation ID of the ACPI tables ({@link AcpiTables#VMGENID_ADDRESS}): 16 random bytes
 * in guest memory that change whenever the guest may be running a second time from the same
 * state, so that a Linux guest's {@code vmgenid} driver reseeds its random number generator (two
 * clones must not produce the same "random" keys). It is new on every clone and on every restore
 * of a snapshot that holds its RAM (such a snapshot can be restored again), and is announced with
 * an edge on the generic event device's pin. A bypass restore continues the guest in its memory
 * file and a live update continues it elsewhere: the same guest runs on, so the ID stays.
 *
 * <p>The test guest has its own 64-bit generation id in the VMM port; this one is for Linux.
 */
public final class VmGenerationId {
    private VmGenerationId() {}

    private static final SecureRandom RANDOM = new SecureRandom();

    /** Writes a fresh ID (boot: no one to tell yet). */
    public static void write(GuestMemory memory) {
        var id = new byte[AcpiTables.VMGENID_SIZE];
        RANDOM.nextBytes(id);
        memory.write(AcpiTables.VMGENID_ADDRESS, id);
    }

    /** The current ID, as the guest reads it. */
    public static byte[] read(GuestMemory memory) {
        return memory.read(AcpiTables.VMGENID_ADDRESS, AcpiTables.VMGENID_SIZE);
    }

    /** Writes a fresh ID and raises the event that makes the guest read it. */
    static void renew(Vm vm) {
        write(vm.memory());
        vm.vmFd().irqLine(AcpiTables.GED_GSI, true);
        vm.vmFd().irqLine(AcpiTables.GED_GSI, false);
    }

    /** Whether a VM built from {@code loaded} in {@code mode} gets a new ID: the same state may run more than once. */
    static boolean changesOn(LoadedSnapshot loaded, VmBuilder.Mode mode) {
        return switch (mode) {
            case CLONE -> true;
            case MOVE -> false;
            case CONTINUE -> loaded.snapshot().ram().stream().anyMatch(e -> !e.byReference() && !e.byDescriptor());
        };
    }
}
