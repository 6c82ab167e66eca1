package dev.panamavmm.vmm;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;

/** Builds minimal ELF64 x86-64 executables around hand-assembled code, for boot-path tests. */
final class TinyElf {
    private TinyElf() {}

    static final long LOAD_ADDRESS = 0x100000;

    /** One PT_LOAD of {@code code} at 1 MiB (entry there), plus the PanamaVMM note when {@code startAllCpus}. */
    static byte[] of(byte[] code, boolean startAllCpus) {
        return startAllCpus ? withNote(code, "PanamaVMM", 1, new byte[4]) : withNote(code, null, 0, null);
    }

    /** Like {@link #of}, with a Xen PVH entry note ({@code XEN_ELFNOTE_PHYS32_ENTRY}) pointing at the code too. */
    static byte[] withPvhEntry(byte[] code) {
        var desc = ByteBuffer.allocate(4)
                .order(ByteOrder.LITTLE_ENDIAN)
                .putInt((int) LOAD_ADDRESS)
                .array();
        return withNote(code, "Xen", 18, desc);
    }

    /** One PT_LOAD of {@code code} at 1 MiB, and one note ({@code noteName} null: none) in a PT_NOTE. */
    static byte[] withNote(byte[] code, String noteName, int noteType, byte[] desc) {
        int phnum = noteName != null ? 2 : 1;
        int phoff = 64;
        int noteOff = phoff + 56 * phnum;
        byte[] name = noteName != null ? (noteName + "\0").getBytes(StandardCharsets.US_ASCII) : new byte[0];
        int namePadded = (name.length + 3) & ~3;
        int descPadded = desc != null ? (desc.length + 3) & ~3 : 0;
        int noteSize = noteName != null ? 12 + namePadded + descPadded : 0;
        int codeOff = (noteOff + noteSize + 15) & ~15;
        var b = ByteBuffer.allocate(codeOff + code.length).order(ByteOrder.LITTLE_ENDIAN);
        b.put(new byte[] {0x7f, 'E', 'L', 'F', 2, 1, 1, 0});
        b.position(16);
        b.putShort((short) 2)
                .putShort((short) 62)
                .putInt(1)
                .putLong(LOAD_ADDRESS)
                .putLong(phoff)
                .putLong(0);
        b.putInt(0)
                .putShort((short) 64)
                .putShort((short) 56)
                .putShort((short) phnum)
                .putShort((short) 64)
                .putShort((short) 0)
                .putShort((short) 0);
        b.position(phoff);
        b.putInt(1)
                .putInt(7)
                .putLong(codeOff)
                .putLong(LOAD_ADDRESS)
                .putLong(LOAD_ADDRESS)
                .putLong(code.length)
                .putLong(code.length + 0x1000L)
                .putLong(0x1000);
        if (noteName != null) {
            b.putInt(4)
                    .putInt(4)
                    .putLong(noteOff)
                    .putLong(0)
                    .putLong(0)
                    .putLong(noteSize)
                    .putLong(noteSize)
                    .putLong(4);
            b.position(noteOff);
            b.putInt(name.length)
                    .putInt(desc.length)
                    .putInt(noteType)
                    .put(name)
                    .put(new byte[namePadded - name.length])
                    .put(desc)
                    .put(new byte[descPadded - desc.length]);
        }
        b.position(codeOff);
        b.put(code);
        return b.array();
    }
}
