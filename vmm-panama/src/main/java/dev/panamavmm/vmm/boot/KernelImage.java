package dev.panamavmm.vmm.boot;

/**
 * A kernel file the VMM can boot: an ELF executable ({@code vmlinux}, or the project's test
 * guest) or a bzImage ({@code vmlinuz}). {@link #parse} tells them apart by their magic numbers
 * and checks every field it reads, so anything else is one {@link BootException} line.
 */
public sealed interface KernelImage permits ElfImage, BzImage {

    /** The longest command line this kernel accepts, in bytes without the terminating NUL. */
    int commandLineMax();

    /** Parses {@code image}; {@code name} is how messages refer to the file. */
    static KernelImage parse(byte[] image, String name) {
        if (ElfImage.isElf(image)) return ElfImage.parse(image);
        if (BzImage.isBzImage(image)) return BzImage.parse(image);
        throw new BootException(name + " is not a kernel: neither an ELF executable nor a bzImage");
    }
}
