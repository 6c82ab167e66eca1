package dev.panamavmm.migration;

/**
 * Constants of snapshot format v2 (specified in docs/snapshot-format.md). A snapshot is a
 * directory holding one file, {@value #FILE_NAME}:
 *
 * <pre>
 * 0      header (64 bytes, little-endian, CRC32C of its first 60 bytes at 60)
 * 4096   RAM data: each stored block's pages at a page-aligned offset; zero pages are holes
 * ...    section table: [u16 name length][name][u64 payload length][u32 payload CRC32C][payload]...
 *        sections: "metadata" (JSON: machine, RAM block table), "vm", "vcpu/N", "device/NAME"
 * </pre>
 */
public final class SnapshotFormat {
    private SnapshotFormat() {}

    public static final String FILE_NAME = "snapshot.pvm";
    public static final byte[] MAGIC = {'P', 'A', 'N', 'A', 'M', 'A', 'V', 'M'};
    /** The version this VMM writes for a full snapshot. */
    public static final int VERSION = 2;
    /**
     * The version of a diff layer (a v2 file whose blocks hold only some pages, over a base): an
     * older VMM refuses it by its version instead of taking the missing pages for zeros.
     */
    public static final int LAYER_VERSION = 3;
    /** The newest version this VMM reads. */
    public static final int NEWEST_READABLE = LAYER_VERSION;
    /** The oldest version this VMM reads: v1 snapshots hold JSON state sections (see docs/snapshot-format.md). */
    public static final int OLDEST_READABLE = 1;

    public static final int HEADER_SIZE = 64;
    public static final long PAGE = 4096;
    /** RAM data starts here, so mapped blocks are page-aligned in the file. */
    public static final long DATA_START = PAGE;

    static final int OFF_MAGIC = 0,
            OFF_VERSION = 8,
            OFF_FLAVOUR = 12,
            OFF_CREATED = 16,
            OFF_TABLE = 24,
            OFF_TABLE_LENGTH = 32,
            OFF_TABLE_CRC = 40,
            OFF_FLAGS = 44,
            OFF_FILE_LENGTH = 48,
            OFF_HEADER_CRC = 60;
    static final int FLAG_BYPASS = 1;

    /** Limits a reader enforces before it allocates anything. */
    static final long MAX_TABLE = 256L << 20;

    static final int MAX_SECTIONS = 4096;
    static final int MAX_NAME = 256;
    static final int MAX_RAM_BLOCKS = 64;

    /** Host KVM flavours as stored in the header (names as in {@code HostFlavour}). */
    static final String[] FLAVOURS = {"UNKNOWN", "VMX", "SVM", "PVM"};

    static int flavourCode(String name) {
        for (int i = 0; i < FLAVOURS.length; i++) if (FLAVOURS[i].equals(name)) return i;
        return 0;
    }
}
