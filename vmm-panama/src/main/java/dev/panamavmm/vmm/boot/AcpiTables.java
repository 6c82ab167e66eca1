package dev.panamavmm.vmm.boot;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The smallest set of ACPI tables (ACPI 6.5) a distribution kernel needs to find its CPUs and the
 * I/O APIC: Debian's cloud kernel, for one, is built without MP table support
 * ({@code CONFIG_X86_MPPARSE} unset) and trusts only the MADT.
 * <ul>
 *   <li>RSDP (revision 2) at {@link #ADDRESS}, where a BIOS would leave it and where Linux scans;</li>
 *   <li>XSDT listing the FADT and the MADT;</li>
 *   <li>FADT declaring hardware-reduced ACPI (no PM timer, no SCI, no legacy PIC needed: what
 *   Firecracker and Cloud Hypervisor do), an i8042, no VGA and no CMOS RTC;</li>
 *   <li>a DSDT with two devices under {@code \_SB}: {@code VGEN}, the VM generation ID (the
 *   ACPI "Virtual Machine Generation ID" device Linux's {@code vmgenid} driver and Windows bind
 *   to: {@code _HID "VMGENCTR"}, {@code _CID "VM_Gen_Counter"}, {@code ADDR} = the guest-physical
 *   address of its 16 bytes, {@link #VMGENID_ADDRESS}), and {@code GED_}, a generic event device
 *   ({@code ACPI0013}, how a hardware-reduced platform raises ACPI events) whose interrupt,
 *   {@link #GED_GSI}, makes it {@code Notify(VGEN, 0x80)}: the guest reads the new ID;</li>
 *   <li>MADT: one enabled local APIC per vCPU (APIC ID = vCPU index), KVM's in-kernel I/O APIC
 *   with GSI base 0 and no interrupt source overrides (KVM's default routing maps ISA IRQ n to
 *   I/O APIC pin n), and LINT1 as NMI on every CPU.</li>
 * </ul>
 * Built as bytes at fixed offsets, so a test can parse them back field by field.
 */
public final class AcpiTables {
    private AcpiTables() {}

    /** In the BIOS area (reserved in the e820 map), 16-byte aligned: Linux scans 0xe0000-0xfffff for the RSDP. */
    public static final long ADDRESS = 0xe0000;

    static final int RSDP_SIZE = 36, HEADER_SIZE = 36, FADT_SIZE = 276;
    static final int FADT_REVISION = 6, FADT_MINOR = 5, MADT_REVISION = 5;
    static final int MADT_LOCAL_APIC = 0, MADT_IO_APIC = 1, MADT_LOCAL_APIC_NMI = 4;
    // FADT fields (ACPI 6.5, table 5.9)
    static final int FADT_DSDT = 40,
            FADT_IAPC_BOOT_ARCH = 109,
            FADT_FLAGS = 112,
            FADT_MINOR_VERSION = 131,
            FADT_X_DSDT = 140,
            FADT_HYPERVISOR_ID = 268;
    static final int BOOT_ARCH_8042 = 1 << 1, BOOT_ARCH_NO_VGA = 1 << 2, BOOT_ARCH_NO_CMOS_RTC = 1 << 5;
    static final int FLAG_HW_REDUCED_ACPI = 1 << 20;
    static final byte[] OEM_ID = "PANAMA".getBytes(StandardCharsets.US_ASCII);
    static final byte[] OEM_TABLE_ID = "PANAMVMM".getBytes(StandardCharsets.US_ASCII);
    static final byte[] CREATOR_ID = "PNMA".getBytes(StandardCharsets.US_ASCII);

    /** Offsets of each table inside the block {@link #build} returns (relative to {@link #ADDRESS}); the MADT of 254 CPUs ends before 0xa40. */
    static final int RSDP_AT = 0, XSDT_AT = 0x40, FADT_AT = 0x80, MADT_AT = 0x200, DSDT_AT = 0xc00;

    /**
     * The 16 bytes of the VM generation ID: in the BIOS area (reserved in the e820 map, so the
     * guest leaves it alone), on a page of its own, 8-byte aligned as the device's spec asks.
     */
    public static final long VMGENID_ADDRESS = ADDRESS + 0x1000;
    /** Length of the generation ID (a 128-bit value). */
    public static final int VMGENID_SIZE = 16;
    /**
     * The I/O APIC pin of the generic event device: the last of KVM's 24, away from the ISA
     * devices (below 16) and from the virtio-mmio devices, which count up from 5.
     */
    public static final int GED_GSI = 23;

    static int madtSize(int cpus) {
        return HEADER_SIZE + 8 + cpus * 8 + 12 + 6;
    }

    /**
     * A virtio-mmio device as the DSDT describes it ({@code _HID "LNRO0005"}, the ID Linux's
     * {@code virtio_mmio} driver binds to): its register window and its interrupt (edge, as irqfd
     * raises it). Kernels built without {@code CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES} (Debian's cloud
     * kernel, for one) find the devices only this way.
     */
    public record MmioDevice(long address, long size, int gsi) {}

    /** All tables, laid out to be copied to {@link #ADDRESS}; the RSDP comes first. */
    public static byte[] build(int cpus) {
        return build(cpus, List.of());
    }

    /** All tables with {@code devices} in the DSDT. */
    public static byte[] build(int cpus, List<MmioDevice> devices) {
        if (cpus < 1 || cpus > MpTable.MAX_CPUS)
            throw new BootException("the ACPI tables describe 1 to " + MpTable.MAX_CPUS + " vCPUs, not " + cpus);
        byte[] aml = dsdtAml(devices);
        var bytes = new byte[DSDT_AT + HEADER_SIZE + aml.length];
        var b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);

        // DSDT, revision 2: integers are 64 bits wide.
        header(b, DSDT_AT, "DSDT", HEADER_SIZE + aml.length, 2);
        b.put(DSDT_AT + HEADER_SIZE, aml);

        // FADT
        header(b, FADT_AT, "FACP", FADT_SIZE, FADT_REVISION);
        b.putInt(FADT_AT + FADT_DSDT, (int) (ADDRESS + DSDT_AT));
        b.putShort(FADT_AT + FADT_IAPC_BOOT_ARCH, (short) (BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC));
        b.putInt(FADT_AT + FADT_FLAGS, FLAG_HW_REDUCED_ACPI);
        b.put(FADT_AT + FADT_MINOR_VERSION, (byte) FADT_MINOR);
        b.putLong(FADT_AT + FADT_X_DSDT, ADDRESS + DSDT_AT);
        b.put(FADT_AT + FADT_HYPERVISOR_ID, "PanamaVM".getBytes(StandardCharsets.US_ASCII));

        // MADT
        int madt = madtSize(cpus);
        header(b, MADT_AT, "APIC", madt, MADT_REVISION);
        b.putInt(MADT_AT + 36, (int) MpTable.LOCAL_APIC_ADDRESS);
        b.putInt(MADT_AT + 40, 0); // flags: no PC-AT 8259s to use (hardware-reduced)
        int at = MADT_AT + 44;
        for (int cpu = 0; cpu < cpus; cpu++, at += 8) {
            b.put(at, (byte) MADT_LOCAL_APIC);
            b.put(at + 1, (byte) 8);
            b.put(at + 2, (byte) cpu); // ACPI processor UID
            b.put(at + 3, (byte) cpu); // APIC ID
            b.putInt(at + 4, 1); // enabled
        }
        b.put(at, (byte) MADT_IO_APIC);
        b.put(at + 1, (byte) 12);
        b.put(at + 2, (byte) MpTable.ioApicId(cpus));
        b.putInt(at + 4, (int) MpTable.IO_APIC_ADDRESS);
        b.putInt(at + 8, 0); // global system interrupt base
        at += 12;
        b.put(at, (byte) MADT_LOCAL_APIC_NMI);
        b.put(at + 1, (byte) 6);
        b.put(at + 2, (byte) 0xff); // all processors
        b.putShort(at + 3, (short) 0);
        b.put(at + 5, (byte) 1); // LINT1

        // XSDT: FADT and MADT.
        header(b, XSDT_AT, "XSDT", HEADER_SIZE + 16, 1);
        b.putLong(XSDT_AT + HEADER_SIZE, ADDRESS + FADT_AT);
        b.putLong(XSDT_AT + HEADER_SIZE + 8, ADDRESS + MADT_AT);

        // RSDP, revision 2 (ACPI 2.0+): XSDT only.
        b.put(RSDP_AT, "RSD PTR ".getBytes(StandardCharsets.US_ASCII));
        b.put(RSDP_AT + 9, OEM_ID);
        b.put(RSDP_AT + 15, (byte) 2);
        b.putInt(RSDP_AT + 20, RSDP_SIZE);
        b.putLong(RSDP_AT + 24, ADDRESS + XSDT_AT);

        for (int table : new int[] {DSDT_AT, FADT_AT, MADT_AT, XSDT_AT}) {
            b.put(table + 9, MpTable.checksum(bytes, table, b.getInt(table + 4)));
        }
        b.put(RSDP_AT + 8, MpTable.checksum(bytes, RSDP_AT, 20)); // over the ACPI 1.0 part
        b.put(RSDP_AT + 32, MpTable.checksum(bytes, RSDP_AT, RSDP_SIZE)); // over all of it
        return bytes;
    }

    /** The DSDT's definition block: the virtio-mmio devices, the generation ID device and the event device that announces a new ID. */
    static byte[] dsdtAml(List<MmioDevice> devices) {
        if (devices.size() > 256) throw new BootException("at most 256 virtio-mmio devices in the DSDT");
        var virtio = new ArrayList<byte[]>();
        for (int i = 0; i < devices.size(); i++) {
            var d = devices.get(i);
            virtio.add(Aml.device(
                    String.format("VR%02X", i),
                    Aml.name("_HID", Aml.string("LNRO0005")),
                    Aml.name("_UID", Aml.integer(i)),
                    Aml.name(
                            "_CRS",
                            Aml.resources(Aml.memory32Fixed(d.address(), d.size()), Aml.edgeInterrupt(d.gsi())))));
        }
        return Aml.scope(
                "\\_SB",
                Aml.of(virtio.toArray(byte[][]::new)),
                Aml.device(
                        "VGEN",
                        Aml.name("_HID", Aml.string("VMGENCTR")),
                        Aml.name("_CID", Aml.string("VM_Gen_Counter")),
                        Aml.name("_DDN", Aml.string("VM_Gen_Counter")),
                        Aml.name(
                                "ADDR",
                                Aml.packageOf(
                                        Aml.integer(VMGENID_ADDRESS & 0xffff_ffffL),
                                        Aml.integer(VMGENID_ADDRESS >>> 32)))),
                Aml.device(
                        "GED",
                        Aml.name("_HID", Aml.string("ACPI0013")),
                        Aml.name("_UID", Aml.integer(0)),
                        Aml.name("_CRS", Aml.resources(Aml.edgeInterrupt(GED_GSI))),
                        Aml.method("_EVT", 1, Aml.ifArg0Equals(GED_GSI, Aml.notify("\\_SB.VGEN", 0x80)))));
    }

    /** The 36-byte system description table header; the checksum (offset 9) is filled in last. */
    private static void header(ByteBuffer b, int at, String signature, int length, int revision) {
        b.put(at, signature.getBytes(StandardCharsets.US_ASCII));
        b.putInt(at + 4, length);
        b.put(at + 8, (byte) revision);
        b.put(at + 10, OEM_ID);
        b.put(at + 16, OEM_TABLE_ID);
        b.putInt(at + 24, 1);
        b.put(at + 28, CREATOR_ID);
        b.putInt(at + 32, 1);
    }
}
