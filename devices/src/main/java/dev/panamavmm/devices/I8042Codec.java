package dev.panamavmm.devices;

import dev.panamavmm.migration.state.Field;
import dev.panamavmm.migration.state.SectionEncoder;
import dev.panamavmm.migration.state.StateCodec;
import dev.panamavmm.migration.state.StateFields;

/**
 * Section {@code device/i8042}: the PS/2 controller's {@link I8042.State}.
 *
 * <p>Schema 1: every field below.
 */
public final class I8042Codec implements StateCodec<I8042.State> {
    public static final I8042Codec INSTANCE = new I8042Codec();

    static final Field COMMAND_BYTE = new Field(1, "commandByte"),
            OUTPUT_PORT = new Field(2, "outputPort"),
            OUTPUT_BYTE = new Field(3, "outputByte"),
            OUTPUT_FULL = new Field(4, "outputFull"),
            PENDING_COMMAND = new Field(5, "pendingCommand"),
            COMMAND_WRITTEN = new Field(6, "commandWritten");

    private I8042Codec() {}

    @Override
    public int schema() {
        return 1;
    }

    @Override
    public void write(I8042.State s, SectionEncoder out) {
        out.i32(COMMAND_BYTE, s.commandByte())
                .i32(OUTPUT_PORT, s.outputPort())
                .i32(OUTPUT_BYTE, s.outputByte())
                .bool(OUTPUT_FULL, s.outputFull())
                .i32(PENDING_COMMAND, s.pendingCommand())
                .bool(COMMAND_WRITTEN, s.commandWritten());
    }

    @Override
    public I8042.State read(StateFields in) {
        return new I8042.State(
                in.i32(COMMAND_BYTE),
                in.i32(OUTPUT_PORT),
                in.i32(OUTPUT_BYTE),
                in.bool(OUTPUT_FULL),
                in.i32(PENDING_COMMAND),
                in.bool(COMMAND_WRITTEN));
    }
}
