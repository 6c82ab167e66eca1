package dev.panamavmm.cli;

import dev.panamavmm.kvm.Capability;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmCpuid2;
import dev.panamavmm.kvm.bindings.LibcConstants;
import java.lang.foreign.Arena;
import java.nio.file.Path;

/** {@code vmm info}: the facts about this host's KVM that decide what the VMM can do here. */
final class InfoCommand implements Cli.Command {
    Path device;

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec("info", "Show what this host's KVM offers and which capabilities the VMM relies on.")
                .option("--kvm-device", "PATH", "/dev/kvm", "KVM device", v -> device = Path.of(v));
    }

    @Override
    public int call(Cli.Io io) {
        var out = io.out();
        try (var kvm = openKvm(device);
                var arena = Arena.ofConfined()) {
            var flavour = Kvm.hostFlavour();
            out.printf("panama-vmm %s%n", Main.version());
            out.printf("%-16s%s%n", "KVM device", device);
            out.printf("%-16s%d%n", "API version", kvm.apiVersion());
            out.printf(
                    "%-16s%s%s%n",
                    "host flavour", flavour, flavour.module().isEmpty() ? "" : " (" + flavour.module() + ")");
            out.printf("%-16s%d recommended, %d max%n", "vCPUs", kvm.recommendedVcpus(), kvm.maxVcpus());
            out.printf("%-16s%d%n", "memslots", kvm.maxMemslots());
            out.printf("%-16s%d bytes%n", "vCPU mmap size", kvm.vcpuMmapSize());
            try (var vm = kvm.createVm(arena)) {
                int xsave2 = vm.checkExtension(KvmConstants.KVM_CAP_XSAVE2);
                out.printf("%-16s%s%n", "XSAVE size", xsave2 > 0 ? xsave2 + " bytes" : "4096 bytes (no XSAVE2)");
            }
            out.printf("%-16s%d%n", "CPUID entries", KvmCpuid2.nent(kvm.supportedCpuid(arena)));
            out.printf("%-16s%d%n", "MSRs to save", kvm.msrIndexList().length);
            out.println("capabilities the VMM relies on:");
            int missingRequired = 0;
            for (var cap : Capability.values()) {
                int value = kvm.checkExtension(cap.number());
                String state = value > 0 ? "present" : cap.required() ? "MISSING" : "missing";
                if (value <= 0 && cap.required()) missingRequired++;
                out.printf(
                        "  %-8s %-34s %s%s%n",
                        state, cap.capName(), cap.purpose(), cap.required() ? "" : " (optional)");
            }
            if (missingRequired > 0) {
                out.printf(
                        "this host lacks %d required capabilit%s: VMs cannot start here%n",
                        missingRequired, missingRequired == 1 ? "y" : "ies");
            }
            out.flush();
            return Main.OK;
        }
    }

    /** Opens the KVM device, turning the usual reasons it cannot be opened into one clear sentence. */
    static Kvm openKvm(Path device) {
        try {
            return Kvm.open(device);
        } catch (KvmException e) {
            int errno = e.errno();
            if (errno == LibcConstants.ENOENT) {
                throw new KvmException(
                        "open " + device,
                        "it does not exist: this host has no KVM "
                                + "(load kvm_intel, kvm_amd or kvm_pvm, or enable nested virtualisation)");
            }
            if (errno == LibcConstants.EACCES || errno == LibcConstants.EPERM) {
                throw new KvmException(
                        "open " + device,
                        "permission denied (run as root or join the group that owns " + device + ", usually 'kvm')");
            }
            throw e;
        }
    }
}
