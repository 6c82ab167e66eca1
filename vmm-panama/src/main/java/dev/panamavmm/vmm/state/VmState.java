package dev.panamavmm.vmm.state;

import java.util.Arrays;
import java.util.Objects;

/**
 * The VM-wide state KVM holds: the three in-kernel interrupt controllers ({@code kvm_irqchip}
 * for PIC master, PIC slave and IOAPIC), the PIT ({@code kvm_pit_state2}) and the kvm-clock
 * ({@code kvm_clock_data}), as the kernel's structs.
 */
public record VmState(byte[] picMaster, byte[] picSlave, byte[] ioapic, byte[] pit, byte[] clock) {
    public VmState {
        Objects.requireNonNull(picMaster);
        Objects.requireNonNull(picSlave);
        Objects.requireNonNull(ioapic);
        Objects.requireNonNull(pit);
        Objects.requireNonNull(clock);
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof VmState s
                && Arrays.equals(picMaster, s.picMaster)
                && Arrays.equals(picSlave, s.picSlave)
                && Arrays.equals(ioapic, s.ioapic)
                && Arrays.equals(pit, s.pit)
                && Arrays.equals(clock, s.clock);
    }

    @Override
    public int hashCode() {
        return Objects.hash(Arrays.hashCode(picMaster), Arrays.hashCode(ioapic), Arrays.hashCode(pit));
    }

    @Override
    public String toString() {
        return "VmState[irqchip, pit, clock]";
    }
}
