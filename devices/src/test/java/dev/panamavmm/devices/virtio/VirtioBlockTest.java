package dev.panamavmm.devices.virtio;

import static dev.panamavmm.devices.virtio.VirtioMmio.*;
import static org.junit.jupiter.api.Assertions.*;

import java.io.IOException;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** virtio-blk over a real file, driven through the transport. */
class VirtioBlockTest {
    static final long HEADER = 0x20000, STATUS_BYTE = 0x20100, DATA = 0x30000;
    static final int DISK_BYTES = 64 * 1024;

    @TempDir
    Path dir;

    final HeapRam ram = new HeapRam(0, 1 << 20);
    FileChannel channel;
    VirtioMmio dev;
    Driver driver;

    @AfterEach
    void close() throws IOException {
        if (channel != null) channel.close();
    }

    Path disk() throws IOException {
        var file = dir.resolve("disk.raw");
        var bytes = new byte[DISK_BYTES];
        for (int i = 0; i < bytes.length; i++) bytes[i] = (byte) (i / VirtioBlock.SECTOR);
        Files.write(file, bytes);
        return file;
    }

    void open(boolean readOnly, String id, java.util.concurrent.Executor io) throws IOException {
        channel = FileChannel.open(disk(), StandardOpenOption.READ, StandardOpenOption.WRITE);
        var blk = new VirtioBlock("virtio-blk0", new ChannelBackend(channel, DISK_BYTES), readOnly, id, io);
        dev = new VirtioMmio(blk, ram, q -> dev.processQueue(q), () -> {});
        driver = new Driver(ram, dev, 16);
        assertEquals(
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
                driver.start(F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC | blk.features()));
    }

    /** Sends one request and returns its status byte; the used length must be {@code usedLength}. */
    int request(int type, long sector, long data, int length, boolean deviceWrites, int usedLength) {
        var h = driver.mem().asSlice(HEADER, 16);
        h.set(ValueLayout.JAVA_INT_UNALIGNED, 0, type);
        h.set(ValueLayout.JAVA_INT_UNALIGNED, 4, 0);
        h.set(ValueLayout.JAVA_LONG_UNALIGNED, 8, sector);
        driver.mem().set(ValueLayout.JAVA_BYTE, STATUS_BYTE, (byte) 0x7f);
        long[][] chain = length == 0
                ? new long[][] {{HEADER, 16, 0}, {STATUS_BYTE, 1, 1}}
                : new long[][] {{HEADER, 16, 0}, {data, length, deviceWrites ? 1 : 0}, {STATUS_BYTE, 1, 1}};
        int head = driver.chain(chain);
        driver.offerAndNotify(head);
        var used = driver.nextUsed();
        assertNotNull(used, "the request completed");
        assertEquals(head, used[0]);
        assertEquals(usedLength, used[1], "used length");
        return driver.mem().get(ValueLayout.JAVA_BYTE, STATUS_BYTE);
    }

    @Test
    void configAdvertisesCapacityAndLimits() throws IOException {
        open(false, "", Runnable::run);
        assertEquals(DISK_BYTES / 512, dev.read(CONFIG, 8));
        assertEquals(VirtioBlock.SEG_MAX, dev.read(CONFIG + 0x0c, 4));
        assertEquals(512, dev.read(CONFIG + 0x14, 4));
        assertEquals(1, dev.read(CONFIG + 0x28, 4), "one discard range per request");
        assertEquals(0, dev.read(CONFIG + 0x3c, 4), "beyond the config space reads 0");
    }

    @Test
    void readsWritesAndFlushesReachTheFile() throws IOException {
        open(false, "", Runnable::run);
        assertEquals(VirtioBlock.S_OK, request(VirtioBlock.T_IN, 3, DATA, 1024, true, 1025));
        assertEquals(3, driver.mem().get(ValueLayout.JAVA_BYTE, DATA));
        assertEquals(4, driver.mem().get(ValueLayout.JAVA_BYTE, DATA + 512));
        driver.mem().asSlice(DATA, 512).fill((byte) 0xAB);
        assertEquals(VirtioBlock.S_OK, request(VirtioBlock.T_OUT, 5, DATA, 512, false, 1));
        assertEquals(VirtioBlock.S_OK, request(VirtioBlock.T_FLUSH, 0, 0, 0, false, 1));
        var file = Files.readAllBytes(dir.resolve("disk.raw"));
        assertEquals((byte) 0xAB, file[5 * 512]);
        assertEquals((byte) 0xAB, file[6 * 512 - 1]);
        assertEquals(6, file[6 * 512]);
    }

    @Test
    void outOfRangeAndMisalignedRequestsFailWithIoerr() throws IOException {
        open(false, "", Runnable::run);
        assertEquals(VirtioBlock.S_IOERR, request(VirtioBlock.T_IN, DISK_BYTES / 512, DATA, 512, true, 1));
        assertEquals(VirtioBlock.S_IOERR, request(VirtioBlock.T_IN, Long.MAX_VALUE / 256, DATA, 512, true, 1));
        assertEquals(VirtioBlock.S_IOERR, request(VirtioBlock.T_IN, 0, DATA, 100, true, 1));
        assertEquals(VirtioBlock.S_UNSUPP, request(99, 0, 0, 0, false, 1));
    }

    @Test
    void aReadOnlyDiskAdvertisesRoAndAnswersWritesWithIoerr() throws IOException {
        open(true, "", Runnable::run);
        assertTrue((dev.offeredFeatures() & VirtioBlock.F_RO) != 0);
        assertEquals(0, dev.offeredFeatures() & VirtioBlock.F_DISCARD);
        driver.mem().asSlice(DATA, 512).fill((byte) 0xCD);
        assertEquals(VirtioBlock.S_IOERR, request(VirtioBlock.T_OUT, 0, DATA, 512, false, 1));
        assertEquals(0, Files.readAllBytes(dir.resolve("disk.raw"))[0], "nothing written");
        assertEquals(VirtioBlock.S_OK, request(VirtioBlock.T_IN, 1, DATA, 512, true, 513));
    }

    @Test
    void getIdAnswersTheConfiguredId() throws IOException {
        open(false, "data-disk", Runnable::run);
        driver.mem().asSlice(DATA, 20).fill((byte) 0x55);
        assertEquals(VirtioBlock.S_OK, request(VirtioBlock.T_GET_ID, 0, DATA, 20, true, 21));
        var id = driver.mem().asSlice(DATA, 20).toArray(ValueLayout.JAVA_BYTE);
        assertEquals("data-disk", new String(id, 0, 9, StandardCharsets.US_ASCII));
        assertEquals(0, id[9], "zero padded");
        assertThrows(IllegalArgumentException.class, () -> VirtioBlock.checkId("x".repeat(21)));
    }

    @Test
    void discardAndWriteZeroesZeroTheRange() throws IOException {
        open(false, "", Runnable::run);
        var range = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN);
        range.putLong(0, 8).putInt(8, 8).putInt(12, 0);
        driver.mem().asSlice(DATA, 16).copyFrom(java.lang.foreign.MemorySegment.ofArray(range.array()));
        assertEquals(VirtioBlock.S_OK, request(VirtioBlock.T_DISCARD, 0, DATA, 16, false, 1));
        range.putLong(0, 20).putInt(12, 1);
        driver.mem().asSlice(DATA, 16).copyFrom(java.lang.foreign.MemorySegment.ofArray(range.array()));
        assertEquals(VirtioBlock.S_OK, request(VirtioBlock.T_WRITE_ZEROES, 0, DATA, 16, false, 1));
        range.putLong(0, DISK_BYTES / 512 - 1).putInt(12, 0);
        driver.mem().asSlice(DATA, 16).copyFrom(java.lang.foreign.MemorySegment.ofArray(range.array()));
        assertEquals(VirtioBlock.S_IOERR, request(VirtioBlock.T_DISCARD, 0, DATA, 16, false, 1));
        var file = Files.readAllBytes(dir.resolve("disk.raw"));
        assertEquals(0, file[8 * 512]);
        assertEquals(0, file[16 * 512 - 1]);
        assertEquals(16, file[16 * 512]);
        assertEquals(0, file[27 * 512]);
    }

    @Test
    void pauseWaitsForRequestsInFlightOnAPool() throws Exception {
        var pool = Executors.newFixedThreadPool(4);
        try {
            open(false, "", pool);
            int n = 5; // three descriptors each in a queue of 16
            for (int i = 0; i < n; i++) {
                var h = driver.mem().asSlice(HEADER + 16L * i, 16);
                h.set(ValueLayout.JAVA_INT_UNALIGNED, 0, VirtioBlock.T_IN);
                h.set(ValueLayout.JAVA_LONG_UNALIGNED, 8, i);
                driver.offer(driver.chain(new long[][] {
                    {HEADER + 16L * i, 16, 0}, {DATA + 512L * i, 512, 1}, {STATUS_BYTE + i, 1, 1}
                }));
            }
            driver.set(QUEUE_NOTIFY, 0);
            dev.pause(java.time.Duration.ofSeconds(10));
            assertEquals(0, dev.inFlight());
            assertEquals(n, driver.usedIdx(), "every request is in the used ring once paused");
            for (int i = 0; i < n; i++) assertEquals(i, driver.mem().get(ValueLayout.JAVA_BYTE, DATA + 512L * i));
            assertEquals(n, dev.state().queues().get(0).usedIdx());
        } finally {
            pool.shutdown();
            assertTrue(pool.awaitTermination(5, TimeUnit.SECONDS));
        }
    }
}
