package dev.panamavmm.vmm.boot;

import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.kvm.bindings.BootConstants;
import dev.panamavmm.kvm.bindings.BootE820Entry;
import dev.panamavmm.kvm.bindings.BootParams;
import dev.panamavmm.kvm.bindings.KvmRegs;
import dev.panamavmm.kvm.bindings.KvmSegment;
import dev.panamavmm.kvm.bindings.KvmSregs;
import dev.panamavmm.kvm.bindings.SetupHeader;
import dev.panamavmm.vmm.memory.GuestMemory;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import static java.lang.foreign.ValueLayout.JAVA_LONG;

/**
 * Puts a guest at the 64-bit entry of the Linux x86 boot protocol: the kernel image in RAM, a
 * GDT with {@code __BOOT_CS} (0x10) and {@code __BOOT_DS} (0x18), identity-mapped page tables
 * for the first 4 GiB, the "zero page" ({@code boot_params}) with the e820 map and the command
 * line, and a vCPU in long mode at the entry with RSI pointing at the zero page.
 *
 * <p>Guest-physical layout below 1 MiB (all in RAM the e820 map declares usable, as Firecracker
 * does: the kernel reserves what it was handed before using low memory):
 * GDT 0x500, zero page 0x7000, boot stack top 0x8ff0, PML4 0x9000, PDPT 0xa000, PDs 0xb000-0xefff,
 * command line 0x20000. Kernels load at or above 1 MiB.
 */
public final class X86Boot {
    private X86Boot() {}

    public static final long GDT = 0x500;
    public static final long BOOT_PARAMS = 0x7000;
    public static final long BOOT_STACK = 0x8ff0;
    public static final long PML4 = 0x9000;
    public static final long PDPT = 0xa000;
    public static final long PD = 0xb000;
    public static final long CMDLINE = 0x20000;
    /** Longest command line accepted (Linux's COMMAND_LINE_SIZE on x86 is 2048). */
    public static final int CMDLINE_MAX = 2047;
    public static final long KERNEL_MIN = 0x100000;
    /** Start of the legacy EBDA/VGA/BIOS area, reserved in the e820 map up to 1 MiB. */
    public static final long EBDA_START = 0x9fc00;

    public static final int CODE_SELECTOR = 0x10;
    public static final int DATA_SELECTOR = 0x18;
    public static final int TSS_SELECTOR = 0x20;

    static final long CR0_PE = 1, CR0_MP = 1 << 1, CR0_ET = 1 << 4, CR0_NE = 1 << 5, CR0_WP = 1 << 16, CR0_PG = 1L << 31;
    static final long CR4_PAE = 1 << 5;
    static final long EFER_LME = 1 << 8, EFER_LMA = 1 << 10;

    /** An entry of the e820 map. */
    public record E820Entry(long address, long size, int type) {}

    /** The e820 map for this memory: low RAM up to the EBDA, reserved up to 1 MiB, then each RAM block. */
    public static List<E820Entry> e820(GuestMemory memory) {
        var map = new ArrayList<E820Entry>();
        map.add(new E820Entry(0, EBDA_START, BootConstants.E820_RAM));
        map.add(new E820Entry(EBDA_START, KERNEL_MIN - EBDA_START, BootConstants.E820_RESERVED));
        for (var block : memory.blocks()) {
            long start = Math.max(block.guestAddress(), KERNEL_MIN);
            if (block.guestEnd() > start) map.add(new E820Entry(start, block.guestEnd() - start, BootConstants.E820_RAM));
        }
        return map;
    }

    /** Copies the ELF segments into guest RAM; each must lie in RAM at or above 1 MiB. */
    public static void loadElf(GuestMemory memory, ElfImage elf, byte[] image) {
        for (var s : elf.segments()) {
            if (s.physicalAddress() < KERNEL_MIN) {
                throw new BootException(String.format("kernel segment at 0x%x is below 1 MiB", s.physicalAddress()));
            }
            if (memory.blockAt(s.physicalAddress(), s.memorySize()) == null) {
                throw new BootException(String.format("kernel segment 0x%x-0x%x does not fit in guest RAM (%d MiB)",
                        s.physicalAddress(), s.physicalAddress() + s.memorySize(), memory.size() >> 20));
            }
            var dst = memory.slice(s.physicalAddress(), s.memorySize());
            MemorySegment.copy(MemorySegment.ofArray(image), s.fileOffset(), dst, 0, s.fileSize());
            dst.asSlice(s.fileSize()).fill((byte) 0);
        }
    }

    /** Writes the GDT, the page tables, the command line and the zero page. */
    public static void writeBootData(GuestMemory memory, String cmdline) {
        byte[] cmd = cmdline.getBytes(StandardCharsets.US_ASCII);
        if (cmd.length > CMDLINE_MAX) {
            throw new BootException("kernel command line is " + cmd.length + " bytes, the limit is " + CMDLINE_MAX);
        }
        writeGdt(memory);
        writePageTables(memory);
        var line = memory.slice(CMDLINE, cmd.length + 1);
        MemorySegment.copy(MemorySegment.ofArray(cmd), 0, line, 0, cmd.length);
        line.set(java.lang.foreign.ValueLayout.JAVA_BYTE, cmd.length, (byte) 0);

        var zeroPage = memory.slice(BOOT_PARAMS, BootParams.BYTE_SIZE);
        zeroPage.fill((byte) 0);
        var hdr = BootParams.hdr(zeroPage);
        SetupHeader.bootFlag(hdr, 0xaa55);
        SetupHeader.header(hdr, 0x53726448); // "HdrS"
        SetupHeader.typeOfLoader(hdr, 0xff); // undefined loader
        SetupHeader.cmdLinePtr(hdr, (int) CMDLINE);
        SetupHeader.cmdlineSize(hdr, cmd.length);
        var map = e820(memory);
        if (map.size() > BootParams.E820_TABLE_COUNT) throw new BootException("too many e820 entries");
        BootParams.e820Entries(zeroPage, map.size());
        for (int i = 0; i < map.size(); i++) {
            var e = BootParams.e820Table(zeroPage, i);
            BootE820Entry.addr(e, map.get(i).address());
            BootE820Entry.size(e, map.get(i).size());
            BootE820Entry.type(e, map.get(i).type());
        }
    }

    /**
     * Places the initrd at the top of low RAM (page-aligned, above the kernel) and records it in
     * the zero page; returns its guest address. Call after {@link #writeBootData}.
     */
    public static long loadInitrd(GuestMemory memory, byte[] initrd, long kernelEnd) {
        var low = memory.blocks().getFirst();
        long top = Math.min(low.guestEnd(), INITRD_ADDRESS_MAX + 1);
        long address = (top - initrd.length) & ~0xfffL;
        if (initrd.length > low.size() || address < Math.max(kernelEnd, KERNEL_MIN)) {
            throw new BootException("initrd of " + initrd.length + " bytes does not fit in guest RAM below "
                    + (top >> 20) + " MiB above the kernel");
        }
        memory.write(address, initrd);
        var hdr = BootParams.hdr(memory.slice(BOOT_PARAMS, BootParams.BYTE_SIZE));
        SetupHeader.ramdiskImage(hdr, (int) address);
        SetupHeader.ramdiskSize(hdr, initrd.length);
        return address;
    }

    /** Highest initrd byte the boot protocol lets older kernels reach (setup_header.initrd_addr_max default). */
    static final long INITRD_ADDRESS_MAX = 0x37ffffffL;

    /** null, unused, 64-bit code (0x10), data (0x18), TSS (0x20): flat, as the boot protocol asks. */
    static final long[] GDT_ENTRIES = {
            0,
            0,
            0x00af9b000000ffffL, // code: present, DPL0, execute/read, accessed, L=1, G=1
            0x00cf93000000ffffL, // data: present, DPL0, read/write, accessed, D/B=1, G=1
            0x00808b0000000fffL, // TSS: present, busy 64-bit TSS (needed by VMX entry checks)
    };

    private static void writeGdt(GuestMemory memory) {
        var gdt = memory.slice(GDT, GDT_ENTRIES.length * 8L);
        for (int i = 0; i < GDT_ENTRIES.length; i++) gdt.set(JAVA_LONG, 8L * i, GDT_ENTRIES[i]);
    }

    /** PML4[0] -> PDPT; PDPT[0..3] -> four PDs of 2 MiB pages: the first 4 GiB identity-mapped. */
    private static void writePageTables(GuestMemory memory) {
        var pml4 = memory.slice(PML4, 4096);
        var pdpt = memory.slice(PDPT, 4096);
        pml4.fill((byte) 0);
        pdpt.fill((byte) 0);
        pml4.set(JAVA_LONG, 0, PDPT | 0x3); // present, writable
        for (int i = 0; i < 4; i++) {
            long pdAddress = PD + i * 4096L;
            pdpt.set(JAVA_LONG, 8L * i, pdAddress | 0x3);
            var pd = memory.slice(pdAddress, 4096);
            for (int j = 0; j < 512; j++) {
                long page = ((long) i << 30) | ((long) j << 21);
                pd.set(JAVA_LONG, 8L * j, page | 0x83); // present, writable, 2 MiB page
            }
        }
    }

    /** Registers and segments for a vCPU entering the kernel at {@code entry}. */
    public static void setEntryState(VcpuFd vcpu, long entry, boolean bootCpu, Arena arena) {
        var sregs = arena.allocate(KvmSregs.LAYOUT);
        vcpu.getSregs(sregs);
        segment(KvmSregs.cs(sregs), CODE_SELECTOR, 11, true);
        for (var data : List.of(KvmSregs.ds(sregs), KvmSregs.es(sregs), KvmSregs.fs(sregs), KvmSregs.gs(sregs), KvmSregs.ss(sregs))) {
            segment(data, DATA_SELECTOR, 3, false);
        }
        var tr = KvmSregs.tr(sregs);
        KvmSegment.base(tr, 0);
        KvmSegment.limit(tr, 0xfff);
        KvmSegment.selector(tr, TSS_SELECTOR);
        KvmSegment.type(tr, 11);
        KvmSegment.present(tr, 1);
        KvmSegment.s(tr, 0);
        KvmSegment.g(tr, 0);
        KvmSegment.dpl(tr, 0);
        KvmSegment.l(tr, 0);
        KvmSegment.db(tr, 0);
        var gdt = KvmSregs.gdt(sregs);
        dev.panamavmm.kvm.bindings.KvmDtable.base(gdt, GDT);
        dev.panamavmm.kvm.bindings.KvmDtable.limit(gdt, GDT_ENTRIES.length * 8 - 1);
        KvmSregs.cr0(sregs, CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG);
        KvmSregs.cr3(sregs, PML4);
        KvmSregs.cr4(sregs, CR4_PAE);
        KvmSregs.efer(sregs, EFER_LME | EFER_LMA);
        vcpu.setSregs(sregs);

        var regs = arena.allocate(KvmRegs.LAYOUT);
        KvmRegs.rip(regs, entry);
        KvmRegs.rsi(regs, BOOT_PARAMS);
        KvmRegs.rflags(regs, 0x2);
        if (bootCpu) {
            KvmRegs.rsp(regs, BOOT_STACK);
            KvmRegs.rbp(regs, BOOT_STACK);
        }
        vcpu.setRegs(regs);
    }

    private static void segment(MemorySegment s, int selector, int type, boolean code) {
        KvmSegment.base(s, 0);
        KvmSegment.limit(s, 0xffffffff);
        KvmSegment.selector(s, selector);
        KvmSegment.type(s, type);
        KvmSegment.present(s, 1);
        KvmSegment.dpl(s, 0);
        KvmSegment.db(s, code ? 0 : 1);
        KvmSegment.s(s, 1);
        KvmSegment.l(s, code ? 1 : 0);
        KvmSegment.g(s, 1);
        KvmSegment.avl(s, 0);
        KvmSegment.unusable(s, 0);
    }
}
