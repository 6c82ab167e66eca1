package dev.panamavmm.vmm.boot;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;

/**
 * The Intel MultiProcessor Specification 1.4 tables a guest without ACPI uses to find its CPUs
 * and the I/O APIC: a floating pointer structure ({@code _MP_}) that Linux finds by scanning the
 * last KiB of base memory, followed by the configuration table ({@code PCMP}) with one processor
 * entry per vCPU (APIC ID = vCPU index), the ISA bus, KVM's in-kernel I/O APIC, ISA IRQs 0-15 on
 * its pins 0-15 (KVM's default GSI routing) and the local interrupts (ExtINT on LINT0, NMI on LINT1).
 *
 * <p>Built as bytes, so the layout can be checked on its own; {@link X86Boot} copies it to
 * {@link #ADDRESS}, inside the range the e820 map reserves.
 */
public final class MpTable {
    private MpTable() {}

    /** Start of the last KiB of base memory (639 KiB), where Linux's smp_scan_config looks. */
    public static final long ADDRESS = 0x9fc00;
    /** APIC IDs are 8 bits, 0xff is broadcast, and the I/O APIC takes the ID after the last CPU. */
    public static final int MAX_CPUS = 254;

    public static final long LOCAL_APIC_ADDRESS = 0xfee00000L;
    public static final long IO_APIC_ADDRESS = 0xfec00000L;
    static final int SPEC_REVISION = 4; // 1.4
    static final int APIC_VERSION = 0x14, IO_APIC_VERSION = 0x11;
    static final int ISA_IRQS = 16;

    // Entry types and sizes (MP spec 1.4, section 4.3).
    static final int PROCESSOR = 0, BUS = 1, IO_APIC = 2, IO_INTERRUPT = 3, LOCAL_INTERRUPT = 4;
    static final int FLOATING_SIZE = 16, HEADER_SIZE = 44, PROCESSOR_SIZE = 20, OTHER_SIZE = 8;
    static final int INT = 0, NMI = 1, EXT_INT = 3;
    static final int CPU_ENABLED = 1, CPU_BOOTSTRAP = 2;
    /** Family 6 in the signature; FPU and APIC in the feature flags: what Linux prints, nothing it decides on. */
    static final int CPU_SIGNATURE = 0x600, CPU_FEATURES = 1 | 1 << 9;

    static final int ISA_BUS_ID = 0;

    /** The I/O APIC's ID in the table: the first one after the CPUs'. */
    public static int ioApicId(int cpus) {
        return cpus;
    }

    /** Size in bytes of the floating pointer plus the configuration table for {@code cpus} vCPUs. */
    public static int size(int cpus) {
        return FLOATING_SIZE + HEADER_SIZE + cpus * PROCESSOR_SIZE + OTHER_SIZE * (2 + ISA_IRQS + 2);
    }

    /** The floating pointer and configuration table, laid out to be copied to {@link #ADDRESS}. */
    public static byte[] build(int cpus) {
        if (cpus < 1 || cpus > MAX_CPUS)
            throw new BootException("the MP table describes 1 to " + MAX_CPUS + " vCPUs, not " + cpus);
        var bytes = new byte[size(cpus)];
        var b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        long table = ADDRESS + FLOATING_SIZE;

        // Floating pointer structure.
        b.put(0, "_MP_".getBytes(StandardCharsets.US_ASCII));
        b.putInt(4, (int) table);
        b.put(8, (byte) 1); // length in 16-byte units
        b.put(9, (byte) SPEC_REVISION);
        // 10: checksum; 11: feature byte 1 = 0 (a configuration table is present); 12-15: 0 (no IMCR, virtual wire
        // mode)
        b.put(10, checksum(bytes, 0, FLOATING_SIZE));

        // Configuration table: entries first, header (with the count and checksum) last.
        int at = FLOATING_SIZE + HEADER_SIZE;
        int entries = 0;
        for (int cpu = 0; cpu < cpus; cpu++, entries++) {
            b.put(at, (byte) PROCESSOR);
            b.put(at + 1, (byte) cpu);
            b.put(at + 2, (byte) APIC_VERSION);
            b.put(at + 3, (byte) (CPU_ENABLED | (cpu == 0 ? CPU_BOOTSTRAP : 0)));
            b.putInt(at + 4, CPU_SIGNATURE);
            b.putInt(at + 8, CPU_FEATURES);
            at += PROCESSOR_SIZE;
        }
        b.put(at, (byte) BUS);
        b.put(at + 1, (byte) ISA_BUS_ID);
        b.put(at + 2, "ISA   ".getBytes(StandardCharsets.US_ASCII));
        at += OTHER_SIZE;
        entries++;
        int ioApic = ioApicId(cpus);
        b.put(at, (byte) IO_APIC);
        b.put(at + 1, (byte) ioApic);
        b.put(at + 2, (byte) IO_APIC_VERSION);
        b.put(at + 3, (byte) 1); // usable
        b.putInt(at + 4, (int) IO_APIC_ADDRESS);
        at += OTHER_SIZE;
        entries++;
        for (int irq = 0; irq < ISA_IRQS; irq++, entries++) {
            interrupt(b, at, IO_INTERRUPT, INT, irq, ioApic, irq);
            at += OTHER_SIZE;
        }
        interrupt(b, at, LOCAL_INTERRUPT, EXT_INT, 0, 0xff, 0);
        at += OTHER_SIZE;
        interrupt(b, at, LOCAL_INTERRUPT, NMI, 0, 0xff, 1);
        at += OTHER_SIZE;
        entries += 2;

        int h = FLOATING_SIZE;
        b.put(h, "PCMP".getBytes(StandardCharsets.US_ASCII));
        b.putShort(h + 4, (short) (bytes.length - FLOATING_SIZE));
        b.put(h + 6, (byte) SPEC_REVISION);
        b.put(h + 8, "PANAMA  ".getBytes(StandardCharsets.US_ASCII));
        b.put(h + 16, "PANAMA VMM  ".getBytes(StandardCharsets.US_ASCII));
        b.putShort(h + 34, (short) entries);
        b.putInt(h + 36, (int) LOCAL_APIC_ADDRESS);
        b.put(h + 7, checksum(bytes, FLOATING_SIZE, bytes.length - FLOATING_SIZE));
        return bytes;
    }

    /** An I/O or local interrupt assignment entry; flags 0 = polarity and trigger mode conform to the bus. */
    private static void interrupt(
            ByteBuffer b,
            int at,
            int entryType,
            int interruptType,
            int sourceIrq,
            int destinationApic,
            int destinationPin) {
        b.put(at, (byte) entryType);
        b.put(at + 1, (byte) interruptType);
        b.putShort(at + 2, (short) 0);
        b.put(at + 4, (byte) ISA_BUS_ID);
        b.put(at + 5, (byte) sourceIrq);
        b.put(at + 6, (byte) destinationApic);
        b.put(at + 7, (byte) destinationPin);
    }

    /** The byte that makes {@code length} bytes from {@code offset} sum to zero (the checksum byte itself counted as 0). */
    static byte checksum(byte[] bytes, int offset, int length) {
        int sum = 0;
        for (int i = offset; i < offset + length; i++) sum += bytes[i];
        return (byte) -sum;
    }
}
