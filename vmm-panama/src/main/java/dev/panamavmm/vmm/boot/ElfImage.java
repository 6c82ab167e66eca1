package dev.panamavmm.vmm.boot;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * An ELF64 x86-64 executable as the VMM loads it: its entry point, the segments to copy into
 * guest-physical memory, and whether it carries the Panama VMM note that asks the VMM to start
 * every vCPU at the entry (the project's test guest does; Linux does not and starts its APs
 * itself with INIT/SIPI), and the PVH entry point a Linux {@code vmlinux} announces in a Xen
 * note ({@code XEN_ELFNOTE_PHYS32_ENTRY}). Every field read from the file is bounds-checked: a
 * truncated or hostile image is a {@link BootException}, never an exception from deep inside.
 *
 * @param entry    {@code e_entry}: the 64-bit entry (Linux: {@code startup_64}, physical)
 * @param pvhEntry the 32-bit PVH entry, or {@link #NO_PVH_ENTRY}
 */
public record ElfImage(long entry, List<Segment> segments, boolean startAllCpus, long pvhEntry) implements KernelImage {

    /** A PT_LOAD segment: {@code fileSize} bytes at {@code fileOffset} go to {@code physicalAddress}, then zeros up to {@code memorySize}. */
    public record Segment(long physicalAddress, long fileOffset, long fileSize, long memorySize) {}

    static final int PT_LOAD = 1;
    static final int PT_NOTE = 4;
    static final int EM_X86_64 = 62;
    /** Note name and type of the "start all vCPUs at the entry" request. */
    public static final String PANAMA_NOTE_NAME = "PanamaVMM";

    public static final int PANAMA_NOTE_START_ALL_CPUS = 1;
    /** Note name and type of the PVH entry (xen/include/public/elfnote.h: XEN_ELFNOTE_PHYS32_ENTRY). */
    static final String XEN_NOTE_NAME = "Xen";

    static final int XEN_ELFNOTE_PHYS32_ENTRY = 18;
    public static final long NO_PVH_ENTRY = -1;

    public static boolean isElf(byte[] image) {
        return image.length >= 4 && image[0] == 0x7f && image[1] == 'E' && image[2] == 'L' && image[3] == 'F';
    }

    public static ElfImage parse(byte[] image) {
        if (!isElf(image)) throw new BootException("not an ELF file");
        if (image.length < 64) throw new BootException("truncated ELF header");
        var b = ByteBuffer.wrap(image).order(ByteOrder.LITTLE_ENDIAN);
        if (image[4] != 2) throw new BootException("not a 64-bit ELF file");
        if (image[5] != 1) throw new BootException("not a little-endian ELF file");
        if (Short.toUnsignedInt(b.getShort(18)) != EM_X86_64) throw new BootException("not an x86-64 ELF file");
        int type = Short.toUnsignedInt(b.getShort(16));
        if (type != 2 && type != 3) throw new BootException("not an executable ELF file (type " + type + ")");
        long entry = b.getLong(24);
        long phoff = b.getLong(32);
        int phentsize = Short.toUnsignedInt(b.getShort(54));
        int phnum = Short.toUnsignedInt(b.getShort(56));
        if (phnum == 0) throw new BootException("ELF file has no program headers");
        if (phentsize < 56) throw new BootException("ELF program header size " + phentsize + " is too small");
        if (phoff < 0 || phoff + (long) phnum * phentsize > image.length)
            throw new BootException("truncated ELF program headers");

        var segments = new ArrayList<Segment>();
        var notes = new Notes();
        for (int i = 0; i < phnum; i++) {
            int at = (int) (phoff + (long) i * phentsize);
            int ptype = b.getInt(at);
            long offset = b.getLong(at + 8);
            long paddr = b.getLong(at + 24);
            long filesz = b.getLong(at + 32);
            long memsz = b.getLong(at + 40);
            if (ptype != PT_LOAD && ptype != PT_NOTE) continue;
            if (offset < 0 || filesz < 0 || offset + filesz > image.length || offset + filesz < offset) {
                throw new BootException("ELF segment " + i + " lies outside the file (truncated image?)");
            }
            if (ptype == PT_LOAD) {
                if (memsz < filesz)
                    throw new BootException("ELF segment " + i + " is smaller in memory than in the file");
                if (paddr < 0 || paddr + memsz < paddr)
                    throw new BootException("ELF segment " + i + " has an impossible address");
                if (memsz > 0) segments.add(new Segment(paddr, offset, filesz, memsz));
            } else {
                notes.read(b, (int) offset, (int) filesz);
            }
        }
        if (segments.isEmpty()) throw new BootException("ELF file has nothing to load");
        return new ElfImage(entry, List.copyOf(segments), notes.startAll, notes.pvhEntry);
    }

    /** The notes this loader understands, collected over every PT_NOTE segment. */
    private static final class Notes {
        boolean startAll;
        long pvhEntry = NO_PVH_ENTRY;

        /** Walks the notes of one PT_NOTE segment; a malformed tail ends the walk (notes are hints, not load data). */
        void read(ByteBuffer b, int start, int size) {
            int at = start;
            int end = start + size;
            while (at + 12 <= end) {
                long namesz = Integer.toUnsignedLong(b.getInt(at));
                long descsz = Integer.toUnsignedLong(b.getInt(at + 4));
                int type = b.getInt(at + 8);
                long name = at + 12L;
                long desc = name + align4(namesz);
                long next = desc + align4(descsz);
                if (next > end) return;
                String owner = namesz > 0 && namesz <= 64 ? name(b, (int) name, (int) namesz) : "";
                if (owner.equals(PANAMA_NOTE_NAME) && type == PANAMA_NOTE_START_ALL_CPUS) startAll = true;
                if (owner.equals(XEN_NOTE_NAME) && type == XEN_ELFNOTE_PHYS32_ENTRY) {
                    // A 32-bit physical address; some kernels emit it as a 64-bit field.
                    if (descsz == 4) pvhEntry = Integer.toUnsignedLong(b.getInt((int) desc));
                    else if (descsz == 8) pvhEntry = b.getLong((int) desc);
                    if (pvhEntry >= 1L << 32)
                        throw new BootException(String.format("PVH entry 0x%x is above 4 GiB", pvhEntry));
                }
                at = (int) next;
            }
        }

        private static String name(ByteBuffer b, int at, int size) {
            var bytes = new byte[size];
            b.get(at, bytes);
            int length = bytes[size - 1] == 0 ? size - 1 : size;
            return new String(bytes, 0, length, StandardCharsets.US_ASCII);
        }
    }

    public boolean hasPvhEntry() {
        return pvhEntry != NO_PVH_ENTRY;
    }

    @Override
    public int commandLineMax() {
        return X86Boot.CMDLINE_MAX; // an ELF image has no header to say otherwise
    }

    private static long align4(long v) {
        return (v + 3) & ~3L;
    }

    /** The lowest and highest guest-physical byte the segments occupy (end exclusive). */
    public long lowestAddress() {
        return segments.stream().mapToLong(Segment::physicalAddress).min().orElseThrow();
    }

    public long highestAddress() {
        return segments.stream()
                .mapToLong(s -> s.physicalAddress() + s.memorySize())
                .max()
                .orElseThrow();
    }
}
