package dev.panamavmm.vmm.boot;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;

/**
 * An ELF64 x86-64 executable as the VMM loads it: its entry point, the segments to copy into
 * guest-physical memory, and whether it carries the Panama VMM note that asks the VMM to start
 * every vCPU at the entry (the project's test guest does; Linux does not and starts its APs
 * itself with INIT/SIPI). Every field read from the file is bounds-checked: a truncated or
 * hostile image is a {@link BootException}, never an exception from deep inside.
 */
public record ElfImage(long entry, List<Segment> segments, boolean startAllCpus) {

    /** A PT_LOAD segment: {@code fileSize} bytes at {@code fileOffset} go to {@code physicalAddress}, then zeros up to {@code memorySize}. */
    public record Segment(long physicalAddress, long fileOffset, long fileSize, long memorySize) {}

    static final int PT_LOAD = 1;
    static final int PT_NOTE = 4;
    static final int EM_X86_64 = 62;
    /** Note name and type of the "start all vCPUs at the entry" request. */
    public static final String PANAMA_NOTE_NAME = "PanamaVMM";
    public static final int PANAMA_NOTE_START_ALL_CPUS = 1;

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
        if (phoff < 0 || phoff + (long) phnum * phentsize > image.length) throw new BootException("truncated ELF program headers");

        var segments = new ArrayList<Segment>();
        boolean startAll = false;
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
                if (memsz < filesz) throw new BootException("ELF segment " + i + " is smaller in memory than in the file");
                if (paddr < 0 || paddr + memsz < paddr) throw new BootException("ELF segment " + i + " has an impossible address");
                if (memsz > 0) segments.add(new Segment(paddr, offset, filesz, memsz));
            } else {
                startAll |= hasStartAllNote(b, (int) offset, (int) filesz);
            }
        }
        if (segments.isEmpty()) throw new BootException("ELF file has nothing to load");
        return new ElfImage(entry, List.copyOf(segments), startAll);
    }

    /** Walks the notes of one PT_NOTE segment looking for ("PanamaVMM", type 1). */
    private static boolean hasStartAllNote(ByteBuffer b, int start, int size) {
        int at = start;
        int end = start + size;
        while (at + 12 <= end) {
            long namesz = Integer.toUnsignedLong(b.getInt(at));
            long descsz = Integer.toUnsignedLong(b.getInt(at + 4));
            int type = b.getInt(at + 8);
            long name = at + 12L;
            long desc = name + align4(namesz);
            long next = desc + align4(descsz);
            if (next > end) return false;
            if (type == PANAMA_NOTE_START_ALL_CPUS && namesz == PANAMA_NOTE_NAME.length() + 1) {
                var bytes = new byte[(int) namesz - 1];
                b.get((int) name, bytes);
                if (new String(bytes, java.nio.charset.StandardCharsets.US_ASCII).equals(PANAMA_NOTE_NAME)) return true;
            }
            at = (int) next;
        }
        return false;
    }

    private static long align4(long v) {
        return (v + 3) & ~3L;
    }

    /** The lowest and highest guest-physical byte the segments occupy (end exclusive). */
    public long lowestAddress() {
        return segments.stream().mapToLong(Segment::physicalAddress).min().orElseThrow();
    }

    public long highestAddress() {
        return segments.stream().mapToLong(s -> s.physicalAddress() + s.memorySize()).max().orElseThrow();
    }
}
