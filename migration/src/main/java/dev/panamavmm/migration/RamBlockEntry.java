package dev.panamavmm.migration;

import java.nio.file.Path;
import java.util.Map;

/**
 * One row of a snapshot's RAM block table. A block is either stored by reference to a shared
 * memory file ({@code file} and {@code identity} set: bypass-shared-memory) or by its pages in the
 * snapshot file ({@code dataOffset}: where its first byte is; zero pages are holes).
 *
 * @param kind  the backing it had when saved: {@code memfd}, {@code shared-file}, {@code private-file}
 */
public record RamBlockEntry(String id, long guestAddress, long size, String kind, boolean shared,
                            Path file, long fileOffset, FileIdentity identity, long dataOffset, long nonZeroPages) {

    public static RamBlockEntry byReference(String id, long guestAddress, long size, String kind, Path file,
                                            long fileOffset, FileIdentity identity) {
        return new RamBlockEntry(id, guestAddress, size, kind, true, file, fileOffset, identity, -1, -1);
    }

    public static RamBlockEntry withData(String id, long guestAddress, long size, String kind, boolean shared,
                                         long dataOffset, long nonZeroPages) {
        return new RamBlockEntry(id, guestAddress, size, kind, shared, null, 0, null, dataOffset, nonZeroPages);
    }

    public boolean byReference() {
        return file != null;
    }

    Map<String, Object> toJson() {
        var m = Json.object("id", id, "guestAddress", guestAddress, "size", size, "kind", kind, "shared", shared);
        if (byReference()) {
            m.put("file", file.toString());
            m.put("fileOffset", fileOffset);
            m.put("identity", identity.toJson());
        } else {
            m.put("dataOffset", dataOffset);
            m.put("nonZeroPages", nonZeroPages);
        }
        return m;
    }

    static RamBlockEntry fromJson(Map<String, Object> m) {
        String id = Fields.stringOf(m, "id");
        long gpa = Fields.longOf(m, "guestAddress");
        long size = Fields.longOf(m, "size");
        if (size <= 0 || size % 4096 != 0 || gpa < 0 || gpa % 4096 != 0) {
            throw new SnapshotException("snapshot RAM block " + id + " has an impossible address or size");
        }
        String kind = Fields.stringOf(m, "kind");
        boolean shared = Fields.boolOf(m, "shared");
        if (m.containsKey("file")) {
            return byReference(id, gpa, size, kind, Path.of(Fields.stringOf(m, "file")), Fields.longOf(m, "fileOffset"),
                    FileIdentity.fromJson(Fields.objectOf(m, "identity")));
        }
        return withData(id, gpa, size, kind, shared, Fields.longOf(m, "dataOffset"), Fields.longOf(m, "nonZeroPages"));
    }
}
