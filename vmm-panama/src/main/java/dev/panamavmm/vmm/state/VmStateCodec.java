package dev.panamavmm.vmm.state;

import dev.panamavmm.migration.state.Field;
import dev.panamavmm.migration.state.SectionEncoder;
import dev.panamavmm.migration.state.StateCodec;
import dev.panamavmm.migration.state.StateFields;

/**
 * Section {@code vm}: the in-kernel PICs and IOAPIC ({@code kvm_irqchip}), the PIT
 * ({@code kvm_pit_state2}) and the kvm-clock ({@code kvm_clock_data}) as the kernel's bytes.
 *
 * <p>Schema 1: every field below.
 */
public final class VmStateCodec implements StateCodec<VmState> {
    public static final VmStateCodec INSTANCE = new VmStateCodec();

    static final Field PIC_MASTER = new Field(1, "picMaster"),
            PIC_SLAVE = new Field(2, "picSlave"),
            IOAPIC = new Field(3, "ioapic"),
            PIT = new Field(4, "pit"),
            CLOCK = new Field(5, "clock");

    private VmStateCodec() {}

    @Override
    public int schema() {
        return 1;
    }

    @Override
    public void write(VmState s, SectionEncoder out) {
        out.bytes(PIC_MASTER, s.picMaster())
                .bytes(PIC_SLAVE, s.picSlave())
                .bytes(IOAPIC, s.ioapic())
                .bytes(PIT, s.pit())
                .bytes(CLOCK, s.clock());
    }

    @Override
    public VmState read(StateFields in) {
        return new VmState(in.bytes(PIC_MASTER), in.bytes(PIC_SLAVE), in.bytes(IOAPIC), in.bytes(PIT), in.bytes(CLOCK));
    }
}
