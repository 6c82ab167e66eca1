package dev.panamavmm.vmm;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.MemoryFileLocks;
import dev.panamavmm.vmm.memory.RamBlock;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.zip.CRC32C;

/**
 * Bypass-shared-memory between hosts: a guest whose RAM is one shared memory file that the
 * destination can map itself (the same file on shared storage, or on this host) migrates by
 * reference. No page travels; only the device state does.
 *
 * <p>The file's exclusive lock (see {@link MemoryFileLocks}) cannot travel over TCP the way a
 * passed descriptor carries it in a local migration, so it is handed over: the destination maps
 * the file without locking it while the source's guest still runs; the paused source writes the
 * file back ({@code fdatasync}: a disk or network file) and unlocks it; the destination locks it,
 * checks that it reads the bytes the source read (a {@link MigrationProtocol.Fingerprint} of
 * sampled pages: a file of the same name that is not the same file is refused), and only then
 * resumes. If anything fails before the destination confirms, the source locks the file again
 * and takes its guest back.
 */
final class SharedMemoryFile {
    private SharedMemoryFile() {}

    /** Pages a fingerprint samples per block: a few hundred KiB of CRC32C in the downtime. */
    static final int SAMPLES = MigrationProtocol.Fingerprint.MAX_PAGES;

    /** How far past a sample point a zero page is skipped for a non-zero one (zeros match any empty file). */
    private static final int SCAN_PAGES = 8;

    private static final int PAGE = MigrationStream.PAGE;

    /** The one shared memory file all of {@code memory}'s blocks are in, or null (then pages travel). */
    static Path of(GuestMemory memory) {
        Path file = null;
        for (var b : memory.blocks()) {
            if (!(b.backing() instanceof Backing.SharedFile f)) return null;
            if (file != null && !file.equals(f.path())) return null;
            file = f.path();
        }
        return file == null ? null : file.toAbsolutePath();
    }

    /**
     * Destination: the announced blocks mapped from the file they name, opened here (not locked:
     * the source's guest runs in it until it pauses), or null when this host cannot map that file
     * (then the pages travel); {@code why} gets the reason.
     */
    static List<GuestMemory.BlockSource> open(List<MigrationProtocol.RamBlock> ram, StringBuilder why) {
        var files = new LinkedHashSet<Path>();
        for (var b : ram) files.add(b.file());
        if (files.size() != 1 || files.contains(null)) {
            why.append("the source's RAM is not one shared file");
            return null;
        }
        Path file = files.iterator().next();
        if (!file.isAbsolute() || !Files.isRegularFile(file, LinkOption.NOFOLLOW_LINKS)) {
            why.append(file).append(" is not a regular file here");
            return null;
        }
        int fd;
        try {
            fd = LibC.open(file.toString(), LibcConstants.O_RDWR | LibcConstants.O_CLOEXEC, 0);
        } catch (KvmException e) {
            why.append("cannot open ").append(file).append(": ").append(e.getMessage());
            return null;
        }
        try {
            long have = Files.size(file);
            for (var b : ram) {
                // Mapping past the end of a file would fault the guest with SIGBUS on its first touch there.
                if (b.fileOffset() < 0 || b.fileOffset() + b.size() > have || b.fileOffset() % PAGE != 0) {
                    LibC.close(fd);
                    why.append(file)
                            .append(" holds ")
                            .append(have)
                            .append(" bytes here, block ")
                            .append(b.id())
                            .append(" needs ")
                            .append(b.fileOffset() + b.size());
                    return null;
                }
            }
        } catch (IOException e) {
            LibC.close(fd);
            why.append("cannot read ").append(file).append(": ").append(e.getMessage());
            return null;
        }
        var sources = new ArrayList<GuestMemory.BlockSource>();
        for (var b : ram)
            sources.add(new GuestMemory.BlockSource(
                    b.id(), b.guestAddress(), b.size(), new Backing.SharedFile(file), b.fileOffset(), fd));
        return sources;
    }

    /** Source, paused: the file's pages written back and its lock released for the destination to take. */
    static void release(GuestMemory memory) {
        int fd = memory.blocks().getFirst().fd();
        LibC.fdatasync(fd); // a file on disk or shared storage: the destination reads it from there
        LibC.flock(fd, LibcConstants.LOCK_UN);
    }

    /** Source, the migration failed: the lock taken again before the guest resumes here. */
    static void retake(GuestMemory memory, Path file) {
        MemoryFileLocks.lock(memory.blocks().getFirst().fd(), file, true, "memory file");
    }

    /** Destination, the state arrived: the file locked as its user now, and its bytes checked against the source's. */
    static void takeOver(GuestMemory memory, Path file, List<MigrationProtocol.Fingerprint> fingerprints) {
        MemoryFileLocks.lock(memory.blocks().getFirst().fd(), file, true, "memory file");
        if (fingerprints.size() != memory.blocks().size())
            throw new SnapshotException("the source sent " + fingerprints.size() + " fingerprints for "
                    + memory.blocks().size() + " blocks of " + file);
        for (int i = 0; i < fingerprints.size(); i++) {
            var f = fingerprints.get(i);
            var block = checkedBlock(memory, i, f.block(), f.pages(), "fingerprint");
            if (crc(block.segment(), f.pages()) != f.crc())
                throw new SnapshotException("memory file " + file + " here holds other bytes than the source's"
                        + " (not the same file on shared storage, or the storage is not coherent)");
        }
    }

    /** Block {@code index} of {@code memory}, checked to be {@code id} and to hold {@code pages}. */
    private static RamBlock checkedBlock(GuestMemory memory, int index, String id, List<Long> pages, String what) {
        if (index >= memory.blocks().size())
            throw new SnapshotException("the source sent a " + what + " of block " + index + " of "
                    + memory.blocks().size());
        var block = memory.blocks().get(index);
        if (!block.id().equals(id))
            throw new SnapshotException("the source's " + what + " " + index + " is of block " + id);
        long count = block.size() / PAGE;
        for (long p : pages)
            if (p < 0 || p >= count)
                throw new SnapshotException("the source's " + what + " names page " + p + " of " + block.id());
        return block;
    }

    /**
     * Destination, guest still running on the source: reads a byte of each page the fingerprints
     * will read, so that this process maps them now rather than fault on each in the pause.
     */
    static void touch(GuestMemory memory, List<MigrationProtocol.BlockPages> samples) {
        for (int i = 0; i < samples.size(); i++) {
            var s = samples.get(i);
            var segment =
                    checkedBlock(memory, i, s.block(), s.pages(), "samples").segment();
            for (long p : s.pages()) segment.get(ValueLayout.JAVA_BYTE, p * PAGE);
        }
    }

    /** The pages {@link #samples} chose, as the message that lets the destination map them early. */
    static MigrationProtocol.Samples message(GuestMemory memory, List<List<Long>> samples) {
        var blocks = new ArrayList<MigrationProtocol.BlockPages>();
        for (int i = 0; i < samples.size(); i++)
            blocks.add(new MigrationProtocol.BlockPages(memory.blocks().get(i).id(), samples.get(i)));
        return new MigrationProtocol.Samples(List.copyOf(blocks));
    }

    /**
     * Source, before the pause: per block, the pages a fingerprint reads, from the file's data
     * (never a hole: reading one allocates it). Chosen while the guest runs: finding a 4 GiB
     * file's data extents walks its page cache (tens of ms at 4 GiB), which the downtime must not
     * pay. A page that was data stays data; its bytes are read at the pause.
     */
    static List<List<Long>> samples(GuestMemory memory) {
        var out = new ArrayList<List<Long>>();
        for (var block : memory.blocks()) out.add(samples(block));
        return out;
    }

    /** Source, paused: each block's fingerprint over the pages {@link #samples} chose. */
    static List<MigrationProtocol.Fingerprint> fingerprints(GuestMemory memory, List<List<Long>> samples) {
        var out = new ArrayList<MigrationProtocol.Fingerprint>();
        for (int i = 0; i < samples.size(); i++) {
            var block = memory.blocks().get(i);
            out.add(new MigrationProtocol.Fingerprint(
                    block.id(), samples.get(i), crc(block.segment(), samples.get(i))));
        }
        return out;
    }

    /**
     * Up to {@link #SAMPLES} page numbers spread over the block's data, non-zero ones preferred.
     * A mostly written file: the first data page at or after each of {@code SAMPLES} points spread
     * over the block, one {@code SEEK_DATA} each. A sparse one (fewer than half found that way):
     * spread over the file's data extents, whose walk costs what the file holds (on tmpfs it reads
     * the page cache page by page: 8 ms for 192 MiB of data, measured), so only a file that holds
     * little pays it.
     */
    private static List<Long> samples(RamBlock block) {
        var probed = probedSamples(block);
        return probed.size() >= SAMPLES / 2 ? probed : samplesOverExtents(block);
    }

    private static List<Long> probedSamples(RamBlock block) {
        long blockPages = block.size() / PAGE;
        var pages = new LinkedHashSet<Long>();
        for (int k = 0; k < SAMPLES; k++) {
            long page = nextDataPage(block, blockPages * k / SAMPLES, blockPages);
            if (page < 0) break; // no data after this point: none after the later ones either
            long chosen = page;
            // A zero page matches any empty file: look a few pages on for one that is not.
            for (long p = page; p < page + SCAN_PAGES && p < blockPages; p++) {
                if (p != page && nextDataPage(block, p, p + 1) != p) continue; // a hole: reading it allocates it
                if (!TcpMigration.isZero(block.segment(), p * PAGE)) {
                    chosen = p;
                    break;
                }
            }
            pages.add(chosen);
        }
        return List.copyOf(pages);
    }

    /** The first page of {@code block} at or after {@code page} that holds data, if it is before {@code limit}; else -1. */
    private static long nextDataPage(RamBlock block, long page, long limit) {
        long data = LibC.seek(block.fd(), block.fileOffset() + page * PAGE, LibcConstants.SEEK_DATA);
        if (data < 0) return -1; // ENXIO: no data after it
        long found = (data - block.fileOffset()) / PAGE;
        return found < limit ? found : -1;
    }

    private static List<Long> samplesOverExtents(RamBlock block) {
        long[][] extents = block.dataExtents();
        long dataPages = 0;
        for (long[] e : extents) dataPages += (e[1] - e[0]) / PAGE;
        var pages = new LinkedHashSet<Long>();
        if (dataPages == 0) return List.of();
        for (int k = 0; k < SAMPLES; k++) {
            long target = dataPages * k / SAMPLES; // the k-th sample point, counted in data pages
            for (long[] e : extents) {
                long n = (e[1] - e[0]) / PAGE;
                if (target >= n) {
                    target -= n;
                    continue;
                }
                long first = e[0] / PAGE + target, page = first;
                while (page < first + SCAN_PAGES
                        && page < e[1] / PAGE
                        && TcpMigration.isZero(block.segment(), page * PAGE)) page++;
                pages.add(page < e[1] / PAGE && page < first + SCAN_PAGES ? page : first);
                break;
            }
        }
        return List.copyOf(pages);
    }

    static long crc(MemorySegment segment, List<Long> pages) {
        var crc = new CRC32C();
        for (long p : pages) crc.update(segment.asSlice(p * PAGE, PAGE).asByteBuffer());
        return crc.getValue();
    }
}
