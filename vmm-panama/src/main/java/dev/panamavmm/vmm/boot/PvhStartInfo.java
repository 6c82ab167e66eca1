package dev.panamavmm.vmm.boot;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;

/**
 * The PVH boot ABI's {@code hvm_start_info} (Xen's {@code arch-x86/hvm/start_info.h}, version 1):
 * what a kernel entered at its {@code XEN_ELFNOTE_PHYS32_ENTRY} finds at the address in EBX: the
 * command line, the modules (the initrd) and the memory map, all by physical address.
 *
 * <p>Laid out as bytes at fixed offsets, so that tests can check it field by field; the kernel
 * does not read a zero page on this path, so the memory map is given here instead of as e820
 * entries in {@code boot_params}.
 */
public final class PvhStartInfo {
    private PvhStartInfo() {}

    public static final int MAGIC = 0x336ec578; // "xEn3" with the 0x80 bit of the "E" set
    public static final int VERSION = 1;
    // struct hvm_start_info
    static final int OFF_MAGIC = 0,
            OFF_VERSION = 4,
            OFF_FLAGS = 8,
            OFF_NR_MODULES = 12,
            OFF_MODLIST = 16,
            OFF_CMDLINE = 24,
            OFF_RSDP = 32,
            OFF_MEMMAP = 40,
            OFF_MEMMAP_ENTRIES = 48;
    public static final int SIZE = 56;
    /** struct hvm_memmap_table_entry: addr, size, type (e820 types), reserved. */
    public static final int MEMMAP_ENTRY_SIZE = 24;
    /** struct hvm_modlist_entry: paddr, size, cmdline_paddr, reserved. */
    public static final int MODULE_SIZE = 32;

    /** One module (the initrd): its guest address and size. */
    public record Module(long address, long size) {}

    /**
     * The start info at {@code address} followed by the memory map and then the module list, as
     * one block of bytes to copy there.
     */
    public static byte[] build(
            long address,
            long cmdlineAddress,
            long rsdpAddress,
            List<X86Boot.E820Entry> memoryMap,
            List<Module> modules) {
        int memmapAt = SIZE;
        int modulesAt = memmapAt + memoryMap.size() * MEMMAP_ENTRY_SIZE;
        var bytes = new byte[modulesAt + modules.size() * MODULE_SIZE];
        var b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(OFF_MAGIC, MAGIC);
        b.putInt(OFF_VERSION, VERSION);
        b.putInt(OFF_FLAGS, 0);
        b.putInt(OFF_NR_MODULES, modules.size());
        b.putLong(OFF_MODLIST, modules.isEmpty() ? 0 : address + modulesAt);
        b.putLong(OFF_CMDLINE, cmdlineAddress);
        b.putLong(OFF_RSDP, rsdpAddress);
        b.putLong(OFF_MEMMAP, address + memmapAt);
        b.putInt(OFF_MEMMAP_ENTRIES, memoryMap.size());
        for (int i = 0; i < memoryMap.size(); i++) {
            int at = memmapAt + i * MEMMAP_ENTRY_SIZE;
            b.putLong(at, memoryMap.get(i).address());
            b.putLong(at + 8, memoryMap.get(i).size());
            b.putInt(at + 16, memoryMap.get(i).type());
        }
        for (int i = 0; i < modules.size(); i++) {
            int at = modulesAt + i * MODULE_SIZE;
            b.putLong(at, modules.get(i).address());
            b.putLong(at + 8, modules.get(i).size());
        }
        return bytes;
    }
}
