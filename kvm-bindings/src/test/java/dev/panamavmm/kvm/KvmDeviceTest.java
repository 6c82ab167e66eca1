package dev.panamavmm.kvm;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmCpuid2;
import dev.panamavmm.kvm.bindings.KvmIoapicState;
import dev.panamavmm.kvm.bindings.KvmIrqchip;
import dev.panamavmm.kvm.bindings.KvmRegs;
import dev.panamavmm.kvm.bindings.KvmRun;
import dev.panamavmm.kvm.bindings.KvmSegment;
import dev.panamavmm.kvm.bindings.KvmSregs;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.kvm.testing.RealModeGuest;
import java.lang.foreign.Arena;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** The typed layer on a real /dev/kvm: VMs, vCPUs, register state and exits from real guest code. */
class KvmDeviceTest {

    @KvmTest
    void reportsTheHostsFacts() {
        try (var kvm = Kvm.open();
                var arena = Arena.ofConfined()) {
            assertEquals(12, kvm.apiVersion());
            assertTrue(kvm.vcpuMmapSize() >= KvmRun.BYTE_SIZE, "kvm_run must fit the vCPU mapping");
            assertTrue(kvm.maxVcpus() >= kvm.recommendedVcpus());
            assertTrue(kvm.hasExtension(KvmConstants.KVM_CAP_USER_MEMORY));
            assertTrue(KvmCpuid2.nent(kvm.supportedCpuid(arena)) > 0);
            assertTrue(kvm.msrIndexList().length > 0);
            assertNotEquals(HostFlavour.UNKNOWN, Kvm.hostFlavour());
        }
    }

    @KvmTest
    void registersSetAreRegistersGot() {
        try (var kvm = Kvm.open();
                var arena = Arena.ofShared();
                var vm = kvm.createVm(arena);
                var vcpu = vm.createVcpu(0)) {
            var regs = arena.allocate(KvmRegs.LAYOUT);
            vcpu.getRegs(regs);
            long[] values = {
                0x1111,
                0x2222,
                0x3333,
                0x4444,
                0x5555,
                0x6666,
                0x7000,
                0x8888,
                8,
                9,
                10,
                11,
                12,
                13,
                14,
                0x0f0f_0f0f_0f0f_0f0fL
            };
            for (int i = 0; i < values.length; i++) regs.set(ValueLayout.JAVA_LONG, 8L * i, values[i]);
            KvmRegs.rip(regs, 0x1234);
            KvmRegs.rflags(regs, 0x2 | 0x200);
            vcpu.setRegs(regs);
            var back = arena.allocate(KvmRegs.LAYOUT);
            vcpu.getRegs(back);
            assertArrayEquals(regs.toArray(JAVA_BYTE), back.toArray(JAVA_BYTE));

            var sregs = arena.allocate(KvmSregs.LAYOUT);
            vcpu.getSregs(sregs);
            var ds = KvmSregs.ds(sregs);
            KvmSegment.base(ds, 0x10000);
            KvmSegment.selector(ds, 0x1000);
            KvmSregs.cr2(sregs, 0xdead000);
            vcpu.setSregs(sregs);
            var sback = arena.allocate(KvmSregs.LAYOUT);
            vcpu.getSregs(sback);
            assertEquals(0x10000, KvmSegment.base(KvmSregs.ds(sback)));
            assertEquals(0x1000, KvmSegment.selector(KvmSregs.ds(sback)));
            assertEquals(0xdead000, KvmSregs.cr2(sback));
            assertEquals(KvmSregs.cr0(sregs), KvmSregs.cr0(sback));
        }
    }

    /**
     * Real-mode guest code: two OUTs to the serial port, a store to an address outside any
     * memslot, then HLT. Each must come back as the matching exit, decoded from kvm_run.
     */
    @KvmTest
    void guestCodeExitsToTheVmm() {
        byte[] code = {
            (byte) 0xba,
            (byte) 0xf8,
            0x03, // mov dx, 0x3f8
            (byte) 0xb0,
            'A',
            (byte) 0xee, // mov al, 'A'; out dx, al
            (byte) 0xb0,
            'B',
            (byte) 0xee, // mov al, 'B'; out dx, al
            (byte) 0xc6,
            0x06,
            0x00,
            0x30,
            0x42, // mov byte [0x3000], 0x42  (no memslot: MMIO)
            (byte) 0xf4 // hlt
        };
        try (var kvm = Kvm.open();
                var arena = Arena.ofShared();
                var vm = kvm.createVm(arena)) {
            try (var vcpu = RealModeGuest.load(vm, arena, code)) {
                var run = vcpu.runPage();
                for (char expected : new char[] {'A', 'B'}) {
                    assertEquals(0, vcpu.run());
                    assertEquals(KvmConstants.KVM_EXIT_IO, KvmRun.exitReason(run));
                    assertEquals(KvmConstants.KVM_EXIT_IO_OUT, KvmRun.ioDirection(run));
                    assertEquals(0x3f8, KvmRun.ioPort(run));
                    assertEquals(1, KvmRun.ioSize(run));
                    assertEquals(1, KvmRun.ioCount(run));
                    assertEquals(expected, (char) run.get(JAVA_BYTE, KvmRun.ioDataOffset(run)));
                }
                assertEquals(0, vcpu.run());
                assertEquals(KvmConstants.KVM_EXIT_MMIO, KvmRun.exitReason(run));
                assertEquals(0x3000, KvmRun.mmioPhysAddr(run));
                assertEquals(1, KvmRun.mmioIsWrite(run));
                assertEquals(1, KvmRun.mmioLen(run));
                assertEquals(0x42, KvmRun.mmioData(run, 0));

                assertEquals(0, vcpu.run());
                assertEquals(KvmConstants.KVM_EXIT_HLT, KvmRun.exitReason(run));
            }
        }
    }

    @KvmTest
    void anIoctlOnAClosedFdReportsEbadf() {
        var kvm = Kvm.open();
        kvm.close();
        var e = assertThrows(KvmException.class, () -> kvm.checkExtension(KvmConstants.KVM_CAP_IRQCHIP));
        assertEquals(LibcConstants.EBADF, e.errno());
        assertEquals("KVM_CHECK_EXTENSION", e.call());
        assertEquals("KVM_CHECK_EXTENSION failed: EBADF (Bad file descriptor)", e.getMessage());
    }

    @Test
    void aFileThatIsNotKvmIsRefusedWithItsName() throws Exception {
        var file = Files.createTempFile("not-kvm", ".bin");
        try {
            var e = assertThrows(KvmException.class, () -> Kvm.open(file));
            assertEquals(
                    file + " is not a KVM device (ENOTTY (Inappropriate ioctl for device))",
                    e.getMessage().substring("KVM_GET_API_VERSION failed: ".length()));
        } finally {
            Files.delete(file);
        }
    }

    @Test
    void aMissingDeviceReportsEnoent() {
        var e = assertThrows(KvmException.class, () -> Kvm.open(Path.of("/nonexistent/kvm")));
        assertEquals(LibcConstants.ENOENT, e.errno());
        assertEquals("open /nonexistent/kvm failed: ENOENT (No such file or directory)", e.getMessage());
    }

    @Test
    void ioctlNamesAppearInErrors() {
        assertEquals("KVM_RUN", Ioctls.name(Ioctls.KVM_RUN));
        assertEquals("ioctl 0x1", Ioctls.name(1));
    }

    /**
     * KVM_IRQ_LINE levels reach the in-kernel IOAPIC for the right pin (its IRR bit; the pins
     * are masked after reset, so nothing is delivered and the bit just follows the line), also
     * when several threads drive their own lines at once.
     */
    @KvmTest
    void irqLineLevelsReachTheIoapicPin() throws Exception {
        try (var kvm = Kvm.open();
                var arena = Arena.ofShared();
                var vm = kvm.createVm(arena)) {
            vm.createIrqchip();
            for (int irq : new int[] {4, 0, 23}) {
                vm.irqLine(irq, true);
                assertEquals(1 << irq, ioapicIrr(vm, arena), "IRR after raising line " + irq);
                vm.irqLine(irq, false);
                assertEquals(0, ioapicIrr(vm, arena), "IRR after lowering line " + irq);
            }

            int[] lines = {3, 4, 10, 11};
            var threads = new Thread[lines.length];
            for (int t = 0; t < lines.length; t++) {
                int irq = lines[t];
                boolean last = t % 2 == 0;
                threads[t] = Thread.ofPlatform().start(() -> {
                    for (int i = 0; i < 20_000; i++) vm.irqLine(irq, i % 2 == 0);
                    vm.irqLine(irq, last);
                });
            }
            for (var thread : threads) thread.join();
            assertEquals(1 << 3 | 1 << 10, ioapicIrr(vm, arena));

            var e = assertThrows(IllegalArgumentException.class, () -> vm.irqLine(-1, true));
            assertEquals("interrupt line -1 is outside 0 to 4095", e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> vm.irqLine(4096, true));
        }
    }

    private static int ioapicIrr(VmFd vm, Arena arena) {
        var chip = arena.allocate(KvmIrqchip.LAYOUT);
        KvmIrqchip.chipId(chip, KvmConstants.KVM_IRQCHIP_IOAPIC);
        vm.ioctl(Ioctls.KVM_GET_IRQCHIP, chip);
        return KvmIoapicState.irr(chip.asSlice(KvmIrqchip.CHIP, KvmIoapicState.LAYOUT));
    }
}
