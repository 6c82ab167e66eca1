package dev.panamavmm.vmm.memory;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;
import java.util.function.Consumer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Fills guest RAM from the pages stored in a snapshot file, instead of mapping the file.
 *
 * <p>{@link #eager}: reads every data extent of the file into the memory before the guest runs.
 *
 * <p>{@link #lazy}: the memory is registered with userfaultfd (missing mode); a fault thread
 * serves each fault with {@code UFFDIO_COPY} of the aligned {@link #CHUNK} around it, read from
 * the file; a background loader at nice 19 copies every other chunk that holds data in large
 * reads, then unregisters the memory (the file's holes are then the memfd's holes, zero on
 * touch). Each chunk is claimed once (missing, loading, loaded), so it is read and copied exactly
 * once whoever gets it first. The first lazy restore of a snapshot records the chunks the guest
 * faulted in its first {@link #RECORD_MILLIS} ms and writes them beside the snapshot
 * ({@link WorkingSet}); a later one loads those first, sorted, before the guest runs. While it
 * records, the background loader waits (else it would load the pages the guest is about to ask
 * for, and they would not be learned).
 *
 * <p>The fault loop is {@link Userfaults}'s (post-copy's too). A VMM thread never faults: it loads
 * the chunks of the range it is handed first ({@link #awaitPresent}, through {@link GuestMemory}).
 *
 * <p>Failure safety: a read error or a file that ends early calls the failure callback (the VM
 * ends with that line) and unregisters the memory, which wakes every thread waiting on a fault.
 * {@link #close} does the same without the callback, so closing a VM never waits on a fault.
 */
public final class RamLoader implements MemoryFill {
    private static final Logger log = LoggerFactory.getLogger(RamLoader.class);

    /**
     * What one fault brings in: 64 KiB (measured against 4 KiB and 256 KiB in
     * bench/run-lazy-restore-bench, docs/benchmarks.md); {@code -Dpanama.vmm.lazyChunkKiB=N} (a
     * power of two from 4 to 2048) sets another, for such measurements.
     */
    public static final int CHUNK = chunkSize(System.getProperty("panama.vmm.lazyChunkKiB"));
    /** The size of one background or working-set read. */
    static final int BATCH = 2 * 1024 * 1024;
    /** How long after its first fault a first lazy restore records the guest's faults. */
    public static final long RECORD_MILLIS = 1000;
    /** The size of one eager read. */
    private static final int EAGER_READ = 16 * 1024 * 1024;

    private static final byte MISSING = 0, LOADING = 1, LOADED = 2;
    private static final VarHandle STATE = MethodHandles.arrayElementVarHandle(byte[].class);

    /**
     * A range of guest memory filled from the snapshot file.
     *
     * @param guestAddress its guest-physical address
     * @param memory       its mapping (a memfd's, mapped shared)
     * @param fileOffset   where its bytes start in the snapshot file
     */
    record Region(long guestAddress, MemorySegment memory, long fileOffset) {
        long size() {
            return memory.byteSize();
        }

        int chunks() {
            return (int) ((size() + CHUNK - 1) / CHUNK);
        }
    }

    /**
     * What a lazy load has done so far.
     *
     * @param faults           fault messages the fault thread read
     * @param chunksOnFault    chunks it loaded for them, and chunks VMM threads loaded before touching them
     * @param chunksPreloaded  chunks of the working set loaded before the guest ran
     * @param chunksBackground chunks the background loader loaded
     * @param workingSetPages  entries of the working set used (0: none was used)
     * @param pagesFoundThere  pages a copy found already present (EEXIST): 0 unless a page was served twice
     * @param complete         every chunk holding data is loaded and the memory unregistered
     */
    public record Stats(
            long faults,
            long chunksOnFault,
            long chunksPreloaded,
            long chunksBackground,
            int workingSetPages,
            long pagesFoundThere,
            boolean complete) {}

    private final Path snapshotFile;
    private final FileChannel file;
    private final List<Region> regions;
    private final byte[][] state;
    private final List<List<long[]>> extents = new ArrayList<>();
    private final Userfaults userfaults;
    private final Arena arena = Arena.ofShared();
    private volatile boolean stopping;
    private volatile String failure;
    private volatile Consumer<String> onFailure;
    private final CountDownLatch loaded = new CountDownLatch(1);
    private final AtomicLong faults = new AtomicLong(),
            onFault = new AtomicLong(),
            preloaded = new AtomicLong(),
            background = new AtomicLong(),
            foundThere = new AtomicLong();
    private final WorkingSet.SnapshotKey key;
    private final boolean recording;
    private final CountDownLatch recorded = new CountDownLatch(1);
    private final List<Long> recordedPages = new ArrayList<>(); // guarded by itself
    private volatile boolean complete;
    private int workingSetPages;
    private Thread loaderThread;
    private final long started = System.nanoTime();

    private RamLoader(
            Path snapshotFile,
            FileChannel file,
            List<Region> regions,
            WorkingSet.SnapshotKey key,
            boolean recording,
            Userfaults userfaults) {
        this.snapshotFile = snapshotFile;
        this.file = file;
        this.regions = List.copyOf(regions);
        this.state = new byte[regions.size()][];
        for (int i = 0; i < regions.size(); i++)
            state[i] = new byte[regions.get(i).chunks()];
        this.key = key;
        this.recording = recording;
        this.userfaults = userfaults;
    }

    static int chunkSize(String kib) {
        if (kib == null) return 64 * 1024;
        try {
            int k = Integer.parseInt(kib);
            if (k >= 4 && k <= 2048 && Integer.bitCount(k) == 1) return k * 1024;
        } catch (NumberFormatException e) {
            // the warning below
        }
        log.warn("ignoring panama.vmm.lazyChunkKiB={}: not a power of two from 4 to 2048; using 64", kib);
        return 64 * 1024;
    }

    // ---- eager -------------------------------------------------------------------------------

    /** Reads every data extent of the snapshot into {@code regions}, front to back. */
    static void eager(Path snapshotFile, List<Region> regions) {
        long start = System.nanoTime(), bytes = 0;
        try (var file = FileChannel.open(snapshotFile, StandardOpenOption.READ)) {
            WorkingSet.SnapshotKey.of(snapshotFile); // refuses a file truncated since it was read
            var dataExtents = dataExtents(snapshotFile, regions);
            for (int i = 0; i < regions.size(); i++) {
                var r = regions.get(i);
                for (long[] e : dataExtents.get(i)) {
                    for (long at = e[0]; at < e[1]; at += EAGER_READ) {
                        long len = Math.min(EAGER_READ, e[1] - at);
                        readFully(file, r.memory().asSlice(at, len).asByteBuffer(), r.fileOffset() + at);
                        bytes += len;
                    }
                }
            }
            log.debug("read {} MiB of guest RAM in {} ms", bytes >> 20, (System.nanoTime() - start) / 1_000_000);
        } catch (IOException e) {
            throw new MemoryException("cannot read guest RAM from " + snapshotFile + ": " + e.getMessage(), e);
        }
    }

    // ---- lazy --------------------------------------------------------------------------------

    /**
     * Registers {@code regions} with a new userfaultfd, starts the fault thread, loads the working
     * set beside the snapshot if there is a valid one, and starts the background loader (or, when
     * there is none, records one first). Returns once the guest may run.
     */
    static RamLoader lazy(Path snapshotFile, List<Region> regions) {
        FileChannel file;
        WorkingSet.SnapshotKey key;
        try {
            file = FileChannel.open(snapshotFile, StandardOpenOption.READ);
        } catch (IOException e) {
            throw new MemoryException("cannot read guest RAM from " + snapshotFile + ": " + e.getMessage(), e);
        }
        Userfaults userfaults = null;
        RamLoader loader = null;
        try {
            key = WorkingSet.SnapshotKey.of(snapshotFile);
            WorkingSet workingSet = readWorkingSet(snapshotFile, key);
            userfaults =
                    Userfaults.register(regions.stream().map(Region::memory).toList());
            loader = new RamLoader(snapshotFile, file, regions, key, workingSet == null, userfaults);
            loader.extents.addAll(dataExtents(snapshotFile, regions));
            loader.startFaults();
            if (workingSet != null) {
                long start = System.nanoTime();
                loader.preload(workingSet);
                log.debug(
                        "working set: {} chunks loaded in {} ms",
                        loader.preloaded.get(),
                        (System.nanoTime() - start) / 1_000_000);
            }
            loader.loaderThread =
                    Thread.ofPlatform().daemon().name("ram-loader").start(loader::loadInBackground);
            return loader;
        } catch (IOException | RuntimeException e) {
            if (loader != null) loader.close();
            else {
                if (userfaults != null) userfaults.close();
                try {
                    file.close();
                } catch (IOException ignored) {
                    // nothing was read
                }
            }
            if (e instanceof MemoryException m) throw m;
            throw new MemoryException("cannot load guest RAM lazily from " + snapshotFile + ": " + e.getMessage(), e);
        }
    }

    private static WorkingSet readWorkingSet(Path snapshotFile, WorkingSet.SnapshotKey key) {
        try {
            var ws = WorkingSet.read(snapshotFile, key);
            log.debug("working set {}: {} chunks", WorkingSet.pathFor(snapshotFile), ws.guestPages().length);
            return ws;
        } catch (NoSuchFileException e) {
            log.info("no working set for {} yet: this restore records one", snapshotFile);
        } catch (IOException e) {
            log.warn(
                    "ignoring the working set {} ({}): this restore records a new one",
                    WorkingSet.pathFor(snapshotFile),
                    e.getMessage());
        }
        return null;
    }

    /** Serves faults on the fault thread ({@code ram-faults}), and ends the recording window on time. */
    private void startFaults() {
        var bounce = arena.allocate(CHUNK, 4096); // the fault thread's own
        userfaults.start("ram-faults", new Userfaults.Handler() {
            private long windowEnd; // nanoTime when recording stops; 0 before the first fault

            @Override
            public void fault(int region, long offset) {
                faults.incrementAndGet();
                if (recording && windowEnd == 0) windowEnd = System.nanoTime() + RECORD_MILLIS * 1_000_000;
                serveFault(region, offset, bounce, recording && recorded.getCount() > 0);
            }

            @Override
            public int pollMillis() {
                if (recording && recorded.getCount() > 0 && windowEnd != 0)
                    return (int) Math.max(1, (windowEnd - System.nanoTime()) / 1_000_000);
                return -1;
            }

            @Override
            public void polled() {
                if (recording && windowEnd != 0 && System.nanoTime() >= windowEnd) recorded.countDown();
            }

            @Override
            public void failed(String message) {
                fail(message);
            }
        });
    }

    private void serveFault(int i, long offset, MemorySegment bounce, boolean record) {
        var r = regions.get(i);
        int chunk = (int) (offset / CHUNK);
        if (claim(i, chunk)) {
            load(i, chunk, 1, bounce);
            onFault.incrementAndGet();
            if (record) {
                synchronized (recordedPages) {
                    recordedPages.add(r.guestAddress() + (long) chunk * CHUNK);
                }
            }
        } else if ((byte) STATE.getVolatile(state[i], chunk) == LOADED) {
            userfaults.wake(r.memory().address() + offset); // it faulted just before the copy that loaded it
        } // else being loaded by another thread, whose copy wakes it
    }

    private boolean claim(int region, int chunk) {
        return STATE.compareAndSet(state[region], chunk, MISSING, LOADING);
    }

    /** Reads chunks {@code [first, first + count)} of a region (all claimed by the caller) and copies them in. */
    private void load(int region, int first, int count, MemorySegment bounce) {
        var r = regions.get(region);
        long offset = (long) first * CHUNK;
        long len = Math.min((long) count * CHUNK, r.size() - offset);
        try {
            readFully(file, bounce.asSlice(0, len).asByteBuffer(), r.fileOffset() + offset);
        } catch (IOException e) {
            throw new MemoryException("cannot read guest RAM from " + snapshotFile + ": " + e.getMessage(), e);
        }
        foundThere.addAndGet(userfaults.copy(r.memory().address() + offset, bounce, len));
        for (int c = first; c < first + count; c++) STATE.setVolatile(state[region], c, LOADED);
    }

    /**
     * Loads the chunks of {@code [gpa, gpa + length)} still missing on the calling VMM thread (a
     * chunk another thread is loading is waited for), so that the caller never faults on one.
     */
    @Override
    public void awaitPresent(long gpa, long length) {
        if (complete || stopping || failure != null || length <= 0) return;
        MemorySegment bounce = null;
        try (var local = Arena.ofConfined()) {
            for (int i = 0; i < regions.size(); i++) {
                var r = regions.get(i);
                long from = Math.max(gpa, r.guestAddress()), to = Math.min(gpa + length, r.guestAddress() + r.size());
                if (from >= to) continue;
                for (int c = (int) ((from - r.guestAddress()) / CHUNK);
                        c <= (int) ((to - 1 - r.guestAddress()) / CHUNK);
                        c++) {
                    if (claim(i, c)) {
                        if (bounce == null) bounce = local.allocate(CHUNK, 4096);
                        load(i, c, 1, bounce);
                        onFault.incrementAndGet();
                    }
                    // Another thread's read of at most 2 MiB (the background loader's runs at nice 19: park, do not
                    // spin).
                    while ((byte) STATE.getVolatile(state[i], c) != LOADED && !stopping && failure == null)
                        LockSupport.parkNanos(20_000);
                }
            }
        } catch (RuntimeException e) {
            fail(e.getMessage());
        }
    }

    /** Loads the working set's chunks, sorted and merged into runs, before the guest runs. */
    private void preload(WorkingSet workingSet) {
        workingSetPages = workingSet.guestPages().length;
        long[] pages = workingSet.guestPages().clone();
        Arrays.sort(pages);
        try (var local = Arena.ofConfined()) {
            var bounce = local.allocate(BATCH, 4096);
            int runRegion = -1, runFirst = 0, runCount = 0;
            for (long gpa : pages) {
                int region = regionOf(gpa);
                if (region < 0) continue; // not RAM of this snapshot: a damaged entry changes nothing
                int chunk = (int) ((gpa - regions.get(region).guestAddress()) / CHUNK);
                if (region == runRegion && chunk < runFirst + runCount) continue; // a duplicate
                boolean contiguous = region == runRegion && chunk == runFirst + runCount && runCount < BATCH / CHUNK;
                if (!contiguous && runCount > 0) {
                    load(runRegion, runFirst, runCount, bounce);
                    preloaded.addAndGet(runCount);
                    runCount = 0;
                }
                if (!claim(region, chunk)) continue; // the guest cannot have run yet; only a duplicate gets here
                if (runCount == 0) {
                    runRegion = region;
                    runFirst = chunk;
                }
                runCount++;
            }
            if (runCount > 0) {
                load(runRegion, runFirst, runCount, bounce);
                preloaded.addAndGet(runCount);
            }
        }
    }

    private int regionOf(long gpa) {
        for (int i = 0; i < regions.size(); i++) {
            var r = regions.get(i);
            if (gpa >= r.guestAddress() && gpa < r.guestAddress() + r.size()) return i;
        }
        return -1;
    }

    /** The background loader: after recording (if any), every chunk holding data, in file order; then unregisters. */
    private void loadInBackground() {
        try {
            LibC.niceCurrentThread(19);
            if (recording) {
                recorded.await();
                // Cut short (the VM stopped, or a save needs all of RAM): what was recorded is still the start.
                if (failure == null) writeWorkingSet();
            }
            try (var local = Arena.ofConfined()) {
                var bounce = local.allocate(BATCH, 4096);
                for (int i = 0; i < regions.size() && !stopping; i++) {
                    for (long[] e : extents.get(i)) {
                        int runFirst = 0, runCount = 0;
                        for (int c = (int) (e[0] / CHUNK); c <= (int) ((e[1] - 1) / CHUNK) && !stopping; c++) {
                            if (runCount > 0 && (runFirst + runCount != c || runCount == BATCH / CHUNK)) {
                                load(i, runFirst, runCount, bounce);
                                background.addAndGet(runCount);
                                runCount = 0;
                            }
                            if (!claim(i, c)) continue;
                            if (runCount == 0) runFirst = c;
                            runCount++;
                        }
                        if (runCount > 0 && !stopping) {
                            load(i, runFirst, runCount, bounce);
                            background.addAndGet(runCount);
                        }
                    }
                }
            }
            if (stopping) return;
            userfaults.unregister(); // the holes left are zero, as the memfd's holes are
            complete = true;
            log.debug(
                    "guest RAM loaded from {}: {} faults, chunks: {} on fault, {} preloaded, {} in background;"
                            + " complete {} ms after the restore began",
                    snapshotFile,
                    faults.get(),
                    onFault.get(),
                    preloaded.get(),
                    background.get(),
                    (System.nanoTime() - started) / 1_000_000);
            userfaults.stop();
            loaded.countDown();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (RuntimeException e) {
            fail(e.getMessage());
        }
    }

    /** Writes what the guest faulted in its first moments; a failure is a warning, never the restore's. */
    private void writeWorkingSet() {
        long[] pages;
        synchronized (recordedPages) {
            pages = recordedPages.stream().mapToLong(Long::longValue).toArray();
        }
        if (pages.length == 0) return; // the guest never ran
        try {
            new WorkingSet(key, pages).write(snapshotFile, CHUNK);
            log.debug("recorded a working set of {} chunks beside {}", pages.length, snapshotFile);
        } catch (IOException | RuntimeException e) {
            log.warn("cannot write the working set beside {}: {}", snapshotFile, e.getMessage());
        }
    }

    /** Ends the load with {@code message}: the VM is told, and every waiting fault wakes. */
    private void fail(String message) {
        if (stopping || failure != null) return;
        failure = "loading guest RAM from the snapshot failed: " + message;
        log.debug("{}", failure);
        var callback = onFailure;
        if (callback != null) callback.accept(failure);
        userfaults.stop();
        userfaults.unregister();
        recorded.countDown();
        loaded.countDown();
    }

    /** Whom to tell when loading fails (the VM, to end); told at once if it already has. */
    @Override
    public void onFailure(Consumer<String> callback) {
        onFailure = callback;
        var f = failure;
        if (f != null) callback.accept(f);
    }

    /** Loads everything now (a save or migration needs all of RAM): recording stops without a file; waits until done. */
    @Override
    public void awaitLoaded() throws InterruptedException {
        recorded.countDown();
        loaded.await();
        var f = failure;
        if (f != null) throw new MemoryException(f);
        if (!complete) throw new MemoryException("the VM's memory was closed before it was loaded");
    }

    Stats stats() {
        return new Stats(
                faults.get(),
                onFault.get(),
                preloaded.get(),
                background.get(),
                workingSetPages,
                foundThere.get(),
                complete);
    }

    /** Stops both threads and wakes every fault (its page reads as zero: the VM is ending). Idempotent. */
    @Override
    public void close() {
        if (stopping) return;
        boolean done = loaded.getCount() == 0;
        stopping = true;
        userfaults.close(); // stops and joins the fault thread; every waiting fault wakes
        recorded.countDown();
        for (var t : new Thread[] {loaderThread}) {
            if (t == null || t == Thread.currentThread()) continue;
            boolean interrupted = false;
            while (t.isAlive()) {
                try {
                    t.join();
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
            if (interrupted) Thread.currentThread().interrupt();
        }
        if (!done) {
            loaded.countDown();
            log.debug(
                    "guest RAM load from {} stopped: {} faults, chunks: {} on fault, {} preloaded, {} in background",
                    snapshotFile,
                    faults.get(),
                    onFault.get(),
                    preloaded.get(),
                    background.get());
        }
        try {
            file.close();
        } catch (IOException e) {
            log.debug("closing {}: {}", snapshotFile, e.getMessage());
        }
        arena.close();
    }

    // ---- shared ------------------------------------------------------------------------------

    private static List<List<long[]>> dataExtents(Path snapshotFile, List<Region> regions) {
        int fd;
        try {
            fd = LibC.open(snapshotFile.toString(), LibcConstants.O_RDONLY | LibcConstants.O_CLOEXEC, 0);
        } catch (KvmException e) {
            throw new MemoryException("cannot open " + snapshotFile + ": " + e.getMessage(), e);
        }
        try {
            var all = new ArrayList<List<long[]>>();
            for (var r : regions) all.add(DataExtents.fileData(fd, r.fileOffset(), r.size()));
            return all;
        } finally {
            LibC.close(fd);
        }
    }

    private static void readFully(FileChannel file, ByteBuffer into, long position) throws IOException {
        long start = position;
        while (into.hasRemaining()) {
            int n = file.read(into, position);
            if (n < 0) {
                throw new IOException("the file ends at byte " + position + ", before the RAM it stores (bytes up to "
                        + (start + into.capacity()) + "): it was truncated");
            }
            position += n;
        }
    }
}
