package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.VirtioBlock;
import java.nio.file.Path;
import java.util.Objects;

/**
 * One virtio-blk disk of a machine: a raw file or block device, whether the guest may write it,
 * and the id GET_ID answers (at most 20 printable ASCII characters; may be empty).
 */
public record DiskConfig(Path path, boolean readOnly, String id) {
    public DiskConfig {
        Objects.requireNonNull(path, "path");
        Objects.requireNonNull(id, "id");
        VirtioBlock.checkId(id);
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
