package dev.panamavmm.migration.state;

/**
 * The fields of one state section as a codec reads them, whichever format they came in. Every
 * getter without a default throws a {@link dev.panamavmm.migration.SnapshotException} naming the
 * section and field when the field is missing or has the wrong type; the getters with a default
 * are for fields added in a later schema version (the default is what older writers meant).
 */
public interface StateFields {
    /** The schema version the section was written with (JSON sections of format 1 are version 1). */
    int schema();

    /** The section's name, for messages. */
    String section();

    boolean has(Field f);

    int i32(Field f);

    long i64(Field f);

    boolean bool(Field f);

    byte[] bytes(Field f);

    int[] ints(Field f);

    long[] longs(Field f);

    default int i32(Field f, int otherwise) {
        return has(f) ? i32(f) : otherwise;
    }

    default long i64(Field f, long otherwise) {
        return has(f) ? i64(f) : otherwise;
    }

    default boolean bool(Field f, boolean otherwise) {
        return has(f) ? bool(f) : otherwise;
    }

    default byte[] bytes(Field f, byte[] otherwise) {
        return has(f) ? bytes(f) : otherwise.clone();
    }
}
