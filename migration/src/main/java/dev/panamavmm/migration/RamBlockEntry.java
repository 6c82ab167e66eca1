package dev.panamavmm.migration;

import java.nio.file.Path;
import java.util.Map;

/**
 * One row of a snapshot's RAM block table. A block is stored in one of three ways:
 * by reference to a shared memory file ({@code file} and {@code identity}: bypass-shared-memory),
 * by its pages in the snapshot file ({@code dataOffset}: where its first byte is; zero pages are
 * holes), or — in a local migration only — by a file descriptor passed alongside the snapshot
 * ({@code descriptor}: its index among the passed descriptors, e.g. the guest's memfd).
 *
 * @param kind  the backing it had when saved: {@code memfd}, {@code shared-file}, {@code private-file}
 */
public record RamBlockEntry(
        String id,
        long guestAddress,
        long size,
        String kind,
        boolean shared,
        Path file,
        long fileOffset,
        FileIdentity identity,
        long dataOffset,
        long nonZeroPages,
        int descriptor) {

    public static RamBlockEntry byReference(
            String id, long guestAddress, long size, String kind, Path file, long fileOffset, FileIdentity identity) {
        return new RamBlockEntry(id, guestAddress, size, kind, true, file, fileOffset, identity, -1, -1, -1);
    }

    public static RamBlockEntry withData(
            String id, long guestAddress, long size, String kind, boolean shared, long dataOffset, long nonZeroPages) {
        return new RamBlockEntry(id, guestAddress, size, kind, shared, null, 0, null, dataOffset, nonZeroPages, -1);
    }

    public static RamBlockEntry byDescriptor(
            String id, long guestAddress, long size, String kind, int descriptor, long fileOffset) {
        return new RamBlockEntry(id, guestAddress, size, kind, false, null, fileOffset, null, -1, -1, descriptor);
    }

    public boolean byReference() {
        return file != null;
    }

    public boolean byDescriptor() {
        return descriptor >= 0;
    }

    Map<String, Object> toJson() {
        var m = Json.object("id", id, "guestAddress", guestAddress, "size", size, "kind", kind, "shared", shared);
        if (byReference()) {
            m.put("file", file.toString());
            m.put("fileOffset", fileOffset);
            m.put("identity", identity.toJson());
        } else if (byDescriptor()) {
            m.put("descriptor", (long) descriptor);
            m.put("fileOffset", fileOffset);
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
            return byReference(
                    id,
                    gpa,
                    size,
                    kind,
                    Path.of(Fields.stringOf(m, "file")),
                    Fields.longOf(m, "fileOffset"),
                    FileIdentity.fromJson(Fields.objectOf(m, "identity")));
        }
        if (m.containsKey("descriptor")) {
            long d = Fields.longOf(m, "descriptor");
            if (d < 0 || d >= 64)
                throw new SnapshotException("snapshot RAM block " + id + " names an impossible descriptor");
            return byDescriptor(id, gpa, size, kind, (int) d, Fields.longOf(m, "fileOffset"));
        }
        return withData(id, gpa, size, kind, shared, Fields.longOf(m, "dataOffset"), Fields.longOf(m, "nonZeroPages"));
    }
}
