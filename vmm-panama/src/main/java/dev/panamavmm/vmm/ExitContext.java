package dev.panamavmm.vmm;

import java.util.function.Consumer;

/**
 * What a vCPU's exit handling may reach of its VM: the buses its exits go to, how to end the VM,
 * and whom to tell when it first enters the guest. A vCPU knows nothing else of the VM.
 */
record ExitContext(IoBus io, MmioBus mmio, Consumer<VmExitReason> end, FirstEntry firstEntry) {
    /** Told once per vCPU, just before its first KVM_RUN. */
    interface FirstEntry {
        void entering(int vcpu, long nanos);
    }
}
