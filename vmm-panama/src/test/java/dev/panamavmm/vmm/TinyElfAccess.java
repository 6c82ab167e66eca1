package dev.panamavmm.vmm;

/** Tiny test kernels for tests outside this package. */
public final class TinyElfAccess {
    private TinyElfAccess() {}

    /** Prints "Hi\n" on COM1, then exits through the VMM port with {@code code}. */
    public static byte[] printHiAndExit(int code) {
        return TinyElf.of(VmTest.concat(VmTest.PRINT_HI, VmTest.exitWith(code)), false);
    }

    /** Increments the qword at 0x200000 forever. */
    public static byte[] countForever() {
        return TinyElf.of(
                new byte[] {0x48, (byte) 0xff, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, (byte) 0xeb, (byte) 0xf6}, false);
    }
}
