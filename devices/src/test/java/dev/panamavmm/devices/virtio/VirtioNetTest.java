package dev.panamavmm.devices.virtio;

import static dev.panamavmm.devices.virtio.VirtioMmio.*;
import static org.junit.jupiter.api.Assertions.*;

import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.util.Arrays;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/**
 * virtio-net against a real socket backend ({@link DatagramBackend}): frames out of guest RAM in
 * one gathered write, frames in straight into the receive buffers, none read while paused,
 * frames an older version staged in its state delivered first, and a driver that writes nonsense
 * on both queues while the peer sends frames of every size.
 */
class VirtioNetTest {
    static final byte[] MAC = {2, 0, 0, 0, 0, 9};
    static final int RAM = 1 << 20;
    /** Per queue: descriptor table, available ring, used ring. */
    static final long[][] RINGS = {{0x1000, 0x2000, 0x3000}, {0x4000, 0x5000, 0x6000}};

    final HeapRam ram = new HeapRam(0x1000, RAM);
    final int[] availIdx = new int[2], nextDesc = new int[2], usedSeen = new int[2];

    VirtioMmio transport(VirtioNet net) {
        var holder = new VirtioMmio[1];
        holder[0] = new VirtioMmio(net, ram, q -> holder[0].processQueue(q), () -> {});
        return holder[0];
    }

    void start(VirtioMmio dev, int size) {
        dev.write(STATUS, 4, 0);
        dev.write(STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        dev.write(DRIVER_FEATURES_SEL, 4, 1);
        dev.write(DRIVER_FEATURES, 4, 1);
        dev.write(DRIVER_FEATURES_SEL, 4, 0);
        dev.write(DRIVER_FEATURES, 4, VirtioNet.F_MAC | VirtioNet.F_STATUS | VirtioNet.F_GUEST_CSUM);
        dev.write(STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        for (int q = 0; q < 2; q++) {
            dev.write(QUEUE_SEL, 4, q);
            dev.write(QUEUE_NUM, 4, size);
            dev.write(QUEUE_DESC_LOW, 4, RINGS[q][0]);
            dev.write(QUEUE_DRIVER_LOW, 4, RINGS[q][1]);
            dev.write(QUEUE_DEVICE_LOW, 4, RINGS[q][2]);
            dev.write(QUEUE_READY, 4, 1);
        }
        dev.write(STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        Arrays.fill(availIdx, 0);
        Arrays.fill(nextDesc, 0);
        Arrays.fill(usedSeen, 0);
    }

    /** One buffer on queue {@code q}, made available and notified. */
    void offer(VirtioMmio dev, int q, int size, long addr, int len, boolean writable) {
        place(q, size, addr, len, writable);
        dev.write(QUEUE_NOTIFY, 4, q);
    }

    /** One buffer on queue {@code q}, made available without a notification. */
    void place(int q, int size, long addr, int len, boolean writable) {
        var m = ram.segment();
        int d = nextDesc[q]++ % size;
        long at = RINGS[q][0] - ram.base() + 16L * d;
        m.set(ValueLayout.JAVA_LONG_UNALIGNED, at, addr);
        m.set(ValueLayout.JAVA_INT_UNALIGNED, at + 8, len);
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, at + 12, (short) (writable ? Virtqueue.DESC_F_WRITE : 0));
        long avail = RINGS[q][1] - ram.base();
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, avail + 4 + 2L * (availIdx[q] % size), (short) d);
        availIdx[q] = (availIdx[q] + 1) & 0xFFFF;
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, avail + 2, (short) availIdx[q]);
    }

    /** The next used element of queue {@code q} as {id, len}, waiting up to 5 s; null if none came. */
    int[] awaitUsed(int q, int size) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
        long used = RINGS[q][2] - ram.base();
        while (Short.toUnsignedInt(ram.segment().get(ValueLayout.JAVA_SHORT_UNALIGNED, used + 2)) == usedSeen[q]) {
            if (System.nanoTime() > deadline) return null;
            Thread.sleep(1);
        }
        long at = used + 4 + 8L * (usedSeen[q] % size);
        usedSeen[q] = (usedSeen[q] + 1) & 0xFFFF;
        return new int[] {
            ram.segment().get(ValueLayout.JAVA_INT_UNALIGNED, at),
            ram.segment().get(ValueLayout.JAVA_INT_UNALIGNED, at + 4)
        };
    }

    int usedIdx(int q) {
        return Short.toUnsignedInt(ram.segment().get(ValueLayout.JAVA_SHORT_UNALIGNED, RINGS[q][2] - ram.base() + 2));
    }

    static byte[] frame(int length, int seed) {
        var b = new byte[length];
        new Random(seed).nextBytes(b);
        Arrays.fill(b, 0, VirtioNet.HEADER_SIZE, (byte) 0);
        return b;
    }

    @Test
    void framesGoOutFromGuestRamAndComeInWithOneBufferEach() throws Exception {
        try (var backend = new DatagramBackend()) {
            var net = new VirtioNet("virtio-net0", MAC, backend);
            var dev = transport(net);
            assertArrayEquals(MAC, Arrays.copyOf(dev.state().config(), 6));
            assertEquals(1, dev.read(CONFIG + 6, 2), "link up");
            start(dev, 16);
            assertEquals(VirtioNet.F_MAC | VirtioNet.F_STATUS | VirtioNet.F_GUEST_CSUM | F_VERSION_1, backend.offloads);
            net.start(new VirtioDevice.Context() {
                @Override
                public void kick(int queue) {
                    dev.processQueue(queue);
                }

                @Override
                public void updateConfig(int offset, byte[] bytes) {}
            });
            try {
                var out = frame(72, 1);
                ram.segment()
                        .asSlice(0x20000 - ram.base(), out.length)
                        .copyFrom(java.lang.foreign.MemorySegment.ofArray(out));
                offer(dev, VirtioNet.TX, 16, 0x20000, out.length, false);
                assertArrayEquals(new int[] {0, 0}, awaitUsed(VirtioNet.TX, 16));
                var got = ByteBuffer.allocate(70000);
                backend.peer.receive(got);
                assertArrayEquals(out, Arrays.copyOf(got.array(), got.position()));

                var in = frame(100, 2);
                backend.peer.write(ByteBuffer.wrap(in));
                offer(dev, VirtioNet.RX, 16, 0x30000, 2048, true);
                var used = awaitUsed(VirtioNet.RX, 16);
                assertNotNull(used, "the frame was delivered");
                assertEquals(100, used[1]);
                var delivered = ram.segment().asSlice(0x30000 - ram.base(), 100).toArray(ValueLayout.JAVA_BYTE);
                in[10] = 1; // num_buffers
                assertArrayEquals(in, delivered);
                assertEquals(new VirtioNet.Counters(1, 1, 0, 0), net.counters());
            } finally {
                net.stop();
            }
        }
    }

    /**
     * The frames of one notification go to the backend together ({@link NetBackend#sendAll}), in
     * the driver's order, at most {@link VirtioNet#TX_BATCH} at a time; none is on the used ring
     * before its batch was sent (the driver may reuse a buffer only then); refused ones count as
     * dropped.
     */
    @Test
    void transmittedFramesGoToTheBackendInBatchesInOrderAndCompleteOnlyOnceSent() {
        int size = 128, frames = 100;
        var batches = new java.util.ArrayList<Integer>();
        var order = new java.util.ArrayList<Integer>();
        var backend = new NoBackend() {
            @Override
            public void sendAll(java.util.List<java.util.List<java.lang.foreign.MemorySegment>> batch, boolean[] sent) {
                assertEquals(0, usedIdx(VirtioNet.TX), "a frame was completed before it was sent");
                batches.add(batch.size());
                for (int i = 0; i < batch.size(); i++) {
                    var first = batch.get(i).getFirst();
                    int n = first.get(ValueLayout.JAVA_INT_UNALIGNED, VirtioNet.HEADER_SIZE);
                    order.add(n);
                    sent[i] = n % 10 != 0; // the host refuses every tenth
                }
            }
        };
        var net = new VirtioNet("virtio-net0", MAC, backend);
        var dev = transport(net);
        start(dev, size);
        var m = ram.segment();
        long avail = RINGS[VirtioNet.TX][1] - ram.base();
        for (int i = 0; i < frames; i++) {
            long buffer = 0x20000 + 128L * i;
            m.set(ValueLayout.JAVA_INT_UNALIGNED, buffer - ram.base() + VirtioNet.HEADER_SIZE, i);
            long at = RINGS[VirtioNet.TX][0] - ram.base() + 16L * i;
            m.set(ValueLayout.JAVA_LONG_UNALIGNED, at, buffer);
            m.set(ValueLayout.JAVA_INT_UNALIGNED, at + 8, 80);
            m.set(ValueLayout.JAVA_SHORT_UNALIGNED, avail + 4 + 2L * i, (short) i);
        }
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, avail + 2, (short) frames); // all at once, one notification
        dev.write(QUEUE_NOTIFY, 4, VirtioNet.TX);

        assertEquals(java.util.List.of(VirtioNet.TX_BATCH, frames - VirtioNet.TX_BATCH), batches);
        assertEquals(java.util.stream.IntStream.range(0, frames).boxed().toList(), order);
        assertEquals(frames, usedIdx(VirtioNet.TX), "every frame completed after its batch");
        assertEquals(new VirtioNet.Counters(90, 0, 10, 0), net.counters());
    }

    /**
     * Receive buffers offered in growing batches ({@link VirtioDevice#fillBatch}): frames land in
     * the leading buffers in the order they arrived, one found after an empty buffer (it arrived
     * while the backend read) is moved forward, one too long for its buffer is dropped, and the
     * buffers left over go back to the ring and take the next frames.
     */
    @Test
    void receivedFramesFillTheLeadingBuffersInArrivalOrderAndTheRestGoBack() {
        int size = 16;
        var frames = new java.util.HashMap<Integer, byte[]>();
        for (int i = 1; i <= 6; i++) frames.put(i, frame(60 + i, i));
        // What each read of the backend finds, buffer by buffer: a frame's number, 0 for none, -1 for one too long.
        var script = new java.util.ArrayDeque<int[]>(
                java.util.List.of(new int[] {1}, new int[] {2, 3}, new int[] {0, 4, -1, 5}, new int[] {6, 0, 0}));
        var backend = new NoBackend() {
            @Override
            public int receive(java.util.List<java.lang.foreign.MemorySegment> buffers) {
                var one = new int[1];
                receiveAll(java.util.List.of(buffers), one);
                return one[0];
            }

            @Override
            public void receiveAll(
                    java.util.List<java.util.List<java.lang.foreign.MemorySegment>> buffers, int[] lengths) {
                var round = script.poll();
                assertNotNull(round, "read once more than the frames");
                assertEquals(round.length, buffers.size(), "buffers offered to read " + Arrays.toString(round));
                for (int i = 0; i < round.length; i++) {
                    if (round[i] <= 0) {
                        lengths[i] = round[i] == 0 ? 0 : 5000; // beyond the 2 KiB buffer: cut short
                        continue;
                    }
                    var bytes = frames.get(round[i]);
                    Buffers.scatter(buffers.get(i), 0, java.lang.foreign.MemorySegment.ofArray(bytes));
                    lengths[i] = bytes.length;
                }
            }
        };
        var net = new VirtioNet("virtio-net0", MAC, backend);
        var dev = transport(net);
        start(dev, size);
        for (int d = 0; d < 8; d++) place(VirtioNet.RX, size, 0x30000 + 0x800L * d, 2048, true);
        dev.processQueue(VirtioNet.RX); // reads 1, then 2 and 3, then 4 and 5 (6 and 7 go back)
        dev.processQueue(VirtioNet.RX); // 5, 6 and 7 again: frame 6 into 5, 6 and 7 back
        assertTrue(script.isEmpty(), "every read made");

        int[] expected = {1, 2, 3, 4, 5, 6};
        for (int i = 0; i < expected.length; i++) {
            var used = awaitUsedNow(VirtioNet.RX, size);
            var want = frames.get(expected[i]).clone();
            want[VirtioNet.NUM_BUFFERS_OFFSET] = 1;
            assertEquals(i, used[0], "frame " + expected[i] + " in the buffer after the one before");
            assertEquals(want.length, used[1]);
            var got = ram.segment()
                    .asSlice(0x30000 + 0x800L * i - ram.base(), want.length)
                    .toArray(ValueLayout.JAVA_BYTE);
            assertArrayEquals(want, got, "frame " + expected[i]);
        }
        assertEquals(6, usedIdx(VirtioNet.RX), "two buffers still available");
        assertEquals(new VirtioNet.Counters(0, 6, 0, 1), net.counters());
    }

    /** The next used element of queue {@code q}, which must be there. */
    int[] awaitUsedNow(int q, int size) {
        try {
            var used = awaitUsed(q, size);
            assertNotNull(used, "no used element");
            return used;
        } catch (InterruptedException e) {
            throw new AssertionError(e);
        }
    }

    /**
     * Frames wait in the backend while the guest has no buffer and while the transport is paused
     * (a live update hands the backend on with them), and a state an older version saved with
     * staged frames delivers those first, in order.
     */
    @Test
    void framesWaitInTheBackendWhilePausedAndStagedOnesGoFirst() throws Exception {
        try (var backend = new DatagramBackend()) {
            var net = new VirtioNet("virtio-net0", MAC, backend);
            var holder = new VirtioMmio[1];
            // The older version's state: version 1, two staged frames.
            var staged = ByteBuffer.allocate(8 + 2 * 4 + 60 + 61).order(java.nio.ByteOrder.LITTLE_ENDIAN);
            staged.putInt(1).putInt(2);
            for (int i = 0; i < 2; i++) staged.putInt(60 + i).put(frame(60 + i, 10 + i));
            var fresh = transport(new VirtioNet("virtio-net0", MAC, new NoBackend()));
            start(fresh, 16);
            var s = fresh.state();
            var state = new VirtioMmio.State(
                    s.deviceId(),
                    s.driverFeatures(),
                    s.deviceFeaturesSel(),
                    s.driverFeaturesSel(),
                    s.status(),
                    s.queueSel(),
                    s.interruptStatus(),
                    s.configGeneration(),
                    s.config(),
                    s.queues(),
                    staged.array());
            holder[0] = new VirtioMmio(net, state, ram, q -> holder[0].processQueue(q), () -> {});
            var dev = holder[0];
            net.start(new VirtioDevice.Context() {
                @Override
                public void kick(int queue) {
                    dev.processQueue(queue);
                }

                @Override
                public void updateConfig(int offset, byte[] bytes) {}
            });
            try {
                dev.pause(java.time.Duration.ofSeconds(1));
                for (int i = 2; i < 4; i++) backend.peer.write(ByteBuffer.wrap(frame(60 + i, 10 + i)));
                for (int i = 0; i < 4; i++) offer(dev, VirtioNet.RX, 16, 0x30000 + 0x1000L * i, 2048, true);
                Thread.sleep(200);
                assertEquals(0, usedIdx(VirtioNet.RX), "nothing delivered while paused");
                assertEquals(8 + 2 * 4 + 60 + 61, net.saveState().length, "the staged frames, no more");
                dev.resume();
                for (int i = 0; i < 4; i++) {
                    var used = awaitUsed(VirtioNet.RX, 16);
                    assertNotNull(used, "frame " + i);
                    assertEquals(60 + i, used[1]);
                    var expected = frame(60 + i, 10 + i);
                    expected[10] = 1;
                    assertArrayEquals(
                            expected,
                            ram.segment()
                                    .asSlice(0x30000 + 0x1000L * used[0] - ram.base(), 60 + i)
                                    .toArray(ValueLayout.JAVA_BYTE));
                }
                assertEquals(8, net.saveState().length, "nothing staged any more");
                assertEquals(new VirtioNet.Counters(0, 4, 0, 0), net.counters());
            } finally {
                net.stop();
            }
        }
    }

    @Test
    void badStateIsRefusedWithASentence() {
        var net = new VirtioNet("virtio-net0", MAC, new NoBackend());
        for (var bad : new byte[][] {
            {1, 0, 0},
            {2, 0, 0, 0, 0, 0, 0, 0},
            {1, 0, 0, 0, (byte) 0xff, 0, 0, 0},
            {1, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 1, 2}
        }) {
            var e = assertThrows(IllegalArgumentException.class, () -> net.restoreState(bad));
            assertTrue(e.getMessage().startsWith("virtio-net0: "), e.getMessage());
        }
    }

    /** For tests that never reach the backend (or override what they reach). */
    static class NoBackend implements NetBackend {
        @Override
        public boolean send(java.util.List<java.lang.foreign.MemorySegment> buffers) {
            throw new AssertionError("not used");
        }

        @Override
        public boolean awaitFrame(int timeoutMillis) {
            return false;
        }

        @Override
        public int receive(java.util.List<java.lang.foreign.MemorySegment> buffers) {
            return 0;
        }

        @Override
        public void offloads(long guestFeatures) {}
    }

    /**
     * A driver writing nonsense on both queues (chains of any length, in and out of RAM, too short
     * for a header, too long for a frame) while the peer sends datagrams of every size up to
     * UDP's largest, with resets and save/restore mixed in: nothing throws, the device stays
     * within its bounds.
     */
    @Test
    void survivesNonsenseOnBothQueuesAndFramesOfEverySize() throws Exception {
        var random = new Random(0x7e7);
        var kicked = new java.util.concurrent.atomic.AtomicBoolean();
        VirtioDevice.Context context = new VirtioDevice.Context() {
            @Override
            public void kick(int queue) {
                kicked.set(true); // processed on the test's thread: one thread per queue
            }

            @Override
            public void updateConfig(int offset, byte[] bytes) {}
        };
        long sent = 0, received = 0, dropped = 0;
        try (var backend = new DatagramBackend()) {
            var net = new VirtioNet("virtio-net0", MAC, backend);
            var dev = transport(net);
            net.start(context);
            int size = 64;
            start(dev, size);
            try {
                for (int i = 0; i < 20_000; i++) {
                    switch (random.nextInt(12)) {
                        case 0, 1 -> {
                            int len = random.nextInt(4) == 0 ? random.nextInt(65507) : random.nextInt(2000);
                            backend.peer.write(ByteBuffer.wrap(new byte[len]));
                        }
                        case 2, 3, 4 -> {
                            int len = switch (random.nextInt(4)) {
                                case 0 -> random.nextInt(12);
                                case 1 -> VirtioNet.HEADER_SIZE + VirtioNet.MAX_FRAME + random.nextInt(100);
                                default -> random.nextInt(1600);
                            };
                            offer(dev, VirtioNet.TX, size, address(random), len, random.nextInt(6) == 0);
                        }
                        case 5, 6, 7 ->
                            offer(
                                    dev,
                                    VirtioNet.RX,
                                    size,
                                    address(random),
                                    random.nextInt(3000),
                                    random.nextInt(6) != 0);
                        case 8 -> {
                            if (kicked.getAndSet(false)) dev.processQueue(VirtioNet.RX);
                        }
                        case 9 -> {
                            net.stop();
                            var c = net.counters();
                            sent += c.sent();
                            received += c.received();
                            dropped += c.txDropped() + c.rxDropped();
                            var state = dev.state();
                            var back = VirtioMmioCodec.INSTANCE.decode(
                                    VirtioMmioCodec.INSTANCE.encode(state), 2, "device/net");
                            net = new VirtioNet("virtio-net0", MAC, backend);
                            var holder = new VirtioMmio[1];
                            holder[0] = new VirtioMmio(net, back, ram, q -> holder[0].processQueue(q), () -> {});
                            dev = holder[0];
                            net.start(context);
                        }
                        case 10 -> {
                            if ((dev.state().status() & STATUS_NEEDS_RESET) != 0 || random.nextInt(50) == 0)
                                start(dev, size);
                        }
                        default -> dev.write(QUEUE_NOTIFY, 4, random.nextInt(3));
                    }
                    assertTrue(net.saveState().length
                            <= 8 + VirtioNet.MAX_STAGED * (4 + VirtioNet.HEADER_SIZE + VirtioNet.MAX_FRAME));
                    assertEquals(0, dev.inFlight());
                }
            } finally {
                net.stop();
            }
            var c = net.counters();
            sent += c.sent();
            received += c.received();
            dropped += c.txDropped() + c.rxDropped();
        }
        assertTrue(
                sent > 100 && received > 100 && dropped > 100,
                sent + " sent, " + received + " received, " + dropped + " dropped");
    }

    /** Mostly a buffer in RAM, now and then anywhere. */
    private static long address(Random random) {
        return random.nextInt(40) == 0 ? random.nextLong() : 0x40000 + random.nextInt(RAM - 0x40000 - 70000);
    }
}
