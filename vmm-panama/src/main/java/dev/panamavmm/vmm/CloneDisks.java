package dev.panamavmm.vmm;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.SnapshotException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Private disks for a clone: a clone must never write its template's disk, and two clones must
 * see only their own writes. Each writable disk of the template becomes, for the clone:
 * <ol>
 *   <li>a reflink copy ({@code FICLONE}: a new file sharing the template disk's extents, copied on
 *   write by the file system; btrfs, XFS) where the file system supports it, else
 *   <li>an {@link OverlayBlockBackend} file over the template's disk (any file system: ext4, tmpfs).
 * </ol>
 * The kind is chosen automatically and reported in the log. Read-only disks are shared as they
 * are. The clone's disk goes where the caller says (per-clone overrides, in the order of the
 * writable disks), else beside the template's disk as {@code DISK.clone-PID-N}; either way it
 * outlives the clone (it is the clone's disk: its snapshots refer to it) and is removed by whoever
 * removes the clone's data.
 */
final class CloneDisks {
    private CloneDisks() {}

    private static final Logger log = LoggerFactory.getLogger(CloneDisks.class);
    private static final AtomicLong COUNTER = new AtomicLong();

    /** How a clone's disk was made. */
    enum Kind {
        REFLINK,
        OVERLAY
    }

    /** The disks made for one clone, to be removed again if the clone is not built after all. */
    record Made(List<DiskConfig> disks, List<Path> created) {
        void removeCreated() {
            for (var p : created) {
                try {
                    Files.deleteIfExists(p);
                } catch (IOException e) {
                    log.warn("cannot remove the clone disk {} of a clone that was not built: {}", p, e.getMessage());
                }
            }
        }
    }

    /**
     * The template's disks with every writable one replaced by a private disk for a clone;
     * {@code overrides} name where they go (fewer than the writable disks: the rest get the
     * default place). Nothing is left behind when one of them fails.
     */
    static Made forClone(List<DiskConfig> templateDisks, List<Path> overrides) {
        long writable = templateDisks.stream().filter(d -> !d.readOnly()).count();
        if (overrides.size() > writable)
            throw new SnapshotException(overrides.size() + " disk(s) given for a clone of a template with " + writable
                    + " writable disk(s)");
        var disks = new ArrayList<DiskConfig>();
        var created = new ArrayList<Path>();
        var made = new Made(disks, created);
        int next = 0;
        try {
            for (var d : templateDisks) {
                if (d.readOnly()) {
                    disks.add(d);
                    continue;
                }
                if (d.base() != null)
                    throw new SnapshotException("the template's disk " + d.path()
                            + " is itself a clone's overlay: a clone of a clone's template is not supported");
                Path target = next < overrides.size() ? overrides.get(next) : defaultPlace(d.path());
                next++;
                if (Files.exists(target))
                    throw new SnapshotException(
                            "the clone's disk " + target + " exists already; it is not overwritten");
                var kind = make(d.path(), target);
                created.add(target);
                log.info(
                        "clone disk {}: {} of {}",
                        target,
                        kind == Kind.REFLINK ? "a reflink copy" : "an overlay (allocation bitmap)",
                        d.path());
                disks.add(kind == Kind.REFLINK ? d.at(target, null) : d.at(target, d.path()));
            }
            return made;
        } catch (RuntimeException e) {
            made.removeCreated();
            throw e;
        }
    }

    private static Path defaultPlace(Path templateDisk) {
        var name = templateDisk.getFileName() + ".clone-"
                + ProcessHandle.current().pid() + "-" + COUNTER.incrementAndGet();
        return templateDisk.toAbsolutePath().resolveSibling(name);
    }

    /** Makes {@code target} a reflink copy of {@code source} if the file system can, else an overlay over it. */
    static Kind make(Path source, Path target) {
        int src = -1, dst = -1;
        try {
            src = LibC.open(source.toString(), LibcConstants.O_RDONLY | LibcConstants.O_CLOEXEC, 0);
            long size = LibC.seek(src, 0, LibcConstants.SEEK_END);
            dst = LibC.open(
                    target.toString(),
                    LibcConstants.O_WRONLY | LibcConstants.O_CREAT | LibcConstants.O_EXCL | LibcConstants.O_CLOEXEC,
                    0600);
            try {
                LibC.ioctl(dst, Ioctls.FICLONE, src);
                return Kind.REFLINK;
            } catch (KvmException e) {
                // Not this file system (EOPNOTSUPP, EINVAL), or another one (EXDEV): an overlay instead.
                if (e.errno() != LibcConstants.EOPNOTSUPP
                        && e.errno() != LibcConstants.EINVAL
                        && e.errno() != LibcConstants.EXDEV
                        && e.errno() != LibcConstants.ENOTTY) throw e;
            }
            LibC.close(dst);
            dst = -1;
            Files.delete(target);
            OverlayBlockBackend.create(target, size);
            return Kind.OVERLAY;
        } catch (KvmException e) {
            deleteQuietly(target, dst >= 0);
            throw new SnapshotException(
                    "cannot make the clone's disk " + target + " from " + source + ": " + LibC.strerror(e.errno()));
        } catch (IOException e) {
            deleteQuietly(target, true);
            throw new SnapshotException("cannot make the clone's disk " + target + ": " + e.getMessage());
        } finally {
            if (src >= 0) LibC.close(src);
            if (dst >= 0) LibC.close(dst);
        }
    }

    private static void deleteQuietly(Path target, boolean ours) {
        if (!ours) return;
        try {
            Files.deleteIfExists(target);
        } catch (IOException ignored) {
            // the error being reported says more
        }
    }
}
