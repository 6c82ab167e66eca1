package dev.panamavmm.bench;

import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;

import dev.panamavmm.devices.virtio.VirtioBlock;
import dev.panamavmm.devices.virtio.VirtioMmio;
import dev.panamavmm.kvm.bindings.Iovec;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.vmm.PosixBlockBackend;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The virtio-blk data path without a guest: 4 KiB random reads of a file on tmpfs through the
 * transport, the split ring, the device's I/O pool and {@code preadv} into native "guest RAM",
 * at queue depth 1 and 32 ({@link #device}); the peer ({@link #preadv}) is the same reads as
 * plain {@code preadv} calls on the benchmark thread, the floor the device adds its cost to.
 * Time per request. The driver side (writing descriptors, waiting for the used index) is the
 * benchmark thread; interrupts are counted, not delivered.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(
        value = 1,
        jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class VirtioBlockBench {
    private static final long DISK_BYTES = 256L << 20;
    private static final int BLOCK = 4096, QUEUE = 256;
    private static final long DESC = 0x1000, AVAIL = 0x10000, USED = 0x20000, HEADERS = 0x30000, DATA = 0x100000;

    @Param({"1", "32"})
    int depth;

    private Path file;
    private int fd;
    private Arena arena;
    private MemorySegment ram;
    private ExecutorService io;
    private VirtioMmio dev;
    private int availIdx;
    private final SplittableRandom random = new SplittableRandom(42);
    private MemorySegment iov;

    @Setup(Level.Trial)
    public void open() throws Exception {
        file = Files.createTempFile(Path.of("/dev/shm"), "virtio-bench", ".raw");
        var bytes = new byte[1 << 20];
        new SplittableRandom(1).nextBytes(bytes);
        try (var out = Files.newOutputStream(file)) {
            for (long n = 0; n < DISK_BYTES; n += bytes.length) out.write(bytes);
        }
        fd = LibC.open(file.toString(), LibcConstants.O_RDWR | LibcConstants.O_CLOEXEC, 0);
        arena = Arena.ofShared();
        ram = arena.allocate(DATA + (long) QUEUE * BLOCK, 4096);
        iov = arena.allocate(Iovec.LAYOUT);
        io = Executors.newFixedThreadPool(4, Thread.ofPlatform().daemon().factory());
        var blk = new VirtioBlock("bench", new PosixBlockBackend(fd, DISK_BYTES), false, "", io, 4);
        dev = new VirtioMmio(
                blk,
                (address, length) -> address >= 0 && length >= 0 && address + length <= ram.byteSize()
                        ? ram.asSlice(address, length)
                        : null,
                q -> dev.processQueue(q),
                () -> {});
        set(VirtioMmio.STATUS, 3);
        set(VirtioMmio.DRIVER_FEATURES_SEL, 1);
        set(VirtioMmio.DRIVER_FEATURES, 1);
        set(VirtioMmio.STATUS, 11);
        set(VirtioMmio.QUEUE_NUM, QUEUE);
        set(VirtioMmio.QUEUE_DESC_LOW, (int) DESC);
        set(VirtioMmio.QUEUE_DRIVER_LOW, (int) AVAIL);
        set(VirtioMmio.QUEUE_DEVICE_LOW, (int) USED);
        set(VirtioMmio.QUEUE_READY, 1);
        set(VirtioMmio.STATUS, 15);
        // Request i uses descriptors 3i..3i+2: header, 4 KiB buffer, status.
        for (int i = 0; i < QUEUE / 3; i++) {
            desc(3 * i, HEADERS + 32L * i, 16, 1, 3 * i + 1);
            desc(3 * i + 1, DATA + (long) i * BLOCK, BLOCK, 3, 3 * i + 2);
            desc(3 * i + 2, HEADERS + 32L * i + 16, 1, 2, 0);
        }
    }

    private void set(int offset, int value) {
        dev.write(offset, 4, Integer.toUnsignedLong(value));
    }

    private void desc(int i, long addr, int len, int flags, int next) {
        long at = DESC + 16L * i;
        ram.set(JAVA_LONG_UNALIGNED, at, addr);
        ram.set(JAVA_INT_UNALIGNED, at + 8, len);
        ram.set(JAVA_SHORT_UNALIGNED, at + 12, (short) flags);
        ram.set(JAVA_SHORT_UNALIGNED, at + 14, (short) next);
    }

    private long randomSector() {
        return random.nextLong(DISK_BYTES / BLOCK) * (BLOCK / 512);
    }

    @Benchmark
    public int device() {
        for (int i = 0; i < depth; i++) {
            ram.set(JAVA_INT_UNALIGNED, HEADERS + 32L * i, 0); // VIRTIO_BLK_T_IN
            ram.set(JAVA_LONG_UNALIGNED, HEADERS + 32L * i + 8, randomSector());
            ram.set(JAVA_SHORT_UNALIGNED, AVAIL + 4 + 2L * (availIdx % QUEUE), (short) (3 * i));
            availIdx = (availIdx + 1) & 0xFFFF;
        }
        VarHandle.releaseFence();
        ram.set(JAVA_SHORT_UNALIGNED, AVAIL + 2, (short) availIdx);
        dev.write(VirtioMmio.QUEUE_NOTIFY, 4, 0);
        while (Short.toUnsignedInt(ram.get(JAVA_SHORT_UNALIGNED, USED + 2)) != availIdx) {
            Thread.yield(); // the driver gives way, as a guest waiting for an interrupt would
            VarHandle.acquireFence();
        }
        return ram.get(java.lang.foreign.ValueLayout.JAVA_BYTE, HEADERS + 16);
    }

    @Benchmark
    public long preadv() {
        long n = 0;
        for (int i = 0; i < depth; i++) {
            iov.set(JAVA_LONG, Iovec.IOV_BASE, ram.address() + DATA + (long) i * BLOCK);
            iov.set(JAVA_LONG, Iovec.IOV_LEN, BLOCK);
            n += LibC.preadv(fd, iov, 1, randomSector() * 512);
        }
        return n;
    }

    @TearDown(Level.Trial)
    public void close() throws Exception {
        io.shutdown();
        io.awaitTermination(5, TimeUnit.SECONDS);
        LibC.close(fd);
        arena.close();
        Files.deleteIfExists(file);
    }
}
