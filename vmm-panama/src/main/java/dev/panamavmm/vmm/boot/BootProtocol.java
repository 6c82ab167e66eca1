package dev.panamavmm.vmm.boot;

import java.util.Locale;

/** Which entry of a kernel the VMM starts the boot vCPU at. */
public enum BootProtocol {
    /** PVH if the ELF image has a PVH note, otherwise the 64-bit entry (always the 64-bit entry for a bzImage). */
    AUTO,
    /** The Linux boot protocol's 64-bit entry: long mode, paging on, RSI = the zero page. */
    LINUX64,
    /** The PVH entry of an ELF {@code vmlinux}: 32-bit protected mode, paging off, EBX = {@code hvm_start_info}. */
    PVH;

    /** The spelling on the command line and in messages. */
    public String label() {
        return name().toLowerCase(Locale.ROOT);
    }

    public static BootProtocol fromLabel(String label) {
        for (var p : values()) if (p.label().equals(label)) return p;
        throw new IllegalArgumentException("unknown boot protocol '" + label + "' (auto, linux64 or pvh)");
    }
}
