package dev.panamavmm.devices.virtio;

import static dev.panamavmm.devices.virtio.VirtioMmio.*;
import static org.junit.jupiter.api.Assertions.*;

import java.lang.foreign.ValueLayout;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/** The transport and split queue against a driver written from the spec, with an entropy device behind them. */
class VirtioMmioTest {
    static final long DRIVER_FEATURES_ALL = F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC;

    final HeapRam ram = new HeapRam(0, 1 << 20);
    final AtomicInteger interrupts = new AtomicInteger();
    final List<Integer> notified = new ArrayList<>();
    final SecureRandom random = new SecureRandom();
    VirtioMmio dev = new VirtioMmio(rng(), ram, this::notified, interrupts::incrementAndGet);
    Driver driver = new Driver(ram, dev, 16);

    VirtioRng rng() {
        return new VirtioRng("virtio-rng", seg -> {
            var b = new byte[(int) seg.byteSize()];
            random.nextBytes(b);
            seg.copyFrom(java.lang.foreign.MemorySegment.ofArray(b));
        });
    }

    /** The host's notifier: processes the queue at once, as the device thread would. */
    void notified(int queue) {
        notified.add(queue);
        dev.processQueue(queue);
    }

    @Test
    void registersIdentifyAVersion2Device() {
        assertEquals(0x74726976, driver.reg(MAGIC));
        assertEquals(2, driver.reg(VERSION));
        assertEquals(VirtioRng.DEVICE_ID, driver.reg(DEVICE_ID));
        driver.set(DEVICE_FEATURES_SEL, 1);
        assertEquals(1, driver.reg(DEVICE_FEATURES) & 1, "VERSION_1 is bit 32");
        driver.set(DEVICE_FEATURES_SEL, 0);
        assertEquals(3 << 28, driver.reg(DEVICE_FEATURES));
        assertEquals(256, driver.reg(QUEUE_NUM_MAX));
        driver.set(QUEUE_SEL, 1);
        assertEquals(0, driver.reg(QUEUE_NUM_MAX), "no second queue");
        assertEquals(0, dev.read(MAGIC, 2), "registers are 32-bit only");
    }

    @Test
    void featuresOkIsRefusedWithoutVersion1OrWithUnofferedBits() {
        assertEquals(0, driver.start(F_EVENT_IDX) & STATUS_FEATURES_OK);
        assertEquals(0, driver.start(F_VERSION_1 | 1L << 40) & STATUS_FEATURES_OK);
        assertEquals(
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
                driver.start(DRIVER_FEATURES_ALL));
    }

    @Test
    void writesInTheWrongOrderAreIgnored() {
        // Queue setup before FEATURES_OK, DRIVER_OK before FEATURES_OK, clearing a status bit.
        driver.set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        driver.set(QUEUE_NUM, 8);
        driver.set(QUEUE_READY, 1);
        assertEquals(0, driver.reg(QUEUE_READY));
        assertEquals(256, driver.reg(QUEUE_NUM));
        driver.set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
        assertEquals(STATUS_ACKNOWLEDGE | STATUS_DRIVER, driver.reg(STATUS));
        driver.set(STATUS, STATUS_ACKNOWLEDGE);
        assertEquals(STATUS_ACKNOWLEDGE | STATUS_DRIVER, driver.reg(STATUS));
        driver.start(DRIVER_FEATURES_ALL);
        // Features and queues are fixed once the device runs.
        driver.set(DRIVER_FEATURES_SEL, 0);
        driver.set(DRIVER_FEATURES, 0);
        assertEquals(DRIVER_FEATURES_ALL, dev.state().driverFeatures());
        driver.set(QUEUE_DESC_LOW, 0x8000);
        assertEquals(Driver.DESC, dev.state().queues().get(0).desc());
        // A queue size that is not a power of two is not made ready.
        driver.set(STATUS, 0);
        driver.set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        driver.set(DRIVER_FEATURES_SEL, 1);
        driver.set(DRIVER_FEATURES, 1);
        driver.set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        driver.set(QUEUE_NUM, 12);
        driver.set(QUEUE_READY, 1);
        assertEquals(0, driver.reg(QUEUE_READY));
    }

    @Test
    void entropyFillsTheBuffersAndInterrupts() {
        driver.start(F_VERSION_1);
        int head = driver.chain(new long[][] {{Driver.DATA, 64, 1}, {Driver.DATA + 64, 64, 1}});
        driver.offerAndNotify(head);
        assertArrayEquals(new int[] {head, 128}, driver.nextUsed());
        assertEquals(1, interrupts.get());
        assertEquals(INTERRUPT_USED, driver.reg(INTERRUPT_STATUS));
        driver.set(INTERRUPT_ACK, INTERRUPT_USED);
        assertEquals(0, driver.reg(INTERRUPT_STATUS));
        var bytes = driver.mem().asSlice(Driver.DATA, 128).toArray(ValueLayout.JAVA_BYTE);
        assertTrue(java.util.stream.IntStream.range(1, 128).anyMatch(i -> bytes[i] != bytes[0]), "not constant");
    }

    @Test
    void eventIndexSuppressesInterruptsTheDriverDidNotAskFor() {
        driver.start(DRIVER_FEATURES_ALL);
        driver.setUsedEvent(2); // interrupt when the used index passes 2, i.e. at the third entry
        for (int i = 0; i < 3; i++) {
            driver.offerAndNotify(driver.chain(new long[][] {{Driver.DATA, 8, 1}}));
            assertEquals(i == 2 ? 1 : 0, interrupts.get(), "after request " + i);
        }
        assertEquals(3, driver.availEvent(), "the device asks to be notified from the next entry");
    }

    /** Completes every request at once; while it handles the first, the test acts as the driver. */
    static final class Sink extends FrameSource {
        Runnable duringFirst = () -> {};
        int handled;

        @Override
        public synchronized int takeLimit(int queue) {
            return Integer.MAX_VALUE;
        }

        @Override
        public void handle(int queue, DescriptorChain chain, Completion done) {
            if (handled++ == 0) duringFirst.run();
            done.complete(0);
        }
    }

    @Test
    void theDriverIsAskedNotToNotifyWhileTheDeviceTakesItsRequests() {
        for (boolean eventIdx : new boolean[] {false, true}) {
            var sink = new Sink();
            notified.clear();
            dev = new VirtioMmio(sink, ram, this::notified, interrupts::incrementAndGet);
            driver = new Driver(ram, dev, 16);
            driver.start(F_VERSION_1 | (eventIdx ? F_EVENT_IDX : 0));
            var asked = new ArrayList<Boolean>();
            sink.duringFirst = () -> {
                for (int i = 0; i < 3; i++)
                    asked.add(driver.offerAndNotifyIfAsked(driver.chain(new long[][] {{Driver.DATA, 8, 0}}), eventIdx));
            };
            assertTrue(driver.offerAndNotifyIfAsked(driver.chain(new long[][] {{Driver.DATA, 8, 0}}), eventIdx));
            String mode = eventIdx ? "with EVENT_IDX" : "with the NO_NOTIFY flag";
            assertEquals(List.of(false, false, false), asked, mode + ": no notification while the device works");
            assertEquals(List.of(0), notified, mode);
            assertEquals(4, sink.handled, mode + ": the requests added meanwhile are taken without one");
            for (int i = 0; i < 4; i++) assertNotNull(driver.nextUsed(), mode + ": used entry " + i);
            if (eventIdx) assertEquals(4, driver.availEvent(), mode + ": notify me from the next entry");
            else assertEquals(0, driver.usedFlags(), mode + ": notifications asked for again");
            assertTrue(driver.offerAndNotifyIfAsked(driver.chain(new long[][] {{Driver.DATA, 8, 0}}), eventIdx), mode);
            assertEquals(5, sink.handled, mode);
        }
    }

    @Test
    void indirectDescriptorsAreFollowed() {
        driver.start(DRIVER_FEATURES_ALL);
        long table = 0x8000;
        driver.desc(table, 0, Driver.DATA, 16, Virtqueue.DESC_F_WRITE | Virtqueue.DESC_F_NEXT, 1);
        driver.desc(table, 1, Driver.DATA + 16, 16, Virtqueue.DESC_F_WRITE, 0);
        driver.desc(Driver.DESC, 0, table, 32, Virtqueue.DESC_F_INDIRECT, 0);
        driver.offerAndNotify(0);
        assertArrayEquals(new int[] {0, 32}, driver.nextUsed());
    }

    void assertNeedsReset(String why) {
        assertEquals(STATUS_NEEDS_RESET, driver.reg(STATUS) & STATUS_NEEDS_RESET, why);
        assertNotNull(dev.lastError());
        assertEquals(INTERRUPT_CONFIG, driver.reg(INTERRUPT_STATUS) & INTERRUPT_CONFIG);
        // A reset brings it back.
        assertEquals(
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
                new Driver(ram, dev, 16).start(DRIVER_FEATURES_ALL));
    }

    @Test
    void aDescriptorLoopNeedsReset() {
        driver.start(DRIVER_FEATURES_ALL);
        driver.desc(Driver.DESC, 0, Driver.DATA, 8, Virtqueue.DESC_F_WRITE | Virtqueue.DESC_F_NEXT, 1);
        driver.desc(Driver.DESC, 1, Driver.DATA, 8, Virtqueue.DESC_F_WRITE | Virtqueue.DESC_F_NEXT, 0);
        driver.offerAndNotify(0);
        assertNeedsReset("loop");
        assertEquals(0, driver.usedIdx());
    }

    @Test
    void aBufferOutsideRamNeedsReset() {
        driver.start(DRIVER_FEATURES_ALL);
        driver.desc(Driver.DESC, 0, (1 << 20) - 4, 8, Virtqueue.DESC_F_WRITE, 0);
        driver.offerAndNotify(0);
        assertNeedsReset("outside RAM");
    }

    @Test
    void anOverflowingAddressNeedsReset() {
        driver.start(DRIVER_FEATURES_ALL);
        driver.desc(Driver.DESC, 0, -8, 16, Virtqueue.DESC_F_WRITE, 0);
        driver.offerAndNotify(0);
        assertNeedsReset("address + length overflows");
    }

    @Test
    void anAvailableIndexThatRunsAheadNeedsReset() {
        driver.start(DRIVER_FEATURES_ALL);
        driver.mem().set(Driver.U16, Driver.AVAIL + 2, (short) 17);
        driver.set(QUEUE_NOTIFY, 0);
        assertNeedsReset("avail idx 17 on a queue of 16");
    }

    @Test
    void nestedIndirectTablesNeedReset() {
        driver.start(DRIVER_FEATURES_ALL);
        long table = 0x8000;
        driver.desc(table, 0, table, 16, Virtqueue.DESC_F_INDIRECT, 0);
        driver.desc(Driver.DESC, 0, table, 16, Virtqueue.DESC_F_INDIRECT, 0);
        driver.offerAndNotify(0);
        assertNeedsReset("indirect in indirect");
    }

    @Test
    void anIndirectTableOfMoreThan1024EntriesNeedsReset() {
        driver.start(DRIVER_FEATURES_ALL);
        driver.desc(Driver.DESC, 0, 0x8000, 1025 * 16, Virtqueue.DESC_F_INDIRECT, 0);
        driver.offerAndNotify(0);
        assertNeedsReset("a table too large");
    }

    @Test
    void aRingOutsideRamNeedsReset() {
        driver.set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        driver.set(DRIVER_FEATURES_SEL, 1);
        driver.set(DRIVER_FEATURES, 1);
        driver.set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        driver.set(QUEUE_NUM, 16);
        driver.set(QUEUE_DESC_HIGH, 1); // 4 GiB: no RAM there
        driver.set(QUEUE_READY, 1);
        assertEquals(STATUS_NEEDS_RESET, driver.reg(STATUS) & STATUS_NEEDS_RESET);
    }

    @Test
    void stateRoundTripsThroughTheCodecAndTheQueueContinues() throws InterruptedException {
        driver.start(DRIVER_FEATURES_ALL);
        driver.offerAndNotify(driver.chain(new long[][] {{Driver.DATA, 8, 1}}));
        driver.offer(driver.chain(new long[][] {{Driver.DATA + 8, 8, 1}})); // available, not yet notified
        dev.pause(Duration.ofSeconds(1));
        driver.set(QUEUE_NOTIFY, 0); // while paused: remembered by the ring, not taken
        var state = dev.state();
        assertEquals(1, state.queues().get(0).lastAvail());
        var decoded = VirtioMmioCodec.INSTANCE.decode(VirtioMmioCodec.INSTANCE.encode(state), 2, "device/virtio-rng");
        assertEquals(state.queues(), decoded.queues());
        assertEquals(state.status(), decoded.status());
        assertArrayEquals(state.config(), decoded.config());
        dev = new VirtioMmio(rng(), decoded, ram, this::notified, interrupts::incrementAndGet);
        driver = new Driver(ram, dev, 16);
        driver.usedSeen = 1;
        dev.resume(); // looks at the rings again: the second request is served, exactly once
        assertArrayEquals(new int[] {1, 8}, driver.nextUsed());
        assertNull(driver.nextUsed());
        assertEquals(2, driver.usedIdx());
    }

    @Test
    void aStateOfAnotherDeviceIsRefused() {
        var blockState = new VirtioMmio.State(2, 0, 0, 0, 0, 0, 0, 0, new byte[0], List.of(), new byte[0]);
        var e = assertThrows(
                IllegalArgumentException.class, () -> new VirtioMmio(rng(), blockState, ram, q -> {}, () -> {}));
        assertTrue(e.getMessage().contains("device type 2"), e.getMessage());
    }

    /**
     * A device that fills a buffer only when it has a "frame" (as network receive does), keeps the
     * frames it holds as its own state, and lets the driver write its config byte 0.
     */
    static class FrameSource implements VirtioDevice {
        final java.util.ArrayDeque<Byte> frames = new java.util.ArrayDeque<>();
        Context context;
        int written = -1;

        @Override
        public int deviceId() {
            return 99;
        }

        @Override
        public String name() {
            return "frames";
        }

        @Override
        public long features() {
            return 0;
        }

        @Override
        public int queueCount() {
            return 1;
        }

        @Override
        public int queueMaxSize() {
            return 16;
        }

        @Override
        public byte[] initialConfig() {
            return new byte[4];
        }

        @Override
        public synchronized int takeLimit(int queue) {
            return frames.size();
        }

        @Override
        public synchronized void handle(int queue, DescriptorChain chain, Completion done) {
            byte b = frames.remove();
            chain.writable().getFirst().set(ValueLayout.JAVA_BYTE, 0, b);
            done.complete(1);
        }

        synchronized void arrive(byte b) {
            frames.add(b);
            context.kick(0);
        }

        @Override
        public boolean configWritable(int offset, int size) {
            return offset == 0 && size == 1;
        }

        @Override
        public void configWritten(int offset, int size, long value) {
            written = (int) value;
        }

        @Override
        public void start(Context context) {
            this.context = context;
        }

        @Override
        public synchronized byte[] saveState() {
            var b = new byte[frames.size()];
            int i = 0;
            for (var f : frames) b[i++] = f;
            return b;
        }

        @Override
        public synchronized void restoreState(byte[] state) {
            frames.clear();
            for (var b : state) frames.add(b);
        }
    }

    @Test
    void aDeviceTakesOnlyTheBuffersItCanFillAndItsOwnStateTravels() throws InterruptedException {
        var source = new FrameSource();
        dev = new VirtioMmio(source, ram, q -> dev.processQueue(q), interrupts::incrementAndGet);
        source.start(new VirtioDevice.Context() {
            @Override
            public void kick(int queue) {
                dev.processQueue(queue);
            }

            @Override
            public void updateConfig(int offset, byte[] bytes) {
                dev.updateConfig(offset, bytes);
            }
        });
        driver = new Driver(ram, dev, 16);
        driver.start(F_VERSION_1);
        int first = driver.chain(new long[][] {{Driver.DATA, 8, 1}});
        driver.offerAndNotify(first);
        assertNull(driver.nextUsed(), "no frame yet: the buffer stays in the available ring");
        assertEquals(0, dev.state().queues().get(0).lastAvail());
        source.arrive((byte) 7);
        assertArrayEquals(new int[] {first, 1}, driver.nextUsed());
        assertEquals(7, driver.mem().get(ValueLayout.JAVA_BYTE, Driver.DATA));

        source.restoreState(new byte[] {8, 9}); // two frames waiting, no buffer
        dev.pause(Duration.ofSeconds(1));
        var state = VirtioMmioCodec.INSTANCE.decode(VirtioMmioCodec.INSTANCE.encode(dev.state()), 2, "device/frames");
        assertArrayEquals(new byte[] {8, 9}, state.deviceState());
        var restored = new FrameSource();
        dev = new VirtioMmio(restored, state, ram, q -> dev.processQueue(q), interrupts::incrementAndGet);
        driver = new Driver(ram, dev, 16);
        driver.usedSeen = driver.availIdx = driver.nextDesc = 1;
        assertArrayEquals(new byte[] {8, 9}, restored.saveState());
        driver.offerAndNotify(driver.chain(new long[][] {{Driver.DATA + 8, 8, 1}}));
        assertEquals(8, driver.mem().get(ValueLayout.JAVA_BYTE, Driver.DATA + 8), "the saved frame, after restore");
    }

    @Test
    void configWritesReachOnlyWhatTheDeviceAllowsAndDeviceChangesInterrupt() {
        var source = new FrameSource();
        dev = new VirtioMmio(source, ram, q -> {}, interrupts::incrementAndGet);
        driver = new Driver(ram, dev, 16);
        driver.start(F_VERSION_1);
        dev.write(CONFIG + 1, 1, 5);
        dev.write(CONFIG, 2, 0x0505);
        assertEquals(0, dev.read(CONFIG, 4), "not writable there or at that size");
        assertEquals(-1, source.written);
        dev.write(CONFIG, 1, 0x42);
        assertEquals(0x42, dev.read(CONFIG, 1));
        assertEquals(0x42, source.written);

        int generation = driver.reg(CONFIG_GENERATION);
        int before = interrupts.get();
        dev.updateConfig(2, new byte[] {1, 2});
        assertEquals(0x0201_0042L, dev.read(CONFIG, 4));
        assertEquals(generation + 1, driver.reg(CONFIG_GENERATION));
        assertEquals(before + 1, interrupts.get());
        assertEquals(INTERRUPT_CONFIG, driver.reg(INTERRUPT_STATUS) & INTERRUPT_CONFIG);
        assertThrows(IllegalArgumentException.class, () -> dev.updateConfig(3, new byte[] {1, 2}));
    }
}
