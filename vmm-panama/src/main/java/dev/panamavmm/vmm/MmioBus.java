package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.VirtioMmio;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Consumer;

/**
 * Guest-physical space that is not RAM: the virtio-mmio windows (one 4 KiB page each, registered
 * before any vCPU runs), and everything else, which reads as all ones, ignores writes and is
 * reported once per 4 KiB page.
 */
public final class MmioBus {
    private final Set<Long> reported = ConcurrentHashMap.newKeySet();
    private final Consumer<String> report;
    private final List<VirtioMmio> windows = new ArrayList<>();
    private final List<Long> bases = new ArrayList<>();

    public MmioBus(Consumer<String> report) {
        this.report = report;
    }

    /** Puts {@code device}'s register window at {@code base} (not thread-safe: before the vCPUs start). */
    void register(long base, VirtioMmio device) {
        bases.add(base);
        windows.add(device);
    }

    private int window(long address) {
        for (int i = 0; i < bases.size(); i++) {
            long offset = address - bases.get(i);
            if (offset >= 0 && offset < VirtioMmio.WINDOW_SIZE) return i;
        }
        return -1;
    }

    /** The value of a read of {@code size} bytes at {@code address} (little-endian, low bytes). */
    public long read(long address, int size) {
        int w = window(address);
        if (w >= 0) return windows.get(w).read((int) (address - bases.get(w)), size);
        unknown(address, size, false);
        return -1L;
    }

    public void write(long address, int size, long value) {
        int w = window(address);
        if (w >= 0) windows.get(w).write((int) (address - bases.get(w)), size, value);
        else unknown(address, size, true);
    }

    private void unknown(long address, int size, boolean write) {
        if (reported.add(address >>> 12)) {
            report.accept(String.format(
                    "guest %s unmapped address 0x%x (%d byte%s); ignored, reported once",
                    write ? "wrote" : "read", address, size, size == 1 ? "" : "s"));
        }
    }
}
