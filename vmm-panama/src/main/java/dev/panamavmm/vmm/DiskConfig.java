package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.VirtioBlock;
import java.nio.file.Path;
import java.util.Objects;

/**
 * One virtio-blk disk of a machine: a raw file or block device, whether the guest may write it,
 * and the id GET_ID answers (at most 20 printable ASCII characters; may be empty). A clone's disk
 * may be an overlay: then {@code path} is the clone's {@link OverlayBlockBackend} file and
 * {@code base} the template's disk it reads unwritten clusters from (null for a plain disk).
 */
public record DiskConfig(Path path, boolean readOnly, String id, Path base) {
    public DiskConfig {
        Objects.requireNonNull(path, "path");
        Objects.requireNonNull(id, "id");
        VirtioBlock.checkId(id);
    }

    /** A plain disk (not an overlay). */
    public DiskConfig(Path path, boolean readOnly, String id) {
        this(path, readOnly, id, null);
    }

    /** This disk as {@code path}, an overlay over {@code base} (or a plain copy when {@code base} is null). */
    DiskConfig at(Path path, Path base) {
        return new DiskConfig(path, readOnly, id, base);
    }

    /**
     * Parses {@code PATH[,readonly][,id=ID]}; IllegalArgumentException with a sentence for
     * anything else. A path with a comma cannot be given this way.
     */
    public static DiskConfig parse(String spec) {
        String[] parts = spec.split(",", -1);
        if (parts[0].isEmpty()) throw new IllegalArgumentException("a disk needs a path: PATH[,readonly][,id=ID]");
        boolean readOnly = false;
        String id = "";
        for (int i = 1; i < parts.length; i++) {
            String p = parts[i];
            if (p.equals("readonly")) readOnly = true;
            else if (p.startsWith("id=")) id = p.substring(3);
            else throw new IllegalArgumentException("unknown disk option \"" + p + "\" (readonly or id=ID)");
        }
        return new DiskConfig(Path.of(parts[0]), readOnly, id);
    }
}
