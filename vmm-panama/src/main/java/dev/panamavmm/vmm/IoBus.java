package dev.panamavmm.vmm;

import dev.panamavmm.devices.PortIoDevice;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Consumer;

/**
 * The x86 I/O port space: 65536 ports, each mapped to a device and its base port. A flat table
 * makes dispatch one array load on the exit path. A port nobody owns reads as all ones and
 * ignores writes, and is reported once (a guest probing for hardware is normal; silence would
 * hide a missing device).
 */
public final class IoBus {
    private record Slot(PortIoDevice device, int base) {}

    private final Slot[] ports = new Slot[0x10000];
    private final Set<Integer> reported = ConcurrentHashMap.newKeySet();
    private final Consumer<String> report;

    public IoBus(Consumer<String> report) {
        this.report = report;
    }

    /** Maps ports {@code [base, base + length)} to {@code device}; overlapping another device is a bug. */
    public void register(int base, int length, PortIoDevice device) {
        if (base < 0 || length <= 0 || base + length > ports.length)
            throw new IllegalArgumentException("bad port range");
        for (int p = base; p < base + length; p++) {
            if (ports[p] != null) throw new IllegalStateException(String.format("port 0x%x is taken", p));
        }
        var slot = new Slot(device, base);
        for (int p = base; p < base + length; p++) ports[p] = slot;
    }

    public int read(int port, int size) {
        var slot = ports[port & 0xffff];
        if (slot == null) {
            unknown(port, size, false);
            return PortIoDevice.allOnes(size);
        }
        return slot.device.read(port - slot.base, size);
    }

    public void write(int port, int size, int value) {
        var slot = ports[port & 0xffff];
        if (slot == null) {
            unknown(port, size, true);
            return;
        }
        slot.device.write(port - slot.base, size, value);
    }

    private void unknown(int port, int size, boolean write) {
        if (reported.add(port)) {
            report.accept(String.format(
                    "guest %s unknown I/O port 0x%x (%d byte%s); ignored, reported once",
                    write ? "wrote" : "read", port, size, size == 1 ? "" : "s"));
        }
    }
}
