package dev.panamavmm.vmm.boot;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * A bzImage as the Linux x86 boot protocol describes it ({@code Documentation/arch/x86/boot.rst}):
 * the real-mode setup sectors, then the protected-mode kernel (the decompressor and the compressed
 * payload). The VMM skips the real-mode part and enters the 64-bit entry at load address + 0x200,
 * which needs protocol 2.12 or later with {@code XLF_KERNEL_64} set.
 *
 * <p>Every field is read from the file here with bounds checks; the header bytes themselves are
 * kept so that the zero page starts as a copy of them, as the protocol asks of a boot loader.
 *
 * @param version         boot protocol version, e.g. 0x020f
 * @param kernelOffset    file offset of the protected-mode kernel: (setup_sects + 1) * 512
 * @param kernelSize      its size in bytes (the rest of the file)
 * @param loadFlags       {@code loadflags}
 * @param xloadFlags      {@code xloadflags}
 * @param relocatable     {@code relocatable_kernel}
 * @param kernelAlignment {@code kernel_alignment}
 * @param preferredAddress {@code pref_address}: where the kernel runs without relocating itself
 * @param initSize        {@code init_size}: bytes the kernel needs from its load address while it decompresses and starts
 * @param commandLineMax  {@code cmdline_size}
 * @param initrdAddressMax {@code initrd_addr_max}: the highest address an initrd byte may have
 * @param setupHeader     the header bytes from 0x1f1 to the end the header's jump gives
 */
public record BzImage(
        int version,
        long kernelOffset,
        long kernelSize,
        int loadFlags,
        int xloadFlags,
        boolean relocatable,
        long kernelAlignment,
        long preferredAddress,
        long initSize,
        int commandLineMax,
        long initrdAddressMax,
        byte[] setupHeader)
        implements KernelImage {

    /** Offsets in the file (and in the zero page), from the boot protocol's header table. */
    static final int SETUP_SECTS = 0x1f1,
            SYSSIZE = 0x1f4,
            BOOT_FLAG = 0x1fe,
            JUMP = 0x200,
            HEADER = 0x202,
            VERSION = 0x206,
            LOADFLAGS = 0x211,
            INITRD_ADDR_MAX = 0x22c,
            KERNEL_ALIGNMENT = 0x230,
            RELOCATABLE_KERNEL = 0x234,
            XLOADFLAGS = 0x236,
            CMDLINE_SIZE = 0x238,
            PREF_ADDRESS = 0x258,
            INIT_SIZE = 0x260;
    /** First byte after the last header field this VMM reads (init_size). */
    static final int HEADER_END = 0x264;

    static final int HDRS_MAGIC = 0x53726448; // "HdrS"
    static final int MIN_VERSION = 0x020c; // 2.12: xloadflags, the 64-bit entry
    /** The 64-bit entry is this far into the protected-mode kernel. */
    public static final long ENTRY_64_OFFSET = 0x200;

    public static boolean isBzImage(byte[] image) {
        if (image.length < HEADER + 4) return false;
        var b = ByteBuffer.wrap(image).order(ByteOrder.LITTLE_ENDIAN);
        return Short.toUnsignedInt(b.getShort(BOOT_FLAG)) == 0xaa55 && b.getInt(HEADER) == HDRS_MAGIC;
    }

    public static BzImage parse(byte[] image) {
        if (!isBzImage(image)) throw new BootException("not a bzImage (no boot sector flag and \"HdrS\" header)");
        if (image.length < HEADER_END)
            throw new BootException(
                    "truncated bzImage: " + image.length + " bytes, the setup header alone needs " + HEADER_END);
        var b = ByteBuffer.wrap(image).order(ByteOrder.LITTLE_ENDIAN);
        int version = Short.toUnsignedInt(b.getShort(VERSION));
        if (version < MIN_VERSION) {
            throw new BootException(String.format(
                    "bzImage boot protocol %d.%02d is too old: booting through the 64-bit entry needs 2.12 or later",
                    version >> 8, version & 0xff));
        }
        int xloadFlags = Short.toUnsignedInt(b.getShort(XLOADFLAGS));
        if ((xloadFlags & XLF_KERNEL_64) == 0)
            throw new BootException("bzImage has no 64-bit entry point (XLF_KERNEL_64 is not set: a 32-bit kernel?)");
        int loadFlags = Byte.toUnsignedInt(image[LOADFLAGS]);
        if ((loadFlags & LOADED_HIGH) == 0)
            throw new BootException("bzImage wants to be loaded at 0x10000 (a zImage); only bzImages are supported");

        int setupSects = Byte.toUnsignedInt(image[SETUP_SECTS]);
        if (setupSects == 0) setupSects = 4; // the protocol's rule for old images, kept for completeness
        long kernelOffset = (setupSects + 1L) * 512;
        long declared = Integer.toUnsignedLong(b.getInt(SYSSIZE)) * 16; // syssize counts 16-byte paragraphs
        if (kernelOffset + declared > image.length || kernelOffset >= image.length) {
            throw new BootException(String.format(
                    "truncated bzImage: its header declares %d bytes, the file has %d",
                    kernelOffset + declared, image.length));
        }
        long alignment = Integer.toUnsignedLong(b.getInt(KERNEL_ALIGNMENT));
        boolean relocatable = image[RELOCATABLE_KERNEL] != 0;
        if (relocatable && (alignment < 4096 || Long.bitCount(alignment) != 1)) {
            throw new BootException(String.format("bzImage has an invalid kernel_alignment 0x%x", alignment));
        }
        long preferred = b.getLong(PREF_ADDRESS);
        long initSize = Integer.toUnsignedLong(b.getInt(INIT_SIZE));
        if (preferred < X86Boot.KERNEL_MIN || preferred % 4096 != 0) {
            throw new BootException(
                    String.format("bzImage asks to be loaded at 0x%x, below 1 MiB or not page-aligned", preferred));
        }
        if (initSize < image.length - kernelOffset) {
            throw new BootException(String.format(
                    "bzImage init_size 0x%x is smaller than its kernel (0x%x bytes)",
                    initSize, image.length - kernelOffset));
        }
        int commandLineMax = b.getInt(CMDLINE_SIZE);
        if (commandLineMax <= 0)
            throw new BootException(
                    "bzImage declares no room for a command line (cmdline_size " + commandLineMax + ")");
        long initrdMax = Integer.toUnsignedLong(b.getInt(INITRD_ADDR_MAX));

        // The header runs from 0x1f1 to 0x202 + the jump's 8-bit displacement; copy at most what a zero page holds.
        int headerEnd = Math.min(HEADER + Byte.toUnsignedInt(image[JUMP + 1]), ZERO_PAGE_HEADER_END);
        headerEnd = Math.max(headerEnd, HEADER_END);
        byte[] header = Arrays.copyOfRange(image, SETUP_SECTS, headerEnd);
        return new BzImage(
                version,
                kernelOffset,
                image.length - kernelOffset,
                loadFlags,
                xloadFlags,
                relocatable,
                alignment,
                preferred,
                initSize,
                commandLineMax,
                initrdMax,
                header);
    }

    static final int LOADED_HIGH = 0x01;
    static final int XLF_KERNEL_64 = 0x01;
    /** struct setup_header ends here in struct boot_params (0x1f1 + 123). */
    static final int ZERO_PAGE_HEADER_END = 0x26c;

    /** Where the protected-mode kernel goes: its preferred address, which is also where it decompresses to. */
    public long loadAddress() {
        return preferredAddress;
    }

    /** The 64-bit entry point for that load address. */
    public long entry64() {
        return loadAddress() + ENTRY_64_OFFSET;
    }

    /** The end of the memory the kernel uses while it starts (its load address plus {@code init_size}). */
    public long footprintEnd() {
        return loadAddress() + initSize;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof BzImage other
                && version == other.version
                && kernelOffset == other.kernelOffset
                && kernelSize == other.kernelSize
                && preferredAddress == other.preferredAddress
                && initSize == other.initSize
                && Arrays.equals(setupHeader, other.setupHeader);
    }

    @Override
    public int hashCode() {
        return Long.hashCode(kernelOffset) * 31 + Arrays.hashCode(setupHeader);
    }

    @Override
    public String toString() {
        return String.format(
                "bzImage(protocol %d.%02d, %d bytes at 0x%x, init_size 0x%x)",
                version >> 8, version & 0xff, kernelSize, preferredAddress, initSize);
    }
}
