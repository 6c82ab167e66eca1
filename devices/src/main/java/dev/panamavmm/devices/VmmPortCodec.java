package dev.panamavmm.devices;

import dev.panamavmm.migration.state.Field;
import dev.panamavmm.migration.state.SectionEncoder;
import dev.panamavmm.migration.state.StateCodec;
import dev.panamavmm.migration.state.StateFields;

/**
 * Section {@code device/vmm-port}: the {@link VmmPort.State} (the generation id the guest reads).
 *
 * <p>Schema 1: every field below.
 */
public final class VmmPortCodec implements StateCodec<VmmPort.State> {
    public static final VmmPortCodec INSTANCE = new VmmPortCodec();

    static final Field GENERATION_ID = new Field(1, "generationId");

    private VmmPortCodec() {}

    @Override
    public int schema() {
        return 1;
    }

    @Override
    public void write(VmmPort.State s, SectionEncoder out) {
        out.i64(GENERATION_ID, s.generationId());
    }

    @Override
    public VmmPort.State read(StateFields in) {
        return new VmmPort.State(in.i64(GENERATION_ID));
    }
}
