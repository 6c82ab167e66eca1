package dev.panamavmm.migration;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Reads and checks a snapshot: magic, version, header CRC, file length (truncation), the section
 * table's CRC and each section's CRC, all bounded by size limits before anything is allocated.
 * Every problem is a {@link SnapshotException} with one sentence for the user.
 */
public final class SnapshotReader {
    private final Path file;
    private final int version;
    private final String flavour;
    private final long createdAt;
    private final boolean bypass;
    private final Map<String, byte[]> sections;
    private final Map<String, Object> metadata;
    private final List<RamBlockEntry> ram;
    private final int headerCrc;
    private final long fileLength;
    private final SnapshotIdentity base;

    private SnapshotReader(
            Path file,
            int version,
            String flavour,
            long createdAt,
            boolean bypass,
            Map<String, byte[]> sections,
            Map<String, Object> metadata,
            List<RamBlockEntry> ram,
            int headerCrc,
            long fileLength,
            SnapshotIdentity base) {
        this.headerCrc = headerCrc;
        this.fileLength = fileLength;
        this.base = base;
        this.file = file;
        this.version = version;
        this.flavour = flavour;
        this.createdAt = createdAt;
        this.bypass = bypass;
        this.sections = sections;
        this.metadata = metadata;
        this.ram = ram;
    }

    public static SnapshotReader open(Path dir) {
        if (!Files.isDirectory(dir)) throw new SnapshotException("no snapshot directory " + dir);
        Path file = dir.resolve(SnapshotFormat.FILE_NAME);
        try (var ch = FileChannel.open(file, StandardOpenOption.READ)) {
            return read(file, ch.size(), (b, at) -> readFully(ch, b, at));
        } catch (NoSuchFileException e) {
            throw new SnapshotException("no snapshot in " + dir + " (" + SnapshotFormat.FILE_NAME + " is missing)");
        } catch (IOException e) {
            throw new SnapshotException("cannot read snapshot " + file + ": " + IoErrors.reason(e), e);
        }
    }

    /**
     * Reads and checks a container that arrived as bytes (a migration's state), with the same
     * checks as a file; {@code name} stands for the file in messages. Its RAM can only be by
     * reference or by descriptor: nothing reads pages from it.
     */
    public static SnapshotReader fromBytes(byte[] container, Path name) {
        SnapshotReader reader;
        try {
            reader = read(name, container.length, (b, at) -> {
                if (at < 0 || at >= container.length) return 0;
                int n = (int) Math.min(b.remaining(), container.length - at);
                b.put(container, (int) at, n);
                return n;
            });
        } catch (IOException e) {
            throw new AssertionError(e); // reading an array does not fail
        }
        for (var e : reader.ram())
            if (!e.byReference() && !e.byDescriptor())
                throw corrupt(name, "RAM block " + e.id() + " holds pages, which only a snapshot file can");
        if (reader.isLayer()) throw corrupt(name, "a diff layer, whose base no migration sends");
        return reader;
    }

    /** Reads into {@code b} from byte {@code at} until it is full or the source ends; returns the bytes read. */
    private interface Source {
        int read(ByteBuffer b, long at) throws IOException;
    }

    private static SnapshotReader read(Path file, long size, Source source) throws IOException {
        var header = ByteBuffer.allocate(SnapshotFormat.HEADER_SIZE).order(ByteOrder.LITTLE_ENDIAN);
        if (size < SnapshotFormat.HEADER_SIZE || source.read(header, 0) < SnapshotFormat.HEADER_SIZE) {
            throw new SnapshotException("snapshot " + file + " is truncated (no complete header)");
        }
        byte[] h = header.array();
        for (int i = 0; i < SnapshotFormat.MAGIC.length; i++) {
            if (h[i] != SnapshotFormat.MAGIC[i]) throw new SnapshotException(file + " is not a Panama VMM snapshot");
        }
        if (header.getInt(SnapshotFormat.OFF_HEADER_CRC) != SnapshotWriter.crc(h, SnapshotFormat.OFF_HEADER_CRC)) {
            throw new SnapshotException("snapshot " + file + " is corrupt (header checksum mismatch)");
        }
        int version = header.getInt(SnapshotFormat.OFF_VERSION);
        if (version < SnapshotFormat.OLDEST_READABLE || version > SnapshotFormat.NEWEST_READABLE) {
            throw new SnapshotException(
                    "snapshot " + file + " has format version " + version + "; this VMM reads versions "
                            + SnapshotFormat.OLDEST_READABLE + " to " + SnapshotFormat.NEWEST_READABLE);
        }
        long fileLength = header.getLong(SnapshotFormat.OFF_FILE_LENGTH);
        if (size < fileLength)
            throw new SnapshotException(
                    "snapshot " + file + " is truncated (" + size + " of " + fileLength + " bytes)");
        long tableOffset = header.getLong(SnapshotFormat.OFF_TABLE);
        long tableLength = header.getLong(SnapshotFormat.OFF_TABLE_LENGTH);
        if (tableOffset < SnapshotFormat.DATA_START
                || tableLength < 0
                || tableLength > SnapshotFormat.MAX_TABLE
                || tableOffset + tableLength != fileLength) {
            throw new SnapshotException("snapshot " + file + " is corrupt (bad section table bounds)");
        }
        var table = ByteBuffer.allocate((int) tableLength).order(ByteOrder.LITTLE_ENDIAN);
        if (source.read(table, tableOffset) < tableLength)
            throw new SnapshotException("snapshot " + file + " is truncated");
        if (SnapshotWriter.crc(table.array()) != header.getInt(SnapshotFormat.OFF_TABLE_CRC)) {
            throw new SnapshotException("snapshot " + file + " is corrupt (section table checksum mismatch)");
        }
        var sections = parseSections(table.flip(), file);
        byte[] meta = sections.get("metadata");
        if (meta == null) throw new SnapshotException("snapshot " + file + " has no metadata");
        Map<String, Object> metadata;
        try {
            metadata = Json.asObject(Json.parse(new String(meta, StandardCharsets.UTF_8)), "metadata");
        } catch (Json.JsonException e) {
            throw new SnapshotException("snapshot " + file + " has malformed metadata: " + e.getMessage());
        }
        var ram = new ArrayList<RamBlockEntry>();
        var rows = metadata.get("ram") instanceof List<?> l ? l : List.of();
        if (rows.size() > SnapshotFormat.MAX_RAM_BLOCKS)
            throw new SnapshotException("snapshot " + file + " lists too many RAM blocks");
        for (var row : rows) {
            var entry = RamBlockEntry.fromJson(Json.asObject(row, "RAM block"));
            if (!entry.byReference()
                    && !entry.byDescriptor()
                    && (entry.dataOffset() < SnapshotFormat.DATA_START
                            || entry.dataOffset() % SnapshotFormat.PAGE != 0
                            || entry.dataOffset() + entry.size() > tableOffset)) {
                throw new SnapshotException(
                        "snapshot " + file + " is corrupt (RAM block " + entry.id() + " lies outside its data area)");
            }
            ram.add(entry);
        }
        int flavourCode = header.getInt(SnapshotFormat.OFF_FLAVOUR);
        String flavour = flavourCode >= 0 && flavourCode < SnapshotFormat.FLAVOURS.length
                ? SnapshotFormat.FLAVOURS[flavourCode]
                : "UNKNOWN";
        return new SnapshotReader(
                file,
                version,
                flavour,
                header.getLong(SnapshotFormat.OFF_CREATED),
                (header.getInt(SnapshotFormat.OFF_FLAGS) & SnapshotFormat.FLAG_BYPASS) != 0,
                sections,
                metadata,
                List.copyOf(ram),
                header.getInt(SnapshotFormat.OFF_HEADER_CRC),
                fileLength,
                base(version, metadata, file));
    }

    /** A layer's base: present exactly when the file is a layer (format 3). */
    private static SnapshotIdentity base(int version, Map<String, Object> metadata, Path file) {
        boolean layer = version == SnapshotFormat.LAYER_VERSION;
        if (layer != metadata.containsKey("base"))
            throw corrupt(file, layer ? "a diff layer without a base" : "a base in a full snapshot");
        return layer ? SnapshotIdentity.fromJson(Fields.objectOf(metadata, "base")) : null;
    }

    private static Map<String, byte[]> parseSections(ByteBuffer b, Path file) {
        var sections = new LinkedHashMap<String, byte[]>();
        while (b.hasRemaining()) {
            if (sections.size() >= SnapshotFormat.MAX_SECTIONS) throw corrupt(file, "too many sections");
            if (b.remaining() < 2) throw corrupt(file, "section table ends inside a section header");
            int nameLength = Short.toUnsignedInt(b.getShort());
            if (nameLength > SnapshotFormat.MAX_NAME || b.remaining() < nameLength + 12)
                throw corrupt(file, "bad section header");
            byte[] name = new byte[nameLength];
            b.get(name);
            long length = b.getLong();
            int crc = b.getInt();
            if (length < 0 || length > b.remaining()) throw corrupt(file, "section longer than the table");
            byte[] payload = new byte[(int) length];
            b.get(payload);
            String n = new String(name, StandardCharsets.UTF_8);
            if (SnapshotWriter.crc(payload) != crc) throw corrupt(file, "section " + n + " checksum mismatch");
            if (sections.put(n, payload) != null) throw corrupt(file, "section " + n + " twice");
        }
        return sections;
    }

    private static SnapshotException corrupt(Path file, String why) {
        return new SnapshotException("snapshot " + file + " is corrupt (" + why + ")");
    }

    private static int readFully(FileChannel ch, ByteBuffer b, long at) throws IOException {
        int total = 0;
        while (b.hasRemaining()) {
            int n = ch.read(b, at + total);
            if (n < 0) break;
            total += n;
        }
        return total;
    }

    public Path file() {
        return file;
    }

    public int version() {
        return version;
    }

    /** The host KVM flavour the snapshot was taken on: VMX, SVM, PVM or UNKNOWN. */
    public String flavour() {
        return flavour;
    }

    public long createdAtMillis() {
        return createdAt;
    }

    /** Whether shared blocks were stored by reference (bypass-shared-memory). */
    public boolean bypass() {
        return bypass;
    }

    /** This file as a layer's base names it. */
    public SnapshotIdentity identity() {
        return new SnapshotIdentity(file.getParent(), createdAt, headerCrc, fileLength);
    }

    /** Whether this is a diff layer: its blocks hold only some pages, the rest is in {@link #base()}. */
    public boolean isLayer() {
        return base != null;
    }

    /** The snapshot this layer was taken against; null for a full snapshot. */
    public SnapshotIdentity base() {
        return base;
    }

    /**
     * The pages a layer holds of a block stored in it ({@code [start, end)} byte ranges); null in
     * a full snapshot, where a stored block holds all its pages.
     */
    public long[][] layerPages(RamBlockEntry block) {
        if (base == null || block.byReference() || block.byDescriptor()) return null;
        byte[] payload = sections.get(LayerPages.section(block.id()));
        if (payload == null) throw corrupt(file, "RAM block " + block.id() + " of a diff layer has no page table");
        return LayerPages.decode(payload, block.size(), block.id(), file);
    }

    public Map<String, Object> metadata() {
        return metadata;
    }

    public List<RamBlockEntry> ram() {
        return ram;
    }

    public boolean hasSection(String name) {
        return sections.containsKey(name);
    }

    /**
     * The checksum table of a block stored in the snapshot; null in a format v1 snapshot (its RAM
     * has none). A v2 snapshot without one for a stored block is corrupt.
     */
    RamChecksums.Table checksums(RamBlockEntry block) {
        if (version < 2) return null;
        byte[] payload = sections.get(RamChecksums.section(block.id()));
        if (payload == null) throw corrupt(file, "RAM block " + block.id() + " has no checksum table");
        return RamChecksums.Table.decode(payload, block.size(), block.id(), file);
    }

    /** The names of the state sections (not the metadata, nor the container's own RAM tables). */
    public List<String> stateSections() {
        return sections.keySet().stream()
                .filter(n -> !n.equals("metadata")
                        && !n.startsWith(RamChecksums.SECTION_PREFIX)
                        && !n.startsWith(LayerPages.SECTION_PREFIX))
                .toList();
    }

    public byte[] section(String name) {
        byte[] s = sections.get(name);
        if (s == null) throw new SnapshotException("snapshot " + file + " has no section " + name);
        return s.clone();
    }
}
