package dev.panamavmm.devices.virtio;

import static dev.panamavmm.devices.virtio.VirtioMmio.*;
import static org.junit.jupiter.api.Assertions.*;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A driver writing nonsense: random register writes (mostly at real registers, in any order), and
 * random descriptor tables and rings, some built to be almost valid, with save and restore through
 * the codec mixed in. Nothing may throw or hang, and the transport's invariants hold throughout.
 */
class VirtioFuzzTest {
    private static final int OPERATIONS = 200_000;
    private static final int RAM = 1 << 16;
    private static final int[] REGISTERS = {
        DEVICE_FEATURES_SEL, DRIVER_FEATURES, DRIVER_FEATURES_SEL, QUEUE_SEL, QUEUE_NUM, QUEUE_READY, QUEUE_NOTIFY,
        INTERRUPT_ACK, STATUS, QUEUE_DESC_LOW, QUEUE_DESC_HIGH, QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, QUEUE_DEVICE_LOW,
        QUEUE_DEVICE_HIGH, CONFIG, CONFIG_GENERATION
    };

    @TempDir
    Path dir;

    interface Factory {
        VirtioDevice make() throws IOException;
    }

    @Test
    void entropyDeviceSurvivesNonsense() throws IOException {
        var random = new Random(0x4e6);
        var filled = new int[1];
        fuzz(
                random,
                () -> new VirtioRng("virtio-rng", seg -> {
                    filled[0]++;
                    seg.fill((byte) random.nextInt());
                }));
        assertTrue(filled[0] > 100, "the nonsense reached the device " + filled[0] + " times, not just the checks");
    }

    @Test
    void blockDeviceSurvivesNonsense() throws IOException {
        var file = dir.resolve("disk.raw");
        Files.write(file, new byte[32 * 512]);
        try (var channel = FileChannel.open(file, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            var backend = new ChannelBackend(channel, 32 * 512);
            fuzz(new Random(0xb1c), () -> new VirtioBlock("virtio-blk0", backend, false, "fuzz", Runnable::run, 0));
        }
        assertEquals(32 * 512, Files.size(file), "the disk never grows");
    }

    @Test
    void balloonSurvivesNonsense() throws IOException {
        var returned = new long[1];
        // The fuzz's RAM is [0x1000, 0x11000) (HeapRam's segment offset + 0x1000); 0x8000 plays the VMM's page.
        var memory = new BalloonMemory() {
            @Override
            public Outcome release(long address, long length) {
                assertEquals(0, address % VirtioBalloon.PAGE, "page-aligned");
                assertEquals(0, length % VirtioBalloon.PAGE, "whole pages");
                if (address < 0x1000 || length <= 0 || address + length > 0x1000 + RAM) return Outcome.NOT_RAM;
                if (address <= 0x8000 && address + length > 0x8000) return Outcome.PROTECTED;
                returned[0] += length / VirtioBalloon.PAGE;
                return Outcome.RETURNED;
            }

            @Override
            public long guestAddress(MemorySegment buffer) {
                return buffer.address() + 0x1000;
            }
        };
        queues = 4;
        features = (int) (VirtioBalloon.F_STATS_VQ | VirtioBalloon.F_REPORTING | VirtioBalloon.F_DEFLATE_ON_OOM);
        var last = new VirtioBalloon[1];
        fuzz(
                new Random(0xba1),
                () -> last[0] = new VirtioBalloon("virtio-balloon", memory, true, Duration.ofHours(1), true));
        var c = last[0].counters();
        assertTrue(c.ignored() > 0, "frame numbers outside RAM came and were ignored: " + c);
    }

    @Test
    void vsockDeviceSurvivesNonsense() throws IOException {
        // The transport-level nonsense on its receive queue (0); VirtioVsockTest sends it nonsense packets.
        try (var backend = new ChannelVsockBackend(dir.resolve("v.sock"))) {
            var made = new ArrayList<VirtioVsock>();
            fuzz(new Random(0x75c), () -> {
                var device = new VirtioVsock("virtio-vsock", 3, backend);
                made.add(device);
                return device;
            });
            for (var device : made) {
                assertEquals(0, device.connections());
                assertEquals(0, device.bufferedBytes());
            }
        }
    }

    private void fuzz(Random random, Factory factory) throws IOException {
        var ram = new HeapRam(0x1000, RAM);
        var holder = new VirtioMmio[1];
        VirtioMmio.Notifier notifier = q -> holder[0].processQueue(q);
        holder[0] = new VirtioMmio(factory.make(), ram, notifier, () -> {});
        for (int i = 0; i < OPERATIONS; i++) {
            var dev = holder[0];
            switch (random.nextInt(40)) {
                case 0 -> ram.segment().asSlice(random.nextInt(RAM - 64), 64).fill((byte) random.nextInt());
                case 1 -> plantChain(random, ram);
                case 6, 7, 8, 9, 10, 11 -> offerRequest(random, ram, dev);
                case 2 -> {
                    var state = dev.state();
                    var back =
                            VirtioMmioCodec.INSTANCE.decode(VirtioMmioCodec.INSTANCE.encode(state), 2, "device/virtio");
                    holder[0] = new VirtioMmio(factory.make(), back, ram, notifier, () -> {});
                    assertEquals(state.status(), holder[0].state().status());
                }
                case 3, 4, 5 -> handshake(random, dev);
                default -> {
                    int offset = random.nextInt(8) == 0
                            ? random.nextInt(VirtioMmio.WINDOW_SIZE + 16)
                            : REGISTERS[random.nextInt(REGISTERS.length)];
                    long value = random.nextBoolean() ? random.nextInt(20) : random.nextLong();
                    int size = random.nextInt(10) == 0 ? 1 << random.nextInt(4) : 4;
                    if (random.nextBoolean()) dev.write(offset, size, value);
                    else assertFits(dev.read(offset, size), size);
                }
            }
            var s = holder[0].state();
            assertEquals(0, holder[0].inFlight(), "a synchronous device leaves nothing in flight");
            assertEquals(0, s.status() & ~0xCF, "only defined status bits");
            if ((s.status() & STATUS_DRIVER_OK) != 0) assertNotEquals(0, s.status() & STATUS_FEATURES_OK);
            assertEquals(0, s.interruptStatus() & ~3);
        }
    }

    private static void assertFits(long value, int size) {
        if (size < 8) assertEquals(0, value >>> (8 * size), "a read fits its size");
    }

    private int size = 1, desc, avail, used;
    /** Queues the handshake picks from, the one it set up, and device feature bits it may accept. */
    private int queues = 1, queue, features;

    /**
     * A request much like a driver's on the queue of the last handshake: a short chain of
     * descriptors, usually in RAM and correctly linked, its head on the available ring, notified.
     */
    private void offerRequest(Random random, HeapRam ram, VirtioMmio dev) {
        var m = ram.segment();
        int length = 1 + random.nextInt(4);
        int first = random.nextInt(size);
        for (int i = 0; i < length; i++) {
            int d = (first + i) % size;
            long at = desc - 0x1000 + 16L * d;
            if (at < 0 || at + 16 > RAM) return;
            boolean last = i == length - 1;
            boolean write = random.nextInt(8) == 0 ? random.nextBoolean() : i > 0 || last;
            m.set(ValueLayout.JAVA_LONG_UNALIGNED, at, 0x8000 + random.nextInt(0x4000));
            m.set(ValueLayout.JAVA_INT_UNALIGNED, at + 8, i == 0 && !last ? 16 : 1 + random.nextInt(1100));
            m.set(ValueLayout.JAVA_SHORT_UNALIGNED, at + 12, (short)
                    ((write ? Virtqueue.DESC_F_WRITE : 0) | (last ? 0 : Virtqueue.DESC_F_NEXT)));
            m.set(ValueLayout.JAVA_SHORT_UNALIGNED, at + 14, (short) ((d + 1) % size));
        }
        // A request header the block device understands now and then.
        m.set(ValueLayout.JAVA_INT_UNALIGNED, 0x8000 - 0x1000, random.nextInt(15));
        m.set(ValueLayout.JAVA_LONG_UNALIGNED, 0x8008 - 0x1000, random.nextInt(40));
        long idxAt = avail - 0x1000 + 2;
        if (idxAt < 0 || idxAt + 4 + 2L * size > RAM) return;
        int idx = Short.toUnsignedInt(m.get(ValueLayout.JAVA_SHORT_UNALIGNED, idxAt));
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, idxAt + 2 + 2L * (idx % size), (short) first);
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, idxAt, (short) (idx + 1));
        dev.write(QUEUE_NOTIFY, 4, queue);
    }

    /** Sets up a queue (0 unless the test has more) at random (often valid) places, as a driver would. */
    private void handshake(Random random, VirtioMmio dev) {
        dev.write(STATUS, 4, 0);
        dev.write(STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        dev.write(DRIVER_FEATURES_SEL, 4, 1);
        dev.write(DRIVER_FEATURES, 4, 1);
        dev.write(DRIVER_FEATURES_SEL, 4, 0);
        dev.write(DRIVER_FEATURES, 4, random.nextInt() & (3 << 28) | (queues > 1 ? random.nextInt() & features : 0));
        dev.write(STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        queue = queues > 1 ? random.nextInt(queues) : 0;
        dev.write(QUEUE_SEL, 4, queue);
        size = 1 << random.nextInt(6);
        boolean sane = random.nextInt(4) != 0;
        desc = sane ? 0x1000 : 0x1000 + random.nextInt(RAM) & ~15;
        avail = sane ? 0x2000 : 0x1000 + random.nextInt(RAM) & ~1;
        used = sane ? 0x3000 : 0x1000 + random.nextInt(RAM) & ~3;
        dev.write(QUEUE_NUM, 4, size);
        dev.write(QUEUE_DESC_LOW, 4, desc);
        dev.write(QUEUE_DRIVER_LOW, 4, avail);
        dev.write(QUEUE_DEVICE_LOW, 4, used);
        dev.write(QUEUE_READY, 4, 1);
        dev.write(STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    /** Random descriptors with plausible flags and lengths, often pointing into RAM, and a bumped avail index. */
    private static void plantChain(Random random, HeapRam ram) {
        var m = ram.segment();
        for (int i = 0; i < 8; i++) {
            long at = random.nextInt(RAM - 16) & ~15;
            m.set(ValueLayout.JAVA_LONG_UNALIGNED, at, 0x1000 + random.nextInt(RAM + 64) - 32);
            m.set(
                    ValueLayout.JAVA_INT_UNALIGNED,
                    at + 8,
                    random.nextInt(4) == 0 ? random.nextInt() : random.nextInt(600));
            m.set(ValueLayout.JAVA_SHORT_UNALIGNED, at + 12, (short) random.nextInt(8));
            m.set(ValueLayout.JAVA_SHORT_UNALIGNED, at + 14, (short) random.nextInt(40));
        }
        long idx = random.nextInt(RAM - 2) & ~1;
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, idx, (short) (m.get(ValueLayout.JAVA_SHORT_UNALIGNED, idx) + 1));
    }
}
