package dev.panamavmm.vmm;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Consumer;

/**
 * Guest-physical space that is not RAM. No MMIO device is modelled yet (virtio-mmio will be the
 * first): every access reads as all ones, ignores writes and is reported once per 4 KiB page.
 */
public final class MmioBus {
    private final Set<Long> reported = ConcurrentHashMap.newKeySet();
    private final Consumer<String> report;

    public MmioBus(Consumer<String> report) {
        this.report = report;
    }

    /** The value of a read of {@code size} bytes at {@code address} (little-endian, low bytes). */
    public long read(long address, int size) {
        unknown(address, size, false);
        return -1L;
    }

    public void write(long address, int size, long value) {
        unknown(address, size, true);
    }

    private void unknown(long address, int size, boolean write) {
        if (reported.add(address >>> 12)) {
            report.accept(String.format(
                    "guest %s unmapped address 0x%x (%d byte%s); ignored, reported once",
                    write ? "wrote" : "read", address, size, size == 1 ? "" : "s"));
        }
    }
}
