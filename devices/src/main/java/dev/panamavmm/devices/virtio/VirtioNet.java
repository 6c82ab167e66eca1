package dev.panamavmm.devices.virtio;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayDeque;
import java.util.HexFormat;
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
 * <p>Receive: the device's own thread waits on the backend and reads each frame into a staging
 * copy, at most {@value #MAX_STAGED} frames and {@value #MAX_STAGED_BYTES} bytes (beyond, it stops
 * reading and the host's own queue holds, then drops, the rest); the receive queue takes only as
 * many buffers as there are staged frames ({@link #takeLimit}), and its thread copies each frame
 * into one. Staged frames are the device's state: a snapshot or live update keeps them. Once
 * {@link #saveState} has run, the thread reads nothing more until the transport takes buffers
 * again (a resume), so no frame read after the state was taken is lost with the old process.
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

    static final int MAX_STAGED = 256;
    static final int MAX_STAGED_BYTES = 1 << 20;
    /** Frames up to this long (header included: any 1514-byte frame) are staged in pooled arrays. */
    static final int POOLED = 2048;

    static final int QUEUE_SIZE = 256;
    /** Frames the receive thread stages before it wakes the queue's thread (and again at the end of a burst). */
    static final int KICK_EVERY = 16;

    static final int CONFIG_SIZE = 8;
    static final int STATUS_LINK_UP = 1;
    private static final int STATE_VERSION = 1;

    private final String name;
    private final NetBackend backend;
    private final byte[] mac;

    /** A frame read from the backend: its bytes (header first) are {@code bytes[0, length)}. */
    private record Frame(byte[] bytes, int length) {}

    private final ArrayDeque<Frame> staged = new ArrayDeque<>();
    /**
     * Arrays of {@value #POOLED} bytes that delivered frames leave behind, for the next ones: a
     * stream of frames makes no garbage (at 50,000 frames a second the arrays alone were ~80 MB/s).
     */
    private final ArrayDeque<byte[]> spare = new ArrayDeque<>();

    private long stagedBytes;
    /** Set by saveState: the receive thread reads nothing until the transport takes buffers again. */
    private boolean frozen;

    private volatile boolean running;
    /** Why the receive thread stopped early (the tap went away), or null. */
    private volatile String receiveError;

    private Thread receiver;

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

    @Override
    public void handle(int queue, DescriptorChain chain, Completion done) {
        if (queue == TX) transmit(chain);
        else if (queue == RX) {
            done.complete(receive(chain));
            return;
        }
        done.complete(0);
    }

    private void transmit(DescriptorChain chain) {
        long length = chain.readableBytes();
        if (length < HEADER_SIZE || length > HEADER_SIZE + MAX_FRAME) {
            txDropped.incrementAndGet();
            return;
        }
        try {
            if (backend.send(chain.readable())) sent.incrementAndGet();
            else txDropped.incrementAndGet();
        } catch (IOException e) {
            txDropped.incrementAndGet();
        }
    }

    /** Copies the oldest staged frame into the chain; the bytes written (0: the chain could not hold it, dropped). */
    private int receive(DescriptorChain chain) {
        Frame frame;
        synchronized (this) {
            frame = staged.poll();
            if (frame == null) return 0; // a reset since takeLimit dropped it; the transport ignores this completion
            stagedBytes -= frame.length();
            notifyAll();
        }
        int length = frame.length();
        byte[] bytes = frame.bytes();
        try {
            if (chain.writableBytes() < length) {
                rxDropped.incrementAndGet();
                return 0;
            }
            // Without MRG_RXBUF a frame is always one buffer: num_buffers is 1.
            bytes[NUM_BUFFERS_OFFSET] = 1;
            bytes[NUM_BUFFERS_OFFSET + 1] = 0;
            int at = 0;
            for (var buffer : chain.writable()) {
                int n = (int) Math.min(buffer.byteSize(), length - at);
                if (n == 0) break;
                MemorySegment.copy(bytes, at, buffer, ValueLayout.JAVA_BYTE, 0, n);
                at += n;
            }
            received.incrementAndGet();
            return length;
        } finally {
            if (bytes.length == POOLED) {
                synchronized (this) {
                    if (spare.size() < MAX_STAGED) spare.push(bytes);
                }
            }
        }
    }

    @Override
    public synchronized int takeLimit(int queue) {
        if (queue != RX) return Integer.MAX_VALUE;
        if (frozen) {
            frozen = false; // the transport runs again: so may the receive thread
            notifyAll();
        }
        return staged.size();
    }

    @Override
    public synchronized void reset() {
        // A driver that went away loses what was waiting for it, as a NIC's ring does.
        rxDropped.addAndGet(staged.size());
        staged.clear();
        stagedBytes = 0;
        notifyAll();
    }

    @Override
    public void start(Context context) {
        running = true;
        receiver = Thread.ofPlatform().daemon().name(name + "-rx").start(() -> receiveLoop(context));
    }

    @Override
    public void stop() {
        running = false;
        synchronized (this) {
            notifyAll();
        }
        var t = receiver;
        if (t != null) {
            try {
                t.join(5_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private void receiveLoop(Context context) {
        try (var arena = Arena.ofConfined()) {
            var buffer = arena.allocate(HEADER_SIZE + MAX_FRAME, 8);
            while (running) {
                synchronized (this) {
                    while (running && (frozen || staged.size() >= MAX_STAGED || stagedBytes >= MAX_STAGED_BYTES))
                        wait(100);
                }
                if (!running || !backend.awaitFrame(100)) continue;
                // Every frame waiting, as far as the staging bounds allow, with a kick every few frames
                // (the queue's thread delivers while this one reads on), not one per frame.
                int added = 0;
                while (true) {
                    int n;
                    synchronized (this) {
                        // A save may have come meanwhile: the frames stay with the host.
                        if (frozen || staged.size() >= MAX_STAGED || stagedBytes >= MAX_STAGED_BYTES) break;
                        n = backend.receive(buffer);
                        if (n <= 0) break;
                        if (n < HEADER_SIZE) {
                            rxDropped.incrementAndGet();
                            continue;
                        }
                        var bytes = n <= POOLED ? (spare.isEmpty() ? new byte[POOLED] : spare.pop()) : new byte[n];
                        MemorySegment.copy(buffer, ValueLayout.JAVA_BYTE, 0, bytes, 0, n);
                        staged.add(new Frame(bytes, n));
                        stagedBytes += n;
                    }
                    if (++added % KICK_EVERY == 0) context.kick(RX);
                }
                if (added % KICK_EVERY != 0) context.kick(RX);
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

    /** Version, then the staged frames: count, then each frame's length and bytes. */
    @Override
    public synchronized byte[] saveState() {
        frozen = true;
        var out = ByteBuffer.allocate(8 + staged.size() * 4 + (int) stagedBytes).order(ByteOrder.LITTLE_ENDIAN);
        out.putInt(STATE_VERSION).putInt(staged.size());
        for (var frame : staged) out.putInt(frame.length()).put(frame.bytes(), 0, frame.length());
        return out.array();
    }

    @Override
    public synchronized void restoreState(byte[] state) {
        staged.clear();
        stagedBytes = 0;
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
