package dev.panamavmm.vmm.memory;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.bindings.Pollfd;
import dev.panamavmm.kvm.bindings.UffdMsg;
import dev.panamavmm.kvm.bindings.UffdioApi;
import dev.panamavmm.kvm.bindings.UffdioCopy;
import dev.panamavmm.kvm.bindings.UffdioRange;
import dev.panamavmm.kvm.bindings.UffdioRegister;
import dev.panamavmm.kvm.bindings.UffdioZeropage;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.List;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Guest RAM filled on demand through userfaultfd (missing mode, anonymous or memfd/shmem
 * memory): the one fault loop behind lazy restore ({@link RamLoader}, pages from a snapshot file)
 * and post-copy migration (pages from the source over a connection). A fault thread polls the
 * userfaultfd and a stop eventfd and hands each missing-page fault to a {@link Handler}, which
 * brings the page in with {@link #copy} or {@link #zero} (each wakes the threads waiting on it),
 * now or later from another thread. Whoever fills a page must never touch the registered memory
 * itself: that would fault on itself. Unregistering wakes every waiting thread, which then reads
 * whatever the memory holds (zeros in its holes).
 */
public final class Userfaults implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(Userfaults.class);
    private static final int MESSAGES = 32;
    private static final long PAGE = GuestMemory.PAGE;

    /** What the fault thread does; it must not touch the registered memory, nor block for long. */
    public interface Handler {
        /** A thread faulted on the missing page at {@code offset} (page-aligned) of region {@code region}. */
        void fault(int region, long offset);

        /** How long the next poll may wait for a fault, in ms (-1: until one comes). */
        default int pollMillis() {
            return -1;
        }

        /** Called after every poll, fault or timeout. */
        default void polled() {}

        /** The fault loop ended with an error (one line); faults are no longer served. */
        void failed(String message);
    }

    private final List<MemorySegment> regions;
    private final int uffd;
    private final int stopFd;
    private final ReentrantReadWriteLock registration = new ReentrantReadWriteLock();
    private boolean registered; // guarded by registration
    private volatile boolean stopping;
    private boolean closed;
    private Thread faultThread;

    private Userfaults(List<MemorySegment> regions, int uffd, int stopFd) {
        this.regions = List.copyOf(regions);
        this.uffd = uffd;
        this.stopFd = stopFd;
    }

    /** Registers {@code regions} (each page-aligned) with a new userfaultfd in missing mode; no fault is served until {@link #start}. */
    public static Userfaults register(List<MemorySegment> regions) {
        int uffd = -1, stopFd = -1;
        try {
            uffd = LibC.userfaultfd(LibcConstants.O_CLOEXEC | LibcConstants.O_NONBLOCK);
            stopFd = LibC.eventfd(0, LibcConstants.EFD_CLOEXEC | LibcConstants.EFD_NONBLOCK);
            var faults = new Userfaults(regions, uffd, stopFd);
            faults.registerAll();
            return faults;
        } catch (KvmException e) {
            if (uffd >= 0) LibC.close(uffd);
            if (stopFd >= 0) LibC.close(stopFd);
            throw new MemoryException("cannot register guest RAM with userfaultfd: " + e.getMessage(), e);
        }
    }

    private void registerAll() {
        try (var local = Arena.ofConfined()) {
            var api = local.allocate(UffdioApi.LAYOUT);
            api.set(ValueLayout.JAVA_LONG, UffdioApi.API, LibcConstants.UFFD_API);
            api.set(ValueLayout.JAVA_LONG, UffdioApi.FEATURES, LibcConstants.UFFD_FEATURE_MISSING_SHMEM);
            LibC.ioctl(uffd, Ioctls.UFFDIO_API, api);
            var reg = local.allocate(UffdioRegister.LAYOUT);
            registration.writeLock().lock();
            try {
                for (var r : regions) {
                    reg.fill((byte) 0);
                    reg.set(ValueLayout.JAVA_LONG, UffdioRegister.RANGE + UffdioRange.START, r.address());
                    reg.set(ValueLayout.JAVA_LONG, UffdioRegister.RANGE + UffdioRange.LEN, r.byteSize());
                    reg.set(ValueLayout.JAVA_LONG, UffdioRegister.MODE, LibcConstants.UFFDIO_REGISTER_MODE_MISSING);
                    LibC.ioctl(uffd, Ioctls.UFFDIO_REGISTER, reg);
                    registered = true;
                }
            } finally {
                registration.writeLock().unlock();
            }
        } catch (KvmException e) {
            unregister();
            throw e;
        }
    }

    /** Starts the fault thread, named {@code threadName}, serving faults with {@code handler}. */
    public void start(String threadName, Handler handler) {
        faultThread = Thread.ofPlatform().daemon().name(threadName).start(() -> serveFaults(handler));
    }

    public List<MemorySegment> regions() {
        return regions;
    }

    /** The index of the region holding host {@code address}, or -1. */
    public int regionOf(long address) {
        for (int i = 0; i < regions.size(); i++) {
            long offset = address - regions.get(i).address();
            if (offset >= 0 && offset < regions.get(i).byteSize()) return i;
        }
        return -1;
    }

    private void serveFaults(Handler handler) {
        try (var local = Arena.ofConfined()) {
            var fds = local.allocate(Pollfd.LAYOUT, 2);
            fds.set(ValueLayout.JAVA_INT, Pollfd.FD, uffd);
            fds.set(ValueLayout.JAVA_SHORT, Pollfd.EVENTS, (short) LibcConstants.POLLIN);
            fds.set(ValueLayout.JAVA_INT, Pollfd.BYTE_SIZE + Pollfd.FD, stopFd);
            fds.set(ValueLayout.JAVA_SHORT, Pollfd.BYTE_SIZE + Pollfd.EVENTS, (short) LibcConstants.POLLIN);
            var messages = local.allocate(UffdMsg.BYTE_SIZE * MESSAGES, 8);
            while (!stopping) {
                LibC.poll(fds, 2, handler.pollMillis());
                handler.polled();
                if (stopping || fds.get(ValueLayout.JAVA_SHORT, Pollfd.BYTE_SIZE + Pollfd.REVENTS) != 0) break;
                long n = LibC.readOrErrno(uffd, messages);
                if (n == -LibcConstants.EAGAIN) continue; // the fault was woken by a copy before it was read
                if (n < 0) throw new MemoryException("reading userfaultfd: " + LibC.strerror((int) -n));
                for (long at = 0; at < n; at += UffdMsg.BYTE_SIZE) {
                    if (messages.get(ValueLayout.JAVA_BYTE, at + UffdMsg.EVENT) != LibcConstants.UFFD_EVENT_PAGEFAULT)
                        continue;
                    long address = messages.get(ValueLayout.JAVA_LONG, at + UffdMsg.ARG_PAGEFAULT_ADDRESS) & -PAGE;
                    int region = regionOf(address);
                    if (region >= 0)
                        handler.fault(region, address - regions.get(region).address());
                }
            }
        } catch (RuntimeException e) {
            if (!stopping) handler.failed(e.getMessage());
        }
    }

    /**
     * Copies {@code length} bytes from {@code source} (outside the registered memory) to host
     * {@code address} and wakes the threads waiting there. A page already present is kept; returns
     * how many were (0 unless a page was filled twice). Does nothing once unregistered.
     */
    public long copy(long address, MemorySegment source, long length) {
        long foundThere = 0;
        registration.readLock().lock();
        try (var local = Arena.ofConfined()) {
            if (!registered) return 0; // stopped meanwhile: nothing waits any more
            var copy = local.allocate(UffdioCopy.LAYOUT);
            long done = 0;
            while (done < length) {
                copy.set(ValueLayout.JAVA_LONG, UffdioCopy.DST, address + done);
                copy.set(ValueLayout.JAVA_LONG, UffdioCopy.SRC, source.address() + done);
                copy.set(ValueLayout.JAVA_LONG, UffdioCopy.LEN, length - done);
                copy.set(ValueLayout.JAVA_LONG, UffdioCopy.MODE, 0L);
                copy.set(ValueLayout.JAVA_LONG, UffdioCopy.COPY, 0L);
                int rc = LibC.ioctlOrErrno(uffd, Ioctls.UFFDIO_COPY, copy);
                long copied = Math.max(0, copy.get(ValueLayout.JAVA_LONG, UffdioCopy.COPY));
                if (rc >= 0) break;
                if (-rc == LibcConstants.EAGAIN) done += copied;
                else if (-rc == LibcConstants.EEXIST) { // a page already there: keep it (and count it)
                    foundThere++;
                    done += copied + PAGE;
                } else throw new MemoryException("UFFDIO_COPY failed: " + LibC.strerror(-rc));
            }
        } finally {
            registration.readLock().unlock();
        }
        return foundThere;
    }

    /** Maps zero pages at {@code [address, address + length)} and wakes their waiters; as {@link #copy}, returns the pages already there. */
    public long zero(long address, long length) {
        long foundThere = 0;
        registration.readLock().lock();
        try (var local = Arena.ofConfined()) {
            if (!registered) return 0;
            var zero = local.allocate(UffdioZeropage.LAYOUT);
            long done = 0;
            while (done < length) {
                zero.set(ValueLayout.JAVA_LONG, UffdioZeropage.RANGE + UffdioRange.START, address + done);
                zero.set(ValueLayout.JAVA_LONG, UffdioZeropage.RANGE + UffdioRange.LEN, length - done);
                zero.set(ValueLayout.JAVA_LONG, UffdioZeropage.MODE, 0L);
                zero.set(ValueLayout.JAVA_LONG, UffdioZeropage.ZEROPAGE, 0L);
                int rc = LibC.ioctlOrErrno(uffd, Ioctls.UFFDIO_ZEROPAGE, zero);
                long zeroed = Math.max(0, zero.get(ValueLayout.JAVA_LONG, UffdioZeropage.ZEROPAGE));
                if (rc >= 0) break;
                if (-rc == LibcConstants.EAGAIN) done += zeroed;
                else if (-rc == LibcConstants.EEXIST) {
                    foundThere++;
                    done += zeroed + PAGE;
                } else throw new MemoryException("UFFDIO_ZEROPAGE failed: " + LibC.strerror(-rc));
            }
        } finally {
            registration.readLock().unlock();
        }
        return foundThere;
    }

    /** Wakes the threads waiting on the page at host {@code address} (it arrived before their fault was read). */
    public void wake(long address) {
        registration.readLock().lock();
        try (var local = Arena.ofConfined()) {
            if (!registered) return;
            var range = local.allocate(UffdioRange.LAYOUT);
            range.set(ValueLayout.JAVA_LONG, UffdioRange.START, address & -PAGE);
            range.set(ValueLayout.JAVA_LONG, UffdioRange.LEN, PAGE);
            LibC.ioctlOrErrno(uffd, Ioctls.UFFDIO_WAKE, range);
        } finally {
            registration.readLock().unlock();
        }
    }

    /** Unregisters every region: waiting threads wake and read what the memory holds (zeros in its holes). Idempotent. */
    public void unregister() {
        registration.writeLock().lock();
        try (var local = Arena.ofConfined()) {
            if (!registered) return;
            registered = false;
            var range = local.allocate(UffdioRange.LAYOUT);
            for (var r : regions) {
                range.set(ValueLayout.JAVA_LONG, UffdioRange.START, r.address());
                range.set(ValueLayout.JAVA_LONG, UffdioRange.LEN, r.byteSize());
                try {
                    LibC.ioctl(uffd, Ioctls.UFFDIO_UNREGISTER, range);
                } catch (KvmException e) {
                    log.warn("unregistering guest RAM from userfaultfd: {}", e.getMessage());
                }
            }
        } finally {
            registration.writeLock().unlock();
        }
    }

    /** Ends the fault thread (it may be the caller); the memory stays registered. */
    public void stop() {
        stopping = true;
        try (var local = Arena.ofConfined()) {
            var one = local.allocate(ValueLayout.JAVA_LONG);
            one.set(ValueLayout.JAVA_LONG, 0, 1L);
            LibC.write(stopFd, one);
        } catch (RuntimeException e) {
            log.warn("stopping the userfaultfd fault thread: {}", e.getMessage());
        }
    }

    /** Stops the fault thread, unregisters (every waiting thread wakes), waits for the thread and closes the fds. Idempotent. */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        stop();
        unregister();
        var t = faultThread;
        faultThread = null;
        if (t != null && t != Thread.currentThread()) {
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
        LibC.close(uffd);
        LibC.close(stopFd);
    }
}
