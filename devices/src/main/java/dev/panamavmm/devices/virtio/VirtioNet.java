package dev.panamavmm.devices.virtio;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicLong;

/**
 * virtio-net (virtio 1.2, 5.1) over a {@link NetBackend}: queue 0 receives, queue 1 transmits.
 * The configuration space holds the MAC and the link status (always up). Offered: MAC, STATUS,
 * checksum offload both ways and TSO4/TSO6/ECN/UFO both ways, all passed through the 12-byte
 * header to the tap unchanged. Not offered: MRG_RXBUF (a frame fills one receive chain, so a
 * driver that takes the GUEST_TSO features posts 64 KiB buffers, as the spec requires), multiqueue,
 * control queue.
 *
 * <p>Transmit: each chain's readable buffers (header, then frame) go to the backend in one
 * gathered write, straight from guest RAM. A chain that is too short for the header or longer
 * than {@value #MAX_FRAME} bytes of frame is dropped and counted.
 *
 * <p>Receive: the receive queue's thread reads each frame from the backend straight into the
 * guest's buffers ({@link #fill}: one {@code readv} into a chain), as long as the backend has
 * frames and the guest has buffers; a buffer the backend had nothing for goes back to the
 * available ring. The device's own thread only watches the backend while the queue's thread is
 * idle for want of frames, and kicks the queue when one arrives: no frame is handed from thread to
 * thread. While the guest has no buffer, frames wait in the host's own queue (the tap's, which
 * drops beyond its length). A frame longer than the chain it was read into is dropped and
 * counted. Frames the host holds travel with its descriptor in a live update; a paused
 * transport reads none. Frames staged by an older version of the device (its saved state)
 * are delivered first.
 */
public final class VirtioNet implements VirtioDevice {
    public static final int DEVICE_ID = 1;
    public static final int RX = 0, TX = 1;
    public static final long F_CSUM = 1L << 0,
            F_GUEST_CSUM = 1L << 1,
            F_MAC = 1L << 5,
            F_GUEST_TSO4 = 1L << 7,
            F_GUEST_TSO6 = 1L << 8,
            F_GUEST_ECN = 1L << 9,
            F_GUEST_UFO = 1L << 10,
            F_HOST_TSO4 = 1L << 11,
            F_HOST_TSO6 = 1L << 12,
            F_HOST_ECN = 1L << 13,
            F_HOST_UFO = 1L << 14,
            F_MRG_RXBUF = 1L << 15,
            F_STATUS = 1L << 16;
    static final long FEATURES = F_CSUM
            | F_GUEST_CSUM
            | F_MAC
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_GUEST_ECN
            | F_GUEST_UFO
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_HOST_ECN
            | F_HOST_UFO
            | F_STATUS;
    /** {@code struct virtio_net_hdr_v1}: with VERSION_1 it always has {@code num_buffers}. */
    public static final int HEADER_SIZE = 12;

    static final int NUM_BUFFERS_OFFSET = 10;
    /** The largest frame after the header: a 64 KiB GSO frame with its Ethernet and VLAN headers. */
    public static final int MAX_FRAME = 65550;

    /** The most staged frames a saved state may hold (what the older version staged at most). */
    static final int MAX_STAGED = 256;

    static final int QUEUE_SIZE = 256;

    static final int CONFIG_SIZE = 8;
    static final int STATUS_LINK_UP = 1;
    private static final int STATE_VERSION = 1;

    private final String name;
    private final NetBackend backend;
    private final byte[] mac;

    /** A frame read from the backend: its bytes (header first) are {@code bytes[0, length)}. */
    private record Frame(byte[] bytes, int length) {}

    /** Frames a state saved by an older version staged (it read ahead of the guest's buffers): delivered first. */
    private final ArrayDeque<Frame> staged = new ArrayDeque<>();

    private long stagedBytes;
    /** Whether {@link #staged} may hold frames: the receive path looks without the lock. */
    private volatile boolean stagedWaiting;
    /** The backend had no frame for the last buffer: the watcher waits for one and then kicks the queue. */
    private boolean watching = true;

    private volatile boolean running;
    /** Why receiving stopped early (the tap went away), or null. */
    private volatile String receiveError;

    private Thread watcher;
    private Context context;

    private final AtomicLong sent = new AtomicLong(),
            received = new AtomicLong(),
            txDropped = new AtomicLong(),
            rxDropped = new AtomicLong();

    /** A device named {@code name} with this 6-byte {@code mac} over {@code backend}. */
    public VirtioNet(String name, byte[] mac, NetBackend backend) {
        this.name = Objects.requireNonNull(name);
        if (mac.length != 6) throw new IllegalArgumentException("a MAC address has 6 bytes, not " + mac.length);
        this.mac = mac.clone();
        this.backend = Objects.requireNonNull(backend);
    }

    @Override
    public int deviceId() {
        return DEVICE_ID;
    }

    @Override
    public String name() {
        return name;
    }

    @Override
    public long features() {
        return FEATURES;
    }

    @Override
    public int queueCount() {
        return 2;
    }

    @Override
    public int queueMaxSize() {
        return QUEUE_SIZE;
    }

    @Override
    public byte[] initialConfig() {
        var config = new byte[CONFIG_SIZE];
        System.arraycopy(mac, 0, config, 0, 6);
        config[6] = STATUS_LINK_UP;
        return config;
    }

    @Override
    public void driverFeatures(long features) {
        try {
            backend.offloads(features);
        } catch (RuntimeException e) {
            // The host keeps sending plain frames, which every driver takes.
        }
    }

    /** Frames sent to the backend, frames delivered to the guest, and frames dropped each way. */
    public record Counters(long sent, long received, long txDropped, long rxDropped) {}

    /** Why receiving stopped before {@link #stop}, or null while it runs. */
    public String receiveError() {
        return receiveError;
    }

    public Counters counters() {
        return new Counters(sent.get(), received.get(), txDropped.get(), rxDropped.get());
    }

    /**
     * The most transmitted frames held for one {@link NetBackend#sendAll}: a batch longer than this
     * goes in several (a tap's io_uring has as many entries).
     */
    public static final int TX_BATCH = 64;

    /** The transmit queue's batch, sent at {@link #batchEnd}: touched by that queue's thread only. */
    private final ArrayList<List<MemorySegment>> txFrames = new ArrayList<>(TX_BATCH);

    private final ArrayList<Completion> txDone = new ArrayList<>(TX_BATCH);
    private final boolean[] txSent = new boolean[TX_BATCH];

    @Override
    public void handle(int queue, DescriptorChain chain, Completion done) {
        if (queue != TX) {
            done.complete(0);
            return;
        }
        long length = chain.readableBytes();
        if (length < HEADER_SIZE || length > HEADER_SIZE + MAX_FRAME) {
            txDropped.incrementAndGet();
            done.complete(0);
            return;
        }
        // Completed once sent: the driver may reuse the buffers only after the host copied them.
        txFrames.add(chain.readable());
        txDone.add(done);
        if (txFrames.size() == TX_BATCH) sendBatch();
    }

    @Override
    public void batchEnd(int queue) {
        if (queue == TX) sendBatch();
    }

    private void sendBatch() {
        int n = txFrames.size();
        if (n == 0) return;
        try {
            backend.sendAll(txFrames, txSent);
            int ok = 0;
            for (int i = 0; i < n; i++) if (txSent[i]) ok++;
            sent.addAndGet(ok);
            txDropped.addAndGet(n - ok);
        } finally {
            // Whatever the backend did, every request completes: a pause waits for them.
            for (int i = 0; i < n; i++) txDone.get(i).complete(0);
            txFrames.clear();
            txDone.clear();
        }
    }

    @Override
    public boolean fills(int queue) {
        return queue == RX;
    }

    /** The next frame into the chain (header first): its length, or -1 when none is waiting. */
    @Override
    public int fill(int queue, DescriptorChain chain) {
        var buffers = chain.writable();
        long room = chain.writableBytes();
        if (room < HEADER_SIZE) return 0; // no frame fits (a broken driver): used empty, nothing lost
        Frame frame = null;
        if (stagedWaiting) {
            synchronized (this) {
                frame = staged.poll();
                if (frame != null) stagedBytes -= frame.length();
                stagedWaiting = !staged.isEmpty();
            }
        }
        if (frame != null) return fillStaged(frame, buffers, room);
        if (receiveError != null) return -1;
        try {
            while (true) {
                int n = backend.receive(buffers);
                if (n == 0) {
                    synchronized (this) {
                        watching = true;
                        notifyAll();
                    }
                    return -1;
                }
                if (n < HEADER_SIZE || n > room) {
                    rxDropped.incrementAndGet(); // cut short by the buffers, or not even a header: the next one
                    continue;
                }
                oneBuffer(buffers);
                received.incrementAndGet();
                return n;
            }
        } catch (IOException e) {
            receiveError = e.getMessage();
            return -1;
        }
    }

    /** The most receive buffers offered at once ({@link #fillBatch}); a tap's receive ring has as many entries. */
    public static final int RX_BATCH = 64;

    /**
     * Frames the last {@link #fillAll} delivered: the next is offered about twice as many buffers
     * (each offered buffer is walked, and the unused ones go back). The receive queue's thread only.
     */
    private int rxLastFilled;

    private final ArrayList<List<MemorySegment>> rxBuffers = new ArrayList<>(RX_BATCH);
    private final int[] rxLengths = new int[RX_BATCH];
    private final long[] rxRooms = new long[RX_BATCH];

    @Override
    public int fillBatch(int queue) {
        return queue == RX ? Math.clamp(2L * rxLastFilled, 1, RX_BATCH) : 1;
    }

    /**
     * Several frames at once ({@link NetBackend#receiveAll}: a tap reads them with one system
     * call), into the leading buffers in the order they arrived. A frame the backend found for a
     * later buffer after none for an earlier one (it arrived meanwhile), or after a frame it
     * dropped, is copied forward, so the unused buffers are the trailing ones and go back.
     */
    @Override
    public int fillAll(int queue, List<DescriptorChain> chains, int[] written) {
        if (chains.size() == 1 || stagedWaiting || receiveError != null)
            return rxLastFilled = VirtioDevice.super.fillAll(queue, chains, written);
        int k = 0;
        rxBuffers.clear();
        for (; k < chains.size() && k < RX_BATCH; k++) {
            long room = chains.get(k).writableBytes();
            if (room < HEADER_SIZE) break; // fill() answers such a buffer, alone
            rxRooms[k] = room;
            rxBuffers.add(chains.get(k).writable());
        }
        if (k == 0) {
            written[0] = fill(queue, chains.getFirst());
            return rxLastFilled = written[0] < 0 ? 0 : 1;
        }
        try {
            backend.receiveAll(rxBuffers, rxLengths);
        } catch (IOException e) {
            receiveError = e.getMessage();
            return rxLastFilled = 0;
        }
        int used = 0;
        for (int i = 0; i < k; i++) {
            int n = rxLengths[i];
            if (n == 0) continue;
            if (n < HEADER_SIZE || n > rxRooms[i] || n > rxRooms[used]) {
                rxDropped.incrementAndGet(); // cut short by the buffers, or not even a header
                continue;
            }
            if (i != used) Buffers.copy(rxBuffers.get(i), n, rxBuffers.get(used));
            oneBuffer(rxBuffers.get(used));
            received.incrementAndGet();
            written[used++] = n;
        }
        if (used < chains.size()) {
            synchronized (this) {
                watching = true; // the backend ran out: the watcher kicks the queue at its next frame
                notifyAll();
            }
        }
        return rxLastFilled = used;
    }

    private int fillStaged(Frame frame, List<MemorySegment> buffers, long room) {
        if (room < frame.length()) {
            rxDropped.incrementAndGet();
            return 0;
        }
        Buffers.scatter(buffers, 0, MemorySegment.ofArray(frame.bytes()).asSlice(0, frame.length()));
        oneBuffer(buffers);
        received.incrementAndGet();
        return frame.length();
    }

    /** Without MRG_RXBUF a frame is always one buffer: {@code num_buffers} is 1 (the tap leaves those bytes alone). */
    private static void oneBuffer(List<MemorySegment> buffers) {
        var first = buffers.getFirst();
        if (first.byteSize() >= HEADER_SIZE) first.set(NUM_BUFFERS, NUM_BUFFERS_OFFSET, (short) 1);
        else Buffers.scatter(buffers, NUM_BUFFERS_OFFSET, ONE_BUFFER); // a header split over buffers
    }

    private static final ValueLayout.OfShort NUM_BUFFERS =
            ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private static final MemorySegment ONE_BUFFER = MemorySegment.ofArray(new byte[] {1, 0});

    @Override
    public synchronized void reset() {
        // A driver that went away loses what was waiting for it, as a NIC's ring does.
        rxDropped.addAndGet(staged.size());
        staged.clear();
        stagedBytes = 0;
        stagedWaiting = false;
    }

    @Override
    public void start(Context context) {
        running = true;
        synchronized (this) {
            this.context = context;
        }
        watcher = Thread.ofPlatform().daemon().name(name + "-rx-watch").start(this::watch);
        if (stagedWaiting) context.kick(RX);
    }

    @Override
    public void stop() {
        running = false;
        synchronized (this) {
            notifyAll();
        }
        var t = watcher;
        if (t != null) {
            try {
                t.join(5_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /**
     * While the queue's thread found no frame for a buffer, waits for one and kicks the queue: the
     * queue's thread reads it (and every one after it) itself.
     */
    private void watch() {
        try {
            while (running) {
                synchronized (this) {
                    while (running && !watching) wait(100);
                }
                if (!running || !backend.awaitFrame(100)) continue;
                synchronized (this) {
                    watching = false;
                }
                context.kick(RX);
            }
        } catch (IOException e) {
            if (running) receiveError = e.getMessage();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** The MAC as {@code 52:54:00:12:34:56}. */
    public static String formatMac(byte[] mac) {
        return HexFormat.ofDelimiter(":").formatHex(mac);
    }

    // ---- state ---------------------------------------------------------------------------------

    /**
     * Version, then the staged frames: count, then each frame's length and bytes (none since
     * frames go straight into the guest's buffers; an older version's state may have some).
     */
    @Override
    public synchronized byte[] saveState() {
        var out = ByteBuffer.allocate(8 + staged.size() * 4 + (int) stagedBytes).order(ByteOrder.LITTLE_ENDIAN);
        out.putInt(STATE_VERSION).putInt(staged.size());
        for (var frame : staged) out.putInt(frame.length()).put(frame.bytes(), 0, frame.length());
        return out.array();
    }

    @Override
    public synchronized void restoreState(byte[] state) {
        staged.clear();
        stagedBytes = 0;
        stagedWaiting = false;
        if (state.length == 0) return;
        var in = ByteBuffer.wrap(state).order(ByteOrder.LITTLE_ENDIAN);
        try {
            int version = in.getInt();
            if (version != STATE_VERSION)
                throw new IllegalArgumentException(name + ": state version " + version + " is not " + STATE_VERSION);
            int count = in.getInt();
            if (count < 0 || count > MAX_STAGED)
                throw new IllegalArgumentException(name + ": " + count + " staged frames (at most " + MAX_STAGED + ")");
            for (int i = 0; i < count; i++) {
                int length = in.getInt();
                if (length < HEADER_SIZE || length > HEADER_SIZE + MAX_FRAME || length > in.remaining())
                    throw new IllegalArgumentException(name + ": a staged frame of " + length + " bytes");
                var frame = new byte[length];
                in.get(frame);
                staged.add(new Frame(frame, length));
                stagedBytes += length;
            }
            if (in.hasRemaining()) throw new IllegalArgumentException(name + ": " + in.remaining() + " bytes too many");
            stagedWaiting = !staged.isEmpty();
        } catch (java.nio.BufferUnderflowException e) {
            staged.clear();
            stagedBytes = 0;
            throw new IllegalArgumentException(name + ": its state is cut short");
        } catch (IllegalArgumentException e) {
            staged.clear();
            stagedBytes = 0;
            throw e;
        }
    }
}
