package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.BlockBackend;
import dev.panamavmm.devices.virtio.VirtioBlock;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.FileIdentity;
import dev.panamavmm.vmm.memory.MemoryException;
import dev.panamavmm.vmm.memory.MemoryFileLocks;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * A disk's open file: its descriptor (read-only for a read-only disk) and size. Opened once per
 * VM; a live update passes the descriptor itself, so nothing is reopened.
 */
record OpenDisk(DiskConfig config, int fd, long size, int baseFd) implements AutoCloseable {

    /** Opens {@code config}'s file (and an overlay's base, read-only); every failure is one line naming the file. */
    static OpenDisk open(DiskConfig config) {
        int flags = (config.readOnly() ? LibcConstants.O_RDONLY : LibcConstants.O_RDWR) | LibcConstants.O_CLOEXEC;
        // An overlay keeps its small header and bitmap words in the same file: it uses the page cache.
        if (config.cache() == DiskConfig.Cache.NONE && config.base() == null) flags |= LibcConstants.O_DIRECT;
        int fd = openFile(config.path(), flags);
        lock(fd, config.path(), !config.readOnly());
        return adopt(config, fd);
    }

    private static int openFile(Path path, int flags) {
        if (!Files.exists(path)) throw new MemoryException("disk " + path + " does not exist");
        if (Files.isDirectory(path)) throw new MemoryException("disk " + path + " is a directory");
        try {
            return LibC.open(path.toString(), flags, 0);
        } catch (KvmException e) {
            throw new MemoryException("cannot open disk " + path + ": " + LibC.strerror(e.errno()));
        }
    }

    /** One writer per disk file, as for memory files; readers (read-only disks, overlays' bases) share it. Closes {@code fd} if refused. */
    private static void lock(int fd, Path path, boolean exclusive) {
        try {
            MemoryFileLocks.lock(fd, path, exclusive, "disk");
        } catch (RuntimeException e) {
            LibC.close(fd);
            throw e;
        }
    }

    /**
     * Takes over {@code fd} (a descriptor passed by a live update's source) as {@code config}'s
     * file. An overlay's base, the template's disk that never changes, is opened by path.
     */
    static OpenDisk adopt(DiskConfig config, int fd) {
        int baseFd = -1;
        try {
            long size;
            if (config.base() != null) {
                int b = openFile(config.base(), LibcConstants.O_RDONLY | LibcConstants.O_CLOEXEC);
                lock(b, config.base(), false); // no one may write the template's disk under its clones
                baseFd = b;
                size = LibC.seek(baseFd, 0, LibcConstants.SEEK_END);
                long length = LibC.seek(fd, 0, LibcConstants.SEEK_END);
                if (length != OverlayBlockBackend.fileLength(size))
                    throw new MemoryException("disk " + config.path() + " is not an overlay of " + config.base() + " ("
                            + length + " bytes; an overlay of it has " + OverlayBlockBackend.fileLength(size) + ")");
            } else {
                size = LibC.seek(fd, 0, LibcConstants.SEEK_END);
            }
            if (size < VirtioBlock.SECTOR)
                throw new MemoryException("disk " + config.path() + " is smaller than one 512-byte sector");
            return new OpenDisk(config, fd, size, baseFd);
        } catch (RuntimeException e) {
            LibC.close(fd);
            if (baseFd >= 0) LibC.close(baseFd);
            throw e;
        }
    }

    /** What the device reads and writes: the file itself, or the overlay over its base. */
    BlockBackend backend() {
        if (baseFd < 0) return new PosixBlockBackend(fd, size, config.cache() == DiskConfig.Cache.NONE);
        try {
            return OverlayBlockBackend.open(baseFd, fd, size, config.path());
        } catch (IOException e) {
            throw new MemoryException("disk " + e.getMessage());
        }
    }

    /** A disk file's identity now (device, inode, size, times), as a snapshot records it. */
    static FileIdentity identity(Path file) {
        try {
            return FileIdentity.of(file);
        } catch (IOException e) {
            throw new MemoryException("cannot read disk " + file + ": " + e.getMessage());
        }
    }

    /** The identity of the open file itself, even if its name changed since it was opened: what a save records. */
    FileIdentity identity() {
        try {
            return FileIdentity.of(Path.of("/proc/self/fd/" + fd));
        } catch (IOException e) {
            throw new MemoryException("cannot read disk " + config.path() + ": " + e.getMessage());
        }
    }

    /** Drops this VMM's lock: a guest stopped for good by a save leaves the disk to the VMM that restores it. */
    void unlock() {
        LibC.flock(fd, LibcConstants.LOCK_UN);
    }

    @Override
    public void close() {
        LibC.close(fd);
        if (baseFd >= 0) LibC.close(baseFd);
    }
}
