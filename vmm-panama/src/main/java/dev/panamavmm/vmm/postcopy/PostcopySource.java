package dev.panamavmm.vmm.postcopy;

import static dev.panamavmm.vmm.postcopy.PostcopyProtocol.*;

import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.PageStreams;
import dev.panamavmm.vmm.memory.RamBlock;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Source side of a post-copy migration: the guest is paused here; serves the destination's page
 * requests first, and streams every other page of {@code toSend} in the background, from the
 * last requested page onwards (the pages after a fault are the likeliest next ones), until the
 * destination has all of them. A page that is all zero goes as a ZEROS marker; a page outside the
 * block's data extents is known to be zero without being read (reading a memfd's hole would
 * allocate it); the extents are found on a thread of their own while the first requests are
 * served. On an {@link IOException} (the connection dropped, or the peer broke the protocol) it
 * throws, the guest stays paused here, and {@link #serve} may be called again on a new connection
 * (recovery): the destination's HELLO then says which pages it still misses, and {@code toSend}
 * becomes exactly those (pages in flight when the connection dropped included).
 */
public final class PostcopySource {
    private static final Logger log = LoggerFactory.getLogger(PostcopySource.class);
    private static final long NO_REQUEST = -1, CONNECTION_ENDED = -2;

    private final GuestMemory memory;
    private final PageSet toSend;
    private final PageSet original;
    /**
     * The pages of the backing's data extents, or null until {@link #findData} has them: finding
     * them takes milliseconds (a memfd's SEEK_DATA/SEEK_HOLE walk its pages), so the first
     * requests are served without (their pages read even in a hole) and the stream starts after.
     */
    private volatile PageSet data;

    private Thread finding;
    private final long started = System.nanoTime();
    private long requested, streamed, zeros, duplicates, bytes, lastPageNanos;

    public PostcopySource(GuestMemory memory, PageSet toSend) {
        this.memory = memory;
        this.toSend = toSend;
        this.original = toSend.copy();
    }

    /**
     * Builds and drops a source over {@code memory} with nothing to send: loads and initialises
     * what the switch builds after the pause, while the guest runs (a cold first build took 10-12
     * ms, with the guest already waiting on the destination for its first pages).
     */
    public static void warmUp(GuestMemory memory) {
        new PostcopySource(memory, PageSet.of(memory)).stats();
    }

    /** The data extents as pages; every page where they cannot be had (then holes are read, and allocated). */
    private void findData() {
        PageSet found;
        try {
            LibC.niceCurrentThread(19); // behind the serving thread and the guest (this host may have two CPUs)
            found = PageSet.of(memory);
            for (var b : memory.blocks()) {
                for (long[] e : b.dataExtents()) {
                    long from = e[0] & -PAGE, to = Math.min(b.size(), (e[1] + PAGE - 1) & -PAGE);
                    if (to > from) found.addRange(b.guestAddress() + from, to - from);
                }
            }
        } catch (RuntimeException e) {
            log.warn("post-copy: the memory's data extents cannot be had ({}): every page is read", e.getMessage());
            found = PageSet.all(memory);
        }
        data = found;
    }

    /** Serves one connection until the destination has every page; throws when the connection fails first. */
    public Stats serve(InputStream in, OutputStream out) throws IOException {
        var input = new DataInputStream(PageStreams.in(in, 64 * 1024));
        var sink = PageStreams.out(out, 256 * 1024); // pages from guest RAM, without an array on plain TCP
        var output = new DataOutputStream(sink);
        readHello(input, toSend, original);
        log.debug("post-copy: the destination misses {} pages", toSend.count());
        synchronized (this) {
            if (finding == null)
                finding = Thread.ofPlatform().daemon().name("postcopy-extents").start(this::findData);
        }
        var requests = new LinkedBlockingQueue<Long>();
        var complete = new CountDownLatch(1);
        var failure = new IOException[1];
        var reader = Thread.ofPlatform()
                .daemon()
                .name("postcopy-requests")
                .start(() -> readRequests(input, requests, complete, failure));
        try {
            long cursor = 0;
            while (true) {
                // Until the data extents are known only requests are served: the stream would read holes.
                Long request = data == null ? requests.poll(1, TimeUnit.MILLISECONDS) : requests.poll();
                if (request != null) {
                    if (request == CONNECTION_ENDED) throw failure[0];
                    if (request == NO_REQUEST) continue;
                    if (!toSend.isRam(request, 1))
                        throw new PostcopyException(
                                "the destination asked for 0x%x, not a page of guest RAM".formatted(request));
                    if (toSend.contains(request)) {
                        sendRun(output, sink, request, true);
                        output.flush(); // a faulting vCPU waits for it
                    } else duplicates++;
                    cursor = request + PAGE;
                    continue;
                }
                if (data == null) continue;
                long next = toSend.nextSet(cursor);
                if (next < 0) next = toSend.nextSet(0);
                if (next < 0) break;
                cursor = sendRun(output, sink, next, false);
            }
            output.writeByte(END);
            output.flush();
            bytes += 1;
            // The destination confirms when it has every page; requests still coming were for pages in flight.
            while (complete.getCount() > 0) {
                Long request = requests.poll(100, TimeUnit.MILLISECONDS);
                if (request == null) continue;
                if (request == CONNECTION_ENDED && complete.getCount() > 0) throw failure[0];
                if (request >= 0) duplicates++;
            }
            return stats();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while serving post-copy pages");
        } finally {
            reader.interrupt();
        }
    }

    /** What was sent so far, over every connection. */
    public synchronized Stats stats() {
        return new Stats(
                requested,
                streamed,
                zeros,
                duplicates,
                bytes,
                lastPageNanos == 0 ? 0 : (lastPageNanos - started) / 1_000_000,
                0,
                0);
    }

    private static void readRequests(
            DataInputStream in, LinkedBlockingQueue<Long> requests, CountDownLatch complete, IOException[] failure) {
        try {
            while (true) {
                int type = in.read();
                if (type < 0) throw new EOFException("the destination closed the connection");
                if (type == REQUEST) {
                    long gpa = in.readLong();
                    requests.add(gpa);
                } else if (type == COMPLETE) {
                    complete.countDown();
                    requests.add(NO_REQUEST); // wakes the wait for it
                    return;
                } else throw new PostcopyException("the destination sent " + name(type) + " during post-copy");
            }
        } catch (IOException e) {
            failure[0] = e;
            requests.add(CONNECTION_ENDED);
        }
    }

    /**
     * Sends the pages of {@code toSend} from {@code gpa} on: one PAGES message of up to
     * {@value PostcopyProtocol#MAX_PAGES} pages, or one ZEROS message for a run of zero pages.
     * Returns the address after the last page sent.
     */
    private long sendRun(DataOutputStream out, PageStreams.Out sink, long gpa, boolean onRequest) throws IOException {
        var block = memory.blockAt(gpa, PAGE);
        if (!toSend.clear(gpa)) return gpa + PAGE;
        boolean zero = isZero(block, gpa);
        long end = gpa + PAGE;
        int max = zero ? MAX_ZEROS : MAX_PAGES;
        for (int n = 1; n < max && end < block.guestEnd() && toSend.contains(end) && isZero(block, end) == zero; n++) {
            toSend.clear(end);
            end += PAGE;
        }
        int count = (int) ((end - gpa) / PAGE);
        if (zero) {
            out.writeByte(ZEROS);
            out.writeLong(gpa);
            out.writeInt(count);
            bytes += 13;
        } else {
            out.writeByte(PAGES);
            out.writeLong(gpa);
            out.writeInt(count);
            sink.write(block.segment().asSlice(gpa - block.guestAddress(), (long) count * PAGE));
            bytes += 13 + (long) count * PAGE;
        }
        synchronized (this) {
            if (zero) zeros += count;
            else if (onRequest) {
                requested++; // the page asked for; the rest of its run rides along with the stream
                streamed += count - 1;
            } else streamed += count;
            lastPageNanos = System.nanoTime();
        }
        return end;
    }

    private boolean isZero(RamBlock block, long gpa) {
        var known = data;
        if (known != null && !known.contains(gpa))
            return true; // a hole of the backing: zero, not read (it would be allocated)
        var page = block.segment().asSlice(gpa - block.guestAddress(), PAGE);
        return page.mismatch(ZERO_PAGE) < 0;
    }

    private static final MemorySegment ZERO_PAGE = MemorySegment.ofArray(new byte[PAGE]);
}
