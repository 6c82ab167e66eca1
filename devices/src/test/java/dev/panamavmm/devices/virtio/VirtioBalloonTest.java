package dev.panamavmm.devices.virtio;

import static dev.panamavmm.devices.virtio.VirtioMmio.*;
import static org.junit.jupiter.api.Assertions.*;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The balloon through its transport: queue roles by feature, frame numbers and ranges checked, statistics, state. */
class VirtioBalloonTest {
    static final int RAM = 1 << 20;
    /** The fake VMM's own page: never given back. */
    static final long PROTECTED = 0x1000;

    /** Guest RAM [0, 1 MiB) that records what it gives back. */
    static final class Memory implements BalloonMemory {
        final HeapRam ram = new HeapRam(0, RAM);
        final List<long[]> released = new ArrayList<>();

        @Override
        public Outcome release(long address, long length) {
            assertEquals(0, address % 4096);
            assertEquals(0, length % 4096);
            if (address < 0 || length <= 0 || address + length > RAM) return Outcome.NOT_RAM;
            if (address < PROTECTED + 4096 && address + length > PROTECTED) return Outcome.PROTECTED;
            released.add(new long[] {address, length});
            ram.segment().asSlice(address, length).fill((byte) 0);
            return Outcome.RETURNED;
        }

        @Override
        public long guestAddress(MemorySegment buffer) {
            long at = buffer.address() - ram.segment().address();
            return at >= 0 && at < RAM ? at : -1;
        }
    }

    final Memory memory = new Memory();
    VirtioMmio dev;
    VirtioBalloon balloon;

    /** A driver that set up {@code queues} queues, queue q's rings at 0x10000 + q * 0x4000. */
    void start(VirtioBalloon device, long features, int queues) {
        balloon = device;
        var holder = new VirtioMmio[1];
        dev = holder[0] = new VirtioMmio(device, memory.ram, q -> holder[0].processQueue(q), () -> {});
        dev.write(STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        dev.write(DRIVER_FEATURES_SEL, 4, 0);
        dev.write(DRIVER_FEATURES, 4, features);
        dev.write(DRIVER_FEATURES_SEL, 4, 1);
        dev.write(DRIVER_FEATURES, 4, 1);
        dev.write(STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        for (int q = 0; q < queues; q++) {
            dev.write(QUEUE_SEL, 4, q);
            dev.write(QUEUE_NUM, 4, 16);
            dev.write(QUEUE_DESC_LOW, 4, ring(q));
            dev.write(QUEUE_DRIVER_LOW, 4, ring(q) + 0x1000);
            dev.write(QUEUE_DEVICE_LOW, 4, ring(q) + 0x2000);
            dev.write(QUEUE_READY, 4, 1);
        }
        dev.write(STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assertEquals(0, dev.read(STATUS, 4) & STATUS_NEEDS_RESET);
    }

    static int ring(int q) {
        return 0x10000 + q * 0x4000;
    }

    final int[] availIdx = new int[4];

    /** One request of buffers {address, length, writable} on queue q, notified. */
    void request(int q, long[]... buffers) {
        var m = memory.ram.segment();
        for (int i = 0; i < buffers.length; i++) {
            long at = ring(q) + 16L * i;
            m.set(ValueLayout.JAVA_LONG_UNALIGNED, at, buffers[i][0]);
            m.set(ValueLayout.JAVA_INT_UNALIGNED, at + 8, (int) buffers[i][1]);
            int flags = (buffers[i][2] != 0 ? Virtqueue.DESC_F_WRITE : 0)
                    | (i + 1 < buffers.length ? Virtqueue.DESC_F_NEXT : 0);
            m.set(ValueLayout.JAVA_SHORT_UNALIGNED, at + 12, (short) flags);
            m.set(ValueLayout.JAVA_SHORT_UNALIGNED, at + 14, (short) (i + 1));
        }
        long avail = ring(q) + 0x1000;
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, avail + 4 + 2L * (availIdx[q] % 16), (short) 0);
        availIdx[q]++;
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, avail + 2, (short) availIdx[q]);
        dev.write(QUEUE_NOTIFY, 4, q);
    }

    int used(int q) {
        return Short.toUnsignedInt(memory.ram.segment().get(ValueLayout.JAVA_SHORT_UNALIGNED, ring(q) + 0x2000 + 2));
    }

    /** Frame numbers as the driver puts them in an inflate or deflate buffer at 0x80000. */
    long[] frames(long... pfns) {
        for (int i = 0; i < pfns.length; i++)
            memory.ram.segment().set(ValueLayout.JAVA_INT_UNALIGNED, 0x80000 + 4L * i, (int) pfns[i]);
        return new long[] {0x80000, 4L * pfns.length, 0};
    }

    @Test
    void inflatedFramesAreGivenBackInRunsAndBadOnesAreCounted() {
        start(new VirtioBalloon("b", memory, false, null, false), 0, 2);
        memory.ram.segment().asSlice(0x40000, 0x3000).fill((byte) 7);
        // 0x40-0x42 a run; 0x1 the VMM's page; 0xffffffff and 0x100 outside 1 MiB of RAM
        request(0, frames(0x40, 0x41, 0x42, 0x1, 0xffff_ffffL, 0x100, 0x60));
        assertEquals(1, used(0));
        assertEquals(List.of(List.of(0x40000L, 0x3000L), List.of(0x60000L, 0x1000L)), ranges());
        assertEquals(0, memory.ram.segment().get(ValueLayout.JAVA_BYTE, 0x41000), "the page was given back");
        var c = balloon.counters();
        assertEquals(4, c.inflated());
        assertEquals(4, c.returned());
        assertEquals(3, c.ignored());
        request(1, frames(0x40, 0x41));
        assertEquals(2, balloon.counters().deflated());
        assertEquals(2, memory.released.size(), "a deflate gives nothing back");
    }

    @Test
    void aRunOverTheVmmsPageIsSortedPageByPage() {
        start(new VirtioBalloon("b", memory, false, null, false), 0, 2);
        request(0, frames(0x0, 0x1, 0x2));
        assertEquals(List.of(List.of(0x0L, 0x1000L), List.of(0x2000L, 0x1000L)), ranges());
        assertEquals(1, balloon.counters().ignored());
    }

    @Test
    void reportingIsQueueTwoWithoutStatisticsAndThreeWithThem() {
        start(new VirtioBalloon("b", memory, true, Duration.ofHours(1), true), VirtioBalloon.F_REPORTING, 3);
        assertEquals(4, balloon.queueCount(), "both offered: four queues");
        request(2, new long[] {0x40000, 0x2000, 1}, new long[] {0x50001, 0x1000, 1}, new long[] {0x60000, 0x800, 1});
        assertEquals(1, used(2));
        assertEquals(List.of(List.of(0x40000L, 0x2000L)), ranges());
        assertEquals(2, balloon.counters().reported());
        assertEquals(2, balloon.counters().ignored(), "unaligned start, unaligned length");

        memory.released.clear();
        start(
                new VirtioBalloon("b", memory, true, Duration.ofHours(1), true),
                VirtioBalloon.F_REPORTING | VirtioBalloon.F_STATS_VQ,
                4);
        request(3, new long[] {0x40000, 0x4000, 1});
        assertEquals(List.of(List.of(0x40000L, 0x4000L)), ranges());
        assertTrue(balloon.statistics().isEmpty(), "nothing came on the statistics queue");
    }

    @Test
    void theStatisticsBufferIsTakenOncePerIntervalAndRead() {
        start(new VirtioBalloon("b", memory, false, Duration.ofHours(1), false), VirtioBalloon.F_STATS_VQ, 3);
        var m = memory.ram.segment();
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, 0x70000, (short) 4); // free memory
        m.set(ValueLayout.JAVA_LONG_UNALIGNED, 0x70002, 12345);
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, 0x7000a, (short) 99); // a tag from a newer spec: skipped
        m.set(ValueLayout.JAVA_LONG_UNALIGNED, 0x7000c, 1);
        request(2, new long[] {0x70000, 20, 0});
        assertEquals(1, used(2), "the first buffer is taken at once");
        assertEquals(Map.of("free-memory", 12345L), balloon.statistics());
        m.set(ValueLayout.JAVA_LONG_UNALIGNED, 0x70002, 777);
        request(2, new long[] {0x70000, 20, 0});
        assertEquals(1, used(2), "the next waits in the available ring for the interval");
        assertEquals(12345L, balloon.statistics().get("free-memory"));
        var state = dev.state();
        assertEquals(1, state.queues().get(2).lastAvail(), "a snapshot finds it there");
    }

    @Test
    void onlyActualIsWritableAndTheTargetComesFromTheHost() {
        start(new VirtioBalloon("b", memory, false, null, false), 0, 2);
        dev.write(CONFIG + VirtioBalloon.CONFIG_NUM_PAGES, 4, 55);
        dev.write(CONFIG + VirtioBalloon.CONFIG_ACTUAL, 2, 55);
        dev.write(CONFIG + VirtioBalloon.CONFIG_ACTUAL, 4, 33);
        assertEquals(0, dev.read(CONFIG + VirtioBalloon.CONFIG_NUM_PAGES, 4));
        assertEquals(33, dev.read(CONFIG + VirtioBalloon.CONFIG_ACTUAL, 4));
        int generation = (int) dev.read(CONFIG_GENERATION, 4);
        dev.updateConfig(VirtioBalloon.CONFIG_NUM_PAGES, VirtioBalloon.numPages(4096));
        assertEquals(4096, dev.read(CONFIG + VirtioBalloon.CONFIG_NUM_PAGES, 4));
        assertEquals(generation + 1, dev.read(CONFIG_GENERATION, 4));
        assertEquals(INTERRUPT_CONFIG, dev.read(INTERRUPT_STATUS, 4) & INTERRUPT_CONFIG);
    }

    @Test
    void countersAndStatisticsTravelInTheState() {
        start(new VirtioBalloon("b", memory, false, Duration.ofHours(1), true), 0x22, 4);
        request(0, frames(0x40, 0x1));
        var m = memory.ram.segment();
        m.set(ValueLayout.JAVA_SHORT_UNALIGNED, 0x70000, (short) 5);
        m.set(ValueLayout.JAVA_LONG_UNALIGNED, 0x70002, 1L << 30);
        request(2, new long[] {0x70000, 10, 0});
        var state = VirtioMmioCodec.INSTANCE.decode(VirtioMmioCodec.INSTANCE.encode(dev.state()), 2, "b");
        var again = new VirtioBalloon("b", memory, false, Duration.ofHours(1), true);
        new VirtioMmio(again, state, memory.ram, q -> {}, () -> {});
        assertEquals(balloon.counters(), again.counters());
        assertEquals(Map.of("total-memory", 1L << 30), again.statistics());
        assertThrows(IllegalArgumentException.class, () -> again.restoreState(new byte[7]));
    }

    List<List<Long>> ranges() {
        return memory.released.stream().map(r -> List.of(r[0], r[1])).toList();
    }
}
