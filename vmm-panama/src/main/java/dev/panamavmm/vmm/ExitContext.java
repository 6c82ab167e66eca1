package dev.panamavmm.vmm;

import java.util.function.Consumer;

/**
 * What a vCPU's exit handling may reach of its VM: the buses its exits go to, how to end the VM,
 * whom to tell when it first enters the guest, and where its exits are counted. A vCPU knows nothing else of the VM.
 */
record ExitContext(IoBus io, MmioBus mmio, Consumer<VmExitReason> end, FirstEntry firstEntry, VmMetrics metrics) {
    /** Told once per vCPU, just before its first KVM_RUN. */
    interface FirstEntry {
        void entering(int vcpu, long nanos);
    }
}
