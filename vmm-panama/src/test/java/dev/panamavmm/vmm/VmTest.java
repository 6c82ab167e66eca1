package dev.panamavmm.vmm;

import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.HostFlavour;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.vmm.boot.BootProtocol;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.ByteArrayOutputStream;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

/** The VM core with hand-assembled 64-bit guests entered through the Linux boot path. */
class VmTest {
    /** mov dx, 0x3f8; mov al, 'H'; out dx, al; mov al, 'i'; out dx, al; mov al, '\n'; out dx, al */
    static final byte[] PRINT_HI = {
        0x66,
        (byte) 0xba,
        (byte) 0xf8,
        0x03,
        (byte) 0xb0,
        'H',
        (byte) 0xee,
        (byte) 0xb0,
        'i',
        (byte) 0xee,
        (byte) 0xb0,
        '\n',
        (byte) 0xee
    };
    /** mov dx, 0x500; mov eax, CODE; out dx, eax; jmp $ */
    static byte[] exitWith(int code) {
        return new byte[] {
            0x66,
            (byte) 0xba,
            0x00,
            0x05,
            (byte) 0xb8,
            (byte) code,
            (byte) (code >> 8),
            (byte) (code >> 16),
            (byte) (code >> 24),
            (byte) 0xef,
            (byte) 0xeb,
            (byte) 0xfe
        };
    }

    static byte[] concat(byte[]... parts) {
        var out = new ByteArrayOutputStream();
        for (var p : parts) out.writeBytes(p);
        return out.toByteArray();
    }

    static MachineConfig config(byte[] code, int cpus, boolean startAll) {
        return new MachineConfig(
                64 * GuestMemory.MIB,
                cpus,
                new Backing.Memfd(),
                "tiny",
                TinyElf.of(code, startAll),
                null,
                "console=ttyS0");
    }

    static VmExitReason runToEnd(MachineConfig config, ByteArrayOutputStream console) throws Exception {
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(kvm, config, console, new VmListener() {})) {
            vm.start();
            return vm.termination().get(30, TimeUnit.SECONDS);
        }
    }

    @KvmTest
    void guestPrintsAndExitsWithItsCode() throws Exception {
        var console = new ByteArrayOutputStream();
        var reason = runToEnd(config(concat(PRINT_HI, exitWith(7)), 1, false), console);
        assertEquals(new VmExitReason.GuestExit(7), reason);
        assertEquals(7, reason.exitCode());
        assertEquals("Hi\n", console.toString());
    }

    /**
     * 32-bit code for the PVH entry: checks the start info's magic at [EBX], prints 'P' and the
     * first byte of the command line it points to, exits with 7; exits with 99 if the magic is
     * not there (as when the same code is entered in 64-bit mode with RBX = 0).
     */
    static final byte[] PVH_PROBE = {
        (byte) 0x8b,
        0x03, // mov eax, [ebx]
        0x3d,
        0x78,
        (byte) 0xc5,
        0x6e,
        0x33, // cmp eax, 0x336ec578
        0x75,
        0x1c, // jne bad
        0x66,
        (byte) 0xba,
        (byte) 0xf8,
        0x03, // mov dx, 0x3f8
        (byte) 0xb0,
        'P',
        (byte) 0xee, // mov al, 'P'; out dx, al
        (byte) 0x8b,
        0x43,
        0x18, // mov eax, [ebx + 24] (cmdline_paddr)
        (byte) 0x8a,
        0x00,
        (byte) 0xee, // mov al, [eax]; out dx, al
        (byte) 0xb0,
        '\n',
        (byte) 0xee, // mov al, '\n'; out dx, al
        0x66,
        (byte) 0xba,
        0x00,
        0x05,
        (byte) 0xb8,
        7,
        0,
        0,
        0,
        (byte) 0xef,
        (byte) 0xeb,
        (byte) 0xfe, // exit 7
        0x66,
        (byte) 0xba,
        0x00,
        0x05,
        (byte) 0xb8,
        99,
        0,
        0,
        0,
        (byte) 0xef,
        (byte) 0xeb,
        (byte) 0xfe, // bad: exit 99
    };

    @KvmTest
    void pvhEntryStartsIn32BitModeWithTheStartInfoInEbx() throws Exception {
        var console = new ByteArrayOutputStream();
        var pvh = new MachineConfig(
                64 * GuestMemory.MIB,
                1,
                new Backing.Memfd(),
                "pvh",
                TinyElf.withPvhEntry(PVH_PROBE),
                null,
                "console=ttyS0");
        assertEquals(new VmExitReason.GuestExit(7), runToEnd(pvh, console));
        assertEquals("Pc\n", console.toString());

        var linux64 = new MachineConfig(
                64 * GuestMemory.MIB,
                1,
                new Backing.Memfd(),
                "pvh",
                TinyElf.withPvhEntry(PVH_PROBE),
                null,
                "console=ttyS0",
                BootProtocol.LINUX64);
        assertEquals(
                new VmExitReason.GuestExit(99),
                runToEnd(linux64, new ByteArrayOutputStream()),
                "the 64-bit entry has no start info in RBX");
    }

    @KvmTest
    void unknownPortsAndAddressesAreIgnoredAndTheGuestGoesOn() throws Exception {
        byte[] code = concat(
                new byte[] {(byte) 0xe4, (byte) 0xf0}, // in al, 0xf0 (nobody there)
                new byte[] {(byte) 0xa2, 0, 0, 0, (byte) 0xd0, 0, 0, 0, 0}, // movabs [0xd0000000], al (not RAM)
                new byte[] {(byte) 0x3c, (byte) 0xff, 0x75, 0x02}, // cmp al, 0xff; jne +2 (all ones expected)
                exitWith(3),
                exitWith(4));
        assertEquals(new VmExitReason.GuestExit(3), runToEnd(config(code, 1, false), new ByteArrayOutputStream()));
    }

    @KvmTest
    void i8042ResetEndsTheVm() throws Exception {
        byte[] code = {(byte) 0xb0, (byte) 0xfe, (byte) 0xe6, 0x64, (byte) 0xeb, (byte) 0xfe
        }; // mov al, 0xfe; out 0x64, al
        assertInstanceOf(VmExitReason.Reset.class, runToEnd(config(code, 1, false), new ByteArrayOutputStream()));
    }

    @KvmTest
    void aTripleFaultIsAShutdownWithItsReason() throws Exception {
        // lidt [0x600] (a zero-limit IDT in zeroed low memory), then ud2: #UD -> #DF -> triple fault.
        byte[] code = {0x0f, 0x01, 0x1c, 0x25, 0x00, 0x06, 0x00, 0x00, 0x0f, 0x0b};
        var reason = runToEnd(config(code, 1, false), new ByteArrayOutputStream());
        var shutdown = assertInstanceOf(VmExitReason.Shutdown.class, reason);
        assertTrue(shutdown.how().startsWith("triple fault on vCPU 0 at RIP 0x"), shutdown.how());
        assertEquals(1, reason.exitCode());
    }

    /**
     * cmpxchg16b at CPL0: PVM's instruction emulator lacks it, so KVM reports an emulation failure,
     * which must end the VM with the details; on VMX/SVM it runs natively and the guest exits.
     */
    @KvmTest
    void anEmulationFailureEndsTheVmWithItsDetails() throws Exception {
        byte[] code = concat(
                new byte[] {0x48, (byte) 0xc7, (byte) 0xc6, 0x00, 0x00, 0x20, 0x00
                }, // mov rsi, 0x200000 (16-byte aligned)
                new byte[] {0x48, 0x0f, (byte) 0xc7, 0x0e}, // cmpxchg16b [rsi]
                exitWith(9));
        var reason = runToEnd(config(code, 1, false), new ByteArrayOutputStream());
        if (Kvm.hostFlavour() == HostFlavour.PVM) {
            var failed = assertInstanceOf(VmExitReason.Failed.class, reason);
            assertTrue(
                    failed.message()
                            .matches(
                                    "KVM internal error on vCPU 0: emulation failure \\(suberror 1\\) at RIP 0x100007.*"),
                    failed.message());
            assertEquals(1, reason.exitCode());
        } else {
            assertEquals(new VmExitReason.GuestExit(9), reason);
        }
    }

    @KvmTest
    void pauseStopsTheGuestAndResumeContinuesIt() throws Exception {
        // loop: inc qword [0x200000]; jmp loop
        byte[] code = {0x48, (byte) 0xff, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, (byte) 0xeb, (byte) 0xf6};
        var stops = new java.util.concurrent.atomic.AtomicInteger();
        var listener = new VmListener() {
            @Override
            public void paused() {
                stops.incrementAndGet();
            }
        };
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(kvm, config(code, 1, false), new ByteArrayOutputStream(), listener)) {
            vm.start();
            var counter = vm.memory().slice(0x200000, 8);
            waitUntil(() -> counter.get(JAVA_LONG, 0) > 100);
            vm.pause();
            long paused = counter.get(JAVA_LONG, 0);
            Thread.sleep(100);
            assertEquals(paused, counter.get(JAVA_LONG, 0), "no guest code runs while paused");
            vm.pause(); // a save of a paused VM pauses it again: one STOP, as QEMU sends
            assertEquals(1, stops.get(), "STOP events");
            vm.resume();
            waitUntil(() -> counter.get(JAVA_LONG, 0) > paused + 100);
            vm.pause();
            assertEquals(2, stops.get(), "STOP events after a resume and a pause");
            vm.resume();
            vm.end(new VmExitReason.Stopped("test"));
            assertEquals(new VmExitReason.Stopped("test"), vm.termination().get(10, TimeUnit.SECONDS));
        }
    }

    @KvmTest
    void everyVcpuEntersWhenTheImageAsks() throws Exception {
        // Each vCPU: lock inc qword [0x200000]; then vCPU... spin. The VMM starts all three at the entry.
        byte[] code = {(byte) 0xf0, 0x48, (byte) 0xff, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, (byte) 0xeb, (byte) 0xfe};
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(kvm, config(code, 3, true), new ByteArrayOutputStream(), new VmListener() {})) {
            vm.start();
            var counter = vm.memory().slice(0x200000, 8);
            waitUntil(() -> counter.get(JAVA_LONG, 0) == 3);
        }
        try (var kvm = Kvm.open();
                var vm =
                        VmBuilder.boot(kvm, config(code, 3, false), new ByteArrayOutputStream(), new VmListener() {})) {
            vm.start();
            var counter = vm.memory().slice(0x200000, 8);
            waitUntil(() -> counter.get(JAVA_LONG, 0) == 1);
            Thread.sleep(200);
            assertEquals(
                    1, counter.get(JAVA_LONG, 0), "without the note only the boot CPU runs (APs wait for INIT/SIPI)");
        }
    }

    static void waitUntil(BooleanSupplier condition) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (!condition.getAsBoolean()) {
            if (System.nanoTime() > deadline) throw new AssertionError("condition not reached in 20 s");
            Thread.sleep(5);
        }
    }
}
