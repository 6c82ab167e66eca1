package dev.panamavmm.kvm;

import java.nio.file.Files;
import java.nio.file.Path;

/**
 * Which KVM implementation serves {@code /dev/kvm}. Saved CPU state differs between them, so a
 * snapshot records the flavour it was taken on and refuses to restore on another.
 */
public enum HostFlavour {
    /** Intel VT-x ({@code kvm_intel}). */
    VMX("kvm_intel"),
    /** AMD-V ({@code kvm_amd}). */
    SVM("kvm_amd"),
    /** Pagetable-based Virtual Machine ({@code kvm_pvm}): CPL3 guest code native, CPL0 emulated. */
    PVM("kvm_pvm"),
    /** None of the modules above is loaded. */
    UNKNOWN("");

    private final String module;

    HostFlavour(String module) {
        this.module = module;
    }

    /** The kernel module that provides this flavour. */
    public String module() {
        return module;
    }

    /** Detects the flavour from the loaded kernel modules; PVM first, as it can sit beside the others. */
    public static HostFlavour detect() {
        return detect(Path.of("/sys/module"));
    }

    static HostFlavour detect(Path sysModule) {
        for (var f : new HostFlavour[] {PVM, VMX, SVM}) {
            if (Files.isDirectory(sysModule.resolve(f.module))) return f;
        }
        return UNKNOWN;
    }
}
