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
        int phnum = startAllCpus ? 2 : 1;
        int phoff = 64;
        int noteOff = phoff + 56 * phnum;
        byte[] name = "PanamaVMM\0".getBytes(StandardCharsets.US_ASCII);
        int noteSize = startAllCpus ? 12 + 12 + 4 : 0; // header, name padded to 12, 4-byte desc
        int codeOff = (noteOff + noteSize + 15) & ~15;
        var b = ByteBuffer.allocate(codeOff + code.length).order(ByteOrder.LITTLE_ENDIAN);
        b.put(new byte[] {0x7f, 'E', 'L', 'F', 2, 1, 1, 0});
        b.position(16);
        b.putShort((short) 2).putShort((short) 62).putInt(1).putLong(LOAD_ADDRESS).putLong(phoff).putLong(0);
        b.putInt(0).putShort((short) 64).putShort((short) 56).putShort((short) phnum).putShort((short) 64).putShort((short) 0).putShort((short) 0);
        b.position(phoff);
        b.putInt(1).putInt(7).putLong(codeOff).putLong(LOAD_ADDRESS).putLong(LOAD_ADDRESS)
                .putLong(code.length).putLong(code.length + 0x1000L).putLong(0x1000);
        if (startAllCpus) {
            b.putInt(4).putInt(4).putLong(noteOff).putLong(0).putLong(0).putLong(noteSize).putLong(noteSize).putLong(4);
            b.position(noteOff);
            b.putInt(name.length).putInt(4).putInt(1).put(name).put(new byte[12 - name.length]).putInt(0);
        }
        b.position(codeOff);
        b.put(code);
        return b.array();
    }
}
