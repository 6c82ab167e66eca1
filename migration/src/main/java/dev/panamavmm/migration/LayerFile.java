package dev.panamavmm.migration;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.CRC32C;

/**
 * A chained template's layer: the pages its clone wrote, as runs over the guest's memory file,
 * each run's pages page-aligned in this file so that a clone maps them copy-on-write
 * ({@code MAP_PRIVATE|MAP_FIXED}) over the template below it. Specified in docs/snapshot-format.md:
 *
 * <pre>
 * 0     header (64 bytes, little-endian): magic "PNMLAYR1", u32 version, u32 run count, u64 memory
 *       size, u64 data offset, u64 data bytes, 16 reserved bytes, u32 CRC32C of the run table,
 *       u32 CRC32C of the header's first 60 bytes
 * 64    run table: per run u64 memory offset, u64 length, u64 file offset (ascending, disjoint)
 * ...   the pages, from the data offset (the first page boundary after the table); zero pages are holes
 * </pre>
 */
public final class LayerFile {
    private LayerFile() {}

    public static final String FILE_NAME = "layer.pvl";
    static final byte[] MAGIC = {'P', 'N', 'M', 'L', 'A', 'Y', 'R', '1'};
    static final int VERSION = 1;
    static final int HEADER_SIZE = 64;
    static final int RUN_SIZE = 24;
    static final long PAGE = SnapshotFormat.PAGE;
    /** Most runs a reader accepts (a 24 MiB table; far more mappings than vm.max_map_count allows anyway). */
    static final int MAX_RUNS = 1 << 20;

    private static final int OFF_VERSION = 8,
            OFF_RUNS = 12,
            OFF_MEMORY = 16,
            OFF_DATA = 24,
            OFF_DATA_BYTES = 32,
            OFF_TABLE_CRC = 56,
            OFF_HEADER_CRC = 60;

    /** Pages {@code [memoryOffset, memoryOffset + length)} of the memory file are in this file at {@code fileOffset}. */
    public record Run(long memoryOffset, long length, long fileOffset) {}

    /** A layer file read (or just written): its runs over a memory file of {@code memorySize} bytes. */
    public record Layer(Path file, long memorySize, List<Run> runs, long dataBytes) {}

    /** What to write: the pages of {@code pages} go to {@code [memoryOffset, memoryOffset + pages.byteSize())}. */
    public record Source(long memoryOffset, MemorySegment pages) {}

    /**
     * Writes a layer file at {@code file} (created; it must not exist). {@code sources} must be
     * page-aligned, ascending and disjoint. Zero pages are skipped (holes); nothing is read twice.
     */
    public static Layer write(Path file, long memorySize, List<Source> sources) throws IOException {
        long dataOffset = align(HEADER_SIZE + (long) RUN_SIZE * sources.size());
        var runs = new ArrayList<Run>(sources.size());
        var table = ByteBuffer.allocate(RUN_SIZE * sources.size()).order(ByteOrder.LITTLE_ENDIAN);
        long at = dataOffset, lastEnd = 0;
        for (var s : sources) {
            long length = s.pages().byteSize();
            if (s.memoryOffset() % PAGE != 0 || length % PAGE != 0 || length == 0 || s.memoryOffset() < lastEnd)
                throw new IllegalArgumentException("layer runs must be whole pages, ascending and disjoint");
            lastEnd = s.memoryOffset() + length;
            runs.add(new Run(s.memoryOffset(), length, at));
            table.putLong(s.memoryOffset()).putLong(length).putLong(at);
            at += length;
        }
        if (lastEnd > memorySize) throw new IllegalArgumentException("a layer run ends beyond the memory size");
        var header = ByteBuffer.allocate(HEADER_SIZE).order(ByteOrder.LITTLE_ENDIAN);
        header.put(MAGIC)
                .putInt(OFF_VERSION, VERSION)
                .putInt(OFF_RUNS, runs.size())
                .putLong(OFF_MEMORY, memorySize)
                .putLong(OFF_DATA, dataOffset)
                .putLong(OFF_DATA_BYTES, at - dataOffset)
                .putInt(OFF_TABLE_CRC, crc(table.array(), table.capacity()));
        header.putInt(OFF_HEADER_CRC, crc(header.array(), OFF_HEADER_CRC));
        try (var ch = FileChannel.open(file, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
            writeFully(ch, header.clear(), 0);
            writeFully(ch, table.clear(), HEADER_SIZE);
            for (int i = 0; i < runs.size(); i++) {
                RamWriter.write(ch, runs.get(i).fileOffset(), sources.get(i).pages(), RamWriter.Progress.NONE);
            }
            // Trailing zero pages are holes, but the file still ends where the data does.
            if (ch.size() < at) writeFully(ch, ByteBuffer.allocate(1), at - 1);
            ch.force(true);
        }
        return new Layer(file, memorySize, List.copyOf(runs), at - dataOffset);
    }

    /** Reads and checks a layer file's header and run table (not its pages: a clone maps those). */
    public static Layer read(Path file) {
        try (var ch = FileChannel.open(file, StandardOpenOption.READ)) {
            long size = ch.size();
            var header = ByteBuffer.allocate(HEADER_SIZE).order(ByteOrder.LITTLE_ENDIAN);
            if (size < HEADER_SIZE || readFully(ch, header, 0) < HEADER_SIZE)
                throw new SnapshotException("layer file " + file + " is truncated (no complete header)");
            byte[] h = header.array();
            for (int i = 0; i < MAGIC.length; i++)
                if (h[i] != MAGIC[i]) throw new SnapshotException(file + " is not a Panama VMM layer file");
            if (header.getInt(OFF_HEADER_CRC) != crc(h, OFF_HEADER_CRC))
                throw new SnapshotException("layer file " + file + " is corrupt (header checksum mismatch)");
            int version = header.getInt(OFF_VERSION);
            if (version != VERSION)
                throw new SnapshotException("layer file " + file + " has format version " + version
                        + "; this VMM reads version " + VERSION);
            int count = header.getInt(OFF_RUNS);
            long memorySize = header.getLong(OFF_MEMORY);
            long dataOffset = header.getLong(OFF_DATA);
            long dataBytes = header.getLong(OFF_DATA_BYTES);
            if (count < 0 || count > MAX_RUNS)
                throw new SnapshotException("layer file " + file + " has an impossible run count " + count);
            if (dataOffset != align(HEADER_SIZE + (long) RUN_SIZE * count)
                    || dataBytes < 0
                    || dataBytes % PAGE != 0
                    || size < dataOffset + dataBytes)
                throw new SnapshotException("layer file " + file + " is truncated or has an impossible layout");
            var table = ByteBuffer.allocate(RUN_SIZE * count).order(ByteOrder.LITTLE_ENDIAN);
            if (readFully(ch, table, HEADER_SIZE) < table.capacity())
                throw new SnapshotException("layer file " + file + " is truncated (run table)");
            if (header.getInt(OFF_TABLE_CRC) != crc(table.array(), table.capacity()))
                throw new SnapshotException("layer file " + file + " is corrupt (run table checksum mismatch)");
            table.flip();
            var runs = new ArrayList<Run>(count);
            long lastEnd = 0, at = dataOffset;
            for (int i = 0; i < count; i++) {
                var run = new Run(table.getLong(), table.getLong(), table.getLong());
                // Runs tile the data area in order, within the memory: anything else would map the wrong pages.
                if (run.memoryOffset() % PAGE != 0
                        || run.length() <= 0
                        || run.length() % PAGE != 0
                        || run.memoryOffset() < lastEnd
                        || run.memoryOffset() + run.length() > memorySize
                        || run.fileOffset() != at)
                    throw new SnapshotException("layer file " + file + " has an impossible run " + i);
                lastEnd = run.memoryOffset() + run.length();
                at += run.length();
                runs.add(run);
            }
            if (at != dataOffset + dataBytes)
                throw new SnapshotException("layer file " + file + " runs do not add up to its data");
            return new Layer(file, memorySize, List.copyOf(runs), dataBytes);
        } catch (NoSuchFileException e) {
            throw new SnapshotException("layer file " + file + " is missing");
        } catch (IOException e) {
            throw new SnapshotException("cannot read layer file " + file + ": " + IoErrors.reason(e));
        }
    }

    static long align(long n) {
        return (n + PAGE - 1) / PAGE * PAGE;
    }

    private static int crc(byte[] b, int length) {
        var c = new CRC32C();
        c.update(b, 0, length);
        return (int) c.getValue();
    }

    private static int readFully(FileChannel ch, ByteBuffer buffer, long at) throws IOException {
        while (buffer.hasRemaining()) {
            int n = ch.read(buffer, at + buffer.position());
            if (n < 0) break;
        }
        return buffer.position();
    }

    private static void writeFully(FileChannel ch, ByteBuffer buffer, long at) throws IOException {
        while (buffer.hasRemaining()) ch.write(buffer, at + buffer.position());
    }
}
