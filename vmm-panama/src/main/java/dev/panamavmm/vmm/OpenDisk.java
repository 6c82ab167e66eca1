package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.VirtioBlock;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.FileIdentity;
import dev.panamavmm.vmm.memory.MemoryException;
import java.io.IOException;
import java.nio.file.Files;

/**
 * A disk's open file: its descriptor (read-only for a read-only disk) and size. Opened once per
 * VM; a live update passes the descriptor itself, so nothing is reopened.
 */
record OpenDisk(DiskConfig config, int fd, long size) implements AutoCloseable {

    /** Opens {@code config}'s file; every failure is one line naming the file. */
    static OpenDisk open(DiskConfig config) {
        var path = config.path();
        if (!Files.exists(path)) throw new MemoryException("disk " + path + " does not exist");
        if (Files.isDirectory(path)) throw new MemoryException("disk " + path + " is a directory");
        int flags = (config.readOnly() ? LibcConstants.O_RDONLY : LibcConstants.O_RDWR) | LibcConstants.O_CLOEXEC;
        int fd;
        try {
            fd = LibC.open(path.toString(), flags, 0);
        } catch (KvmException e) {
            throw new MemoryException("cannot open disk " + path + ": " + LibC.strerror(e.errno()));
        }
        return adopt(config, fd);
    }

    /** Takes over {@code fd} (a descriptor passed by a live update's source) as {@code config}'s file. */
    static OpenDisk adopt(DiskConfig config, int fd) {
        try {
            long size = LibC.seek(fd, 0, LibcConstants.SEEK_END);
            if (size < VirtioBlock.SECTOR)
                throw new MemoryException("disk " + config.path() + " is smaller than one 512-byte sector");
            return new OpenDisk(config, fd, size);
        } catch (RuntimeException e) {
            LibC.close(fd);
            throw e;
        }
    }

    /** The file's identity now (device, inode, size, times), as a snapshot records it. */
    static FileIdentity identity(DiskConfig config) {
        try {
            return FileIdentity.of(config.path());
        } catch (IOException e) {
            throw new MemoryException("cannot read disk " + config.path() + ": " + e.getMessage());
        }
    }

    @Override
    public void close() {
        LibC.close(fd);
    }
}
