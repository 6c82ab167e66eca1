package dev.panamavmm.vmm.state;

import java.util.Arrays;
import java.util.Objects;

/**
 * Everything KVM holds for one vCPU, as the kernel's own structs (opaque bytes, in the layout of
 * the bindings: {@code kvm_regs}, {@code kvm_sregs}, ...) plus the MSRs as index/value pairs.
 * Kept as bytes rather than fields so a snapshot survives a bindings update: a struct that grew
 * is padded with zeros on load, one that shrank is truncated (as rust-vmm's kvm-bindings do).
 */
public record VcpuState(
        int id,
        byte[] regs,
        byte[] sregs,
        byte[] xsave,
        byte[] xcrs,
        byte[] lapic,
        int[] msrIndices,
        long[] msrValues,
        byte[] events,
        int mpState,
        byte[] debugregs) {

    public VcpuState {
        Objects.requireNonNull(regs);
        Objects.requireNonNull(sregs);
        Objects.requireNonNull(xsave);
        Objects.requireNonNull(xcrs);
        Objects.requireNonNull(lapic);
        Objects.requireNonNull(events);
        Objects.requireNonNull(debugregs);
        if (msrIndices.length != msrValues.length)
            throw new IllegalArgumentException("MSR indices and values differ in number");
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof VcpuState s
                && id == s.id
                && mpState == s.mpState
                && Arrays.equals(regs, s.regs)
                && Arrays.equals(sregs, s.sregs)
                && Arrays.equals(xsave, s.xsave)
                && Arrays.equals(xcrs, s.xcrs)
                && Arrays.equals(lapic, s.lapic)
                && Arrays.equals(msrIndices, s.msrIndices)
                && Arrays.equals(msrValues, s.msrValues)
                && Arrays.equals(events, s.events)
                && Arrays.equals(debugregs, s.debugregs);
    }

    @Override
    public int hashCode() {
        return Objects.hash(id, mpState, Arrays.hashCode(regs), Arrays.hashCode(sregs), Arrays.hashCode(msrValues));
    }

    @Override
    public String toString() {
        return "VcpuState[id=" + id + ", msrs=" + msrIndices.length + ", xsave=" + xsave.length + " bytes]";
    }
}
