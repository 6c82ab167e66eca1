package dev.panamavmm.vmm.boot;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * Builds bzImage files with a setup header written at the boot protocol's documented offsets
 * (boot.rst's table, typed in here, not taken from the code under test) around a payload.
 */
public final class SyntheticBzImage {
    private SyntheticBzImage() {}

    int version = 0x020f;
    int setupSects = 1;
    int loadFlags = 0x01; // LOADED_HIGH
    int xloadFlags = 0x01; // XLF_KERNEL_64
    long prefAddress = 0x1000000;
    long initSize = 0x800000;
    public int cmdlineSize = 255;
    long kernelAlignment = 0x200000;
    long initrdAddrMax = 0x7fffffff;
    byte[] payload = new byte[4096];

    public static SyntheticBzImage standard() {
        var s = new SyntheticBzImage();
        for (int i = 0; i < s.payload.length; i++) s.payload[i] = (byte) (i * 7 + 1);
        return s;
    }

    public byte[] build() {
        int kernelOffset = (setupSects == 0 ? 5 : setupSects + 1) * 512;
        var b = ByteBuffer.allocate(Math.max(kernelOffset, 0x270) + payload.length)
                .order(ByteOrder.LITTLE_ENDIAN);
        b.put(0x1f1, (byte) setupSects);
        b.putInt(0x1f4, payload.length / 16); // syssize
        b.putShort(0x1fe, (short) 0xaa55); // boot_flag
        b.put(0x200, (byte) 0xeb).put(0x201, (byte) 0x6a); // jmp short to 0x26c: the header's end
        b.putInt(0x202, 0x53726448); // "HdrS"
        b.putShort(0x206, (short) version);
        b.put(0x211, (byte) loadFlags);
        b.putInt(0x214, 0x100000); // code32_start
        b.putInt(0x22c, (int) initrdAddrMax);
        b.putInt(0x230, (int) kernelAlignment);
        b.put(0x234, (byte) 1); // relocatable_kernel
        b.put(0x235, (byte) 21); // min_alignment
        b.putShort(0x236, (short) xloadFlags);
        b.putInt(0x238, cmdlineSize);
        b.putLong(0x258, prefAddress);
        b.putInt(0x260, (int) initSize);
        b.put(kernelOffset, payload);
        return b.array();
    }
}
