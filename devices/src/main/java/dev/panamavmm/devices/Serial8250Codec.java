package dev.panamavmm.devices;

import dev.panamavmm.migration.state.Field;
import dev.panamavmm.migration.state.SectionEncoder;
import dev.panamavmm.migration.state.StateCodec;
import dev.panamavmm.migration.state.StateFields;

/**
 * Section {@code device/serial}: the 8250's {@link Serial8250.State}. The state's own checks
 * (bytes are bytes, the FIFO fits) run on every decoded value.
 *
 * <p>Schema 1: every field below.
 */
public final class Serial8250Codec implements StateCodec<Serial8250.State> {
    public static final Serial8250Codec INSTANCE = new Serial8250Codec();

    static final Field DLL = new Field(1, "dll"),
            DLM = new Field(2, "dlm"),
            IER = new Field(3, "ier"),
            LCR = new Field(4, "lcr"),
            MCR = new Field(5, "mcr"),
            SCR = new Field(6, "scr"),
            FIFO_ENABLED = new Field(7, "fifoEnabled"),
            OVERRUN = new Field(8, "overrun"),
            THR_EMPTY_PENDING = new Field(9, "thrEmptyPending"),
            RX_FIFO = new Field(10, "rxFifo");

    private Serial8250Codec() {}

    @Override
    public int schema() {
        return 1;
    }

    @Override
    public void write(Serial8250.State s, SectionEncoder out) {
        out.i32(DLL, s.dll())
                .i32(DLM, s.dlm())
                .i32(IER, s.ier())
                .i32(LCR, s.lcr())
                .i32(MCR, s.mcr())
                .i32(SCR, s.scr())
                .bool(FIFO_ENABLED, s.fifoEnabled())
                .bool(OVERRUN, s.overrun())
                .bool(THR_EMPTY_PENDING, s.thrEmptyPending())
                .bytes(RX_FIFO, s.rxFifo());
    }

    @Override
    public Serial8250.State read(StateFields in) {
        return new Serial8250.State(
                in.i32(DLL),
                in.i32(DLM),
                in.i32(IER),
                in.i32(LCR),
                in.i32(MCR),
                in.i32(SCR),
                in.bool(FIFO_ENABLED),
                in.bool(OVERRUN),
                in.bool(THR_EMPTY_PENDING),
                in.bytes(RX_FIFO));
    }
}
