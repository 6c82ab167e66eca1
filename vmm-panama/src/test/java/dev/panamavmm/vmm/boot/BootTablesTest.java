package dev.panamavmm.vmm.boot;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** The MP table and the ACPI tables, parsed back the way a kernel reads them. */
class BootTablesTest {

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 8, 254})
    void mpTableListsEveryCpuTheIoApicAndTheIsaIrqs(int cpus) {
        byte[] bytes = MpTable.build(cpus);
        var b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        // Floating pointer: "_MP_", length 1 (x16), spec 1.4, checksum over 16 bytes.
        assertEquals("_MP_", ascii(bytes, 0, 4));
        assertEquals(1, b.get(8));
        assertEquals(4, b.get(9));
        assertEquals(0, sum(bytes, 0, 16));
        long table = Integer.toUnsignedLong(b.getInt(4));
        int t = (int) (table - MpTable.ADDRESS);
        assertEquals(16, t);
        // Configuration table header.
        assertEquals("PCMP", ascii(bytes, t, 4));
        int length = Short.toUnsignedInt(b.getShort(t + 4));
        assertEquals(bytes.length - 16, length);
        assertEquals(0, sum(bytes, t, length), "configuration table checksum");
        assertEquals(0xfee00000, b.getInt(t + 36));
        int count = Short.toUnsignedInt(b.getShort(t + 34));
        var processors = new ArrayList<Integer>();
        int bsp = -1, ioApics = 0, ioInterrupts = 0, localInterrupts = 0, ioApicId = -1;
        int at = t + 44;
        for (int i = 0; i < count; i++) {
            int type = b.get(at);
            switch (type) {
                case 0 -> {
                    processors.add(Byte.toUnsignedInt(b.get(at + 1)));
                    assertEquals(1, b.get(at + 3) & 1, "enabled");
                    if ((b.get(at + 3) & 2) != 0) bsp = b.get(at + 1);
                    at += 20;
                }
                case 1 -> {
                    assertEquals("ISA   ", ascii(bytes, at + 2, 6));
                    at += 8;
                }
                case 2 -> {
                    ioApics++;
                    ioApicId = Byte.toUnsignedInt(b.get(at + 1));
                    assertEquals(0xfec00000, b.getInt(at + 4));
                    at += 8;
                }
                case 3 -> {
                    assertEquals(b.get(at + 5), b.get(at + 7), "ISA IRQ n on I/O APIC pin n");
                    ioInterrupts++;
                    at += 8;
                }
                case 4 -> {
                    localInterrupts++;
                    at += 8;
                }
                default -> throw new AssertionError("entry type " + type);
            }
        }
        assertEquals(at, bytes.length, "entries fill the table exactly");
        var expected = new ArrayList<Integer>();
        for (int i = 0; i < cpus; i++) expected.add(i);
        assertEquals(expected, processors);
        assertEquals(0, bsp);
        assertEquals(1, ioApics);
        assertEquals(cpus, ioApicId, "the I/O APIC's ID follows the CPUs'");
        assertEquals(16, ioInterrupts);
        assertEquals(2, localInterrupts);
    }

    @Test
    void tablesRefuseCpuCountsAnApicCannotAddress() {
        assertThrows(BootException.class, () -> MpTable.build(255));
        assertThrows(BootException.class, () -> AcpiTables.build(0));
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 3, 254})
    void acpiRsdpLeadsToAMadtWithEveryCpu(int cpus) {
        byte[] bytes = AcpiTables.build(cpus);
        var b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        assertEquals("RSD PTR ", ascii(bytes, 0, 8));
        assertEquals(0, sum(bytes, 0, 20), "ACPI 1.0 checksum");
        assertEquals(2, b.get(15), "revision 2: XSDT");
        assertEquals(36, b.getInt(20));
        assertEquals(0, sum(bytes, 0, 36), "extended checksum");
        int xsdt = offset(b.getLong(24));
        assertEquals("XSDT", table(bytes, xsdt));
        int entries = (b.getInt(xsdt + 4) - 36) / 8;
        var signatures = new ArrayList<String>();
        int fadt = -1, madt = -1;
        for (int i = 0; i < entries; i++) {
            int at = offset(b.getLong(xsdt + 36 + 8 * i));
            String sig = table(bytes, at);
            signatures.add(sig);
            if (sig.equals("FACP")) fadt = at;
            if (sig.equals("APIC")) madt = at;
        }
        assertEquals(List.of("FACP", "APIC"), signatures);

        assertEquals(276, b.getInt(fadt + 4));
        assertTrue((b.getInt(fadt + 112) & (1 << 20)) != 0, "HW_REDUCED_ACPI");
        assertTrue((b.getShort(fadt + 109) & 2) != 0, "8042 present");
        int dsdt = offset(b.getLong(fadt + 140));
        assertEquals(dsdt, offset(Integer.toUnsignedLong(b.getInt(fadt + 40))), "DSDT and X_DSDT agree");
        assertEquals("DSDT", table(bytes, dsdt));

        assertEquals(0xfee00000, b.getInt(madt + 36));
        int end = madt + b.getInt(madt + 4);
        var apicIds = new ArrayList<Integer>();
        int ioApics = 0;
        for (int at = madt + 44; at < end; at += Byte.toUnsignedInt(b.get(at + 1))) {
            switch (b.get(at)) {
                case 0 -> {
                    assertEquals(1, b.getInt(at + 4) & 1, "enabled");
                    apicIds.add(Byte.toUnsignedInt(b.get(at + 3)));
                }
                case 1 -> {
                    ioApics++;
                    assertEquals(0xfec00000, b.getInt(at + 4));
                    assertEquals(0, b.getInt(at + 8), "GSI base");
                }
                case 4 -> assertEquals(1, b.get(at + 5), "NMI on LINT1");
                default -> throw new AssertionError("MADT entry type " + b.get(at));
            }
        }
        assertEquals(cpus, apicIds.size());
        for (int i = 0; i < cpus; i++) assertEquals(i, apicIds.get(i));
        assertEquals(1, ioApics);
    }

    /**
     * ACPICA, the interpreter Linux itself uses, disassembles the DSDT back into the devices meant:
     * an independent check of the hand-encoded AML.
     */
    @Test
    void acpicaReadsTheVirtioGenerationIdAndEventDevicesBack(@TempDir Path dir) throws Exception {
        Assumptions.assumeTrue(
                onPath("iasl"), "iasl is missing (apt-get install acpica-tools): the DSDT is not disassembled");
        byte[] bytes = AcpiTables.build(
                1,
                List.of(
                        new AcpiTables.MmioDevice(0xc0000000L, 0x1000, 5),
                        new AcpiTables.MmioDevice(0xc0001000L, 0x1000, 6)));
        var b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        int fadt = AcpiTables.FADT_AT;
        int dsdt = offset(b.getLong(fadt + 140));
        int length = b.getInt(dsdt + 4);
        assertEquals("DSDT", table(bytes, dsdt));
        var aml = dir.resolve("dsdt.aml");
        Files.write(aml, Arrays.copyOfRange(bytes, dsdt, dsdt + length));
        var p = new ProcessBuilder("iasl", "-d", aml.toString())
                .directory(dir.toFile())
                .redirectErrorStream(true)
                .start();
        String log = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, p.waitFor(), log);
        String dsl = Files.readString(dir.resolve("dsdt.dsl"))
                .replaceAll("(?s)/\\*.*?\\*/", "") // comments: the disassembler's notes
                .replaceAll("//[^\n]*", "")
                .replaceAll("\\s+", " ");
        for (String expected : List.of(
                "Scope (\\_SB) { Device (VR00) { Name (_HID, \"LNRO0005\") Name (_UID, 0x00)",
                "Memory32Fixed (ReadWrite, 0xC0000000, 0x00001000, ) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000005, }",
                "Device (VR01) { Name (_HID, \"LNRO0005\") Name (_UID, 0x01)",
                "Memory32Fixed (ReadWrite, 0xC0001000, 0x00001000, ) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000006, }",
                "Device (VGEN) {",
                "Name (_HID, \"VMGENCTR\")",
                "Name (_CID, \"VM_Gen_Counter\")",
                "Name (ADDR, Package (0x02) { 0x000E1000, 0x00 })",
                "Device (GED) {",
                "Name (_HID, \"ACPI0013\"",
                "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000017, }",
                "Method (_EVT, 1, NotSerialized) { If ((Arg0 == 0x17)) { Notify (\\_SB.VGEN, 0x80)")) {
            assertTrue(dsl.contains(expected), "the disassembly has " + expected + ":\n" + dsl);
        }
    }

    /** A package length takes one to three bytes and counts itself. */
    @Test
    void amlPackageLengthsCountTheirOwnBytes() {
        assertEquals(63, Aml.packaged(new byte[62])[0]);
        byte[] two = Aml.packaged(new byte[63]);
        assertEquals(63 + 2, (two[0] & 0xf) | (two[1] & 0xff) << 4);
        assertEquals(0x40, two[0] & 0xc0);
        byte[] three = Aml.packaged(new byte[0x1000]);
        assertEquals(0x1000 + 3, (three[0] & 0xf) | (three[1] & 0xff) << 4 | (three[2] & 0xff) << 12);
        assertEquals(0x80, three[0] & 0xc0);
    }

    private static boolean onPath(String command) {
        for (var dir : System.getenv().getOrDefault("PATH", "").split(":")) {
            if (!dir.isEmpty() && Files.isExecutable(Path.of(dir, command))) return true;
        }
        return false;
    }

    /** Checks the table's checksum and returns its signature. */
    private static String table(byte[] bytes, int at) {
        int length = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).getInt(at + 4);
        assertEquals(0, sum(bytes, at, length), "checksum of the table at " + at);
        return ascii(bytes, at, 4);
    }

    private static int offset(long physical) {
        return (int) (physical - AcpiTables.ADDRESS);
    }

    private static int sum(byte[] bytes, int from, int length) {
        int s = 0;
        for (int i = from; i < from + length; i++) s += bytes[i];
        return s & 0xff;
    }

    private static String ascii(byte[] bytes, int from, int length) {
        return new String(bytes, from, length, StandardCharsets.US_ASCII);
    }
}
