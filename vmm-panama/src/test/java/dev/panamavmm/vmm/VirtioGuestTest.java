package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.vmm.memory.Backing;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import org.junit.jupiter.api.io.TempDir;

/**
 * The test guest's own virtio-blk driver hammering its disk (16 requests in flight, half of them
 * writes, each sector's generation kept in guest RAM) through a live update and a save and
 * restore: the guest finds no lost, stale or torn sector, and at the end, paused and drained,
 * every sector of the disk file holds exactly the generation the guest's RAM says.
 */
class VirtioGuestTest {
    static final int SECTORS = 4096; // testguest.blk=size=2M

    @KvmTest
    void theDiskSurvivesALiveUpdateAndARestoreWithRequestsInFlight(@TempDir Path dir) throws Exception {
        var disk = dir.resolve("disk.raw");
        try (var f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(8 << 20);
        }
        var ram = SnapshotTest.shmFile("virtio-guest");
        var console = new SnapshotTest.Console();
        var config = SnapshotTest.guest(
                        2, new Backing.SharedFile(ram), "testguest.hb=100 testguest.blk=size=2M,qd=16,write=50")
                .withVirtio(List.of(new DiskConfig(disk, false, "oracle")), true);
        try (var kvm = Kvm.open()) {
            Vm vm = VmBuilder.boot(kvm, config, console, new VmListener() {});
            try {
                vm.start();
                console.await("hb 0 3", 30);
                Matcher info = TestGuest.BLK_INFO.matcher(console.text());
                assertTrue(info.find(), console.text());
                long table = Long.parseLong(info.group(6), 16);

                // A live update while requests are in flight.
                var socket = dir.resolve("m.sock");
                var next = LocalMigrationTest.incoming(kvm, socket, console, null);
                LocalMigrationTest.awaitSocket(socket);
                LocalMigration.send(vm, socket, 10);
                vm.close();
                vm = next.get(10, TimeUnit.SECONDS);
                long before = completed(console);
                awaitMore(console, before);

                // A bypass save that stops the guest, and a restore.
                VmSnapshots.save(vm, dir.resolve("snap"), true, false, RamWriter.Progress.NONE);
                vm.close();
                vm = VmSnapshots.restore(kvm, dir.resolve("snap"), console, new VmListener() {});
                vm.start();
                awaitMore(console, completed(console));
                assertFalse(console.text().contains("CORRUPT"), console.text());
                SnapshotTest.checkHeartbeats(console.text());

                // Paused, every request the device took has completed: the file holds what the guest
                // believes it wrote, except for writes still in the available ring (qd=16 at most).
                vm.pause();
                byte[] content = Files.readAllBytes(disk);
                var gens = ByteBuffer.wrap(vm.memory().read(table, 4 * SECTORS)).order(ByteOrder.LITTLE_ENDIAN);
                assertEquals(
                        List.of(),
                        TestGuest.diskAgainstTable(content, gens, SECTORS, 16),
                        "the disk against the table");
                int written = 0;
                for (int sector = 0; sector < SECTORS; sector++) if (gens.getInt(4 * sector) != 0) written++;
                assertTrue(written > SECTORS / 2, "most of the disk was written: " + written + " sectors");
            } finally {
                vm.close();
                Files.deleteIfExists(ram);
            }
        }
    }

    private static long completed(SnapshotTest.Console console) {
        var m = TestGuest.BLK.matcher(console.text());
        long last = -1;
        while (m.find()) last = Long.parseLong(m.group(1));
        return last;
    }

    /** Waits until the guest reports more completed requests than {@code before}, three heartbeats on. */
    private static void awaitMore(SnapshotTest.Console console, long before) throws Exception {
        var hb = SnapshotTest.checkHeartbeats(console.text());
        console.await("hb 0 " + (hb.get(0) + 3), 30);
        assertTrue(completed(console) > before, "the disk goes on working: " + before + " -> " + completed(console));
    }
}
