package dev.panamavmm.migration.state;

import dev.panamavmm.migration.SnapshotException;

/**
 * The explicit codec of one state type: which fields it writes, in which schema version, and how
 * it builds the state back, filling fields added since an older schema with their documented
 * defaults. No reflection: a state record can gain a component without breaking older snapshots,
 * because only the codec decides what a section means.
 *
 * <p>A reader accepts its own schema version and the previous one ({@link #oldestSchema}); a
 * section of a newer schema is refused with one line naming both.
 */
public interface StateCodec<S> {
    /** The schema version this codec writes. */
    int schema();

    /** The oldest schema version it reads: the previous one (the first version reads only itself). */
    default int oldestSchema() {
        return Math.max(1, schema() - 1);
    }

    /** Writes every field of {@code state}. */
    void write(S state, SectionEncoder out);

    /**
     * Builds the state from {@code in}. A value the state's own checks refuse may throw
     * {@link IllegalArgumentException}; {@link #decode} turns it into a snapshot error.
     */
    S read(StateFields in);

    /** The binary section payload of {@code state} (format 2). */
    default byte[] encode(S state) {
        var out = new SectionEncoder(schema());
        write(state, out);
        return out.toBytes();
    }

    /**
     * Decodes a section of a snapshot of format {@code formatVersion}: a JSON object in format 1,
     * a binary tagged section from format 2 on. Every problem is a {@link SnapshotException}.
     */
    default S decode(byte[] payload, int formatVersion, String section) {
        StateFields fields =
                formatVersion == 1 ? JsonFields.parse(payload, section) : BinaryFields.parse(payload, section);
        int v = fields.schema();
        if (v > schema()) {
            throw new SnapshotException(
                    "snapshot section " + section + " has schema version " + v + "; this VMM reads versions "
                            + oldestSchema() + " to " + schema() + " (it was written by a newer VMM)");
        }
        if (v < oldestSchema()) {
            throw new SnapshotException("snapshot section " + section + " has schema version " + v
                    + "; this VMM reads versions " + oldestSchema() + " to " + schema());
        }
        try {
            return read(fields);
        } catch (IllegalArgumentException | NullPointerException e) {
            throw new SnapshotException("snapshot section " + section + " holds an invalid state: " + e.getMessage());
        }
    }
}
