package dev.panamavmm.kvm;

import dev.panamavmm.kvm.bindings.KvmConstants;

/** The KVM capabilities Panama VMM relies on, what each is for, and whether a VM can start without it. */
public enum Capability {
    USER_MEMORY(KvmConstants.KVM_CAP_USER_MEMORY, true, "guest RAM from host mappings (memslots)"),
    SYNC_MMU(KvmConstants.KVM_CAP_SYNC_MMU, true, "guest RAM may be file-backed and copy-on-write"),
    IRQCHIP(KvmConstants.KVM_CAP_IRQCHIP, true, "in-kernel PIC, IOAPIC and LAPIC"),
    PIT2(KvmConstants.KVM_CAP_PIT2, true, "in-kernel 8254 timer"),
    SET_TSS_ADDR(KvmConstants.KVM_CAP_SET_TSS_ADDR, true, "real-mode TSS placement"),
    EXT_CPUID(KvmConstants.KVM_CAP_EXT_CPUID, true, "KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2"),
    IMMEDIATE_EXIT(KvmConstants.KVM_CAP_IMMEDIATE_EXIT, true, "race-free pause of a running vCPU"),
    VCPU_EVENTS(KvmConstants.KVM_CAP_VCPU_EVENTS, true, "save/restore pending exceptions and interrupts"),
    MP_STATE(KvmConstants.KVM_CAP_MP_STATE, true, "save/restore vCPU run state"),
    DEBUGREGS(KvmConstants.KVM_CAP_DEBUGREGS, true, "save/restore debug registers"),
    XSAVE(KvmConstants.KVM_CAP_XSAVE, true, "save/restore extended FPU state"),
    XSAVE2(KvmConstants.KVM_CAP_XSAVE2, false, "extended FPU state larger than 4 KiB"),
    XCRS(KvmConstants.KVM_CAP_XCRS, true, "save/restore XCR0"),
    ADJUST_CLOCK(KvmConstants.KVM_CAP_ADJUST_CLOCK, true, "guest clock continues across save/restore"),
    KVMCLOCK_CTRL(KvmConstants.KVM_CAP_KVMCLOCK_CTRL, false, "tell the guest it was paused (no soft-lockup warnings)"),
    IRQFD(KvmConstants.KVM_CAP_IRQFD, false, "device interrupts through eventfds (virtio)"),
    IOEVENTFD(KvmConstants.KVM_CAP_IOEVENTFD, false, "device doorbells through eventfds (virtio)"),
    IRQ_ROUTING(KvmConstants.KVM_CAP_IRQ_ROUTING, false, "GSI routing for MSI"),
    SIGNAL_MSI(KvmConstants.KVM_CAP_SIGNAL_MSI, false, "inject MSIs"),
    READONLY_MEM(KvmConstants.KVM_CAP_READONLY_MEM, false, "read-only memslots (ROM, flash)"),
    MANUAL_DIRTY_LOG_PROTECT2(
            KvmConstants.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, false, "dirty logging for pre-copy migration"),
    DIRTY_LOG_RING(KvmConstants.KVM_CAP_DIRTY_LOG_RING, false, "dirty ring for pre-copy migration"),
    TSC_CONTROL(KvmConstants.KVM_CAP_TSC_CONTROL, false, "set the guest TSC frequency (migration across hosts)");

    private final int number;
    private final boolean required;
    private final String purpose;

    Capability(int number, boolean required, String purpose) {
        this.number = number;
        this.required = required;
        this.purpose = purpose;
    }

    /** The KVM_CAP_* number. */
    public int number() {
        return number;
    }

    /** A VM cannot be built without it. */
    public boolean required() {
        return required;
    }

    public String purpose() {
        return purpose;
    }

    /** {@code KVM_CAP_IRQCHIP}. */
    public String capName() {
        return "KVM_CAP_" + name();
    }
}
