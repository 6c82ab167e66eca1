package dev.panamavmm.vmm;

import static dev.panamavmm.devices.virtio.VirtioMmio.*;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;
import static org.junit.jupiter.api.Assertions.*;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmIoapicState;
import dev.panamavmm.kvm.bindings.KvmIrqchip;
import dev.panamavmm.kvm.bindings.KvmLapicState;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.ByteArrayOutputStream;
import java.lang.foreign.Arena;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.io.TempDir;

/**
 * virtio-blk and virtio-rng on real KVM. The test thread is the driver: it negotiates through the
 * MMIO bus (the path a vCPU's MMIO exits take) and builds the rings in guest RAM; a tiny guest rings
 * the doorbell with a real MMIO write to QueueNotify, which KVM turns into an ioeventfd signal, so
 * the device thread, the disk's preadv/pwritev, the used ring and the irqfd are the real ones.
 */
class VirtioKvmTest {
    /** Where the guest looks for the doorbell address to write (0 = nothing to do). */
    static final long MAILBOX = 0x200000;

    static final long DESC = 0x300000, AVAIL = 0x301000, USED = 0x302000, HEADER = 0x303000, DATA = 0x310000;
    static final int QUEUE = 128;

    /**
     * loop: mov rax, [MAILBOX]; out 0x80, al; test rax, rax; jz loop; mov qword [MAILBOX], 0;
     * mov dword [rax], 0; jmp loop. The OUT leaves KVM_RUN on every round, as a real guest's exits
     * do: a VMM ioctl on the vCPU (a live update probes its MSRs) waits for the vCPU to leave it.
     */
    static final byte[] DOORBELL_GUEST = {
        0x48,
        (byte) 0x8b,
        0x04,
        0x25,
        0x00,
        0x00,
        0x20,
        0x00,
        (byte) 0xe6,
        (byte) 0x80,
        0x48,
        (byte) 0x85,
        (byte) 0xc0,
        0x74,
        (byte) 0xf1,
        0x48,
        (byte) 0xc7,
        0x04,
        0x25,
        0x00,
        0x00,
        0x20,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00,
        (byte) 0xc7,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00,
        (byte) 0xeb,
        (byte) 0xdd
    };

    static MachineConfig config(List<DiskConfig> disks, boolean rng) {
        return new MachineConfig(
                        64 * GuestMemory.MIB,
                        1,
                        new Backing.Memfd(),
                        "doorbell",
                        TinyElf.of(DOORBELL_GUEST, false),
                        null,
                        "console=ttyS0")
                .withVirtio(disks, rng);
    }

    /** A driver of one device of {@code vm}, with one queue at the addresses above (moved by 64 KiB per device slot). */
    record Driver(Vm vm, long base) {
        long at(long address) {
            return address + (base - DeviceTable.VIRTIO_MMIO_BASE) * 16;
        }

        int reg(int offset) {
            return (int) vm.mmioBus().read(base + offset, 4);
        }

        void set(int offset, int value) {
            vm.mmioBus().write(base + offset, 4, Integer.toUnsignedLong(value));
        }

        void start() {
            set(STATUS, 0);
            set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
            set(DRIVER_FEATURES_SEL, 1);
            set(DRIVER_FEATURES, 1); // VERSION_1
            set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
            set(QUEUE_SEL, 0);
            set(QUEUE_NUM, QUEUE);
            set(QUEUE_DESC_LOW, (int) at(DESC));
            set(QUEUE_DRIVER_LOW, (int) at(AVAIL));
            set(QUEUE_DEVICE_LOW, (int) at(USED));
            set(QUEUE_READY, 1);
            set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
            assertEquals(0x0f, reg(STATUS), "the device accepted the driver");
        }

        GuestMemory ram() {
            return vm.memory();
        }

        int usedIdx() {
            return Short.toUnsignedInt(ram().slice(at(USED) + 2, 2).get(JAVA_SHORT_UNALIGNED, 0));
        }

        /** Puts a chain of (address, length, writable) on the ring and has the guest ring the doorbell; waits for it to be used. */
        int[] request(long[][] buffers) throws InterruptedException {
            int avail = Short.toUnsignedInt(ram().slice(at(AVAIL) + 2, 2).get(JAVA_SHORT_UNALIGNED, 0));
            int head = (avail * 4) % QUEUE;
            for (int i = 0; i < buffers.length; i++) {
                var d = ram().slice(at(DESC) + 16L * ((head + i) % QUEUE), 16);
                d.set(JAVA_LONG_UNALIGNED, 0, buffers[i][0]);
                d.set(JAVA_INT_UNALIGNED, 8, (int) buffers[i][1]);
                d.set(JAVA_SHORT_UNALIGNED, 12, (short)
                        ((buffers[i][2] != 0 ? 2 : 0) | (i + 1 < buffers.length ? 1 : 0)));
                d.set(JAVA_SHORT_UNALIGNED, 14, (short) ((head + i + 1) % QUEUE));
            }
            ram().slice(at(AVAIL) + 4 + 2L * (avail % QUEUE), 2).set(JAVA_SHORT_UNALIGNED, 0, (short) head);
            ram().slice(at(AVAIL) + 2, 2).set(JAVA_SHORT_UNALIGNED, 0, (short) (avail + 1));
            int before = usedIdx();
            ram().slice(MAILBOX, 8).set(JAVA_LONG_UNALIGNED, 0, base + QUEUE_NOTIFY);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            while (usedIdx() == before) {
                if (System.nanoTime() > deadline)
                    fail("the request was not used; device error: "
                            + transport().lastError());
                Thread.sleep(1);
            }
            var e = ram().slice(at(USED) + 4 + 8L * (before % QUEUE), 8);
            return new int[] {e.get(JAVA_INT_UNALIGNED, 0), e.get(JAVA_INT_UNALIGNED, 4)};
        }

        dev.panamavmm.devices.virtio.VirtioMmio transport() {
            return vm.virtioDevices().stream()
                    .filter(h -> h.slot().address() == base)
                    .findFirst()
                    .orElseThrow()
                    .transport();
        }

        /** A block request of {@code type} at {@code sector} with {@code length} bytes at at(DATA); returns the status. */
        int block(int type, long sector, int length, boolean deviceWrites) throws InterruptedException {
            var h = ram().slice(at(HEADER), 16);
            h.set(JAVA_INT_UNALIGNED, 0, type);
            h.set(JAVA_LONG_UNALIGNED, 8, sector);
            ram().slice(at(HEADER) + 0x100, 1).set(JAVA_BYTE, 0, (byte) 0x7f);
            var used = request(new long[][] {
                {at(HEADER), 16, 0}, {at(DATA), length, deviceWrites ? 1 : 0}, {at(HEADER) + 0x100, 1, 1}
            });
            assertEquals(deviceWrites ? length + 1 : 1, used[1], "used length");
            return ram().slice(at(HEADER) + 0x100, 1).get(JAVA_BYTE, 0);
        }
    }

    static Path disk(Path dir) throws Exception {
        var bytes = new byte[1 << 20];
        for (int i = 0; i < bytes.length; i++) bytes[i] = (byte) (i / 512 * 7);
        return Files.write(dir.resolve("disk.raw"), bytes);
    }

    @KvmTest
    void theKernelCommandLineNamesEveryDevice() {
        var c = config(List.of(new DiskConfig(Path.of("a"), false, ""), new DiskConfig(Path.of("b"), true, "x")), true);
        assertEquals(
                "console=ttyS0 virtio_mmio.device=4K@0xc0000000:5 virtio_mmio.device=4K@0xc0001000:6"
                        + " virtio_mmio.device=4K@0xc0002000:7",
                DeviceTable.cmdlineWithVirtio(c.cmdline(), c));
    }

    /**
     * The device's interrupt reaches a CPU: the I/O APIC pin of the disk's GSI routed to vCPU 0 as
     * vector 0x51, its local APIC enabled; after a request the vector is pending there (the
     * doorbell guest runs with interrupts off, so it stays pending). No guest here takes virtio
     * interrupts (the test guest polls), so this is the irqfd path's only end-to-end check.
     */
    @KvmTest
    void aCompletedRequestRaisesTheDisksInterruptOnItsGsi(@TempDir Path dir) throws Exception {
        var file = disk(dir);
        int vector = 0x51;
        try (var kvm = Kvm.open();
                var arena = Arena.ofConfined();
                var vm = VmBuilder.boot(
                        kvm,
                        config(List.of(new DiskConfig(file, false, "")), false),
                        new ByteArrayOutputStream(),
                        new VmListener() {})) {
            var vcpu = vm.vcpuFds().getFirst();
            var lapic = arena.allocate(KvmLapicState.LAYOUT);
            vcpu.ioctl(Ioctls.KVM_GET_LAPIC, lapic);
            lapic.set(JAVA_INT_UNALIGNED, 0xf0, lapic.get(JAVA_INT_UNALIGNED, 0xf0) | 0x1ff); // SVR: enabled
            vcpu.ioctl(Ioctls.KVM_SET_LAPIC, lapic);
            var chip = arena.allocate(KvmIrqchip.LAYOUT);
            KvmIrqchip.chipId(chip, KvmConstants.KVM_IRQCHIP_IOAPIC);
            vm.vmFd().ioctl(Ioctls.KVM_GET_IRQCHIP, chip);
            // Fixed delivery to APIC ID 0, physical, edge, active high, unmasked.
            chip.set(
                    JAVA_LONG_UNALIGNED,
                    KvmIrqchip.CHIP + KvmIoapicState.REDIRTBL + 8L * DeviceTable.VIRTIO_FIRST_GSI,
                    vector);
            vm.vmFd().ioctl(Ioctls.KVM_SET_IRQCHIP, chip);
            vm.start();
            var blk = new Driver(vm, DeviceTable.VIRTIO_MMIO_BASE);
            blk.start();
            assertEquals(0, blk.block(0, 1, 512, true), "IN");
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            int irr;
            do {
                vcpu.ioctl(Ioctls.KVM_GET_LAPIC, lapic);
                irr = lapic.get(JAVA_INT_UNALIGNED, 0x200 + 0x10 * (vector / 32));
            } while ((irr & (1 << (vector % 32))) == 0 && System.nanoTime() < deadline);
            assertTrue((irr & (1 << (vector % 32))) != 0, "vector 0x51 pending in vCPU 0's local APIC");
        }
    }

    @KvmTest
    void aGuestReadsAndWritesTheDiskAndGetsEntropy(@TempDir Path dir) throws Exception {
        var file = disk(dir);
        try (var kvm = Kvm.open();
                var vm = VmBuilder.boot(
                        kvm,
                        config(List.of(new DiskConfig(file, false, "disk-1")), true),
                        new ByteArrayOutputStream(),
                        new VmListener() {})) {
            vm.start();
            var blk = new Driver(vm, DeviceTable.VIRTIO_MMIO_BASE);
            assertEquals(2, blk.reg(DEVICE_ID));
            assertEquals(2048, vm.mmioBus().read(DeviceTable.VIRTIO_MMIO_BASE + CONFIG, 8), "capacity in sectors");
            blk.start();
            assertEquals(0, blk.block(0, 3, 1024, true), "IN");
            assertEquals(21, blk.ram().slice(blk.at(DATA), 1).get(JAVA_BYTE, 0));
            assertEquals(28, blk.ram().slice(blk.at(DATA) + 512, 1).get(JAVA_BYTE, 0));
            blk.ram().slice(blk.at(DATA), 512).fill((byte) 0x5a);
            assertEquals(0, blk.block(1, 10, 512, false), "OUT");
            assertEquals(0, blk.block(4, 0, 0, false) & 0xff, "FLUSH");
            var onDisk = Files.readAllBytes(file);
            assertEquals(0x5a, onDisk[10 * 512]);
            assertEquals(0x5a, onDisk[11 * 512 - 1]);
            assertEquals((byte) (11 * 7), onDisk[11 * 512]);
            assertEquals(1, blk.reg(INTERRUPT_STATUS) & INTERRUPT_USED, "the used-buffer interrupt was raised");

            var rng = new Driver(vm, DeviceTable.VIRTIO_MMIO_BASE + 0x1000);
            assertEquals(4, rng.reg(DEVICE_ID));
            rng.start();
            rng.ram().slice(rng.at(DATA), 256).fill((byte) 0);
            var used = rng.request(new long[][] {{rng.at(DATA), 256, 1}});
            assertEquals(256, used[1]);
            var bytes = rng.ram().slice(rng.at(DATA), 256).toArray(JAVA_BYTE);
            assertTrue(
                    new String(bytes, StandardCharsets.ISO_8859_1)
                                    .chars()
                                    .distinct()
                                    .count()
                            > 16,
                    "random bytes");
        }
    }

    @KvmTest
    void aSnapshotCarriesTheQueuesAndRefusesADiskThatChanged(@TempDir Path dir) throws Exception {
        var file = disk(dir);
        var snap = dir.resolve("snap");
        try (var kvm = Kvm.open()) {
            try (var vm = VmBuilder.boot(
                    kvm,
                    config(List.of(new DiskConfig(file, false, "")), false),
                    new ByteArrayOutputStream(),
                    new VmListener() {})) {
                vm.start();
                var blk = new Driver(vm, DeviceTable.VIRTIO_MMIO_BASE);
                blk.start();
                assertEquals(0, blk.block(0, 1, 512, true));
                VmSnapshots.save(vm, snap, false, false, dev.panamavmm.migration.RamWriter.Progress.NONE);
            }
            try (var vm = VmSnapshots.restore(kvm, snap, new ByteArrayOutputStream(), new VmListener() {})) {
                var blk = new Driver(vm, DeviceTable.VIRTIO_MMIO_BASE);
                assertEquals(0x0f, blk.reg(STATUS), "the driver's negotiation survived");
                assertEquals(
                        1,
                        vm.virtioDevices()
                                .getFirst()
                                .transport()
                                .state()
                                .queues()
                                .getFirst()
                                .usedIdx());
                vm.start();
                assertEquals(0, blk.block(0, 2, 512, true), "the restored queue goes on");
                assertEquals(14, blk.ram().slice(blk.at(DATA), 1).get(JAVA_BYTE, 0));
                assertEquals(2, blk.usedIdx());
            }
            // The restored guest wrote nothing, but anything that touches the disk makes it another disk.
            Files.write(file, new byte[] {1}, java.nio.file.StandardOpenOption.APPEND);
            var e = assertThrows(SnapshotException.class, () -> VmSnapshots.load(snap));
            assertTrue(
                    e.getMessage().contains("the disk " + file.toAbsolutePath() + " does not match"), e.getMessage());
        }
    }

    @KvmTest
    void aLiveUpdatePassesTheDiskItselfAndTheQueueGoesOn(@TempDir Path dir) throws Exception {
        var file = disk(dir);
        try (var kvm = Kvm.open()) {
            Vm source = VmBuilder.boot(
                    kvm,
                    config(List.of(new DiskConfig(file, false, "")), true),
                    new ByteArrayOutputStream(),
                    new VmListener() {});
            Vm destination = null;
            try {
                source.start();
                var blk = new Driver(source, DeviceTable.VIRTIO_MMIO_BASE);
                blk.start();
                blk.ram().slice(blk.at(DATA), 512).fill((byte) 0x11);
                assertEquals(0, blk.block(1, 4, 512, false));
                // Under another name, the path in the source's config no longer opens: the destination must use the fd.
                var moved = Files.move(file, dir.resolve("moved.raw"));
                var socket = dir.resolve("m.sock");
                var next = LocalMigrationTest.incoming(kvm, socket, new SnapshotTest.Console(), null);
                LocalMigrationTest.awaitSocket(socket);
                LocalMigration.send(source, socket, 10);
                source.close();
                destination = next.get(10, TimeUnit.SECONDS);
                var after = new Driver(destination, DeviceTable.VIRTIO_MMIO_BASE);
                assertEquals(0x0f, after.reg(STATUS));
                after.ram().slice(after.at(DATA), 512).fill((byte) 0x22);
                assertEquals(0, after.block(1, 5, 512, false), "the destination writes through the passed fd");
                assertEquals(0, after.block(0, 4, 512, true));
                assertEquals(0x11, after.ram().slice(after.at(DATA), 1).get(JAVA_BYTE, 0));
                assertEquals(3, after.usedIdx(), "each request used exactly once across the update");
                var onDisk = Files.readAllBytes(moved);
                assertEquals(0x11, onDisk[4 * 512]);
                assertEquals(0x22, onDisk[5 * 512]);
            } finally {
                source.close();
                if (destination != null) destination.close();
            }
        }
    }

    @KvmTest
    void aWritableDiskHasOneVmAtATime(@TempDir Path dir) throws Exception {
        var file = disk(dir);
        var out = new ByteArrayOutputStream();
        try (var kvm = Kvm.open();
                var first = VmBuilder.boot(
                        kvm, config(List.of(new DiskConfig(file, false, "")), false), out, new VmListener() {})) {
            var e = assertThrows(
                    dev.panamavmm.vmm.memory.MemoryException.class,
                    () -> VmBuilder.boot(
                            kvm, config(List.of(new DiskConfig(file, true, "")), false), out, new VmListener() {}));
            assertEquals(
                    "disk " + file + " is in use by PID "
                            + ProcessHandle.current().pid(),
                    e.getMessage());
            assertEquals(1, first.disks().size(), "the first VM keeps its disk");
        }
        try (var kvm = Kvm.open();
                var a = VmBuilder.boot(
                        kvm, config(List.of(new DiskConfig(file, true, "")), false), out, new VmListener() {});
                var b = VmBuilder.boot(
                        kvm, config(List.of(new DiskConfig(file, true, "")), false), out, new VmListener() {})) {
            assertEquals(2, a.disks().size() + b.disks().size(), "read-only users share the disk");
        }
    }

    /**
     * 32 reads of 64 KiB made available at once, and the VM saved at once: whatever was in flight
     * completes before the state is taken, so each request is either used or still available in the
     * snapshot, and after the restore every one is used exactly once with the right bytes.
     */
    @KvmTest
    void requestsInFlightAtASaveCompleteExactlyOnceAfterTheRestore(@TempDir Path dir) throws Exception {
        saveWithRequests(dir.resolve("rung"), true); // the device has taken them: in flight while the VM pauses
        saveWithRequests(dir.resolve("silent"), false); // available but never notified: the restored device takes them
    }

    private static void saveWithRequests(Path dir, boolean ringDoorbell) throws Exception {
        Files.createDirectories(dir);
        int n = 32, size = 64 * 1024;
        var bytes = new byte[n * size];
        for (int i = 0; i < bytes.length; i++) bytes[i] = (byte) (i / 512 + i / size);
        var file = Files.write(dir.resolve("disk.raw"), bytes);
        var snap = dir.resolve("snap");
        try (var kvm = Kvm.open()) {
            try (var vm = VmBuilder.boot(
                    kvm,
                    config(List.of(new DiskConfig(file, false, "")), false),
                    new ByteArrayOutputStream(),
                    new VmListener() {})) {
                vm.start();
                var blk = new Driver(vm, DeviceTable.VIRTIO_MMIO_BASE);
                blk.start();
                var ram = vm.memory();
                // Silent: the requests appear while the VM is paused, as if the guest wrote them just before
                // and never notified (a device thread still busy with the start's look at the rings cannot take
                // them either).
                if (!ringDoorbell) vm.pause();
                for (int i = 0; i < n; i++) {
                    long header = blk.at(HEADER) + 32L * i;
                    ram.slice(header, 16).set(JAVA_INT_UNALIGNED, 0, 0);
                    ram.slice(header, 16).set(JAVA_LONG_UNALIGNED, 8, (long) i * size / 512);
                    ram.slice(header + 16, 1).set(JAVA_BYTE, 0, (byte) 0x7f);
                    long[][] chain = {{header, 16, 0}, {blk.at(DATA) + (long) i * size, size, 1}, {header + 16, 1, 1}};
                    for (int d = 0; d < 3; d++) {
                        var desc = ram.slice(blk.at(DESC) + 16L * (3 * i + d), 16);
                        desc.set(JAVA_LONG_UNALIGNED, 0, chain[d][0]);
                        desc.set(JAVA_INT_UNALIGNED, 8, (int) chain[d][1]);
                        desc.set(JAVA_SHORT_UNALIGNED, 12, (short) ((chain[d][2] != 0 ? 2 : 0) | (d < 2 ? 1 : 0)));
                        desc.set(JAVA_SHORT_UNALIGNED, 14, (short) (3 * i + d + 1));
                    }
                    ram.slice(blk.at(AVAIL) + 4 + 2L * i, 2).set(JAVA_SHORT_UNALIGNED, 0, (short) (3 * i));
                }
                ram.slice(blk.at(AVAIL) + 2, 2).set(JAVA_SHORT_UNALIGNED, 0, (short) n);
                if (ringDoorbell) {
                    ram.slice(MAILBOX, 8).set(JAVA_LONG_UNALIGNED, 0, DeviceTable.VIRTIO_MMIO_BASE + QUEUE_NOTIFY);
                    while (ram.slice(MAILBOX, 8).get(JAVA_LONG_UNALIGNED, 0) != 0) Thread.onSpinWait(); // it rang
                }
                VmSnapshots.save(vm, snap, false, false, dev.panamavmm.migration.RamWriter.Progress.NONE);
                var q = blk.transport().state().queues().getFirst();
                assertEquals(0, blk.transport().inFlight(), "nothing in flight in a saved state");
                assertTrue(q.usedIdx() <= q.lastAvail() && q.lastAvail() <= n, q.toString());
                if (!ringDoorbell) assertEquals(0, q.lastAvail(), "nothing taken without a notification");
                assertEquals(q.usedIdx(), blk.usedIdx(), "what the state says is used is in the used ring");
            }
            try (var vm = VmSnapshots.restore(kvm, snap, new ByteArrayOutputStream(), new VmListener() {})) {
                vm.start(); // looks at the ring: requests the source never took are taken now
                var blk = new Driver(vm, DeviceTable.VIRTIO_MMIO_BASE);
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
                while (blk.usedIdx() != n) {
                    assertTrue(System.nanoTime() < deadline, "used " + blk.usedIdx() + " of " + n);
                    Thread.sleep(1);
                }
                Thread.sleep(50);
                assertEquals(n, blk.usedIdx(), "none used twice");
                var seen = new java.util.HashSet<Integer>();
                for (int i = 0; i < n; i++) {
                    var e = vm.memory().slice(blk.at(USED) + 4 + 8L * i, 8);
                    assertTrue(seen.add(e.get(JAVA_INT_UNALIGNED, 0)), "head used twice");
                    assertEquals(size + 1, e.get(JAVA_INT_UNALIGNED, 4));
                    assertEquals(
                            0,
                            vm.memory().slice(blk.at(HEADER) + 32L * i + 16, 1).get(JAVA_BYTE, 0));
                    var data = vm.memory()
                            .slice(blk.at(DATA) + (long) i * size, size)
                            .toArray(JAVA_BYTE);
                    assertArrayEquals(
                            java.util.Arrays.copyOfRange(bytes, i * size, (i + 1) * size), data, "request " + i);
                }
            }
        }
    }
}
