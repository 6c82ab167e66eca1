package dev.panamavmm.devices;

/**
 * A device reached through x86 port I/O. The VMM's bus finds the device for a port and calls it
 * with the offset from the device's base port, so the same model can sit at any base (COM1 or
 * COM2, say). {@code size} is the access width in bytes as the vCPU exit reports it (1, 2 or 4);
 * values travel in the low {@code size} bytes of the int and a read returns zeros above them.
 * Implementations accept every offset, size and value a guest can produce: an access they do not
 * define reads as all ones (what an undriven ISA bus returns) or is an ignored write, never an
 * exception. Implementations are thread-safe, since every vCPU thread may call them.
 */
public interface PortIoDevice {

    /** Reads {@code size} bytes at {@code offset} from the device's base port. */
    int read(int offset, int size);

    /** Writes the low {@code size} bytes of {@code value} at {@code offset} from the base port. */
    void write(int offset, int size, int value);

    /**
     * All ones in the low {@code size} bytes: what a read of an undefined register returns. Sizes
     * other than 1 and 2 get all 32 bits.
     */
    static int allOnes(int size) {
        return switch (size) {
            case 1 -> 0xFF;
            case 2 -> 0xFFFF;
            default -> 0xFFFF_FFFF;
        };
    }
}
