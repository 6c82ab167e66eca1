package dev.panamavmm.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.RandomAccessFile;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.function.Predicate;
import java.util.regex.Matcher;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The test guest on QEMU (an independent virtio implementation, so the oracle for the guest's
 * drivers): its PVH entry boots on {@code microvm}, the entropy and block drivers work, and the disk
 * oracle catches a disk that goes back in time. Skipped, saying why, only where QEMU or
 * {@code /dev/kvm} is missing ({@code .ci/run} installs QEMU before the tests).
 */
class QemuGuestTest {

    private static final String QEMU = "qemu-system-x86_64";
    private static final long TIMEOUT_MS = 60_000;

    @TempDir
    static Path dir;

    private static Path elf;

    @BeforeAll
    static void needsQemuAndKvm() throws IOException {
        // KVM tests fail, never skip, where /dev/kvm exists: only a host without it skips them.
        Assumptions.assumeTrue(
                Files.exists(Path.of("/dev/kvm")), "/dev/kvm is missing: the QEMU boot tests (-accel kvm) need it");
        assertTrue(
                Files.isReadable(Path.of("/dev/kvm")) && Files.isWritable(Path.of("/dev/kvm")),
                "/dev/kvm is not read-write for this user");
        assertTrue(onPath(QEMU), QEMU + " is not installed: apt-get install qemu-system-x86 (.ci/run does)");
        elf = dir.resolve("testguest-pvh.elf");
        Files.write(elf, TestGuest.pvhElf());
    }

    private static boolean onPath(String command) {
        for (String p : System.getenv().getOrDefault("PATH", "").split(":")) {
            if (!p.isEmpty() && Files.isExecutable(Path.of(p, command))) return true;
        }
        return false;
    }

    /** A running QEMU with the test guest; its console lines as they come. */
    private static final class Guest implements AutoCloseable {
        final Process process;
        final List<String> lines = new ArrayList<>();
        private final Thread reader;

        Guest(String append, String... devices) throws IOException {
            var cmd = new ArrayList<>(List.of(
                    QEMU,
                    "-accel",
                    "kvm",
                    "-cpu",
                    // without IA32_ARCH_CAPABILITIES: QEMU 7.2 writes it with a plain "host", and KVM on
                    // some hosts refuses it (AMD EPYC under PVM), which ends QEMU with an assertion
                    "host,-arch-capabilities",
                    // acpi=off: only then does QEMU 7.2 put the virtio_mmio.device= tokens on the command line
                    "-M",
                    "microvm,acpi=off,auto-kernel-cmdline=on",
                    "-global",
                    "virtio-mmio.force-legacy=false",
                    "-m",
                    "128M",
                    "-nodefaults",
                    "-no-user-config",
                    "-nographic",
                    "-no-reboot",
                    "-serial",
                    "stdio",
                    "-display",
                    "none",
                    "-device",
                    "isa-debug-exit,iobase=0x500,iosize=4",
                    "-kernel",
                    elf.toString(),
                    "-append",
                    "console=ttyS0 testguest.mem=8M testguest.hb=200 " + append));
            cmd.addAll(List.of(devices));
            process = new ProcessBuilder(cmd).redirectErrorStream(true).start();
            reader = Thread.ofPlatform().daemon().start(() -> {
                try (var in = new BufferedReader(
                        new InputStreamReader(process.getInputStream(), StandardCharsets.US_ASCII))) {
                    for (String l; (l = in.readLine()) != null; ) {
                        synchronized (lines) {
                            lines.add(l);
                            lines.notifyAll();
                        }
                    }
                } catch (IOException e) {
                    // the process went away: the waits below time out and say what was seen
                }
            });
        }

        /** Waits for a line that {@code until} accepts; fails with the output so far after the timeout. */
        String await(Predicate<String> until, String what) throws InterruptedException {
            long deadline = System.currentTimeMillis() + TIMEOUT_MS;
            int seen = 0;
            synchronized (lines) {
                for (; ; ) {
                    for (; seen < lines.size(); seen++) {
                        if (until.test(lines.get(seen))) return lines.get(seen);
                    }
                    long left = deadline - System.currentTimeMillis();
                    if (left <= 0 || (!process.isAlive() && seen == lines.size())) {
                        fail("no " + what + " from the guest on QEMU; output:\n" + String.join("\n", lines));
                    }
                    lines.wait(Math.min(left, 200));
                }
            }
        }

        String awaitLine(String exact) throws InterruptedException {
            return await(exact::equals, "'" + exact + "'");
        }

        List<String> snapshot() {
            synchronized (lines) {
                return List.copyOf(lines);
            }
        }

        @Override
        public void close() {
            process.destroy();
            try {
                if (!process.waitFor(10, TimeUnit.SECONDS))
                    process.destroyForcibly().waitFor();
                reader.join(5000);
            } catch (InterruptedException e) {
                process.destroyForcibly();
                Thread.currentThread().interrupt();
            }
        }
    }

    private static void assertNoCorruption(List<String> lines) {
        for (String l : lines) assertTrue(!l.startsWith("CORRUPT"), "corruption reported: " + l + "\n" + lines);
    }

    @Test
    void drivesEntropyAndADiskOnMicrovmAndCatchesADiskThatWentBack() throws Exception {
        Path disk = dir.resolve("disk.raw");
        try (var f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(16 << 20);
        }
        try (var g = new Guest(
                "testguest.blk=size=4M,qd=16,write=50",
                "-object",
                "rng-random,id=rng0,filename=/dev/urandom",
                "-device",
                "virtio-rng-device,rng=rng0",
                "-drive",
                "if=none,id=d0,format=raw,file=" + disk,
                "-device",
                "virtio-blk-device,drive=d0,serial=qemu-oracle")) {
            Matcher banner = TestGuest.BANNER.matcher(
                    g.await(l -> TestGuest.BANNER.matcher(l).matches(), "banner"));
            assertTrue(banner.matches());
            assertEquals("1", banner.group(2), "PVH boot: the boot CPU alone");
            g.awaitLine("genid 0xffffffffffffffff");
            g.await(l -> l.startsWith("blk capacity=32768 size=4194304 qd=16 rw flush table=0x"), "blk line");
            g.awaitLine("blk id qemu-oracle");
            g.awaitLine("ready");
            g.awaitLine("hb 0 8");

            List<String> out = g.snapshot();
            assertNoCorruption(out);
            Set<Integer> deviceIds = new HashSet<>();
            Set<String> rngValues = new HashSet<>();
            long lastCompleted = -1, reads = 0, writes = 0, flushes = 0;
            int rngReads = 0, blkLines = 0;
            for (String l : out) {
                Matcher m;
                if ((m = TestGuest.VIRTIO_DEVICE.matcher(l)).matches()) {
                    assertTrue(m.group(3) != null && m.group(4) == null, l);
                    deviceIds.add(Integer.parseInt(m.group(3)));
                } else if ((m = TestGuest.RNG.matcher(l)).matches()) {
                    rngReads++;
                    assertEquals(rngReads, Integer.parseInt(m.group(1)), "rng reads are counted: " + l);
                    rngValues.add(m.group(2));
                } else if ((m = TestGuest.BLK.matcher(l)).matches()) {
                    blkLines++;
                    long completed = Long.parseLong(m.group(1));
                    assertTrue(completed > lastCompleted, "the blk counter goes up: " + l);
                    lastCompleted = completed;
                    reads = Long.parseLong(m.group(2));
                    writes = Long.parseLong(m.group(3));
                    flushes = Long.parseLong(m.group(4));
                    assertEquals(completed, reads + writes + flushes, l);
                }
            }
            assertEquals(Set.of(2, 4), deviceIds, "a block and an entropy device found from the command line");
            assertTrue(rngReads >= 2, "rng read at boot and every 4 heartbeats: " + rngReads);
            assertEquals(rngReads, rngValues.size(), "each rng read differs");
            assertTrue(blkLines >= 8, "a blk line before every heartbeat: " + blkLines);
            assertTrue(reads > 100 && writes > 100 && flushes > 0, out.getLast());

            // The disk goes back in time (every write since this copy lost): the guest must notice.
            byte[] old = Files.readAllBytes(disk);
            g.awaitLine("hb 0 12");
            assertNoCorruption(g.snapshot());
            // in place, never truncated: a shorter file would read as zeros for a moment
            Files.write(disk, old, StandardOpenOption.WRITE);
            String corrupt = g.await(
                    l -> {
                        Matcher m = TestGuest.CORRUPT_BLK.matcher(l);
                        return m.matches()
                                && m.group(3).startsWith("gen:")
                                && Long.parseLong(m.group(3).substring(4)) < Long.parseLong(m.group(2));
                    },
                    "CORRUPT blk line naming an older generation after the disk was rolled back");
            for (String l : g.snapshot()) {
                if (l.startsWith("CORRUPT"))
                    assertTrue(TestGuest.CORRUPT_BLK.matcher(l).matches(), l);
            }
            assertTrue(corrupt.startsWith("CORRUPT blk sector="));
        }
    }

    @Test
    void readOnlyDiskRefusesTheWriteAndExitGoesThroughIsaDebugExit() throws Exception {
        Path disk = dir.resolve("ro.raw");
        try (var f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        try (var g = new Guest(
                "testguest.exit_after=3 testguest.exit_code=3",
                "-drive",
                "if=none,id=d1,format=raw,readonly=on,file=" + disk,
                "-device",
                "virtio-blk-device,drive=d1")) {
            g.await(l -> l.startsWith("blk capacity=2048 size=1048576 qd=8 ro flush table=0x"), "blk line");
            g.awaitLine("blk id ");
            g.awaitLine("blk readonly write-status=1");
            g.awaitLine("hb 0 3");
            assertTrue(g.process.waitFor(30, TimeUnit.SECONDS), "QEMU exits through isa-debug-exit");
            assertEquals(3 * 2 + 1, g.process.exitValue(), "isa-debug-exit's status is code * 2 + 1");
            List<String> out = g.snapshot();
            assertNoCorruption(out);
            String last = out.stream()
                    .filter(l -> TestGuest.BLK.matcher(l).matches())
                    .reduce((a, b) -> b)
                    .orElseThrow();
            Matcher m = TestGuest.BLK.matcher(last);
            assertTrue(m.matches());
            assertNotEquals("0", m.group(2), "reads go on: " + last);
            assertEquals("0", m.group(3), "no writes to a read-only disk: " + last);
        }
        byte[] content = Files.readAllBytes(disk);
        for (byte b : content) assertEquals(0, b, "the read-only disk stayed as it was");
    }

    @Test
    void aDiskThatStopsCompletingIsReportedAsStalled() throws Exception {
        Path disk = dir.resolve("slow.raw");
        try (var f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        // QEMU's throttling at 1 KiB a second: a 4 KiB request takes ~4 s, more than the 2 s (20
        // heartbeats of 100 ms) after which the guest calls requests in flight stalled
        try (var g = new Guest(
                "testguest.hb=100 testguest.blk=qd=4",
                "-drive",
                "if=none,id=d2,format=raw,throttling.bps-total=1024,file=" + disk,
                "-device",
                "virtio-blk-device,drive=d2")) {
            g.awaitLine("ready");
            String stalled = g.await(l -> l.startsWith("CORRUPT"), "CORRUPT line for the stalled disk");
            assertEquals("CORRUPT blk stalled inflight=4", stalled);
            assertTrue(TestGuest.CORRUPT_BLK_STALLED.matcher(stalled).matches());
        }
    }

    @Test
    void pausedAndDrainedTheDiskHoldsExactlyTheGenerationsInGuestRam() throws Exception {
        Path disk = dir.resolve("checked.raw");
        Path ram = dir.resolve("ram");
        Path qmp = dir.resolve("qmp.sock");
        try (var f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(8 << 20);
        }
        String table;
        try (var g = new Guest(
                "testguest.blk=size=2M,qd=32",
                "-object",
                "memory-backend-file,id=ram,size=128M,share=on,mem-path=" + ram,
                "-machine",
                "memory-backend=ram",
                "-qmp",
                "unix:" + qmp + ",server=on,wait=off",
                "-drive",
                "if=none,id=d3,format=raw,file=" + disk,
                "-device",
                "virtio-blk-device,drive=d3")) {
            Matcher info = TestGuest.BLK_INFO.matcher(
                    g.await(l -> TestGuest.BLK_INFO.matcher(l).matches(), "blk capacity= line"));
            assertTrue(info.matches());
            table = info.group(6);
            g.awaitLine("hb 0 10");
            // QEMU's stop pauses the vCPU and drains the disk: every request the device took has
            // completed, so each sector holds the generation the guest's table says, but for writes
            // still in the available ring (counted by the guest at submission, not yet taken)
            qmpStop(qmp);
            assertNoCorruption(g.snapshot());

            byte[] content = Files.readAllBytes(disk);
            ByteBuffer gens;
            try (var ch = FileChannel.open(ram)) {
                gens = ByteBuffer.allocate(4096 * 4).order(ByteOrder.LITTLE_ENDIAN);
                ch.read(gens, Long.parseLong(table, 16));
            }
            assertEquals(List.of(), TestGuest.diskAgainstTable(content, gens, 4096, 32), "the disk against the table");
            int written = 0;
            for (int sector = 0; sector < 4096; sector++) if (gens.getInt(4 * sector) != 0) written++;
            assertTrue(written > 2000, "most of the 2 MiB was written: " + written + " sectors");
            for (int sector = 4096; sector < 16384; sector++) {
                assertEquals(0, TestGuest.diskSectorGeneration(content, 512 * sector, sector), "beyond size=2M");
            }
        }
    }

    /** QMP: capabilities, then stop; returns when QEMU has replied (the VM is stopped then). */
    private static void qmpStop(Path socket) throws IOException {
        try (var ch = SocketChannel.open(UnixDomainSocketAddress.of(socket));
                var in = new BufferedReader(Channels.newReader(ch, StandardCharsets.UTF_8));
                var out = Channels.newWriter(ch, StandardCharsets.UTF_8)) {
            in.readLine(); // greeting
            for (String cmd : List.of("qmp_capabilities", "stop")) {
                out.write("{\"execute\": \"" + cmd + "\"}\n");
                out.flush();
                for (String reply; ; ) {
                    reply = in.readLine();
                    if (reply == null) fail("QMP closed during " + cmd);
                    if (reply.contains("\"error\"")) fail(cmd + ": " + reply);
                    if (reply.startsWith("{\"return\"")) break;
                }
            }
        }
    }
}
