package dev.panamavmm.vmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.migration.LayerFile;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.migration.SnapshotFormat;
import dev.panamavmm.vmm.boot.AcpiTables;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.io.TempDir;

/**
 * Chained templates with the test guest as the oracle: a template made from a clone of a
 * template made from a clone (depth 3) gives clones exactly its parent clone's memory, shared,
 * and nothing in the chain changes.
 */
class ChainedTemplateTest {

    /** Far above the 8 MiB the guest exercises: pages only the test writes, as a parent clone's own marks. */
    static final long MARKER_BASE = 60 * GuestMemory.MIB;

    static final String OPTIONS = "testguest.mem=8M testguest.rewrite=10";

    /** A clone of {@code template} started on a console that holds its story so far, run until {@code heartbeats} more heartbeats. */
    static Vm runClone(Kvm kvm, Path template, SnapshotTest.Console console, int heartbeats) throws Exception {
        long before = heartbeats(console);
        var clone = Templates.clone(kvm, Templates.open(template), console, new VmListener() {});
        clone.start();
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (heartbeats(console) < before + heartbeats) {
            if (System.nanoTime() > deadline)
                throw new AssertionError("no heartbeats from the clone:\n" + console.text());
            Thread.sleep(20);
        }
        return clone;
    }

    static long heartbeats(SnapshotTest.Console console) {
        return console.text().lines().filter(l -> l.startsWith("hb 0 ")).count();
    }

    /** A console that starts with {@code story} (a clone's story starts with its template's). */
    static SnapshotTest.Console continuing(String story) {
        var console = new SnapshotTest.Console();
        console.write(story.getBytes(), 0, story.length());
        return console;
    }

    static void writeMarker(Vm vm, int depth) {
        vm.memory().write(MARKER_BASE + depth * 4096L, ("written by the clone that made depth " + depth).getBytes());
    }

    static String marker(Vm vm, int depth) {
        var text = ("written by the clone that made depth " + depth);
        return new String(vm.memory().read(MARKER_BASE + depth * 4096L, text.length()), StandardCharsets.US_ASCII);
    }

    /** Every guest page of {@code vm} copied out (the oracle a clone of its template is compared with). */
    static MemorySegment copyOfRam(Vm vm, Arena arena) {
        var copy = arena.allocate(vm.memory().size(), 4096);
        long at = 0;
        for (var b : vm.memory().blocks()) {
            MemorySegment.copy(b.segment(), 0, copy, at, b.size());
            at += b.size();
        }
        return copy;
    }

    /**
     * The first guest page where {@code vm}'s memory differs from {@code expected}, or -1; the one
     * difference a clone must have, a new ACPI VM generation ID, is checked and then left out.
     */
    static long firstDifferentPage(Vm vm, MemorySegment expected) {
        var id = expected.asSlice(AcpiTables.VMGENID_ADDRESS, AcpiTables.VMGENID_SIZE);
        var ownId = MemorySegment.ofArray(VmGenerationId.read(vm.memory()));
        assertTrue(id.mismatch(ownId) >= 0, "a clone has a generation ID of its own");
        id.copyFrom(ownId);
        long at = 0;
        for (var b : vm.memory().blocks()) {
            long m = MemorySegment.mismatch(b.segment(), 0, b.size(), expected, at, at + b.size());
            if (m >= 0) return (at + m) / 4096;
            at += b.size();
        }
        return -1;
    }

    /** SHA-256 of every regular file of the templates (and the root's memory file), by path. */
    static Map<Path, String> hashes(Path rootMemory, Path... templates) throws Exception {
        var all = new LinkedHashMap<Path, String>();
        all.put(rootMemory, TemplateTest.sha256(rootMemory));
        for (var t : templates) {
            for (var name : List.of(SnapshotFormat.FILE_NAME, LayerFile.FILE_NAME, Templates.CHAIN)) {
                if (Files.isRegularFile(t.resolve(name)))
                    all.put(t.resolve(name), TemplateTest.sha256(t.resolve(name)));
            }
        }
        return all;
    }

    /** Rss and Pss (KiB) of this process's mappings of {@code file}, from /proc/self/smaps; and their Anonymous. */
    static long[] smapsOf(Path file) throws Exception {
        long rss = 0, pss = 0, anonymous = 0;
        boolean in = false;
        for (var line : Files.readAllLines(Path.of("/proc/self/smaps"))) {
            if (Character.isDigit(line.charAt(0)) || (line.charAt(0) >= 'a' && line.charAt(0) <= 'f')) {
                in = line.endsWith(" " + file.toString()); // a mapping's first line names its file last
                continue;
            }
            if (!in) continue;
            long kb = line.matches("\\w+:\\s+\\d+ kB") ? Long.parseLong(line.replaceAll("\\D", "")) : 0;
            if (line.startsWith("Rss:")) rss += kb;
            if (line.startsWith("Pss:")) pss += kb;
            if (line.startsWith("Anonymous:")) anonymous += kb;
        }
        return new long[] {rss, pss, anonymous};
    }

    @KvmTest
    void aCloneOfADepthThreeTemplateHasItsParentsMemorySharedAndTheChainNeverChanges(@TempDir Path dir)
            throws Exception {
        Templates.Created root = null;
        var t1 = dir.resolve("t1");
        var t2 = dir.resolve("t2");
        var t3 = dir.resolve("t3");
        var story = new SnapshotTest.Console();
        try (var kvm = Kvm.open();
                var arena = Arena.ofConfined()) {
            root = TemplateTest.createTemplate(kvm, t1, story, OPTIONS);
            // depth 2: a clone of t1 runs, marks a page and becomes t2
            var console = continuing(story.text());
            try (var c1 = runClone(kvm, t1, console, 3)) {
                c1.pause();
                writeMarker(c1, 2);
                var made = Templates.createFromClone(c1, t2);
                assertEquals(2, made.depth());
                assertTrue(made.layerBytes() > 0 && made.layerBytes() < 16 * GuestMemory.MIB, "only what it wrote");
                assertTrue(c1.isPaused(), "a paused clone stays paused");
            }
            String storyOfT2 = console.text();
            // A running clone becomes a template too: paused, written, resumed.
            try (var c2 = runClone(kvm, t2, continuing(storyOfT2), 3)) {
                assertEquals("written by the clone that made depth 2", marker(c2, 2));
                assertEquals(3, Templates.createFromClone(c2, t3).depth());
                assertFalse(c2.isPaused(), "a running clone runs on");
            }
            assertEquals(List.of(t3.toAbsolutePath()), Templates.children(t2));
            assertThrows(SnapshotException.class, () -> Templates.remove(t2), "t2 has a child");
            Templates.remove(t3);
            assertEquals(List.of(), Templates.children(t2));
            // depth 3 again, from a paused clone whose memory at that moment is the oracle
            console = continuing(storyOfT2);
            MemorySegment expected;
            try (var c2 = runClone(kvm, t2, console, 3)) {
                c2.pause();
                writeMarker(c2, 3);
                Templates.createFromClone(c2, t3);
                expected = copyOfRam(c2, arena);
            }
            var before = hashes(root.memoryFile(), t1, t2, t3);
            assertEquals(3, Templates.chain(t3).depth());
            assertEquals(t2.toAbsolutePath(), Templates.chain(t3).parent());

            var template = Templates.open(t3);
            assertEquals(2, template.layers().size());
            var consoles = new ArrayList<SnapshotTest.Console>();
            var clones = new ArrayList<Vm>();
            try {
                for (int i = 0; i < 2; i++) {
                    var c = continuing(console.text());
                    consoles.add(c);
                    clones.add(Templates.clone(kvm, template, c, new VmListener() {}));
                }
                var a = clones.getFirst();
                assertEquals(-1, firstDifferentPage(a, expected), "the clone starts with its parent clone's memory");
                assertEquals("written by the clone that made depth 2", marker(a, 2));
                assertEquals("written by the clone that made depth 3", marker(a, 3));
                assertEquals(-1, firstDifferentPage(clones.get(1), expected));

                // Mappings: the block, plus at most two per layer run (a run inside an earlier mapping splits it).
                long runs = template.layers().stream()
                        .mapToLong(l -> l.runs().length)
                        .sum();
                int mappings = a.memory().mappings();
                assertTrue(
                        mappings > a.memory().blocks().size()
                                && mappings <= a.memory().blocks().size() + 2 * runs,
                        mappings + " mappings for " + runs + " runs");

                // Shared: both clones read all of t3's layer (above) without copying a page of it.
                var layer = smapsOf(t3.resolve(LayerFile.FILE_NAME).toAbsolutePath());
                assertTrue(layer[0] > 0, "the layer is mapped and was read");
                assertTrue(
                        layer[2] <= 4L * clones.size(),
                        "reading copied nothing (each clone wrote only its new generation ID's page): " + layer[2]
                                + " kB");
                long sharedRss = layer[0] - layer[2], sharedPss = layer[1] - layer[2];
                assertTrue(
                        sharedPss * 2 <= sharedRss + 4,
                        "two clones share each page of the layer: Pss " + layer[1] + " kB of Rss " + layer[0] + " kB");

                for (var c : clones) c.start();
                int last = SnapshotTest.checkHeartbeats(console.text()).get(0);
                for (var c : consoles) c.await("hb 0 " + (last + 5), 60);
            } finally {
                clones.forEach(Vm::close);
            }
            for (var c : consoles) SnapshotTest.checkHeartbeats(c.text()); // no gap, no repeat, no CORRUPT
            assertEquals(before, hashes(root.memoryFile(), t1, t2, t3), "no file of the chain changed");
            assertEquals(
                    "r--r--r--",
                    PosixFilePermissions.toString(Files.getPosixFilePermissions(t3.resolve(LayerFile.FILE_NAME))));

            // Removal: children first; a chained template's removal leaves the root's memory file.
            assertThrows(SnapshotException.class, () -> Templates.remove(t1));
            var removed = Templates.remove(t3);
            assertTrue(removed.chained());
            assertFalse(Files.exists(t3));
            Templates.remove(t2);
            assertTrue(Files.exists(root.memoryFile()));
            Templates.remove(t1);
            assertFalse(Files.exists(root.memoryFile()));
            root = null;
        } finally {
            for (var t : List.of(t1, t2, t3)) if (Files.exists(t)) t.toFile().setWritable(true);
            TemplateTest.deleteTemplate(t1, root);
        }
    }

    /**
     * A full save of a chained template's clone holds the layer's pages too: pagemap shows them as
     * file pages, and where the root's file has a hole (the marker page) only the layer has them.
     * The root's memory file is on disk here (ext4 keeps a hole a hole after a copy-on-write fault
     * read it; tmpfs fills it with a page, which a save would find anyway).
     */
    @KvmTest
    void aFullSaveOfAChainedClonesMemoryHoldsItsLayers(@TempDir Path dir) throws Exception {
        Templates.Created root = null;
        var t1 = dir.resolve("t1");
        var t2 = dir.resolve("t2");
        try (var kvm = Kvm.open()) {
            var story = new SnapshotTest.Console();
            root = Templates.create(kvm, t1, TemplateTest.guest(OPTIONS), dir, story, new CompletableFuture<>(), 60);
            var console = continuing(story.text());
            try (var c1 = runClone(kvm, t1, console, 2)) {
                c1.pause();
                writeMarker(c1, 2);
                Templates.createFromClone(c1, t2);
            }
            try (var c2 = runClone(kvm, t2, console, 3)) {
                var saved = VmSnapshots.save(c2, dir.resolve("snap"), false, false, RamWriter.Progress.NONE);
                assertTrue(saved.ramBytesWritten() > 8 * GuestMemory.MIB, "the root's and the layer's pages");
            }
            try (var restored = VmSnapshots.restore(kvm, dir.resolve("snap"), console, new VmListener() {})) {
                assertEquals("written by the clone that made depth 2", marker(restored, 2));
                int last = SnapshotTest.checkHeartbeats(console.text()).get(0);
                restored.start();
                console.await("hb 0 " + (last + 5), 60);
            }
            SnapshotTest.checkHeartbeats(console.text());
            Templates.remove(t2);
        } finally {
            if (Files.exists(t2)) t2.toFile().setWritable(true);
            TemplateTest.deleteTemplate(t1, root);
        }
    }

    @KvmTest
    void aChangedParentAndAChainDeeperThanTheLimitAreRefused(@TempDir Path dir) throws Exception {
        Templates.Created root = null;
        var levels = new ArrayList<Path>();
        try (var kvm = Kvm.open()) {
            var t1 = dir.resolve("t1");
            levels.add(t1);
            root = TemplateTest.createTemplate(kvm, t1, new SnapshotTest.Console(), "testguest.mem=1M");
            for (int depth = 2; depth <= Templates.MAX_DEPTH; depth++) {
                var next = dir.resolve("t" + depth);
                try (var c = runClone(kvm, levels.getLast(), new SnapshotTest.Console(), 1)) {
                    c.pause();
                    writeMarker(c, depth);
                    assertEquals(depth, Templates.createFromClone(c, next).depth());
                }
                levels.add(next);
            }
            try (var c = runClone(kvm, levels.getLast(), new SnapshotTest.Console(), 1)) {
                for (int depth = 2; depth <= Templates.MAX_DEPTH; depth++)
                    assertEquals("written by the clone that made depth " + depth, marker(c, depth));
                var e = assertThrows(
                        SnapshotException.class, () -> Templates.createFromClone(c, dir.resolve("too-deep")));
                assertTrue(
                        e.getMessage().contains("the deepest a chain goes (" + Templates.MAX_DEPTH + ")"),
                        e.getMessage());
                assertFalse(e.getMessage().contains("\n"));
                assertFalse(c.isPaused(), "a refused clone runs on");
            }
            assertFalse(Files.exists(dir.resolve("too-deep").resolve(SnapshotFormat.FILE_NAME)));

            // A parent whose layer changed: every template above it is refused, in one line.
            var t3Layer = levels.get(2).resolve(LayerFile.FILE_NAME);
            Files.setPosixFilePermissions(t3Layer, PosixFilePermissions.fromString("rw-r--r--"));
            try (var ch = FileChannel.open(t3Layer, StandardOpenOption.WRITE)) {
                ch.write(ByteBuffer.wrap(new byte[] {1}), ch.size() - 1);
            }
            for (var t : List.of(levels.get(2), levels.get(3), levels.getLast())) {
                var e = assertThrows(SnapshotException.class, () -> Templates.open(t));
                assertTrue(
                        e.getMessage().contains(t3Layer.toString())
                                && e.getMessage().contains("does not match"),
                        e.getMessage());
                assertFalse(e.getMessage().contains("\n"));
            }
            Templates.open(levels.get(1)); // below the change: still fine
        } finally {
            for (var t : levels.reversed()) {
                if (Files.exists(t)) {
                    t.toFile().setWritable(true);
                    if (t != levels.getFirst()) Templates.remove(t);
                }
            }
            TemplateTest.deleteTemplate(levels.getFirst(), root);
        }
    }
}
