package dev.panamavmm.vmm.boot;

import static java.lang.foreign.ValueLayout.JAVA_LONG;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.kvm.bindings.BootConstants;
import dev.panamavmm.kvm.bindings.BootE820Entry;
import dev.panamavmm.kvm.bindings.BootParams;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmDtable;
import dev.panamavmm.kvm.bindings.KvmMsrEntry;
import dev.panamavmm.kvm.bindings.KvmMsrs;
import dev.panamavmm.kvm.bindings.KvmRegs;
import dev.panamavmm.kvm.bindings.KvmSegment;
import dev.panamavmm.kvm.bindings.KvmSregs;
import dev.panamavmm.kvm.bindings.SetupHeader;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * Loads a kernel and starts the boot vCPU at one of its entries:
 * <ul>
 *   <li>the Linux x86 boot protocol's 64-bit entry, for an ELF {@code vmlinux} (its {@code e_entry})
 *   and for a bzImage (load address + 0x200): a GDT with {@code __BOOT_CS} (0x10) and
 *   {@code __BOOT_DS} (0x18), identity-mapped page tables for the first 4 GiB, the zero page
 *   ({@code boot_params}: a bzImage's own setup header, the e820 map, command line, initrd) and a
 *   vCPU in long mode with RSI pointing at the zero page;</li>
 *   <li>the PVH entry of an ELF {@code vmlinux}: 32-bit protected mode without paging, EBX pointing
 *   at an {@code hvm_start_info} with the same memory map, command line and initrd.</li>
 * </ul>
 * Either way ACPI tables (RSDP, XSDT, FADT, DSDT, MADT: {@link AcpiTables}) and an MP table
 * ({@link MpTable}, for kernels built without ACPI) describe the vCPUs and the I/O APIC.
 *
 * <p>Guest-physical layout below 1 MiB (all in RAM the e820 map declares usable, as Firecracker
 * does: the kernel reserves what it was handed before using low memory, except the MP table's
 * last KiB, which the map reserves): GDT 0x500, PVH start info 0x6000, zero page 0x7000, boot
 * stack top 0x8ff0, PML4 0x9000, PDPT 0xa000, PDs 0xb000-0xefff, command line 0x20000, MP table
 * 0x9fc00, ACPI tables 0xe0000 (both in the reserved range). Kernels load at or above 1 MiB.
 */
public final class X86Boot {
    private X86Boot() {}

    public static final long GDT = 0x500;
    public static final long PVH_START_INFO = 0x6000;
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
    /** A flat 32-bit code segment for the PVH entry (after the 16-byte 64-bit TSS descriptor). */
    public static final int CODE32_SELECTOR = 0x30;

    static final long CR0_PE = 1,
            CR0_MP = 1 << 1,
            CR0_ET = 1 << 4,
            CR0_NE = 1 << 5,
            CR0_WP = 1 << 16,
            CR0_PG = 1L << 31;
    static final long CR4_PAE = 1 << 5;
    static final long EFER_LME = 1 << 8, EFER_LMA = 1 << 10;
    /** Loader type 0xff: "undefined", the boot protocol's value for a loader without an assigned ID. */
    static final int LOADER_UNDEFINED = 0xff;

    /** An entry of the e820 map. */
    public record E820Entry(long address, long size, int type) {}

    /** Where and how the boot vCPU starts, and whether the other vCPUs start there too (the test guest's note). */
    public record EntryPoint(BootProtocol protocol, long address, boolean startAllCpus) {}

    /**
     * Puts {@code kernel} (parsed from {@code image}), the initrd (or null), the command line and
     * the boot tables into guest memory, and returns where to start. Checks everything a user can
     * get wrong first: the command line's length, the protocol, whether kernel and initrd fit.
     */
    public static EntryPoint load(
            GuestMemory memory,
            KernelImage kernel,
            byte[] image,
            byte[] initrd,
            String cmdline,
            int cpus,
            BootProtocol protocol) {
        return load(memory, kernel, image, initrd, cmdline, cpus, protocol, List.of());
    }

    /** As above, with {@code mmio} (the virtio-mmio devices) described in the ACPI tables too. */
    public static EntryPoint load(
            GuestMemory memory,
            KernelImage kernel,
            byte[] image,
            byte[] initrd,
            String cmdline,
            int cpus,
            BootProtocol protocol,
            List<AcpiTables.MmioDevice> mmio) {
        byte[] cmd = cmdline.getBytes(StandardCharsets.US_ASCII);
        if (cmd.length > kernel.commandLineMax()) {
            throw new BootException("kernel command line is " + cmd.length + " bytes; this kernel accepts at most "
                    + kernel.commandLineMax());
        }
        EntryPoint entry;
        long kernelEnd;
        long initrdMax;
        switch (kernel) {
            case ElfImage elf -> {
                boolean pvh = switch (protocol) {
                    case AUTO -> elf.hasPvhEntry();
                    case PVH -> {
                        if (!elf.hasPvhEntry())
                            throw new BootException(
                                    "this ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot it with --boot linux64");
                        yield true;
                    }
                    case LINUX64 -> false;
                };
                loadElf(memory, elf, image);
                entry = pvh
                        ? new EntryPoint(BootProtocol.PVH, elf.pvhEntry(), false)
                        : new EntryPoint(BootProtocol.LINUX64, elf.entry(), elf.startAllCpus());
                kernelEnd = elf.highestAddress();
                initrdMax = INITRD_ADDRESS_MAX;
            }
            case BzImage bz -> {
                if (protocol == BootProtocol.PVH)
                    throw new BootException(
                            "a bzImage has no PVH entry; boot its ELF vmlinux for PVH, or use --boot linux64");
                loadBzImage(memory, bz, image);
                entry = new EntryPoint(BootProtocol.LINUX64, bz.entry64(), false);
                kernelEnd = bz.footprintEnd();
                initrdMax = Math.min(bz.initrdAddressMax(), INITRD_ADDRESS_MAX_64);
            }
        }
        long initrdAddress = initrd != null ? placeInitrd(memory, initrd, kernelEnd, initrdMax) : 0;

        writeGdt(memory);
        writePageTables(memory);
        var line = memory.slice(CMDLINE, cmd.length + 1);
        MemorySegment.copy(MemorySegment.ofArray(cmd), 0, line, 0, cmd.length);
        line.set(ValueLayout.JAVA_BYTE, cmd.length, (byte) 0);
        memory.write(MpTable.ADDRESS, MpTable.build(cpus));
        memory.write(AcpiTables.ADDRESS, AcpiTables.build(cpus, mmio));

        var map = e820(memory);
        if (entry.protocol() == BootProtocol.PVH) {
            var modules = initrd != null
                    ? List.of(new PvhStartInfo.Module(initrdAddress, initrd.length))
                    : List.<PvhStartInfo.Module>of();
            memory.write(PVH_START_INFO, PvhStartInfo.build(PVH_START_INFO, CMDLINE, AcpiTables.ADDRESS, map, modules));
        } else {
            var zeroPage = memory.slice(BOOT_PARAMS, BootParams.BYTE_SIZE);
            writeZeroPage(zeroPage, kernel instanceof BzImage bz ? bz.setupHeader() : null, cmd.length, map);
            if (initrd != null) {
                var hdr = BootParams.hdr(zeroPage);
                SetupHeader.ramdiskImage(hdr, (int) initrdAddress);
                SetupHeader.ramdiskSize(hdr, initrd.length);
            }
        }
        return entry;
    }

    /**
     * Fills the zero page: the kernel's own setup header when it has one (a bzImage), otherwise a
     * minimal one, then what the boot loader owns: loader type, command line and the e820 map.
     */
    static void writeZeroPage(MemorySegment zeroPage, byte[] kernelHeader, int cmdlineLength, List<E820Entry> map) {
        zeroPage.fill((byte) 0);
        var hdr = BootParams.hdr(zeroPage);
        if (kernelHeader != null) {
            MemorySegment.copy(
                    MemorySegment.ofArray(kernelHeader),
                    0,
                    hdr,
                    0,
                    Math.min(kernelHeader.length, SetupHeader.BYTE_SIZE));
        } else {
            SetupHeader.bootFlag(hdr, 0xaa55);
            SetupHeader.header(hdr, 0x53726448); // "HdrS"
            SetupHeader.cmdlineSize(hdr, CMDLINE_MAX);
        }
        SetupHeader.typeOfLoader(hdr, LOADER_UNDEFINED);
        SetupHeader.cmdLinePtr(hdr, (int) CMDLINE);
        SetupHeader.vidMode(hdr, 0xffff); // "normal": no video mode change was asked for
        BootParams.acpiRsdpAddr(
                zeroPage, AcpiTables.ADDRESS); // read by kernels of protocol 2.14+; older ones scan and find it too
        if (map.size() > BootParams.E820_TABLE_COUNT) throw new BootException("too many e820 entries");
        BootParams.e820Entries(zeroPage, map.size());
        for (int i = 0; i < map.size(); i++) {
            var e = BootParams.e820Table(zeroPage, i);
            BootE820Entry.addr(e, map.get(i).address());
            BootE820Entry.size(e, map.get(i).size());
            BootE820Entry.type(e, map.get(i).type());
        }
    }

    /** The e820 map for this memory: low RAM up to the EBDA, reserved up to 1 MiB, then each RAM block. */
    public static List<E820Entry> e820(GuestMemory memory) {
        var map = new ArrayList<E820Entry>();
        map.add(new E820Entry(0, EBDA_START, BootConstants.E820_RAM));
        map.add(new E820Entry(EBDA_START, KERNEL_MIN - EBDA_START, BootConstants.E820_RESERVED));
        for (var block : memory.blocks()) {
            long start = Math.max(block.guestAddress(), KERNEL_MIN);
            if (block.guestEnd() > start)
                map.add(new E820Entry(start, block.guestEnd() - start, BootConstants.E820_RAM));
        }
        return map;
    }

    /** Copies a bzImage's protected-mode kernel to its load address; everything it needs until it relocates must be RAM. */
    static void loadBzImage(GuestMemory memory, BzImage bz, byte[] image) {
        var low = memory.blocks().getFirst();
        if (bz.footprintEnd() > low.guestEnd()) {
            throw new BootException(String.format(
                    "guest RAM is too small for this kernel: it needs 0x%x-0x%x (init_size %d MiB from its load address), "
                            + "RAM below the PCI hole ends at %d MiB",
                    bz.loadAddress(), bz.footprintEnd(), bz.initSize() >> 20, low.guestEnd() >> 20));
        }
        var dst = memory.slice(bz.loadAddress(), bz.kernelSize());
        MemorySegment.copy(MemorySegment.ofArray(image), bz.kernelOffset(), dst, 0, bz.kernelSize());
    }

    /** Copies the ELF segments into guest RAM; each must lie in RAM at or above 1 MiB. */
    public static void loadElf(GuestMemory memory, ElfImage elf, byte[] image) {
        for (var s : elf.segments()) {
            if (s.physicalAddress() < KERNEL_MIN) {
                throw new BootException(String.format("kernel segment at 0x%x is below 1 MiB", s.physicalAddress()));
            }
            if (memory.blockAt(s.physicalAddress(), s.memorySize()) == null) {
                throw new BootException(String.format(
                        "kernel segment 0x%x-0x%x does not fit in guest RAM (%d MiB)",
                        s.physicalAddress(), s.physicalAddress() + s.memorySize(), memory.size() >> 20));
            }
            var dst = memory.slice(s.physicalAddress(), s.memorySize());
            MemorySegment.copy(MemorySegment.ofArray(image), s.fileOffset(), dst, 0, s.fileSize());
            dst.asSlice(s.fileSize()).fill((byte) 0);
        }
    }

    /**
     * Where the initrd goes: as high in low RAM as {@code maxAddress} allows, page-aligned, above
     * the kernel (as QEMU and Firecracker place it); copies it there and returns the address.
     */
    static long placeInitrd(GuestMemory memory, byte[] initrd, long kernelEnd, long maxAddress) {
        var low = memory.blocks().getFirst();
        long top = Math.min(low.guestEnd(), maxAddress + 1);
        long address = (top - initrd.length) & ~0xfffL;
        if (initrd.length > low.size() || address < Math.max(kernelEnd, KERNEL_MIN)) {
            throw new BootException(
                    "initrd of " + initrd.length + " bytes does not fit in guest RAM between the kernel (ends at "
                            + String.format("0x%x", kernelEnd) + ") and " + (top >> 20) + " MiB");
        }
        memory.write(address, initrd);
        return address;
    }

    /** Highest initrd byte the boot protocol lets older kernels reach (setup_header.initrd_addr_max default). */
    static final long INITRD_ADDRESS_MAX = 0x37ffffffL;
    /** The most a 64-bit kernel's initrd_addr_max can usefully say: ramdisk_image is 32 bits in the zero page. */
    static final long INITRD_ADDRESS_MAX_64 = 0xffffffffL;

    /** null, unused, 64-bit code (0x10), data (0x18), TSS (0x20): flat, as the boot protocol asks. */
    static final long[] GDT_ENTRIES = {
        0,
        0,
        0x00af9b000000ffffL, // code: present, DPL0, execute/read, accessed, L=1, G=1
        0x00cf93000000ffffL, // data: present, DPL0, read/write, accessed, D/B=1, G=1
        0x00808b0000000fffL, // TSS: present, busy 64-bit TSS (needed by VMX entry checks)
        0, // the 64-bit TSS descriptor's upper half
        0x00cf9b000000ffffL, // 32-bit code (0x30) for the PVH entry: present, DPL0, execute/read, accessed, D/B=1, G=1
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

    /** Registers and segments for the boot vCPU (or, for the test guest, every vCPU) entering at {@code entry}. */
    public static void setEntryState(VcpuFd vcpu, EntryPoint entry, boolean bootCpu, Arena arena) {
        var sregs = arena.allocate(KvmSregs.LAYOUT);
        vcpu.getSregs(sregs);
        boolean pvh = entry.protocol() == BootProtocol.PVH;
        // PVH: flat 32-bit code and data, an active 32-bit TSS, CR0 = PE|ET, no paging, EFER = 0.
        if (pvh) segment(KvmSregs.cs(sregs), CODE32_SELECTOR, 11, false);
        else segment(KvmSregs.cs(sregs), CODE_SELECTOR, 11, true);
        for (var data : List.of(
                KvmSregs.ds(sregs), KvmSregs.es(sregs), KvmSregs.fs(sregs), KvmSregs.gs(sregs), KvmSregs.ss(sregs))) {
            segment(data, DATA_SELECTOR, 3, false);
        }
        var tr = KvmSregs.tr(sregs);
        KvmSegment.base(tr, 0);
        KvmSegment.limit(tr, pvh ? 0x67 : 0xfff);
        KvmSegment.selector(tr, TSS_SELECTOR);
        KvmSegment.type(tr, 11); // busy TSS (32- or 64-bit by mode)
        KvmSegment.present(tr, 1);
        KvmSegment.s(tr, 0);
        KvmSegment.g(tr, 0);
        KvmSegment.dpl(tr, 0);
        KvmSegment.l(tr, 0);
        KvmSegment.db(tr, 0);
        var gdt = KvmSregs.gdt(sregs);
        KvmDtable.base(gdt, GDT);
        KvmDtable.limit(gdt, GDT_ENTRIES.length * 8 - 1);
        if (pvh) {
            KvmSregs.cr0(sregs, CR0_PE | CR0_ET);
            KvmSregs.cr3(sregs, 0);
            KvmSregs.cr4(sregs, 0);
            KvmSregs.efer(sregs, 0);
        } else {
            KvmSregs.cr0(sregs, CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG);
            KvmSregs.cr3(sregs, PML4);
            KvmSregs.cr4(sregs, CR4_PAE);
            KvmSregs.efer(sregs, EFER_LME | EFER_LMA);
        }
        vcpu.setSregs(sregs);

        var regs = arena.allocate(KvmRegs.LAYOUT);
        KvmRegs.rip(regs, entry.address());
        if (pvh) KvmRegs.rbx(regs, PVH_START_INFO);
        else KvmRegs.rsi(regs, BOOT_PARAMS);
        KvmRegs.rflags(regs, 0x2);
        if (bootCpu && !pvh) {
            KvmRegs.rsp(regs, BOOT_STACK);
            KvmRegs.rbp(regs, BOOT_STACK);
        }
        vcpu.setRegs(regs);
    }

    /** IA32_MISC_ENABLE and IA32_MTRR_DEF_TYPE: the MSRs a firmware would have set before handing over. */
    static final int MSR_IA32_MISC_ENABLE = 0x1a0, MSR_MTRR_DEF_TYPE = 0x2ff;
    /** Fast string operations on (bit 0), as every BIOS leaves it. */
    static final long MISC_ENABLE_FAST_STRING = 1;
    /** MTRRs enabled (bit 11) with write-back (6) as the default memory type: RAM is cacheable. */
    static final long MTRR_DEF_TYPE_WB_ENABLED = (1 << 11) | 6;

    /**
     * Sets the MSRs a firmware leaves behind on every vCPU (the APs included: Linux expects them
     * to match the boot CPU's). Fails with the MSR's index if KVM refuses one.
     */
    public static void setBootMsrs(VcpuFd vcpu, Arena arena) {
        int[] index = {MSR_IA32_MISC_ENABLE, MSR_MTRR_DEF_TYPE};
        long[] value = {MISC_ENABLE_FAST_STRING, MTRR_DEF_TYPE_WB_ENABLED};
        var msrs =
                arena.allocate(KvmMsrs.ENTRIES + (long) index.length * KvmMsrEntry.BYTE_SIZE, KvmMsrs.BYTE_ALIGNMENT);
        KvmMsrs.nmsrs(msrs, index.length);
        for (int i = 0; i < index.length; i++) {
            KvmMsrEntry.index(KvmMsrs.entries(msrs, i), index[i]);
            KvmMsrEntry.data(KvmMsrs.entries(msrs, i), value[i]);
        }
        int set = vcpu.ioctl(Ioctls.KVM_SET_MSRS, msrs);
        if (set != index.length) {
            throw new KvmException("KVM_SET_MSRS", String.format("KVM refused MSR 0x%x at boot", index[set]));
        }
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
