package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.Heartbeats;
import dev.panamavmm.testing.VmmProcess;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import org.junit.jupiter.api.io.TempDir;

/**
 * A memory file is used by one running guest at a time: a second user is refused (issue 21 item 1
 * measured the second `run --shared` booting over the first guest's RAM, which died with a triple
 * fault), also after a live update has moved the guest, and a copy-on-write user keeps writers out.
 */
class MemoryFileLockCliTest {

    static final String GUEST = "console=ttyS0 testguest.hb=100 testguest.mem=8M";

    static VmmProcess runShared(Path memory, Path console, Path api) throws Exception {
        var vmm = VmmProcess.start(
                "run",
                "--mem-path",
                memory.toString(),
                "--shared",
                "--memory",
                "64M",
                "--cmdline",
                GUEST,
                "--console",
                "file:" + console,
                "--api-socket",
                api.toString());
        SnapshotCliTest.awaitText(console, "hb 0 2", 30);
        vmm.awaitSocket(api);
        return vmm;
    }

    /** A second `run --shared` on the file is refused, naming the first VMM, and the first guest goes on unharmed. */
    static void secondUserRefused(Path dir, Path memory, long holder, String earlier, Path console) throws Exception {
        byte[] before = Files.readAllBytes(console);
        for (var shared : new boolean[] {true, false}) {
            var second = dir.resolve("second.log");
            var r = shared
                    ? MainTest.run(
                            "run",
                            "--mem-path",
                            memory.toString(),
                            "--shared",
                            "--memory",
                            "64M",
                            "--console",
                            "file:" + second)
                    : MainTest.run(
                            "run", "--mem-path", memory.toString(), "--memory", "64M", "--console", "file:" + second);
            assertEquals(1, r.code(), r.err());
            assertEquals("vmm: memory file " + memory + " is in use by PID " + holder + "\n", r.err());
        }
        int at = Heartbeats.checkLive(earlier + Files.readString(console)).getOrDefault(0, 0);
        SnapshotCliTest.awaitText(console, "hb 0 " + (at + 3), 30);
        Heartbeats.checkLive(earlier + Files.readString(console));
        assertEquals(
                new String(before), Files.readString(console).substring(0, before.length), "the console only grew");
    }

    @KvmTest
    void aSecondUserOfASharedMemoryFileIsRefusedAndTheFirstGuestGoesOn(@TempDir Path dir) throws Exception {
        var memory =
                Path.of("/dev/shm/panama-lock-test-" + ProcessHandle.current().pid() + ".ram");
        var console = dir.resolve("console.log");
        try (var first = runShared(memory, console, dir.resolve("api.sock"))) {
            secondUserRefused(dir, memory, first.pid(), "", console);
            first.signal("TERM");
            assertEquals(0, first.waitFor(30), first.stderr());
        } finally {
            Files.deleteIfExists(memory);
        }
    }

    @KvmTest
    void theLockMovesWithALiveUpdateAndASecondUserIsStillRefused(@TempDir Path dir) throws Exception {
        var memory =
                Path.of("/dev/shm/panama-lock-test-" + ProcessHandle.current().pid() + "-moved.ram");
        var console = dir.resolve("console.log");
        var console2 = dir.resolve("console2.log");
        var incoming = dir.resolve("in.sock");
        try (var source = runShared(memory, console, dir.resolve("api.sock"));
                var dest = VmmProcess.start(
                        "incoming",
                        "unix:" + incoming,
                        "--memory",
                        "64M",
                        "--console",
                        "file:" + console2,
                        "--api-socket",
                        dir.resolve("api2.sock").toString())) {
            dest.awaitSocket(incoming);
            var r = MainTest.run(
                    "migrate", "--api-socket", dir.resolve("api.sock").toString(), "unix:" + incoming);
            assertEquals(0, r.code(), r.err());
            assertEquals(0, source.waitFor(30), source.stderr());
            SnapshotCliTest.awaitText(console2, "hb 0 \\d+", 30);
            // The source that took the lock is gone; the destination holds it through the fd it was handed.
            secondUserRefused(dir, memory, dest.pid(), Files.readString(console), console2);
            Heartbeats.checkLive(Files.readString(console) + Files.readString(console2));
            // Saved and stopped, the file is free at once for a restore in a new process.
            var snap = dir.resolve("snaps/one"); // a snapshot directory that does not exist yet, nor its parent
            var saved = MainTest.run(
                    "snapshot", "--api-socket", dir.resolve("api2.sock").toString(), snap.toString());
            assertEquals(0, saved.code(), saved.err());
            var console3 = dir.resolve("console3.log");
            try (var restored = VmmProcess.start("restore", snap.toString(), "--console", "file:" + console3)) {
                SnapshotCliTest.awaitText(console3, "hb 0 \\d+", 30);
                restored.signal("TERM");
                assertEquals(0, restored.waitFor(30), restored.stderr());
            }
            assertEquals(0, dest.waitFor(30), dest.stderr());
        } finally {
            Files.deleteIfExists(memory);
        }
    }

    /** A copy-on-write user (run --mem-path without --shared) holds the file shared: a guest cannot start running in it. */
    @KvmTest
    void aCopyOnWriteUserKeepsAWriterOut(@TempDir Path dir) throws Exception {
        var memory =
                Path.of("/dev/shm/panama-lock-test-" + ProcessHandle.current().pid() + "-cow.ram");
        var console = dir.resolve("console.log");
        try {
            try (var f = FileChannel.open(memory, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                f.truncate(64L << 20);
                f.write(ByteBuffer.allocate(1), (64L << 20) - 1);
            }
            try (var reader = VmmProcess.start(
                    "run",
                    "--mem-path",
                    memory.toString(),
                    "--memory",
                    "64M",
                    "--cmdline",
                    GUEST,
                    "--console",
                    "file:" + console)) {
                SnapshotCliTest.awaitText(console, "hb 0 2", 30);
                var r = MainTest.run(
                        "run",
                        "--mem-path",
                        memory.toString(),
                        "--shared",
                        "--memory",
                        "64M",
                        "--console",
                        "file:/dev/null");
                assertEquals(1, r.code(), r.err());
                assertEquals("vmm: memory file " + memory + " is in use by PID " + reader.pid() + "\n", r.err());
                // Two copy-on-write users do not exclude each other.
                var console2 = dir.resolve("console2.log");
                try (var _ = VmmProcess.start(
                        "run",
                        "--mem-path",
                        memory.toString(),
                        "--memory",
                        "64M",
                        "--cmdline",
                        GUEST,
                        "--console",
                        "file:" + console2)) {
                    SnapshotCliTest.awaitText(console2, "hb 0 2", 30);
                }
                Heartbeats.checkLive(Files.readString(console));
            }
        } finally {
            Files.deleteIfExists(memory);
        }
    }
}
