package dev.panamavmm.vmm.state;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.vmm.vcpu.Cpuid;
import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.stream.IntStream;

/**
 * A vCPU state saved on another kind of CPU holds MSRs this host's KVM does not have, or values
 * it refuses: a restore leaves them out, writes every other MSR and says which it left out.
 */
class KvmStateTest {
    private static final int SYSENTER_CS = 0x174;
    /** An index no KVM lists. */
    private static final int NO_SUCH_MSR = 0x4b56_4eff;
    /** IA32_ARCH_CAPABILITIES: every bit set is more than any host's KVM offers, wherever it is listed. */
    private static final int ARCH_CAPABILITIES = 0x10a;

    @KvmTest
    void msrsTheHostLacksOrRefusesAreLeftOutAndTheRestWritten() {
        try (var kvm = Kvm.open();
                var arena = Arena.ofShared();
                var vm = kvm.createVm(arena)) {
            vm.createIrqchip();
            int xsave = Math.max(vm.checkExtension(KvmConstants.KVM_CAP_XSAVE2), 4096);
            int[] host = kvm.msrIndexList();
            Arrays.sort(host);
            try (var source = vm.createVcpu(0);
                    var target = vm.createVcpu(1)) {
                source.setCpuid2(Cpuid.forVcpu(kvm.supportedCpuid(arena), 0, 2, arena));
                target.setCpuid2(Cpuid.forVcpu(kvm.supportedCpuid(arena), 1, 2, arena));
                var saved = KvmState.capture(source, new int[] {SYSENTER_CS}, xsave);
                var foreign = new VcpuState(
                        1,
                        saved.regs(),
                        saved.sregs(),
                        saved.xsave(),
                        saved.xcrs(),
                        saved.lapic(),
                        new int[] {NO_SUCH_MSR, ARCH_CAPABILITIES, SYSENTER_CS},
                        new long[] {1, -1L, 0x23},
                        saved.events(),
                        saved.mpState(),
                        saved.debugregs());

                int[] leftOut = KvmState.restore(target, foreign, xsave, host);

                // Refused (with every bit set) where the host's KVM checks the value, as on this machine; left
                // out before writing where it is not listed at all.
                assertArrayEquals(
                        new int[] {ARCH_CAPABILITIES, NO_SUCH_MSR},
                        IntStream.of(leftOut).sorted().toArray());
                var written = KvmState.capture(target, new int[] {SYSENTER_CS}, xsave);
                assertEquals(0x23, written.msrValues()[0], "the MSR after the refused ones was written");
            }
        }
    }
}
