package dev.panamavmm.devices.virtio;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;

/**
 * virtio-vsock (virtio 1.2, 5.10) over host Unix sockets, as Firecracker maps it: a host program
 * connects to the device's listener and writes {@code CONNECT PORT\n} (the guest gets a REQUEST
 * on that port; its RESPONSE sends the host {@code OK HOSTPORT\n}), and a guest's REQUEST to host
 * port P becomes a connection to the host's {@code PATH_P}. Stream sockets only.
 *
 * <p>Flow control is the spec's credit: the device offers each connection {@value #BUF_ALLOC}
 * bytes ({@code buf_alloc}) and counts what it wrote to the host socket ({@code fwd_cnt}), so the
 * guest never has more than that in the device; a guest that sends beyond its credit has its
 * connection reset. Towards the guest it reads a host socket only while the connection's buffer
 * ({@value #TO_GUEST_BUFFER} bytes) has room, and sends no more than the guest's credit. Memory
 * per connection is bounded, and so is the number of connections ({@value #MAX_CONNECTIONS}).
 *
 * <p>Threads: the queues' threads call {@link #handle}; the device's own thread (started by
 * {@link #start}) accepts, reads and writes the host sockets, and kicks the receive queue when a
 * packet waits ({@link #takeLimit} is the number waiting). All host I/O is non-blocking and done
 * under the device's lock, and none is done while {@linkplain #pause paused}: the state saved
 * then is the whole truth, so a live update that passes the sockets on loses and repeats no byte.
 *
 * <p>State: the connection table (ports, credit counters, bytes in transit both ways). A live
 * update passes the host sockets too ({@link #savedStreams}, {@link VsockBackend#adopted}); a
 * restore or a clone has none, so its connections are dropped and the guest gets a
 * TRANSPORT_RESET event (5.10.6.7), and the (possibly new) CID in its configuration.
 */
public final class VirtioVsock implements VirtioDevice {
    public static final int DEVICE_ID = 19;
    public static final int RX = 0, TX = 1, EVENT = 2;
    /** The host's CID; the guest's is at least 3. */
    public static final long HOST_CID = 2;
    /** Bytes of a packet header. */
    public static final int HEADER = 44;
    /** Credit the device gives the guest per connection: the most guest bytes it holds for one host socket. */
    public static final int BUF_ALLOC = 256 * 1024;
    /** Bytes read from a host socket and not yet delivered to the guest, per connection. */
    public static final int TO_GUEST_BUFFER = 64 * 1024;
    /** Most payload in one packet either way. */
    public static final int MAX_PAYLOAD = 64 * 1024;
    /** Most connections at once (a further one is refused: closed, or RST to the guest). */
    public static final int MAX_CONNECTIONS = 64;
    /** Longest {@code CONNECT PORT\n} line accepted from a host program. */
    static final int MAX_LINE = 32;
    /** Where ports for host-initiated connections start (Firecracker's choice too: above the guest's usual ports). */
    static final int FIRST_HOST_PORT = 1 << 30;

    public static final int OP_REQUEST = 1,
            OP_RESPONSE = 2,
            OP_RST = 3,
            OP_SHUTDOWN = 4,
            OP_RW = 5,
            OP_CREDIT_UPDATE = 6,
            OP_CREDIT_REQUEST = 7;
    public static final int TYPE_STREAM = 1;
    public static final int SHUTDOWN_BOTH = 3;
    static final long F_STREAM = 1;
    private static final int STATE_MAGIC = 0x56534b31; // "VSK1"

    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private enum Phase {
        /** The guest asked, or the host program's line arrived and the guest was asked: waiting for RESPONSE. */
        REQUESTED,
        ESTABLISHED
    }

    private static final class Conn {
        final int guestPort, hostPort;
        Phase phase;
        VsockBackend.Stream stream;
        final ByteQueue toGuest = new ByteQueue(TO_GUEST_BUFFER);
        final ByteQueue toHost = new ByteQueue(BUF_ALLOC + MAX_LINE); // the guest's credit and the OK line
        int guestBufAlloc, guestFwdCnt; // the guest's credit, as it last said
        int rxCnt; // payload bytes sent to the guest
        int fwdCnt; // guest bytes written to the host socket
        int lastFwdSent; // fwd_cnt as the guest last heard it
        int lineBytes; // of toHost, the OK line's: not the guest's bytes, so not in fwd_cnt
        boolean hostEof, guestShutdown, shutdownSent, creditQueued;

        Conn(int guestPort, int hostPort, Phase phase, VsockBackend.Stream stream) {
            this.guestPort = guestPort;
            this.hostPort = hostPort;
            this.phase = phase;
            this.stream = stream;
        }

        long key() {
            return key(guestPort, hostPort);
        }

        static long key(int guestPort, int hostPort) {
            return (long) guestPort << 32 | Integer.toUnsignedLong(hostPort);
        }

        int guestCredit() {
            return guestBufAlloc - (rxCnt - guestFwdCnt);
        }
    }

    /** A host program's connection that has not finished its {@code CONNECT PORT\n} line. */
    private static final class Line {
        final VsockBackend.Stream stream;
        final ByteArrayOutputStream bytes = new ByteArrayOutputStream();

        Line(VsockBackend.Stream stream) {
            this.stream = stream;
        }
    }

    /** A packet without payload the device owes the guest. */
    private record Control(int guestPort, int hostPort, int op, int flags) {}

    private final String name;
    private final long cid;
    private final VsockBackend backend;
    private final Map<Long, Conn> conns = new LinkedHashMap<>();
    private final List<Line> lines = new ArrayList<>();
    private final ArrayDeque<Control> control = new ArrayDeque<>();
    private int nextHostPort = FIRST_HOST_PORT;
    private boolean resetPending;
    /** Restored without its sockets: the guest learns the CID again (a clone's may differ) and gets a reset. */
    private boolean restoredWithoutSockets;
    /**
     * The connections a restore without sockets dropped. The guest may still send on them until it
     * has taken the TRANSPORT_RESET event, and an RST for such a packet could reach it before the
     * event does (another queue): its packets are dropped without an answer (the event resets them
     * all), until the guest opens a connection of the same ports again.
     */
    private final Set<Long> droppedByRestore = new HashSet<>();

    private boolean paused;
    private volatile boolean stopping;
    private Thread worker;
    private Context context;
    private List<VsockBackend.Stream> saved = List.of();
    /**
     * Where the device's thread reads host sockets, once for all: a new 64 KiB array per wake-up
     * was 60% of the device's allocation and a young collection every few milliseconds under a
     * stream (docs/benchmarks.md). Native, so a backend reads into it without a bounce copy.
     */
    private final MemorySegment readBuffer = Arena.ofAuto().allocate(MAX_PAYLOAD);

    private long packetsDropped;

    /** A device named {@code name} for the guest with CID {@code cid} (at least 3) over {@code backend}. */
    public VirtioVsock(String name, long cid, VsockBackend backend) {
        this.name = Objects.requireNonNull(name);
        if (cid < 3 || cid > 0xFFFF_FFFFL)
            throw new IllegalArgumentException("a guest CID is 3 to 4294967295, not " + cid);
        this.cid = cid;
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
        return F_STREAM;
    }

    @Override
    public int queueCount() {
        return 3;
    }

    @Override
    public int queueMaxSize() {
        return 256;
    }

    @Override
    public byte[] initialConfig() {
        return cidBytes();
    }

    private byte[] cidBytes() {
        byte[] b = new byte[8];
        MemorySegment.ofArray(b).set(LE64, 0, cid);
        return b;
    }

    // ---- the queues ----------------------------------------------------------------------------

    @Override
    public synchronized int takeLimit(int queue) {
        return switch (queue) {
            case RX -> {
                int n = control.size();
                for (var c : conns.values()) if (sendable(c) > 0) n++;
                yield n;
            }
            case EVENT -> resetPending ? 1 : 0;
            default -> Integer.MAX_VALUE;
        };
    }

    @Override
    public void handle(int queue, DescriptorChain chain, Completion done) {
        switch (queue) {
            case RX -> done.complete(receive(chain));
            case TX -> {
                transmit(chain);
                done.complete(0);
            }
            case EVENT -> done.complete(event(chain));
            default -> done.complete(0);
        }
    }

    /** Fills one receive buffer with the next packet for the guest; its length (0: nothing was waiting). */
    private int receive(DescriptorChain chain) {
        long room = chain.writableBytes();
        if (room < HEADER) {
            packetsDropped++;
            return 0;
        }
        byte[] header = new byte[HEADER];
        byte[] payload;
        synchronized (this) {
            payload = nextPacket(MemorySegment.ofArray(header), (int) Math.min(MAX_PAYLOAD, room - HEADER));
            if (payload == null) return 0;
            // The transport takes one buffer per connection with bytes waiting: ask for the next at once.
            if (takeLimit(RX) > 0) kickRx();
        }
        Buffers.scatter(chain.writable(), 0, MemorySegment.ofArray(header));
        Buffers.scatter(chain.writable(), HEADER, MemorySegment.ofArray(payload));
        if (payload.length > 0) backend.wake(); // there is room to read the host socket again
        return HEADER + payload.length;
    }

    /** The next packet's header into {@code header} and its payload, or null when none waits. */
    private byte[] nextPacket(MemorySegment header, int maxPayload) {
        var ctl = control.poll();
        if (ctl != null) {
            var c = conns.get(Conn.key(ctl.guestPort(), ctl.hostPort()));
            if (ctl.op() == OP_CREDIT_UPDATE && c != null) c.creditQueued = false;
            header(header, ctl.hostPort(), ctl.guestPort(), 0, ctl.op(), ctl.flags(), c);
            return new byte[0];
        }
        for (var c : conns.values()) {
            int n = Math.min(sendable(c), maxPayload);
            if (n <= 0) continue;
            byte[] payload = c.toGuest.take(n);
            c.rxCnt += n;
            header(header, c.hostPort, c.guestPort, n, OP_RW, 0, c);
            settle(c);
            return payload;
        }
        return null;
    }

    private static int sendable(Conn c) {
        return c.phase == Phase.ESTABLISHED ? Math.min(c.toGuest.size(), Math.max(0, c.guestCredit())) : 0;
    }

    private void header(MemorySegment h, int srcPort, int dstPort, int len, int op, int flags, Conn c) {
        h.set(LE64, 0, HOST_CID);
        h.set(LE64, 8, cid);
        h.set(LE32, 16, srcPort);
        h.set(LE32, 20, dstPort);
        h.set(LE32, 24, len);
        h.set(LE16, 28, (short) TYPE_STREAM);
        h.set(LE16, 30, (short) op);
        h.set(LE32, 32, flags);
        h.set(LE32, 36, BUF_ALLOC);
        h.set(LE32, 40, c != null ? c.fwdCnt : 0);
        if (c != null) c.lastFwdSent = c.fwdCnt;
    }

    private int event(DescriptorChain chain) {
        synchronized (this) {
            if (!resetPending || chain.writableBytes() < 4) return 0;
            resetPending = false;
        }
        Buffers.scatter(
                chain.writable(), 0, MemorySegment.ofArray(new byte[4])); // id 0: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
        return 4;
    }

    /** One packet from the guest. Whatever it holds, nothing throws: a bad packet is dropped or answered with RST. */
    private void transmit(DescriptorChain chain) {
        long total = chain.readableBytes();
        if (total < HEADER) {
            dropped();
            return;
        }
        var h = MemorySegment.ofArray(new byte[HEADER]);
        Buffers.gather(chain.readable(), 0, h);
        long srcCid = h.get(LE64, 0), dstCid = h.get(LE64, 8);
        int srcPort = h.get(LE32, 16), dstPort = h.get(LE32, 20);
        long len = Integer.toUnsignedLong(h.get(LE32, 24));
        int type = h.get(LE16, 28) & 0xFFFF, op = h.get(LE16, 30) & 0xFFFF;
        int bufAlloc = h.get(LE32, 36), fwdCnt = h.get(LE32, 40);
        if (len > total - HEADER || len > MAX_PAYLOAD || srcCid != cid || dstCid != HOST_CID) {
            dropped();
            return;
        }
        MemorySegment payload = null;
        if (op == OP_RW && len > 0) {
            payload = MemorySegment.ofArray(new byte[(int) len]);
            Buffers.gather(chain.readable(), HEADER, payload);
        }
        synchronized (this) {
            if (type != TYPE_STREAM) {
                if (op != OP_RST) control.add(new Control(srcPort, dstPort, OP_RST, 0));
                kickRx();
                return;
            }
            var c = conns.get(Conn.key(srcPort, dstPort));
            if (c == null && droppedByRestore.contains(Conn.key(srcPort, dstPort))) {
                if (op != OP_REQUEST) return;
                droppedByRestore.remove(Conn.key(srcPort, dstPort)); // the guest has moved on: a new connection
            }
            if (c != null) {
                int credit = c.guestCredit();
                c.guestBufAlloc = bufAlloc;
                c.guestFwdCnt = fwdCnt;
                // Any credit the guest gives back lets bytes waiting for it go now (not only credit from none).
                if (c.guestCredit() > credit && sendable(c) > 0) kickRx();
            }
            switch (op) {
                case OP_REQUEST -> request(c, srcPort, dstPort, bufAlloc, fwdCnt);
                case OP_RESPONSE -> {
                    if (c != null && c.phase == Phase.REQUESTED && c.toHost.isEmpty()) {
                        c.phase = Phase.ESTABLISHED;
                        byte[] ok = ("OK " + Integer.toUnsignedString(c.hostPort) + "\n")
                                .getBytes(StandardCharsets.US_ASCII);
                        c.toHost.add(ok);
                        c.lineBytes = ok.length; // the device's, not the guest's: never counted in fwd_cnt
                        flush(c);
                        kickRx(); // bytes the host sent after its line may wait
                    } else reset(c, srcPort, dstPort);
                }
                case OP_RST -> {
                    if (c != null) remove(c);
                }
                case OP_SHUTDOWN -> {
                    if (c != null) {
                        c.guestShutdown = true;
                        settle(c);
                    } else reset(null, srcPort, dstPort);
                }
                case OP_RW -> {
                    if (c == null || c.phase != Phase.ESTABLISHED || c.guestShutdown) reset(c, srcPort, dstPort);
                    else if (c.toHost.size() - c.lineBytes + len > BUF_ALLOC)
                        reset(c, srcPort, dstPort); // beyond its credit
                    else if (payload != null) {
                        c.toHost.add(payload, 0, (int) len);
                        flush(c);
                    }
                }
                case OP_CREDIT_UPDATE -> {
                    if (c == null) reset(null, srcPort, dstPort);
                }
                case OP_CREDIT_REQUEST -> {
                    if (c == null) reset(null, srcPort, dstPort);
                    else queueCredit(c);
                }
                default -> reset(c, srcPort, dstPort);
            }
            kickRxIfWaiting();
        }
    }

    private void request(Conn existing, int guestPort, int hostPort, int bufAlloc, int fwdCnt) {
        if (existing != null) {
            reset(existing, guestPort, hostPort);
            return;
        }
        var stream = conns.size() + lines.size() < MAX_CONNECTIONS ? backend.connect(hostPort) : null;
        if (stream == null) {
            control.add(new Control(guestPort, hostPort, OP_RST, 0));
            return;
        }
        var c = new Conn(guestPort, hostPort, Phase.ESTABLISHED, stream);
        c.guestBufAlloc = bufAlloc;
        c.guestFwdCnt = fwdCnt;
        conns.put(c.key(), c);
        control.add(new Control(guestPort, hostPort, OP_RESPONSE, 0));
        backend.wake(); // the worker watches the new socket
    }

    /** Ends connection {@code c} (if any) and tells the guest with RST. */
    private void reset(Conn c, int guestPort, int hostPort) {
        if (c != null) remove(c);
        control.add(new Control(guestPort, hostPort, OP_RST, 0));
    }

    private void remove(Conn c) {
        conns.remove(c.key());
        control.removeIf(k -> k.guestPort() == c.guestPort && k.hostPort() == c.hostPort && k.op() != OP_RST);
        if (c.stream != null) c.stream.close();
        c.stream = null;
    }

    private void queueCredit(Conn c) {
        if (c.creditQueued) return;
        c.creditQueued = true;
        control.add(new Control(c.guestPort, c.hostPort, OP_CREDIT_UPDATE, 0));
    }

    /** Writes what the guest sent to the host socket, as far as it takes it. */
    private void flush(Conn c) {
        if (paused || c.stream == null) return;
        while (!c.toHost.isEmpty()) {
            var chunk = c.toHost.peek(MAX_PAYLOAD);
            long n = c.stream.write(chunk);
            if (n < 0) {
                if (c.guestShutdown) remove(c);
                else reset(c, c.guestPort, c.hostPort);
                return;
            }
            if (n == 0) break;
            c.toHost.drop((int) n);
            int line = Math.min(c.lineBytes, (int) n);
            c.lineBytes -= line;
            c.fwdCnt += (int) n - line;
        }
        // Bytes left for a full socket: the worker must watch it for room (its wait may predate them).
        if (!c.toHost.isEmpty() && Thread.currentThread() != worker) backend.wake();
        // The guest may be waiting for credit: tell it once half its window is free again.
        if (c.fwdCnt - c.lastFwdSent >= BUF_ALLOC / 2) queueCredit(c);
        settle(c);
    }

    /** Closes what both sides are done with. */
    private void settle(Conn c) {
        if (c.stream == null) return;
        if (c.guestShutdown && c.toHost.isEmpty()) {
            reset(c, c.guestPort, c.hostPort); // the host socket closes; the guest's close completes with RST
            return;
        }
        if (c.hostEof && c.toGuest.isEmpty() && !c.shutdownSent && c.phase == Phase.ESTABLISHED) {
            c.shutdownSent = true;
            control.add(new Control(c.guestPort, c.hostPort, OP_SHUTDOWN, SHUTDOWN_BOTH));
        }
    }

    private void dropped() {
        synchronized (this) {
            packetsDropped++;
        }
    }

    /** Packets the device could not take (too short, bad length, wrong CIDs): counted, never trusted. */
    public synchronized long packetsDropped() {
        return packetsDropped;
    }

    /** Bytes in transit in the device, both ways, over every connection (what a peer that never reads can grow). */
    public synchronized long bufferedBytes() {
        long n = 0;
        for (var c : conns.values()) n += c.toGuest.size() + c.toHost.size();
        for (var l : lines) n += l.bytes.size();
        return n;
    }

    /**
     * One line per connection with its counters (ports, phase, bytes each way, credit both ways,
     * bytes buffered): what the VMM's debug log shows and a stalled test prints.
     */
    public synchronized List<String> connectionCounters() {
        var out = new ArrayList<String>();
        for (var c : conns.values()) {
            out.add("guest port " + Integer.toUnsignedString(c.guestPort)
                    + " host port " + Integer.toUnsignedString(c.hostPort)
                    + " " + c.phase.name().toLowerCase(java.util.Locale.ROOT)
                    + (c.stream == null ? " (no socket)" : "")
                    + ": to guest " + Integer.toUnsignedString(c.rxCnt)
                    + " (buffered " + c.toGuest.size() + ", guest credit " + c.guestCredit()
                    + ", guest buf_alloc " + c.guestBufAlloc + " fwd_cnt " + Integer.toUnsignedString(c.guestFwdCnt)
                    + ")"
                    + ", to host " + Integer.toUnsignedString(c.fwdCnt)
                    + " (buffered " + c.toHost.size() + ", fwd_cnt last sent " + Integer.toUnsignedString(c.lastFwdSent)
                    + (c.creditQueued ? ", credit update queued" : "") + ")"
                    + (c.hostEof ? ", host closed" : "")
                    + (c.guestShutdown ? ", guest shut down" : ""));
        }
        for (var l : lines) out.add("host line of " + l.bytes.size() + " bytes, no CONNECT yet");
        out.add("packets for the guest waiting: " + control.size() + " control, receive take limit " + takeLimit(RX));
        return out;
    }

    /** Open connections (established or being set up, host lines not yet read included). */
    public synchronized int connections() {
        return conns.size() + lines.size();
    }

    private void kickRx() {
        if (context != null) context.kick(RX);
    }

    private void kickRxIfWaiting() {
        if (!control.isEmpty()) kickRx();
    }

    // ---- the host side (the device's own thread) -----------------------------------------------

    @Override
    public void start(Context context) {
        synchronized (this) {
            this.context = context;
        }
        if (restoredWithoutSockets) {
            context.updateConfig(0, cidBytes()); // a clone's CID may differ from its template's
            context.kick(EVENT);
        }
        worker = Thread.ofPlatform().daemon().name(name + "-host").start(this::work);
    }

    private void work() {
        var reading = new ArrayList<VsockBackend.Stream>();
        var writing = new ArrayList<VsockBackend.Stream>();
        while (!stopping) {
            boolean listening;
            reading.clear();
            writing.clear();
            synchronized (this) {
                if (!paused) pump();
                listening = !paused && conns.size() + lines.size() < MAX_CONNECTIONS;
                if (!paused) {
                    for (var l : lines) reading.add(l.stream);
                    for (var c : conns.values()) {
                        if (c.stream == null) continue;
                        if (!c.hostEof && c.toGuest.free() > 0) reading.add(c.stream);
                        if (!c.toHost.isEmpty()) writing.add(c.stream);
                    }
                }
                if (takeLimit(RX) > 0) kickRx();
            }
            backend.await(listening, reading, writing, 1000);
        }
    }

    /** Accepts, reads and writes whatever the host sockets allow now. */
    private void pump() {
        if (conns.size() + lines.size() < MAX_CONNECTIONS) {
            VsockBackend.Stream s;
            while (conns.size() + lines.size() < MAX_CONNECTIONS && (s = backend.accept()) != null)
                lines.add(new Line(s));
        }
        for (Iterator<Line> it = lines.iterator(); it.hasNext(); ) {
            if (readLine(it.next())) it.remove();
        }
        var buffer = readBuffer;
        for (var c : List.copyOf(conns.values())) {
            if (c.stream == null) continue;
            if (!c.toHost.isEmpty()) flush(c);
            if (c.stream == null || c.hostEof) continue;
            int room = c.toGuest.free();
            while (room > 0 && c.stream != null) {
                long n = c.stream.read(buffer.asSlice(0, Math.min(room, MAX_PAYLOAD)));
                if (n == 0) break;
                if (n < 0) {
                    c.hostEof = true;
                    settle(c);
                    break;
                }
                c.toGuest.add(buffer, 0, (int) n);
                room -= (int) n;
            }
        }
    }

    /** Reads a host program's line; true when it is done with (a REQUEST went to the guest, or the connection was refused). */
    private boolean readLine(Line l) {
        var one = MemorySegment.ofArray(new byte[1]);
        while (true) {
            long n = l.stream.read(one); // a byte at a time: what follows the line is the guest's
            if (n == 0) return false;
            if (n < 0) {
                l.stream.close();
                return true;
            }
            byte b = one.get(ValueLayout.JAVA_BYTE, 0);
            if (b != '\n') {
                l.bytes.write(b);
                if (l.bytes.size() > MAX_LINE) {
                    l.stream.close();
                    return true;
                }
                continue;
            }
            String line = l.bytes.toString(StandardCharsets.US_ASCII).strip();
            long port = -1;
            if (line.startsWith("CONNECT ")) {
                try {
                    port = Long.parseLong(line.substring(8).strip());
                } catch (NumberFormatException e) {
                    port = -1;
                }
            }
            if (port < 0 || port > 0xFFFF_FFFFL) {
                l.stream.close();
                return true;
            }
            int hostPort = allocateHostPort((int) port);
            var c = new Conn((int) port, hostPort, Phase.REQUESTED, l.stream);
            c.guestBufAlloc = 0;
            conns.put(c.key(), c);
            control.add(new Control(c.guestPort, c.hostPort, OP_REQUEST, 0));
            return true;
        }
    }

    private int allocateHostPort(int guestPort) {
        while (true) {
            int p = nextHostPort++;
            if (nextHostPort == 0) nextHostPort = FIRST_HOST_PORT;
            if (!conns.containsKey(Conn.key(guestPort, p))) return p;
        }
    }

    @Override
    public void pause() {
        synchronized (this) {
            paused = true;
        }
    }

    /** Whether the device is paused (its state saved, or about to be: its sockets may live on elsewhere). */
    public synchronized boolean paused() {
        return paused;
    }

    @Override
    public void resume() {
        synchronized (this) {
            paused = false;
        }
        backend.wake();
    }

    @Override
    public synchronized void reset() {
        for (var c : List.copyOf(conns.values())) remove(c);
        control.clear();
        resetPending = false;
        droppedByRestore.clear();
    }

    @Override
    public void stop() {
        stopping = true;
        backend.wake();
        if (worker != null) {
            try {
                worker.join(5_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        synchronized (this) {
            for (var c : conns.values()) if (c.stream != null) c.stream.close();
            for (var l : lines) l.stream.close();
            conns.clear();
            lines.clear();
        }
    }

    // ---- state ---------------------------------------------------------------------------------

    /**
     * The host sockets in the order the last {@link #saveState} listed them: what a live update
     * passes on (the new process's backend gives them back through {@link VsockBackend#adopted}).
     */
    public synchronized List<VsockBackend.Stream> savedStreams() {
        return saved;
    }

    @Override
    public synchronized byte[] saveState() {
        var bytes = new ByteArrayOutputStream();
        var streams = new ArrayList<VsockBackend.Stream>();
        try (var out = new DataOutputStream(bytes)) {
            out.writeInt(STATE_MAGIC);
            out.writeLong(cid);
            out.writeInt(nextHostPort);
            out.writeBoolean(resetPending);
            out.writeInt(control.size());
            for (var k : control) {
                out.writeInt(k.guestPort());
                out.writeInt(k.hostPort());
                out.writeInt(k.op());
                out.writeInt(k.flags());
            }
            out.writeInt(lines.size());
            for (var l : lines) {
                writeBytes(out, l.bytes.toByteArray());
                streams.add(l.stream);
            }
            out.writeInt(conns.size());
            for (var c : conns.values()) {
                out.writeInt(c.guestPort);
                out.writeInt(c.hostPort);
                out.writeInt(c.phase.ordinal());
                out.writeInt(c.guestBufAlloc);
                out.writeInt(c.guestFwdCnt);
                out.writeInt(c.rxCnt);
                out.writeInt(c.fwdCnt);
                out.writeInt(c.lastFwdSent);
                out.writeInt(c.lineBytes);
                out.writeInt((c.hostEof ? 1 : 0)
                        | (c.guestShutdown ? 2 : 0)
                        | (c.shutdownSent ? 4 : 0)
                        | (c.creditQueued ? 8 : 0));
                writeBytes(out, c.toGuest.toArray());
                writeBytes(out, c.toHost.toArray());
                streams.add(c.stream);
            }
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
        saved = List.copyOf(streams);
        return bytes.toByteArray();
    }

    private static void writeBytes(DataOutputStream out, byte[] b) throws IOException {
        out.writeInt(b.length);
        out.write(b);
    }

    private static byte[] readBytes(DataInputStream in, int max, String what) throws IOException {
        int n = in.readInt();
        if (n < 0 || n > max) throw new IllegalArgumentException(what + " of " + n + " bytes (at most " + max + ")");
        return in.readNBytes(n);
    }

    @Override
    public synchronized void restoreState(byte[] state) {
        var adopted = backend.adopted();
        if (state.length == 0) {
            adopted.forEach(VsockBackend.Stream::close);
            return;
        }
        var restoredLines = new ArrayList<Line>();
        var restoredConns = new ArrayList<Conn>();
        var restoredControl = new ArrayList<Control>();
        boolean reset;
        int next;
        try (var in = new DataInputStream(new ByteArrayInputStream(state))) {
            if (in.readInt() != STATE_MAGIC) throw new IllegalArgumentException("not a vsock state");
            in.readLong(); // the CID it had: a clone's may differ, the configuration says which
            next = in.readInt();
            reset = in.readBoolean();
            int n = count(in);
            for (int i = 0; i < n; i++)
                restoredControl.add(new Control(in.readInt(), in.readInt(), in.readInt(), in.readInt()));
            n = count(in);
            for (int i = 0; i < n; i++) {
                var l = new Line(null);
                l.bytes.writeBytes(readBytes(in, MAX_LINE + 1, "a host line"));
                restoredLines.add(l);
            }
            n = count(in);
            for (int i = 0; i < n; i++) {
                int guestPort = in.readInt(), hostPort = in.readInt(), phase = in.readInt();
                if (phase < 0 || phase >= Phase.values().length)
                    throw new IllegalArgumentException("connection phase " + phase);
                var c = new Conn(guestPort, hostPort, Phase.values()[phase], null);
                c.guestBufAlloc = in.readInt();
                c.guestFwdCnt = in.readInt();
                c.rxCnt = in.readInt();
                c.fwdCnt = in.readInt();
                c.lastFwdSent = in.readInt();
                c.lineBytes = in.readInt();
                if (c.lineBytes < 0 || c.lineBytes > MAX_LINE)
                    throw new IllegalArgumentException("an OK line of " + c.lineBytes + " bytes");
                int flags = in.readInt();
                c.hostEof = (flags & 1) != 0;
                c.guestShutdown = (flags & 2) != 0;
                c.shutdownSent = (flags & 4) != 0;
                c.creditQueued = (flags & 8) != 0;
                c.toGuest.add(readBytes(in, TO_GUEST_BUFFER, "bytes for the guest"));
                c.toHost.add(readBytes(in, BUF_ALLOC + MAX_LINE, "bytes for the host"));
                restoredConns.add(c);
            }
            if (in.read() != -1) throw new IllegalArgumentException("the vsock state has trailing bytes");
        } catch (IOException e) {
            adopted.forEach(VsockBackend.Stream::close);
            throw new IllegalArgumentException("the vsock state is cut short");
        } catch (RuntimeException e) {
            adopted.forEach(VsockBackend.Stream::close);
            throw e;
        }
        nextHostPort = next;
        if (!adopted.isEmpty() && adopted.size() == restoredLines.size() + restoredConns.size()) {
            // A live update: the very sockets, and every byte that was in transit.
            int i = 0;
            for (var l : restoredLines) {
                var line = new Line(adopted.get(i++));
                line.bytes.writeBytes(l.bytes.toByteArray());
                lines.add(line);
            }
            for (var c : restoredConns) {
                c.stream = adopted.get(i++);
                conns.put(c.key(), c);
            }
            control.addAll(restoredControl);
            resetPending = reset;
            return;
        }
        // A restore or a clone: the old process's sockets are gone. The guest resets its connections (5.10.6.7).
        adopted.forEach(VsockBackend.Stream::close);
        resetPending = true;
        restoredWithoutSockets = true;
        for (var c : restoredConns) droppedByRestore.add(c.key());
    }

    private static int count(DataInputStream in) throws IOException {
        int n = in.readInt();
        if (n < 0 || n > 4 * MAX_CONNECTIONS)
            throw new IllegalArgumentException("a vsock state with " + n + " entries");
        return n;
    }
}
