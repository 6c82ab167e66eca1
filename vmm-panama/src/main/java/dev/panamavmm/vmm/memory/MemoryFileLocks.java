package dev.panamavmm.vmm.memory;

import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.ArrayList;
import java.util.List;

/**
 * Memory files are locked by the VMMs that use them, so that two guests never run in one file and
 * a template is never written: a VMM whose guest runs in a file (mapped shared) holds an exclusive
 * lock, a copy-on-write user (a clone of a template, a private mapping) a shared one. A second
 * user is refused before anything is mapped or written.
 *
 * <p>flock(2), not fcntl: a flock lock belongs to the open file description, so passing the fd
 * over a Unix socket (a live update) hands the lock to the new process with nothing to re-take
 * while the old one still holds it, and the lock lasts while any mapping of the file does. POSIX
 * fcntl locks belong to the process and vanish when it closes any fd of the file (the JDK's own
 * FileChannel.lock uses them); OFD fcntl locks would travel too, but the kernel reports their
 * holder as PID -1, in /proc/locks and to F_OFD_GETLK alike, so a refusal could not say who holds
 * the file. flock's holder is in /proc/locks. Advisory: it keeps VMMs apart, not {@code dd}.
 */
public final class MemoryFileLocks {
    private MemoryFileLocks() {}

    private static final Path PROC_LOCKS = Path.of("/proc/locks");

    /** One flock lock on a file: the process that took it and whether it is exclusive. */
    public record Holder(long pid, boolean exclusive) {}

    /**
     * Locks {@code fd} (an open of {@code file}) exclusively or shared, without waiting; throws
     * "memory file F is in use by PID N" when another user holds a conflicting lock.
     */
    static void lock(int fd, Path file, boolean exclusive) {
        lock(fd, file, exclusive, "memory file");
    }

    /** As {@link #lock(int, Path, boolean)} for another kind of file ({@code what}: "disk"), which the message names. */
    public static void lock(int fd, Path file, boolean exclusive, String what) {
        int operation = (exclusive ? LibcConstants.LOCK_EX : LibcConstants.LOCK_SH) | LibcConstants.LOCK_NB;
        if (LibC.flock(fd, operation)) return;
        throw new MemoryException(what + " " + file + " is in use by " + describeHolder(fd, exclusive));
    }

    /** "PID N" for the process that holds the conflicting lock, or "another process" when it cannot be found. */
    private static String describeHolder(int fd, boolean exclusive) {
        try {
            Path self = Path.of("/proc/self/fd/" + fd); // the file itself, even if its name changed since
            for (var h : holders(self)) {
                // A shared request conflicts only with an exclusive holder; an exclusive one with any.
                if ((exclusive || h.exclusive()) && isOpenBy(h.pid(), self)) {
                    return "PID " + h.pid();
                }
            }
            // /proc/locks names the process that took the lock; after a live update handed it on, the
            // process that now holds it is one that has the file open.
            for (long pid : openers(self)) if (pid != ProcessHandle.current().pid()) return "PID " + pid;
        } catch (IOException | RuntimeException e) {
            // the refusal stands; only its detail is lost
        }
        return "another process";
    }

    /** The flock locks on {@code file} as /proc/locks lists them ({@code N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF}). */
    public static List<Holder> holders(Path file) throws IOException {
        long dev = (Long) Files.getAttribute(file, "unix:dev");
        long inode = (Long) Files.getAttribute(file, "unix:ino");
        // glibc's encoding of dev_t (gnu_dev_major/minor); /proc/locks prints both in hex.
        long major = ((dev >>> 8) & 0xfff) | ((dev >>> 32) & ~0xfffL);
        long minor = (dev & 0xff) | ((dev >>> 12) & ~0xffL);
        var holders = new ArrayList<Holder>();
        for (var line : Files.readAllLines(PROC_LOCKS)) {
            var f = line.trim().split("\\s+");
            // Blocked waiters are listed as "N: -> FLOCK ...": they hold nothing.
            if (f.length < 6 || !f[1].equals("FLOCK")) continue;
            var id = f[5].split(":");
            if (id.length != 3) continue;
            if (Long.parseLong(id[0], 16) == major
                    && Long.parseLong(id[1], 16) == minor
                    && Long.parseLong(id[2]) == inode) {
                holders.add(new Holder(Long.parseLong(f[4]), f[3].equals("WRITE")));
            }
        }
        return holders;
    }

    /** Whether process {@code pid} has {@code file} open (an fd; a mapping alone keeps a lock too, so also its maps). */
    private static boolean isOpenBy(long pid, Path file) {
        try {
            var key = Files.readAttributes(file, BasicFileAttributes.class).fileKey();
            try (var fds = Files.list(Path.of("/proc/" + pid + "/fd"))) {
                for (var fd : (Iterable<Path>) fds::iterator) {
                    try {
                        if (key.equals(Files.readAttributes(fd, BasicFileAttributes.class)
                                .fileKey())) return true;
                    } catch (IOException ignored) {
                        // that fd closed meanwhile
                    }
                }
            }
        } catch (IOException | RuntimeException e) {
            return false;
        }
        return false;
    }

    /** Processes that have {@code file} open, by scanning /proc (only on a refusal: it reads every process's fds). */
    private static List<Long> openers(Path file) throws IOException {
        var pids = new ArrayList<Long>();
        try (var procs = Files.list(Path.of("/proc"))) {
            for (var p : (Iterable<Path>) procs::iterator) {
                String name = p.getFileName().toString();
                if (!name.chars().allMatch(Character::isDigit)) continue;
                long pid = Long.parseLong(name);
                if (isOpenBy(pid, file)) pids.add(pid);
            }
        }
        return pids;
    }
}
