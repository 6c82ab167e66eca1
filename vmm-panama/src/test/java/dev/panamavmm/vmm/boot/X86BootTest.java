package dev.panamavmm.vmm.boot;

import static dev.panamavmm.vmm.memory.GuestMemory.GIB;
import static dev.panamavmm.vmm.memory.GuestMemory.MIB;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.vmm.memory.GuestMemory;
import java.lang.foreign.Arena;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * What the loader leaves in guest memory, read back at the offsets the Linux boot protocol and
 * the PVH ABI document (typed in here, not taken from the generated bindings).
 */
class X86BootTest {
    // struct boot_params (Documentation/arch/x86/zero-page.rst) and setup_header (boot.rst)
    static final int ACPI_RSDP_ADDR = 0x070,
            E820_ENTRIES = 0x1e8,
            SETUP_SECTS = 0x1f1,
            BOOT_FLAG = 0x1fe,
            VID_MODE = 0x1fa,
            HEADER = 0x202,
            VERSION = 0x206,
            TYPE_OF_LOADER = 0x210,
            LOADFLAGS = 0x211,
            RAMDISK_IMAGE = 0x218,
            RAMDISK_SIZE = 0x21c,
            CMD_LINE_PTR = 0x228,
            KERNEL_ALIGNMENT = 0x230,
            CMDLINE_SIZE = 0x238,
            PREF_ADDRESS = 0x258,
            E820_TABLE = 0x2d0;

    record E820(long address, long size, int type) {}

    @Test
    void bzImageZeroPageIsTheKernelsHeaderPlusWhatTheLoaderOwns() {
        var s = SyntheticBzImage.standard();
        byte[] image = s.build();
        byte[] initrd = new byte[3 * 4096 + 5];
        Arrays.fill(initrd, (byte) 0x5a);
        try (var arena = Arena.ofConfined();
                var memory = GuestMemory.create(128 * MIB, arena)) {
            var entry = X86Boot.load(
                    memory,
                    KernelImage.parse(image, "k"),
                    image,
                    initrd,
                    "console=ttyS0 root=/dev/vda",
                    2,
                    BootProtocol.AUTO);
            assertEquals(new X86Boot.EntryPoint(BootProtocol.LINUX64, 0x1000200, false), entry);
            var zp = ByteBuffer.wrap(memory.read(X86Boot.BOOT_PARAMS, 4096)).order(ByteOrder.LITTLE_ENDIAN);

            // Copied from the kernel's header, untouched:
            assertEquals(0xaa55, Short.toUnsignedInt(zp.getShort(BOOT_FLAG)));
            assertEquals(0x53726448, zp.getInt(HEADER));
            assertEquals(0x020f, zp.getShort(VERSION));
            assertEquals(1, zp.get(SETUP_SECTS));
            assertEquals(0x200000, zp.getInt(KERNEL_ALIGNMENT));
            assertEquals(255, zp.getInt(CMDLINE_SIZE));
            assertEquals(0x1000000, zp.getLong(PREF_ADDRESS));
            assertEquals(0x01, zp.get(LOADFLAGS) & 0x01, "LOADED_HIGH kept");
            // Written by the loader:
            assertEquals((byte) 0xff, zp.get(TYPE_OF_LOADER));
            assertEquals((short) 0xffff, zp.getShort(VID_MODE));
            assertEquals(0x20000, zp.getInt(CMD_LINE_PTR));
            assertEquals("console=ttyS0 root=/dev/vda", cString(memory, 0x20000));
            assertEquals(AcpiTables.ADDRESS, zp.getLong(ACPI_RSDP_ADDR));
            long initrdAt = Integer.toUnsignedLong(zp.getInt(RAMDISK_IMAGE));
            assertEquals(initrd.length, zp.getInt(RAMDISK_SIZE));
            assertEquals(0, initrdAt % 4096, "page-aligned");
            assertTrue(
                    initrdAt + initrd.length <= 128 * MIB && initrdAt + initrd.length > 128 * MIB - 4096,
                    "at the top of RAM: " + initrdAt);
            assertArrayEquals(initrd, memory.read(initrdAt, initrd.length));
            assertEquals(
                    List.of(
                            new E820(0, 0x9fc00, 1),
                            new E820(0x9fc00, 0x100000 - 0x9fc00, 2),
                            new E820(0x100000, 127 * MIB, 1)),
                    e820(zp));
            // The protected-mode kernel at its load address:
            assertArrayEquals(s.payload, memory.read(0x1000000, s.payload.length));
        }
    }

    @Test
    void elfZeroPageIsAMinimalHeader() {
        byte[] image = elfAt(0x200000, 0x200000, new byte[] {(byte) 0xf4});
        try (var arena = Arena.ofConfined();
                var memory = GuestMemory.create(64 * MIB, arena)) {
            var entry = X86Boot.load(memory, KernelImage.parse(image, "k"), image, null, "quiet", 1, BootProtocol.AUTO);
            assertEquals(new X86Boot.EntryPoint(BootProtocol.LINUX64, 0x200000, false), entry);
            var zp = ByteBuffer.wrap(memory.read(X86Boot.BOOT_PARAMS, 4096)).order(ByteOrder.LITTLE_ENDIAN);
            assertEquals(0xaa55, Short.toUnsignedInt(zp.getShort(BOOT_FLAG)));
            assertEquals(0x53726448, zp.getInt(HEADER));
            assertEquals((byte) 0xff, zp.get(TYPE_OF_LOADER));
            assertEquals(0x20000, zp.getInt(CMD_LINE_PTR));
            assertEquals(0, zp.getInt(RAMDISK_IMAGE));
            assertEquals(3, zp.get(E820_ENTRIES));
            assertEquals((byte) 0xf4, memory.read(0x200000, 1)[0]);
        }
    }

    @Test
    void e820MapFollowsTheRamBlocksAroundThePciHole() {
        try (var arena = Arena.ofConfined()) {
            try (var m = GuestMemory.create(3 * GIB, arena)) {
                assertEquals(
                        List.of(
                                new X86Boot.E820Entry(0, 0x9fc00, 1),
                                new X86Boot.E820Entry(0x9fc00, 0x60400, 2),
                                new X86Boot.E820Entry(0x100000, 3 * GIB - 0x100000, 1)),
                        X86Boot.e820(m));
            }
            try (var m = GuestMemory.create(5 * GIB, arena)) {
                assertEquals(
                        List.of(
                                new X86Boot.E820Entry(0, 0x9fc00, 1),
                                new X86Boot.E820Entry(0x9fc00, 0x60400, 2),
                                new X86Boot.E820Entry(0x100000, 3 * GIB - 0x100000, 1),
                                new X86Boot.E820Entry(4 * GIB, 2 * GIB, 1)),
                        X86Boot.e820(m),
                        "RAM above 3 GiB moves above 4 GiB");
            }
            try (var m = GuestMemory.create(16 * MIB, arena)) {
                assertEquals(
                        new X86Boot.E820Entry(0x100000, 15 * MIB, 1),
                        X86Boot.e820(m).getLast());
            }
        }
    }

    @Test
    void pvhStartInfoCarriesTheMapCommandLineInitrdAndRsdp() {
        byte[] image = elfWithPvhNote(0x100000, 0x100040);
        byte[] initrd = new byte[8192];
        try (var arena = Arena.ofConfined();
                var memory = GuestMemory.create(5 * GIB, arena)) {
            var entry = X86Boot.load(
                    memory, KernelImage.parse(image, "k"), image, initrd, "console=ttyS0", 3, BootProtocol.AUTO);
            assertEquals(
                    new X86Boot.EntryPoint(BootProtocol.PVH, 0x100040, false),
                    entry,
                    "AUTO picks PVH when the note is there");
            var si = ByteBuffer.wrap(memory.read(X86Boot.PVH_START_INFO, 56)).order(ByteOrder.LITTLE_ENDIAN);
            assertEquals(0x336ec578, si.getInt(0), "magic");
            assertEquals(1, si.getInt(4), "version");
            assertEquals(1, si.getInt(12), "nr_modules");
            assertEquals(0x20000, si.getLong(24), "cmdline_paddr");
            assertEquals("console=ttyS0", cString(memory, si.getLong(24)));
            assertEquals(AcpiTables.ADDRESS, si.getLong(32), "rsdp_paddr");
            long memmap = si.getLong(40);
            int entries = si.getInt(48);
            var map = new ArrayList<X86Boot.E820Entry>();
            var mm = ByteBuffer.wrap(memory.read(memmap, entries * 24)).order(ByteOrder.LITTLE_ENDIAN);
            for (int i = 0; i < entries; i++)
                map.add(new X86Boot.E820Entry(mm.getLong(i * 24), mm.getLong(i * 24 + 8), mm.getInt(i * 24 + 16)));
            assertEquals(X86Boot.e820(memory), map, "the same map as the e820 one");
            var mod = ByteBuffer.wrap(memory.read(si.getLong(16), 32)).order(ByteOrder.LITTLE_ENDIAN);
            assertEquals(initrd.length, mod.getLong(8), "module size");
            assertTrue(mod.getLong(0) + initrd.length <= 3 * GIB, "initrd below the PCI hole");

            var linux64 =
                    X86Boot.load(memory, KernelImage.parse(image, "k"), image, null, "x", 1, BootProtocol.LINUX64);
            assertEquals(
                    new X86Boot.EntryPoint(BootProtocol.LINUX64, 0x100000, false),
                    linux64,
                    "the 64-bit entry on request");
        }
    }

    @Test
    void refusesWhatCannotBoot() {
        var s = SyntheticBzImage.standard();
        s.cmdlineSize = 10;
        byte[] bz = s.build();
        byte[] plainElf = elfAt(0x100000, 0x100000, new byte[16]);
        try (var arena = Arena.ofConfined();
                var memory = GuestMemory.create(20 * MIB, arena)) {
            var big = SyntheticBzImage.standard();
            big.initSize = 32 * MIB;
            byte[] bigImage = big.build();
            assertBoot(
                    "guest RAM is too small for this kernel",
                    () -> X86Boot.load(
                            memory, KernelImage.parse(bigImage, "k"), bigImage, null, "", 1, BootProtocol.AUTO));
            assertBoot(
                    "kernel command line is 11 bytes; this kernel accepts at most 10",
                    () -> X86Boot.load(
                            memory, KernelImage.parse(bz, "k"), bz, null, "console=tty", 1, BootProtocol.AUTO));
            assertBoot(
                    "a bzImage has no PVH entry",
                    () -> X86Boot.load(memory, KernelImage.parse(bz, "k"), bz, null, "", 1, BootProtocol.PVH));
            assertBoot(
                    "this ELF kernel has no PVH entry note",
                    () -> X86Boot.load(
                            memory, KernelImage.parse(plainElf, "k"), plainElf, null, "", 1, BootProtocol.PVH));
            assertBoot(
                    "kernel command line is 2048 bytes; this kernel accepts at most 2047",
                    () -> X86Boot.load(
                            memory,
                            KernelImage.parse(plainElf, "k"),
                            plainElf,
                            null,
                            "x".repeat(2048),
                            1,
                            BootProtocol.AUTO));
            assertBoot(
                    "initrd of " + 19 * MIB + " bytes does not fit",
                    () -> X86Boot.load(
                            memory,
                            KernelImage.parse(plainElf, "k"),
                            plainElf,
                            new byte[(int) (19 * MIB)],
                            "",
                            1,
                            BootProtocol.AUTO));
        }
    }

    private static void assertBoot(String start, Runnable r) {
        var e = assertThrows(BootException.class, r::run);
        assertTrue(e.getMessage().startsWith(start), e.getMessage());
    }

    static List<E820> e820(ByteBuffer zp) {
        var list = new ArrayList<E820>();
        for (int i = 0; i < Byte.toUnsignedInt(zp.get(E820_ENTRIES)); i++) {
            int at = E820_TABLE + 20 * i;
            list.add(new E820(zp.getLong(at), zp.getLong(at + 8), zp.getInt(at + 16)));
        }
        return list;
    }

    static String cString(GuestMemory memory, long address) {
        byte[] bytes = memory.read(address, 4096);
        int end = 0;
        while (bytes[end] != 0) end++;
        return new String(bytes, 0, end, StandardCharsets.US_ASCII);
    }

    /** An ELF executable with one PT_LOAD of {@code code} at {@code address} and the given entry. */
    static byte[] elfAt(long address, long entry, byte[] code) {
        return elf(address, entry, code, -1);
    }

    /** The same with a Xen note XEN_ELFNOTE_PHYS32_ENTRY (18) giving {@code pvhEntry}. */
    static byte[] elfWithPvhNote(long address, long pvhEntry) {
        return elf(address, address, new byte[0x100], pvhEntry);
    }

    private static byte[] elf(long address, long entry, byte[] code, long pvhEntry) {
        int phnum = pvhEntry >= 0 ? 2 : 1;
        int noteOff = 64 + 56 * phnum, noteSize = 12 + 4 + 4;
        int codeOff = 0x200;
        var b = ByteBuffer.allocate(codeOff + code.length).order(ByteOrder.LITTLE_ENDIAN);
        b.put(new byte[] {0x7f, 'E', 'L', 'F', 2, 1, 1, 0});
        b.position(16);
        b.putShort((short) 2)
                .putShort((short) 62)
                .putInt(1)
                .putLong(entry)
                .putLong(64)
                .putLong(0);
        b.putInt(0)
                .putShort((short) 64)
                .putShort((short) 56)
                .putShort((short) phnum)
                .putShort((short) 64)
                .putShort((short) 0)
                .putShort((short) 0);
        b.position(64);
        b.putInt(1)
                .putInt(7)
                .putLong(codeOff)
                .putLong(address)
                .putLong(address)
                .putLong(code.length)
                .putLong(code.length)
                .putLong(0x1000);
        if (pvhEntry >= 0) {
            b.putInt(4)
                    .putInt(4)
                    .putLong(noteOff)
                    .putLong(0)
                    .putLong(0)
                    .putLong(noteSize)
                    .putLong(noteSize)
                    .putLong(4);
            b.position(noteOff);
            b.putInt(4)
                    .putInt(4)
                    .putInt(18)
                    .put("Xen\0".getBytes(StandardCharsets.US_ASCII))
                    .putInt((int) pvhEntry);
        }
        b.position(codeOff);
        b.put(code);
        return b.array();
    }
}
