package dev.panamavmm.vmm.state;

import dev.panamavmm.migration.state.Field;
import dev.panamavmm.migration.state.SectionEncoder;
import dev.panamavmm.migration.state.StateCodec;
import dev.panamavmm.migration.state.StateFields;

/**
 * Section {@code vcpu/N}: the kernel's structs as raw bytes (a struct that grows or shrinks in a
 * later kernel is padded or truncated on restore), the MP state and the MSRs.
 *
 * <p>Schema 1: every field below. (Format-1 snapshots hold the same fields as JSON.)
 */
public final class VcpuStateCodec implements StateCodec<VcpuState> {
    public static final VcpuStateCodec INSTANCE = new VcpuStateCodec();

    static final Field ID = new Field(1, "id"),
            REGS = new Field(2, "regs"),
            SREGS = new Field(3, "sregs"),
            XSAVE = new Field(4, "xsave"),
            XCRS = new Field(5, "xcrs"),
            LAPIC = new Field(6, "lapic"),
            MSR_INDICES = new Field(7, "msrIndices"),
            MSR_VALUES = new Field(8, "msrValues"),
            EVENTS = new Field(9, "events"),
            MP_STATE = new Field(10, "mpState"),
            DEBUGREGS = new Field(11, "debugregs");

    private VcpuStateCodec() {}

    @Override
    public int schema() {
        return 1;
    }

    @Override
    public void write(VcpuState s, SectionEncoder out) {
        out.i32(ID, s.id())
                .bytes(REGS, s.regs())
                .bytes(SREGS, s.sregs())
                .bytes(XSAVE, s.xsave())
                .bytes(XCRS, s.xcrs())
                .bytes(LAPIC, s.lapic())
                .ints(MSR_INDICES, s.msrIndices())
                .longs(MSR_VALUES, s.msrValues())
                .bytes(EVENTS, s.events())
                .i32(MP_STATE, s.mpState())
                .bytes(DEBUGREGS, s.debugregs());
    }

    @Override
    public VcpuState read(StateFields in) {
        return new VcpuState(
                in.i32(ID),
                in.bytes(REGS),
                in.bytes(SREGS),
                in.bytes(XSAVE),
                in.bytes(XCRS),
                in.bytes(LAPIC),
                in.ints(MSR_INDICES),
                in.longs(MSR_VALUES),
                in.bytes(EVENTS),
                in.i32(MP_STATE),
                in.bytes(DEBUGREGS));
    }
}
