package dev.panamavmm.vmm.postcopy;

import static dev.panamavmm.vmm.postcopy.PostcopyProtocol.*;

import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.MemoryException;
import dev.panamavmm.vmm.memory.MemoryFill;
import dev.panamavmm.vmm.memory.PageStreams;
import dev.panamavmm.vmm.memory.RamBlock;
import dev.panamavmm.vmm.memory.Userfaults;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.Consumer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Destination side of a post-copy migration: {@link #register} before any vCPU runs or any device
 * is built (userfaultfd, missing mode, anonymous or memfd/shmem memory); a vCPU touching a missing
 * page waits in the kernel until it arrives, a VMM thread waits in {@link #awaitPresent} (through
 * {@link GuestMemory}) instead of faulting. The fault thread ({@code postcopy-faults}) asks the
 * source for each faulted page; {@link #receive} copies pages in as they come ({@code UFFDIO_COPY}
 * from a bounce buffer, a zero marker as {@code UFFDIO_ZEROPAGE} when a thread waits on the page,
 * else left a hole until it is touched) and returns once every page arrived. Each page is taken
 * out of {@code missing} by the copy that brings it, so it is copied once; one that comes again is
 * discarded and counted. On a dropped connection or a protocol error, receive throws, the memory
 * stays registered and the faulting threads keep waiting (never on zeros); receive may be called
 * again with a new connection (recovery), which first tells the source what is still missing.
 */
public final class PostcopyDestination implements MemoryFill {
    private static final Logger log = LoggerFactory.getLogger(PostcopyDestination.class);

    private final GuestMemory memory;
    private final List<RamBlock> blocks;
    /** Pages not present yet whose content is the source's. */
    private final PageSet missing;
    /** Pages a thread waited for: re-asked on a new connection; their arrival counts as requested. */
    private final PageSet requested;
    /** Pages known present (copied, zeroed, or found there by a zero page): a VMM thread's fast path. */
    private final PageSet present;

    private final Userfaults userfaults;
    private final LinkedBlockingQueue<Long> requests = new LinkedBlockingQueue<>();
    private final AtomicBoolean receiving = new AtomicBoolean();
    private final long started = System.nanoTime();
    private final Object arrivals = new Object();
    private volatile boolean complete, closed;
    private volatile Consumer<String> onFailure;
    private volatile String failure;
    private long pagesRequested, pagesStreamed, zeroPages, duplicates, bytes, lastPageNanos; // guarded by this
    private long faultWaitNanos, maxFaultWaitNanos; // guarded by this
    /** When each page a thread waits for was first asked for (System.nanoTime), until it arrives. */
    private final ConcurrentHashMap<Long, Long> waitingSince = new ConcurrentHashMap<>();

    private PostcopyDestination(GuestMemory memory, PageSet missing, Userfaults userfaults) {
        this.memory = memory;
        this.blocks = memory.blocks();
        this.missing = missing;
        this.requested = PageSet.of(memory);
        this.present = PageSet.of(memory);
        this.userfaults = userfaults;
    }

    /**
     * Registers {@code memory} with userfaultfd, the pages of {@code missing} to come from the
     * source (the set shrinks as they arrive), and starts the fault thread. Call it before any
     * vCPU runs and before devices are built on the memory: a page touched before is a page the
     * copy would find there.
     */
    public static PostcopyDestination register(GuestMemory memory, PageSet missing) {
        var userfaults = Userfaults.register(
                memory.blocks().stream().map(RamBlock::segment).toList());
        var destination = new PostcopyDestination(memory, missing, userfaults);
        try {
            memory.fillWith(destination);
        } catch (RuntimeException e) {
            userfaults.close();
            throw e;
        }
        userfaults.start("postcopy-faults", destination.new Faults());
        return destination;
    }

    /** The fault thread's work: never blocks on the network (it queues a request) and never touches guest RAM. */
    private final class Faults implements Userfaults.Handler {
        @Override
        public void fault(int region, long offset) {
            long gpa = blocks.get(region).guestAddress() + offset;
            boolean first = requested.set(gpa); // before missing is read: see receiveZeros
            if (missing.contains(gpa)) {
                if (first) ask(gpa);
            } else {
                // It arrived meanwhile (the copy woke it: EEXIST here), or it is a zero page or a page
                // the source never sends: it is a hole, and reads as zero.
                userfaults.zero(blocks.get(region).segment().address() + offset, PAGE);
                present.set(gpa);
            }
        }

        @Override
        public void failed(String message) {
            fail("serving guest page faults failed: " + message);
        }
    }

    /** Asks the source for a page a thread waits on, and notes since when it waits. */
    private void ask(long gpa) {
        waitingSince.put(gpa, System.nanoTime());
        requests.add(gpa);
    }

    /** A page a thread waited for is here: how long it waited counts. */
    private void waited(long gpa, long now) {
        Long since = waitingSince.remove(gpa);
        if (since == null) return;
        long wait = now - since;
        synchronized (this) {
            faultWaitNanos += wait;
            maxFaultWaitNanos = Math.max(maxFaultWaitNanos, wait);
        }
    }

    /** {@link #sendHello} wrote the first connection's HELLO: {@link #receive} does not, once. */
    private boolean helloSent;

    /**
     * Writes the first connection's HELLO now, on the thread that resumed the guest, before the
     * thread that will {@link #receive} exists: the source serves from it, and the guest already
     * waits for its first pages (from the receiving thread it left 5-15 ms after the resume).
     */
    public void sendHello(OutputStream out) throws IOException {
        var data = new DataOutputStream(out);
        writeHello(data, missing);
        data.flush();
        helloSent = true;
    }

    /** Receives pages on one connection until every page arrived; throws when it fails first (call again on a new one). */
    public Stats receive(InputStream in, OutputStream out) throws IOException {
        if (!receiving.compareAndSet(false, true)) throw new IllegalStateException("already receiving post-copy pages");
        var source = PageStreams.in(in, 256 * 1024); // pages into the bounce buffer, without an array on plain TCP
        var input = new DataInputStream(source);
        var output = new DataOutputStream(new BufferedOutputStream(out, 64 * 1024));
        Thread writer = null;
        var connectionDone = new AtomicBoolean();
        try (var arena = Arena.ofConfined()) {
            if (closed) throw new IOException("post-copy was stopped: the VM ended");
            synchronized (output) {
                if (helloSent) helloSent = false; // sendHello wrote it on this connection
                else {
                    writeHello(output, missing);
                    output.flush();
                }
            }
            log.debug("post-copy: {} pages missing at connect", missing.count());
            writer = Thread.ofPlatform()
                    .daemon()
                    .name("postcopy-requests")
                    .start(() -> writeRequests(output, connectionDone));
            var bounce = arena.allocate((long) MAX_PAGES * PAGE, PAGE);
            while (true) {
                int type = input.read();
                if (type < 0)
                    throw new EOFException(
                            "the source closed the connection with " + missing.count() + " pages still missing");
                switch (type) {
                    case PAGES -> receivePages(input, source, bounce);
                    case ZEROS -> receiveZeros(input);
                    case END -> {
                        if (missing.count() > 0)
                            throw new PostcopyException(
                                    "the source ended the stream with " + missing.count() + " pages still missing");
                        synchronized (output) {
                            output.writeByte(COMPLETE);
                            output.flush();
                        }
                        finish();
                        return stats();
                    }
                    default -> throw new PostcopyException("the source sent " + name(type) + " during post-copy");
                }
            }
        } finally {
            connectionDone.set(true);
            if (writer != null) {
                writer.interrupt();
                try {
                    writer.join(1000); // before a new connection re-sends what is still asked for
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
            receiving.set(false);
        }
    }

    private void receivePages(DataInputStream in, PageStreams.In source, MemorySegment bounce) throws IOException {
        long gpa = in.readLong();
        int count = in.readInt();
        if (count < 1 || count > MAX_PAGES)
            throw new PostcopyException("the source sent a run of " + count + " pages (1 to " + MAX_PAGES + ")");
        if (!missing.isRam(gpa, count))
            throw new PostcopyException(
                    "the source sent %d pages at 0x%x, outside guest RAM (or not page-aligned)".formatted(count, gpa));
        int length = count * PAGE;
        try {
            source.readFully(bounce.asSlice(0, length));
        } catch (EOFException e) {
            throw new PostcopyException(
                    "the connection ended inside a run of %d pages at 0x%x: a short page".formatted(count, gpa));
        }
        var block = memory.blockAt(gpa, length);
        long host = block.segment().address() + (gpa - block.guestAddress());
        long found = 0, requestedHere = 0, streamedHere = 0, duplicatesHere = 0;
        // Copy each stretch of pages still missing in one UFFDIO_COPY; pages already here are discarded.
        for (int first = 0; first < count; ) {
            if (!missing.contains(gpa + (long) first * PAGE)) {
                duplicatesHere++;
                first++;
                continue;
            }
            int end = first + 1;
            while (end < count && missing.contains(gpa + (long) end * PAGE)) end++;
            found += userfaults.copy(
                    host + (long) first * PAGE, bounce.asSlice((long) first * PAGE), (long) (end - first) * PAGE);
            long now = System.nanoTime();
            for (int p = first; p < end; p++) {
                long page = gpa + (long) p * PAGE;
                present.set(page);
                missing.clear(page);
                if (requested.contains(page)) {
                    requestedHere++;
                    waited(page, now);
                } else streamedHere++;
            }
            first = end;
        }
        if (found > 0) log.warn("post-copy: {} pages were already present when they arrived", found);
        arrived(requestedHere, streamedHere, 0, duplicatesHere + found, 13L + length);
    }

    private void receiveZeros(DataInputStream in) throws IOException {
        long gpa = in.readLong();
        int count = in.readInt();
        if (count < 1 || count > MAX_ZEROS)
            throw new PostcopyException("the source sent a run of " + count + " zero pages (1 to " + MAX_ZEROS + ")");
        if (!missing.isRam(gpa, count))
            throw new PostcopyException("the source sent %d zero pages at 0x%x, outside guest RAM (or not page-aligned)"
                    .formatted(count, gpa));
        var block = memory.blockAt(gpa, (long) count * PAGE);
        long zeros = 0, duplicatesHere = 0;
        for (int p = 0; p < count; p++) {
            long page = gpa + (long) p * PAGE;
            if (!missing.clear(page)) {
                duplicatesHere++;
                continue;
            }
            zeros++;
            // A thread waiting on it gets a zero page now; the others stay holes, zero when touched.
            // The fault thread marks requested before it reads missing, this the reverse: one of them zeroes it.
            if (requested.contains(page)) {
                userfaults.zero(block.segment().address() + (page - block.guestAddress()), PAGE);
                present.set(page);
                waited(page, System.nanoTime());
            }
        }
        arrived(0, 0, zeros, duplicatesHere, 13);
    }

    private void arrived(long requestedHere, long streamedHere, long zeros, long duplicatesHere, long bytesHere) {
        synchronized (this) {
            pagesRequested += requestedHere;
            pagesStreamed += streamedHere;
            zeroPages += zeros;
            duplicates += duplicatesHere;
            bytes += bytesHere;
            if (requestedHere + streamedHere + zeros > 0) lastPageNanos = System.nanoTime();
        }
        synchronized (arrivals) {
            arrivals.notifyAll();
        }
    }

    /** Sends the requests: first those of threads still waiting from an earlier connection, then each new one. */
    private void writeRequests(DataOutputStream out, AtomicBoolean done) {
        try {
            for (long gpa = requested.nextSet(0); gpa >= 0; gpa = requested.nextSet(gpa + PAGE)) {
                if (missing.contains(gpa)) writeRequest(out, gpa, false);
            }
            synchronized (out) {
                out.flush();
            }
            while (!done.get()) {
                Long gpa = requests.poll(100, TimeUnit.MILLISECONDS);
                if (gpa == null) continue;
                if (done.get()) {
                    requests.add(gpa); // for the next connection's writer
                    break;
                }
                try {
                    writeRequest(out, gpa, requests.isEmpty());
                } catch (IOException e) {
                    requests.add(gpa);
                    throw e;
                }
            }
        } catch (InterruptedException e) {
            // the connection is done
        } catch (IOException e) {
            log.debug("post-copy: sending page requests: {}", e.getMessage()); // receive sees the connection fail too
        }
    }

    private static void writeRequest(DataOutputStream out, long gpa, boolean flush) throws IOException {
        synchronized (out) {
            out.writeByte(REQUEST);
            out.writeLong(gpa);
            if (flush) out.flush();
        }
    }

    /** Every page is here: the holes left are zero pages, and nothing needs userfaultfd any more. */
    private void finish() {
        complete = true;
        userfaults.close();
        synchronized (arrivals) {
            arrivals.notifyAll();
        }
        log.debug("post-copy complete: {}", stats());
    }

    /** What arrived so far, over every connection. */
    public synchronized Stats stats() {
        return new Stats(
                pagesRequested,
                pagesStreamed,
                zeroPages,
                duplicates,
                bytes,
                lastPageNanos == 0 ? 0 : (lastPageNanos - started) / 1_000_000,
                faultWaitNanos / 1000,
                maxFaultWaitNanos / 1000);
    }

    /** Whether every page arrived. */
    public boolean complete() {
        return complete;
    }

    @Override
    public void awaitPresent(long gpa, long length) {
        if (complete || closed || length <= 0) return;
        for (long page = gpa & -PAGE; page < gpa + length; page += PAGE) {
            if (!missing.isRam(page, 1) || present.contains(page)) continue;
            if (missing.contains(page)) {
                if (requested.set(page)) ask(page);
                synchronized (arrivals) {
                    while (missing.contains(page) && !closed && !complete) {
                        try {
                            arrivals.wait(100);
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                            throw new MemoryException("interrupted while waiting for guest page 0x%x".formatted(page));
                        }
                    }
                }
                if (closed || complete) return;
            }
            // Here, or a zero page or one the source never sends (a hole): make it present without a fault.
            var block = memory.blockAt(page, PAGE);
            userfaults.zero(block.segment().address() + (page - block.guestAddress()), PAGE);
            present.set(page);
        }
    }

    @Override
    public void awaitLoaded() throws InterruptedException {
        synchronized (arrivals) {
            while (!complete && !closed && failure == null) arrivals.wait(100);
        }
        if (failure != null) throw new MemoryException(failure);
        if (!complete) throw new MemoryException("the VM's memory was closed before post-copy completed");
    }

    @Override
    public void onFailure(Consumer<String> callback) {
        onFailure = callback;
        var f = failure;
        if (f != null) callback.accept(f);
    }

    private void fail(String message) {
        if (closed || failure != null) return;
        failure = message;
        log.error("{}", message);
        var callback = onFailure;
        if (callback != null) callback.accept(message);
    }

    /** Stops waiting for pages: every waiting thread wakes (a missing page reads as zero: the VM is ending). Idempotent. */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        userfaults.close();
        synchronized (arrivals) {
            arrivals.notifyAll();
        }
    }
}
