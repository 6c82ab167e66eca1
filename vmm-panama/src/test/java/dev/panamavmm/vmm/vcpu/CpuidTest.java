package dev.panamavmm.vmm.vcpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.KvmCpuidEntry2;
import dev.panamavmm.kvm.testing.KvmTest;
import java.lang.foreign.Arena;

/** The topology a guest reads from CPUID is the VM's, and KVM accepts the table. */
class CpuidTest {

    @KvmTest
    void eachVcpuSeesItsApicIdAndTheVmsCoreCount() {
        try (var kvm = Kvm.open();
                var arena = Arena.ofShared();
                var vm = kvm.createVm(arena)) {
            var supported = kvm.supportedCpuid(arena);
            for (int i = 0; i < 3; i++) {
                var table = Cpuid.forVcpu(supported, i, 3, arena);
                var leaf1 = Cpuid.find(table, 1, 0);
                assertNotNull(leaf1);
                assertEquals(i, KvmCpuidEntry2.ebx(leaf1) >>> 24, "APIC ID");
                assertEquals(3, (KvmCpuidEntry2.ebx(leaf1) >>> 16) & 0xff, "logical processors");
                assertNotEquals(0, KvmCpuidEntry2.ecx(leaf1) & Cpuid.HYPERVISOR_BIT);
                assertNotEquals(0, KvmCpuidEntry2.edx(leaf1) & Cpuid.HTT_BIT);
                var core = Cpuid.find(table, 0xb, 1);
                if (core != null) {
                    assertEquals(3, KvmCpuidEntry2.ebx(core) & 0xffff, "cores at the core level");
                    assertEquals(2, KvmCpuidEntry2.eax(core) & 0x1f, "APIC ID bits below the package");
                    assertEquals(i, KvmCpuidEntry2.edx(core), "x2APIC ID");
                }
                try (var vcpu = vm.createVcpu(i)) {
                    vcpu.setCpuid2(table); // KVM validates the table
                }
            }
            var single = Cpuid.find(Cpuid.forVcpu(supported, 0, 1, arena), 1, 0);
            assertEquals(0, KvmCpuidEntry2.edx(single) & Cpuid.HTT_BIT, "no HTT with one vCPU");
        }
    }
}
