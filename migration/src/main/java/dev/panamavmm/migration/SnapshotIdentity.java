package dev.panamavmm.migration;

import java.nio.file.Path;
import java.util.Map;

/**
 * Which snapshot a diff layer was taken against: its directory and three facts of its file that
 * change whenever a snapshot is written again (creation time, header CRC32C, file length). A
 * copy of the file keeps them; a new save into the directory does not.
 */
public record SnapshotIdentity(Path dir, long createdAtMillis, int headerCrc, long fileLength) {

    Map<String, Object> toJson() {
        return Json.object(
                "path",
                dir.toAbsolutePath().toString(),
                "createdAt",
                createdAtMillis,
                "headerCrc",
                Integer.toUnsignedLong(headerCrc),
                "fileLength",
                fileLength);
    }

    static SnapshotIdentity fromJson(Map<String, Object> m) {
        return new SnapshotIdentity(
                Path.of(Fields.stringOf(m, "path")),
                Fields.longOf(m, "createdAt"),
                (int) Fields.longOf(m, "headerCrc"),
                Fields.longOf(m, "fileLength"));
    }

    /** Whether {@code other} is the same snapshot file (the directory may differ: a copy). */
    public boolean sameFile(SnapshotIdentity other) {
        return createdAtMillis == other.createdAtMillis
                && headerCrc == other.headerCrc
                && fileLength == other.fileLength;
    }
}
