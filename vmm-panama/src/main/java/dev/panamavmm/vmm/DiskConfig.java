package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.VirtioBlock;
import java.nio.file.Path;
import java.util.Locale;
import java.util.Objects;

/**
 * One virtio-blk disk of a machine: a raw file or block device, whether the guest may write it,
 * and the id GET_ID answers (at most 20 printable ASCII characters; may be empty). A clone's disk
 * may be an overlay: then {@code path} is the clone's {@link OverlayBlockBackend} file and
 * {@code base} the template's disk it reads unwritten clusters from (null for a plain disk).
 */
public record DiskConfig(Path path, boolean readOnly, String id, Path base, Cache cache) implements VirtioConfig {
    /**
     * How the disk's file is opened, as QEMU's {@code cache=} names it: through the host's page
     * cache ({@code writeback}, the default: writes complete when the page cache has them, FLUSH
     * makes them durable), or around it with {@code O_DIRECT} ({@code none}: no second copy of
     * the guest's data in host memory, which matters on a dense host).
     */
    public enum Cache {
        WRITEBACK,
        NONE;

        public String spelling() {
            return name().toLowerCase(Locale.ROOT);
        }

        public static Cache parse(String s) {
            for (var c : values()) if (c.spelling().equals(s)) return c;
            throw new IllegalArgumentException("cache=" + s + ": writeback or none");
        }
    }

    public DiskConfig {
        Objects.requireNonNull(path, "path");
        Objects.requireNonNull(id, "id");
        Objects.requireNonNull(cache, "cache");
        VirtioBlock.checkId(id);
    }

    /** A plain disk (not an overlay) through the page cache. */
    public DiskConfig(Path path, boolean readOnly, String id) {
        this(path, readOnly, id, null, Cache.WRITEBACK);
    }

    /** This disk as {@code path}, an overlay over {@code base} (or a plain copy when {@code base} is null). */
    DiskConfig at(Path path, Path base) {
        return new DiskConfig(path, readOnly, id, base, cache);
    }

    /**
     * Parses {@code PATH[,readonly][,id=ID][,cache=writeback|none]}; IllegalArgumentException
     * with a sentence for anything else. A path with a comma cannot be given this way.
     */
    public static DiskConfig parse(String spec) {
        String[] parts = spec.split(",", -1);
        if (parts[0].isEmpty())
            throw new IllegalArgumentException("a disk needs a path: PATH[,readonly][,id=ID][,cache=writeback|none]");
        boolean readOnly = false;
        String id = "";
        Cache cache = Cache.WRITEBACK;
        for (int i = 1; i < parts.length; i++) {
            String p = parts[i];
            if (p.equals("readonly")) readOnly = true;
            else if (p.startsWith("id=")) id = p.substring(3);
            else if (p.startsWith("cache=")) cache = Cache.parse(p.substring(6));
            else
                throw new IllegalArgumentException(
                        "unknown disk option \"" + p + "\" (readonly, id=ID or cache=writeback|none)");
        }
        return new DiskConfig(Path.of(parts[0]), readOnly, id, null, cache);
    }
}
