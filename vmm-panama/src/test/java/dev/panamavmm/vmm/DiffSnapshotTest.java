package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.RamVerifier;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.MemoryException;
import dev.panamavmm.vmm.memory.MemoryLoad;
import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.io.RandomAccessFile;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import org.junit.jupiter.api.io.TempDir;

/**
 * Diff and live snapshots on real KVM with the test guest as the oracle: it rewrites part of its
 * memory and drives a virtio disk (reads land in guest RAM on the device's threads, which KVM's
 * dirty log does not see) while the snapshots are taken.
 */
class DiffSnapshotTest {
    private static final long PAGE = 4096;

    /** A console that also records when each of CPU 0's heartbeats arrived. */
    static final class TimedConsole extends OutputStream {
        private final ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        private final List<long[]> beats = new ArrayList<>(); // {nanoTime, seq}
        private int lineStart;

        @Override
        public synchronized void write(int b) {
            write(new byte[] {(byte) b}, 0, 1);
        }

        @Override
        public synchronized void write(byte[] b, int off, int len) {
            bytes.write(b, off, len);
            byte[] all = bytes.toByteArray();
            for (int i = lineStart; i < all.length; i++) {
                if (all[i] != '\n') continue;
                var line = new String(all, lineStart, i - lineStart, StandardCharsets.UTF_8);
                var m = TestGuest.HEARTBEAT.matcher(line);
                if (m.matches() && m.group(1).equals("0"))
                    beats.add(new long[] {System.nanoTime(), Long.parseLong(m.group(2))});
                lineStart = i + 1;
            }
            notifyAll();
        }

        synchronized String text() {
            return bytes.toString(StandardCharsets.UTF_8);
        }

        synchronized void await(String regex, long seconds) throws InterruptedException {
            var p = Pattern.compile("(?m)^" + regex + "$");
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
            while (!p.matcher(text()).find()) {
                long left = deadline - System.nanoTime();
                if (left <= 0) throw new AssertionError("no line matching " + regex + " in:\n" + text());
                TimeUnit.NANOSECONDS.timedWait(this, left);
            }
        }

        synchronized int lastBeat() {
            return beats.isEmpty() ? 0 : (int) beats.getLast()[1];
        }

        /** The longest time between two heartbeats of CPU 0 that arrived in [from, to] (nanoTime), and the ones around it. */
        synchronized long longestGapMillis(long from, long to) {
            long longest = 0;
            for (int i = 1; i < beats.size(); i++) {
                long a = beats.get(i - 1)[0], b = beats.get(i)[0];
                if (b < from || a > to) continue;
                longest = Math.max(longest, b - a);
            }
            return longest / 1_000_000;
        }
    }

    /**
     * The guest's disk line once each of the 512 blocks of testguest.blk=size=2M was written: with
     * write=0 it writes a block only the first time it picks it (a read of a block never written
     * checks nothing), so from here on it only reads and the disk file stays as the save found it.
     */
    private static final String ALL_WRITTEN = "blk [0-9]+ reads=[0-9]+ writes=512 .*";

    /** The guest exercising {@code mem} of its 64 MiB, rewriting {@code rewrite} % of it, its disk with {@code writes} % writes. */
    private static MachineConfig guest(Path disk, String mem, int rewrite, int writes) {
        return new MachineConfig(
                        64 * GuestMemory.MIB,
                        1,
                        new Backing.Memfd(),
                        "test guest",
                        TestGuest.elf(),
                        null,
                        "console=ttyS0 testguest.hb=100 testguest.mem=" + mem + " testguest.rewrite=" + rewrite
                                + " testguest.blk=size=2M,qd=8,write=" + writes)
                .withVirtio(List.of(new DiskConfig(disk, false, "oracle")), false);
    }

    private static Path disk(Path dir) throws Exception {
        var disk = dir.resolve("disk.raw");
        try (var f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(8 << 20);
        }
        return disk;
    }

    private static VmSnapshots.Saved save(Vm vm, Path dir, boolean diff, boolean live, VmSnapshots.After after)
            throws Exception {
        return VmSnapshots.save(
                vm, dir, VmSnapshots.Request.of(false, after).diff(diff).live(live), RamWriter.Progress.NONE);
    }

    /** Every byte of guest RAM, block after block. */
    private static byte[] ram(Vm vm) {
        var out = new ByteArrayOutputStream();
        for (var b : vm.memory().blocks()) out.writeBytes(b.segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE));
        return out.toByteArray();
    }

    /** Fails naming the first page where {@code vm}'s RAM differs from {@code expected}. */
    private static void assertSameRam(byte[] expected, Vm vm, String what) {
        var actual = ram(vm);
        // A restore gives the guest a new generation ID (the same state may run twice): not the guest's own memory.
        int genid = (int) dev.panamavmm.vmm.boot.AcpiTables.VMGENID_ADDRESS;
        System.arraycopy(expected, genid, actual, genid, dev.panamavmm.vmm.boot.AcpiTables.VMGENID_SIZE);
        assertEquals(expected.length, actual.length, what);
        long at = MemorySegment.mismatch(
                MemorySegment.ofArray(expected), 0, expected.length, MemorySegment.ofArray(actual), 0, actual.length);
        assertEquals(-1, at, what + ": first differing page at 0x" + Long.toHexString(at / PAGE * PAGE));
    }

    private static void beats(TimedConsole console, int more) throws InterruptedException {
        console.await("hb 0 " + (console.lastBeat() + more), 60);
    }

    @KvmTest
    void aDiffChainRestoresTheSameMemoryAsAFullSnapshotAndMergesIntoIt(@TempDir Path dir) throws Exception {
        var disk = disk(dir);
        Path s0 = dir.resolve("s0"), d1 = dir.resolve("d1"), d2 = dir.resolve("d2"), d3 = dir.resolve("d3");
        Path full = dir.resolve("full"), merged = dir.resolve("merged");
        var console = new TimedConsole();
        byte[] truth;
        try (var kvm = Kvm.open()) {
            try (var vm = VmBuilder.boot(kvm, guest(disk, "24M", 10, 0), console, new VmListener() {})) {
                vm.start();
                console.await(ALL_WRITTEN, 60); // every block written once: reads only from here on
                var first = save(vm, s0, true, false, VmSnapshots.After.RESUME);
                assertEquals("full", first.type(), "a VM with no base gets a full snapshot");
                beats(console, 3);
                var one = save(vm, d1, true, false, VmSnapshots.After.RESUME);
                assertEquals("diff", one.type());
                beats(console, 3);
                var two = save(vm, d2, true, false, VmSnapshots.After.RESUME);
                assertTrue(
                        two.ramBytesWritten() < first.ramBytesWritten() / 2,
                        "a diff holds what changed: " + two.ramBytesWritten() + " of " + first.ramBytesWritten());
                beats(console, 3);
                // One moment, two snapshots: the VM paused, a diff and a full one of the very same memory.
                vm.pause();
                save(vm, d3, true, false, VmSnapshots.After.RESUME);
                save(vm, full, false, false, VmSnapshots.After.STAY_PAUSED);
                truth = ram(vm);
                assertTrue(SnapshotReader.open(d3).isLayer());
                assertEquals(d2.toAbsolutePath(), SnapshotReader.open(d3).base().dir());
            }
            // Nothing ran since: the restored memory of each must be the paused guest's, page for page.
            for (var load : new MemoryLoad[] {MemoryLoad.MAPPED, MemoryLoad.EAGER}) {
                try (var vm =
                        VmSnapshots.restore(kvm, d3, load, OutputStream.nullOutputStream(), new VmListener() {})) {
                    assertSameRam(truth, vm, "the diff chain restored " + load.userName());
                }
            }
            var lazy = assertThrows(
                    MemoryException.class,
                    () -> VmSnapshots.restore(kvm, d3, MemoryLoad.LAZY, OutputStream.nullOutputStream(), null));
            assertTrue(lazy.getMessage().contains("cannot be restored lazily"), lazy.getMessage());
            try (var vm = VmSnapshots.restore(kvm, full, OutputStream.nullOutputStream(), new VmListener() {})) {
                assertSameRam(truth, vm, "the full snapshot");
            }
            var m = VmSnapshots.merge(d3, merged);
            assertEquals(4, m.snapshots());
            assertFalse(SnapshotReader.open(merged).isLayer());
            // Every file's RAM checksums hold: a layer's cover its own pages, the merged one's all of them.
            for (var snap : List.of(s0, d1, d2, d3, merged))
                assertTrue(RamVerifier.verify(SnapshotReader.open(snap)).checksums(), snap.toString());
            try (var vm = VmSnapshots.restore(kvm, merged, OutputStream.nullOutputStream(), new VmListener() {})) {
                assertSameRam(truth, vm, "the merged snapshot");
            }
            // The chain restored runs on: memory and disk verify (the oracle), heartbeats without a gap.
            var before = Heartbeats(console.text());
            try (var vm = VmSnapshots.restore(kvm, d3, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 " + (before + 6), 60);
                dev.panamavmm.testing.Heartbeats.checkLive(console.text());
                // A restored VM takes a diff against the snapshot it came from.
                var again = save(vm, dir.resolve("d4"), true, false, VmSnapshots.After.RESUME);
                assertEquals("diff", again.type());
                assertEquals(
                        d3.toAbsolutePath(),
                        SnapshotReader.open(dir.resolve("d4")).base().dir());
                beats(console, 2);
                // A base written again: the diffs over it are refused, in one line.
                save(vm, s0, false, false, VmSnapshots.After.STOP);
            }
            dev.panamavmm.testing.Heartbeats.check(console.text());
            var changed = assertThrows(SnapshotException.class, () -> VmSnapshots.load(d1));
            assertEquals(
                    "refusing to restore: the base snapshot " + s0.toAbsolutePath() + " of the diff snapshot "
                            + d1.toAbsolutePath() + " changed after the diff was taken",
                    changed.getMessage());
            Files.move(d2, dir.resolve("moved"));
            var missing = assertThrows(SnapshotException.class, () -> VmSnapshots.load(d3));
            assertEquals(
                    "the base snapshot " + d2.toAbsolutePath() + " of the diff snapshot " + d3.toAbsolutePath()
                            + " is missing",
                    missing.getMessage());
        }
    }

    private static int Heartbeats(String console) {
        return dev.panamavmm.testing.Heartbeats.checkLive(console).getOrDefault(0, 0);
    }

    @KvmTest
    void aLiveSnapshotOfAGuestRewritingTenPercentRestoresWithoutCorruption(@TempDir Path dir) throws Exception {
        var disk = disk(dir);
        Path live = dir.resolve("live");
        var console = new TimedConsole();
        // Reads only: the disk must be as it was at the save for the restore (the guest runs on after it).
        try (var kvm = Kvm.open()) {
            try (var vm = VmBuilder.boot(kvm, guest(disk, "48M", 10, 0), console, new VmListener() {})) {
                vm.start();
                console.await(ALL_WRITTEN, 60);
                beats(console, 3);
                long from = System.nanoTime();
                var saved = save(vm, live, false, true, VmSnapshots.After.RESUME);
                long to = System.nanoTime();
                beats(console, 3);
                long gap = console.longestGapMillis(from, to + 150_000_000L);
                System.out.printf(
                        "live snapshot of a guest rewriting 10%% of 48 MiB: %d ms in all, guest paused %d us,"
                                + " %d passes, %d bytes copied; longest heartbeat gap during the save %d ms"
                                + " (heartbeat every 100 ms)%n",
                        saved.millis(), saved.pauseMicros(), saved.passes(), saved.ramBytesWritten(), gap);
                assertTrue(saved.passes() >= 1, "copied while the guest ran");
                // Its checksums were read back from the file after the passes wrote over each other.
                assertTrue(RamVerifier.verify(SnapshotReader.open(live)).checksums());
                dev.panamavmm.testing.Heartbeats.checkLive(console.text());
                vm.end(new VmExitReason.Stopped("test"));
            }
            int before = Heartbeats(console.text());
            // The restore starts at the pause: heartbeats printed after it (before the VM ended) come again.
            var restored = new TimedConsole();
            try (var vm = VmSnapshots.restore(kvm, live, restored, new VmListener() {})) {
                vm.start();
                restored.await("hb 0 " + (before + 5), 60);
                assertFalse(restored.text().contains("CORRUPT"), restored.text());
            }
        }
    }
}
