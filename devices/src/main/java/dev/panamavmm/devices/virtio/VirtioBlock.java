package dev.panamavmm.devices.virtio;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.Executor;

/**
 * virtio-blk (virtio 1.2, 5.2) over a {@link BlockBackend}: IN, OUT, FLUSH, GET_ID, DISCARD and
 * WRITE_ZEROES on one request queue. Requests run on {@code io} (a small pool: several in flight
 * at a queue depth above one); the transport's thread only parses and hands them over. A
 * request the device cannot serve gets a status, never an exception: out of range, misaligned or
 * writing a read-only disk is {@code IOERR} (5.2.6.1: a read-only device answers writes with
 * IOERR and writes nothing), an unknown type {@code UNSUPP}, a host I/O error {@code IOERR}.
 */
public final class VirtioBlock implements VirtioDevice {
    public static final int DEVICE_ID = 2;
    public static final int SECTOR = 512;
    static final int QUEUE_SIZE = 256;

    static final int T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13;
    static final int S_OK = 0, S_IOERR = 1, S_UNSUPP = 2;
    static final long F_SIZE_MAX = 1L << 1,
            F_SEG_MAX = 1L << 2,
            F_RO = 1L << 5,
            F_BLK_SIZE = 1L << 6,
            F_FLUSH = 1L << 9,
            F_DISCARD = 1L << 13,
            F_WRITE_ZEROES = 1L << 14;
    static final int ID_BYTES = 20;
    static final int HEADER_BYTES = 16;
    /** Largest buffer and buffer count per request the driver may use (queue size minus header and status). */
    static final int SIZE_MAX = 1 << 20, SEG_MAX = QUEUE_SIZE - 2;
    /** Discard and write-zeroes: one range per request, at most 2 GiB - 512. */
    static final int MAX_RANGE_SECTORS = 0x3F_FFFF, MAX_RANGES = 1;

    private final String name;
    private final BlockBackend backend;
    private final boolean readOnly;
    private final byte[] id;
    private final Executor io;

    /**
     * A disk named {@code name} (messages, threads) over {@code backend}; {@code id} (at most 20
     * bytes of ASCII, may be empty) is what GET_ID answers.
     */
    public VirtioBlock(String name, BlockBackend backend, boolean readOnly, String id, Executor io) {
        this.name = Objects.requireNonNull(name);
        this.backend = Objects.requireNonNull(backend);
        this.readOnly = readOnly;
        this.id = checkId(id);
        this.io = Objects.requireNonNull(io);
    }

    /** The id's bytes; IllegalArgumentException for one that is not printable ASCII of at most 20 bytes. */
    public static byte[] checkId(String id) {
        for (int i = 0; i < id.length(); i++) {
            char c = id.charAt(i);
            if (c < 0x20 || c > 0x7e) throw new IllegalArgumentException("a disk id is printable ASCII");
        }
        byte[] b = id.getBytes(StandardCharsets.US_ASCII);
        if (b.length > ID_BYTES)
            throw new IllegalArgumentException("a disk id has at most " + ID_BYTES + " characters: " + id);
        return b;
    }

    @Override
    public int deviceId() {
        return DEVICE_ID;
    }

    @Override
    public String name() {
        return name;
    }

    public boolean readOnly() {
        return readOnly;
    }

    @Override
    public long features() {
        long f = F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        return readOnly ? f | F_RO : f | F_DISCARD | F_WRITE_ZEROES;
    }

    @Override
    public int queueCount() {
        return 1;
    }

    @Override
    public int queueMaxSize() {
        return QUEUE_SIZE;
    }

    /** The capacity in sectors: a file's last partial sector is not part of the disk. */
    public long capacity() {
        return backend.size() / SECTOR;
    }

    @Override
    public byte[] initialConfig() {
        var c = ByteBuffer.allocate(0x3c).order(ByteOrder.LITTLE_ENDIAN);
        c.putLong(0x00, capacity());
        c.putInt(0x08, SIZE_MAX);
        c.putInt(0x0c, SEG_MAX);
        c.putInt(0x14, SECTOR); // blk_size
        if (!readOnly) {
            c.putInt(0x24, MAX_RANGE_SECTORS); // max_discard_sectors
            c.putInt(0x28, MAX_RANGES); // max_discard_seg
            c.putInt(0x2c, 4096 / SECTOR); // discard_sector_alignment
            c.putInt(0x30, MAX_RANGE_SECTORS); // max_write_zeroes_sectors
            c.putInt(0x34, MAX_RANGES); // max_write_zeroes_seg
            c.put(0x38, (byte) 1); // write_zeroes_may_unmap
        }
        return c.array();
    }

    @Override
    public void handle(int queue, DescriptorChain chain, Completion done) {
        long writable = chain.writableBytes();
        if (writable == 0) {
            done.complete(0); // no room for a status: nothing can be answered
            return;
        }
        var lastBuffer = chain.writable().getLast();
        var status = lastBuffer.asSlice(lastBuffer.byteSize() - 1, 1);
        if (chain.readableBytes() < HEADER_BYTES) {
            finish(status, S_IOERR, 0, done);
            return;
        }
        var header = new byte[HEADER_BYTES];
        copy(chain.readable(), header);
        var h = ByteBuffer.wrap(header).order(ByteOrder.LITTLE_ENDIAN);
        int type = h.getInt(0);
        long sector = h.getLong(8);
        var out = slices(chain.readable(), HEADER_BYTES, 0);
        var in = slices(chain.writable(), 0, 1);
        switch (type) {
            case T_IN -> io.execute(() -> transfer(false, sector, in, status, done));
            case T_OUT -> {
                if (readOnly) finish(status, S_IOERR, 0, done);
                else io.execute(() -> transfer(true, sector, out, status, done));
            }
            case T_FLUSH ->
                io.execute(() -> {
                    int s = S_OK;
                    try {
                        backend.flush();
                    } catch (IOException e) {
                        s = S_IOERR;
                    }
                    finish(status, s, 0, done);
                });
            case T_GET_ID -> {
                long n = Math.min(ID_BYTES, total(in));
                var bytes = new byte[(int) n];
                System.arraycopy(id, 0, bytes, 0, (int) Math.min(id.length, n));
                copyInto(in, bytes);
                finish(status, S_OK, (int) n, done);
            }
            case T_DISCARD, T_WRITE_ZEROES -> {
                if (readOnly) finish(status, S_IOERR, 0, done);
                else io.execute(() -> ranges(type, out, status, done));
            }
            default -> finish(status, S_UNSUPP, 0, done);
        }
    }

    private void transfer(
            boolean write, long sector, List<MemorySegment> buffers, MemorySegment status, Completion done) {
        long bytes = total(buffers);
        long offset = sector * SECTOR;
        if (bytes % SECTOR != 0 || !inRange(sector, bytes / SECTOR)) {
            finish(status, S_IOERR, 0, done);
            return;
        }
        int s = S_OK;
        try {
            long n = write ? backend.write(offset, buffers) : backend.read(offset, buffers);
            if (n != bytes) s = S_IOERR;
        } catch (IOException | RuntimeException e) {
            s = S_IOERR;
        }
        finish(status, s, write || s != S_OK ? 0 : (int) bytes, done);
    }

    private void ranges(int type, List<MemorySegment> payload, MemorySegment status, Completion done) {
        long bytes = total(payload);
        if (bytes == 0 || bytes % 16 != 0 || bytes / 16 > MAX_RANGES) {
            finish(status, S_UNSUPP, 0, done);
            return;
        }
        var raw = new byte[(int) bytes];
        copy(payload, raw);
        var r = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN);
        int s = S_OK;
        try {
            for (int i = 0; i < raw.length && s == S_OK; i += 16) {
                long sector = r.getLong(i);
                long count = Integer.toUnsignedLong(r.getInt(i + 8));
                int flags = r.getInt(i + 12);
                boolean unmap = (flags & 1) != 0;
                if ((flags & ~1) != 0 || (type == T_DISCARD && unmap) || count > MAX_RANGE_SECTORS) s = S_UNSUPP;
                else if (!inRange(sector, count)) s = S_IOERR;
                else if (type == T_DISCARD) backend.discard(sector * SECTOR, count * SECTOR);
                else backend.writeZeroes(sector * SECTOR, count * SECTOR, unmap);
            }
        } catch (IOException | RuntimeException e) {
            s = S_IOERR;
        }
        finish(status, s, 0, done);
    }

    private boolean inRange(long sector, long sectors) {
        long capacity = capacity();
        return sector >= 0 && sectors >= 0 && sector <= capacity && sectors <= capacity - sector;
    }

    /** Writes the status byte; the used length counts the data written into the guest's buffers and the status. */
    private static void finish(MemorySegment status, int s, int dataWritten, Completion done) {
        status.set(ValueLayout.JAVA_BYTE, 0, (byte) s);
        done.complete(dataWritten + 1);
    }

    private static long total(List<MemorySegment> segments) {
        long n = 0;
        for (var s : segments) n += s.byteSize();
        return n;
    }

    /** The bytes of {@code segments} without the first {@code skip} and the last {@code drop}. */
    static List<MemorySegment> slices(List<MemorySegment> segments, long skip, long drop) {
        long end = total(segments) - drop;
        var result = new ArrayList<MemorySegment>();
        long at = 0;
        for (var s : segments) {
            long from = Math.max(at, skip), to = Math.min(at + s.byteSize(), end);
            if (from < to) result.add(s.asSlice(from - at, to - from));
            at += s.byteSize();
        }
        return result;
    }

    /** Copies the first {@code into.length} bytes of {@code segments} into {@code into}. */
    private static void copy(List<MemorySegment> segments, byte[] into) {
        int at = 0;
        for (var s : segments) {
            int n = (int) Math.min(s.byteSize(), into.length - at);
            MemorySegment.copy(s, ValueLayout.JAVA_BYTE, 0, into, at, n);
            at += n;
            if (at == into.length) return;
        }
    }

    private static void copyInto(List<MemorySegment> segments, byte[] from) {
        int at = 0;
        for (var s : segments) {
            int n = (int) Math.min(s.byteSize(), from.length - at);
            MemorySegment.copy(from, at, s, ValueLayout.JAVA_BYTE, 0, n);
            at += n;
            if (at == from.length) return;
        }
    }
}
