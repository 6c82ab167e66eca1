package dev.panamavmm.devices.virtio;

import static dev.panamavmm.devices.virtio.VirtioMmio.*;
import static dev.panamavmm.devices.virtio.VirtioVsock.*;
import static org.junit.jupiter.api.Assertions.*;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.function.Predicate;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The vsock device between a driver written from the spec (three queues in heap RAM) and real
 * host Unix sockets: both ways of connecting, the credit counters exact to the byte, a guest
 * beyond its credit, a host peer that never reads, a restore without the sockets and a live
 * update with them.
 */
class VirtioVsockTest {
    static final long CID = 3;

    @TempDir
    Path dir;

    private final List<Guest> guests = new ArrayList<>();

    @AfterEach
    void stop() {
        for (var g : guests) g.close();
    }

    /** A packet as the driver sees it. */
    record Packet(
            long srcCid,
            long dstCid,
            int srcPort,
            int dstPort,
            int op,
            int flags,
            int bufAlloc,
            int fwdCnt,
            byte[] payload) {}

    /**
     * The driver side: queues RX, TX and EVENT of 16 entries each, 8 KiB receive buffers, one
     * thread that processes the queues (as the VMM's device thread does; a kick never runs a
     * queue on the caller's thread, which may hold the device's lock).
     */
    final class Guest implements AutoCloseable {
        static final int SIZE = 16, RX_BUF = 8192;
        final HeapRam ram;
        final ExecutorService queueThread = Executors.newSingleThreadExecutor();
        final VirtioVsock device;
        final VirtioMmio dev;
        final int[] availIdx = new int[3], usedSeen = new int[3];
        int txNext;
        final List<Packet> received = new ArrayList<>();
        final List<Integer> events = new ArrayList<>();

        Guest(VirtioVsock device) {
            this(device, null, null);
        }

        /**
         * With {@code state}: the device of {@code previous}'s driver restored from it (a restore or
         * a live update of the same guest: the same RAM, the driver's own indexes where they were).
         */
        Guest(VirtioVsock device, VirtioMmio.State state, Guest previous) {
            this.device = device;
            this.ram = previous == null ? new HeapRam(0, 8 << 20) : previous.ram;
            if (previous != null) {
                System.arraycopy(previous.availIdx, 0, availIdx, 0, 3);
                System.arraycopy(previous.usedSeen, 0, usedSeen, 0, 3);
                txNext = previous.txNext;
                received.addAll(previous.received);
            }
            VirtioMmio.Notifier notify = q -> queueThread.execute(() -> processQueue(q));
            dev = state == null
                    ? new VirtioMmio(device, ram, notify, () -> {})
                    : new VirtioMmio(device, state, ram, notify, () -> {});
            guests.add(this);
        }

        private void processQueue(int q) {
            dev.processQueue(q);
        }

        static long desc(int q) {
            return 0x1000 + 0x4000L * q;
        }

        static long avail(int q) {
            return desc(q) + 0x1000;
        }

        static long used(int q) {
            return desc(q) + 0x2000;
        }

        MemorySegment mem() {
            return ram.segment();
        }

        void set(int offset, long value) {
            dev.write(offset, 4, value);
        }

        /** The handshake, three queues, every receive and event buffer offered, then the device's own thread. */
        void start() {
            set(STATUS, 0);
            set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
            set(DRIVER_FEATURES_SEL, 0);
            set(DRIVER_FEATURES, 1); // stream sockets
            set(DRIVER_FEATURES_SEL, 1);
            set(DRIVER_FEATURES, 1); // VERSION_1
            set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
            for (int q = 0; q < 3; q++) {
                set(QUEUE_SEL, q);
                set(QUEUE_NUM, SIZE);
                set(QUEUE_DESC_LOW, desc(q));
                set(QUEUE_DRIVER_LOW, avail(q));
                set(QUEUE_DEVICE_LOW, used(q));
                set(QUEUE_READY, 1);
            }
            set(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
            assertEquals(0, dev.read(STATUS, 4) & STATUS_NEEDS_RESET, dev.lastError());
            for (int i = 0; i < SIZE; i++) offer(RX, i, 0x100000 + (long) i * RX_BUF, RX_BUF, true);
            for (int i = 0; i < 4; i++) offer(EVENT, i, 0x200000 + 8L * i, 8, true);
            startDevice();
            set(QUEUE_NOTIFY, RX);
            set(QUEUE_NOTIFY, EVENT);
        }

        void startDevice() {
            device.start(new VirtioDevice.Context() {
                @Override
                public void kick(int queue) {
                    queueThread.execute(() -> processQueue(queue));
                }

                @Override
                public void updateConfig(int offset, byte[] bytes) {
                    dev.updateConfig(offset, bytes);
                }
            });
        }

        /** Descriptor {@code d} of queue {@code q} as one buffer, made available (not notified). */
        void offer(int q, int d, long addr, int len, boolean writable) {
            long at = desc(q) + 16L * d;
            mem().set(Driver.U64, at, addr);
            mem().set(Driver.U32, at + 8, len);
            mem().set(Driver.U16, at + 12, (short) (writable ? Virtqueue.DESC_F_WRITE : 0));
            mem().set(Driver.U16, avail(q) + 4 + 2L * (availIdx[q] % SIZE), (short) d);
            availIdx[q] = (availIdx[q] + 1) & 0xFFFF;
            mem().set(Driver.U16, avail(q) + 2, (short) availIdx[q]);
        }

        /** One packet on the transmit queue; waits until the device has used it. */
        void send(int srcPort, int dstPort, int op, int bufAlloc, int fwdCnt, byte[] payload) {
            var h = header(CID, HOST_CID, srcPort, dstPort, payload.length, TYPE_STREAM, op, bufAlloc, fwdCnt);
            var packet = new byte[HEADER + payload.length];
            System.arraycopy(h, 0, packet, 0, HEADER);
            System.arraycopy(payload, 0, packet, HEADER, payload.length);
            transmit(packet);
        }

        /** Any bytes as one transmit buffer (a header that lies included); waits until the device has used it. */
        void transmit(byte[] packet) {
            int d = txNext++ % SIZE;
            long addr = 0x300000 + (long) d * 0x11000;
            MemorySegment.copy(MemorySegment.ofArray(packet), 0, mem(), addr, packet.length);
            int before = usedIdx(TX);
            offer(TX, d, addr, packet.length, false);
            set(QUEUE_NOTIFY, TX);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            while (usedIdx(TX) == before) {
                assertTrue(System.nanoTime() < deadline, "the device did not take the packet");
                Thread.onSpinWait();
            }
        }

        int usedIdx(int q) {
            return Short.toUnsignedInt(mem().get(Driver.U16, used(q) + 2));
        }

        /** Reads what the device used on RX and EVENT, offers the buffers again. */
        synchronized void poll() {
            while (usedSeen[RX] != usedIdx(RX)) {
                long at = used(RX) + 4 + 8L * (usedSeen[RX] % SIZE);
                int id = mem().get(Driver.U32, at), len = mem().get(Driver.U32, at + 4);
                usedSeen[RX] = (usedSeen[RX] + 1) & 0xFFFF;
                long addr = 0x100000 + (long) id * RX_BUF;
                var le = ByteOrder.LITTLE_ENDIAN;
                var m = mem();
                int payloadLen = m.get(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), addr + 24);
                assertEquals(HEADER + payloadLen, len, "used length = header + payload");
                received.add(new Packet(
                        m.get(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(le), addr),
                        m.get(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(le), addr + 8),
                        m.get(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), addr + 16),
                        m.get(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), addr + 20),
                        m.get(ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(le), addr + 30),
                        m.get(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), addr + 32),
                        m.get(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), addr + 36),
                        m.get(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), addr + 40),
                        m.asSlice(addr + HEADER, payloadLen).toArray(ValueLayout.JAVA_BYTE)));
                offer(RX, id, addr, RX_BUF, true);
                set(QUEUE_NOTIFY, RX);
            }
            while (usedSeen[EVENT] != usedIdx(EVENT)) {
                long at = used(EVENT) + 4 + 8L * (usedSeen[EVENT] % SIZE);
                int id = mem().get(Driver.U32, at);
                usedSeen[EVENT] = (usedSeen[EVENT] + 1) & 0xFFFF;
                events.add(mem().get(Driver.U32, 0x200000 + 8L * id));
                offer(EVENT, id, 0x200000 + 8L * id, 8, true);
                set(QUEUE_NOTIFY, EVENT);
            }
        }

        /** The first packet received (and not taken yet) that {@code what} accepts; removed from the list. */
        Packet await(String description, Predicate<Packet> what) throws InterruptedException {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            while (true) {
                poll();
                for (var p : received) {
                    if (what.test(p)) {
                        received.remove(p);
                        return p;
                    }
                }
                assertTrue(System.nanoTime() < deadline, "no " + description + " in " + received);
                Thread.sleep(1);
            }
        }

        /** Payload bytes of RW packets to {@code port}, {@code n} of them, collected in order. */
        byte[] payload(int port, int n) throws InterruptedException {
            var out = new ByteArrayOutputStream();
            while (out.size() < n)
                out.writeBytes(await("payload", p -> p.op() == OP_RW && p.dstPort() == port)
                        .payload());
            assertEquals(n, out.size(), "no more than was sent");
            return out.toByteArray();
        }

        @Override
        public void close() {
            device.stop();
            queueThread.shutdownNow();
        }
    }

    static byte[] header(
            long srcCid, long dstCid, int srcPort, int dstPort, int len, int type, int op, int bufAlloc, int fwdCnt) {
        var h = MemorySegment.ofArray(new byte[HEADER]);
        var le = ByteOrder.LITTLE_ENDIAN;
        h.set(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(le), 0, srcCid);
        h.set(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(le), 8, dstCid);
        h.set(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), 16, srcPort);
        h.set(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), 20, dstPort);
        h.set(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), 24, len);
        h.set(ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(le), 28, (short) type);
        h.set(ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(le), 30, (short) op);
        h.set(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), 36, bufAlloc);
        h.set(ValueLayout.JAVA_INT_UNALIGNED.withOrder(le), 40, fwdCnt);
        return h.toArray(ValueLayout.JAVA_BYTE);
    }

    static byte[] pattern(int from, int n) {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++) b[i] = (byte) ((from + i) * 31 + ((from + i) >>> 9));
        return b;
    }

    static String readLine(SocketChannel ch) throws IOException {
        var line = new StringBuilder();
        var one = ByteBuffer.allocate(1);
        while (true) {
            one.clear();
            if (ch.read(one) < 0) throw new IOException("closed after " + line);
            if (one.get(0) == '\n') return line.toString();
            line.append((char) one.get(0));
        }
    }

    static byte[] readFully(SocketChannel ch, int n) throws IOException {
        var buf = ByteBuffer.allocate(n);
        while (buf.hasRemaining()) if (ch.read(buf) < 0) throw new IOException("closed after " + buf.position());
        return buf.array();
    }

    /** A host-initiated connection to guest port 5000, accepted by the driver; returns the host's socket and the host port. */
    private Object[] hostConnects(Guest g, Path uds, byte[] afterLine, int guestBufAlloc) throws Exception {
        var host = SocketChannel.open(UnixDomainSocketAddress.of(uds));
        var line = ("CONNECT 5000\n").getBytes(StandardCharsets.US_ASCII);
        var first = ByteBuffer.allocate(line.length + afterLine.length)
                .put(line)
                .put(afterLine)
                .flip();
        while (first.hasRemaining()) host.write(first); // the line and the first bytes in one write
        var request = g.await("REQUEST", p -> p.op() == OP_REQUEST);
        assertEquals(HOST_CID, request.srcCid());
        assertEquals(CID, request.dstCid());
        assertEquals(5000, request.dstPort());
        assertTrue(Integer.toUnsignedLong(request.srcPort()) >= 1L << 30, "a host port above the guest's usual ones");
        assertEquals(BUF_ALLOC, request.bufAlloc());
        g.send(5000, request.srcPort(), OP_RESPONSE, guestBufAlloc, 0, new byte[0]);
        assertEquals("OK " + Integer.toUnsignedString(request.srcPort()), readLine(host));
        return new Object[] {host, request.srcPort()};
    }

    @Test
    void hostInitiatedStreamCountsExactlyTheGuestsBytes() throws Exception {
        var uds = dir.resolve("v.sock");
        var g = new Guest(new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(uds)));
        g.start();
        var c = hostConnects(g, uds, "early".getBytes(StandardCharsets.US_ASCII), 1 << 20);
        var host = (SocketChannel) c[0];
        int hostPort = (int) c[1];
        // Bytes that came with the CONNECT line are the host's first payload, not lost, not the line.
        assertArrayEquals("early".getBytes(StandardCharsets.US_ASCII), g.payload(5000, 5));

        int sent = 0;
        for (int n : new int[] {MAX_PAYLOAD, 1000, 34464}) {
            g.send(5000, hostPort, OP_RW, 1 << 20, 5, pattern(sent, n));
            sent += n;
        }
        assertArrayEquals(pattern(0, sent), readFully(host, sent), "the guest's bytes, in order, once");
        // fwd_cnt is the guest's bytes written to the host, exactly: the OK line is not among them.
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (true) {
            g.send(5000, hostPort, OP_CREDIT_REQUEST, 1 << 20, 5, new byte[0]);
            var update = g.await("CREDIT_UPDATE", p -> p.op() == OP_CREDIT_UPDATE);
            assertEquals(BUF_ALLOC, update.bufAlloc());
            if (update.fwdCnt() == sent) break;
            assertTrue(update.fwdCnt() < sent, "fwd_cnt " + update.fwdCnt() + " beyond the " + sent + " bytes sent");
            assertTrue(System.nanoTime() < deadline, "fwd_cnt stays at " + update.fwdCnt());
        }

        // The host closes: SHUTDOWN to the guest once its bytes are delivered.
        host.write(ByteBuffer.wrap(pattern(7, 3000)));
        host.close();
        assertArrayEquals(pattern(7, 3000), g.payload(5000, 3000));
        var shutdown = g.await("SHUTDOWN", p -> p.op() == OP_SHUTDOWN);
        assertEquals(SHUTDOWN_BOTH, shutdown.flags());
        g.send(5000, hostPort, OP_RST, 0, 0, new byte[0]);
        assertEquals(0, g.device.connections());
    }

    @Test
    void guestInitiatedConnectionsReachPathUnderscorePortOrAreRefused() throws Exception {
        var uds = dir.resolve("v.sock");
        try (var service = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
            service.bind(UnixDomainSocketAddress.of(Path.of(uds + "_6000")));
            var g = new Guest(new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(uds)));
            g.start();
            g.send(49152, 6000, OP_REQUEST, 4096, 0, new byte[0]);
            var response = g.await("RESPONSE", p -> p.op() == OP_RESPONSE);
            assertEquals(6000, response.srcPort());
            assertEquals(49152, response.dstPort());
            try (var host = service.accept()) {
                // The guest gave 4096 bytes of credit: no more reach it until it says it consumed them.
                host.write(ByteBuffer.wrap(pattern(0, 10000)));
                assertArrayEquals(pattern(0, 4096), g.payload(49152, 4096));
                Thread.sleep(100);
                g.poll();
                assertTrue(g.received.stream().noneMatch(p -> p.op() == OP_RW), "beyond the guest's credit");
                g.send(49152, 6000, OP_CREDIT_UPDATE, 4096, 4096, new byte[0]);
                assertArrayEquals(pattern(4096, 4096), g.payload(49152, 4096));
                g.send(49152, 6000, OP_RW, 4096, 8192, "hi".getBytes(StandardCharsets.US_ASCII));
                assertArrayEquals("hi".getBytes(StandardCharsets.US_ASCII), readFully(host, 2));
            }
            g.send(49153, 6001, OP_REQUEST, 4096, 0, new byte[0]); // nothing listens at uds_6001
            var rst = g.await("RST", p -> p.op() == OP_RST);
            assertEquals(6001, rst.srcPort());
            assertEquals(49153, rst.dstPort());
        }
    }

    @Test
    void aGuestBeyondItsCreditIsResetAndAPeerThatNeverReadsHoldsABoundedBuffer() throws Exception {
        var uds = dir.resolve("v.sock");
        var g = new Guest(new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(uds)));
        g.start();
        var c = hostConnects(g, uds, new byte[0], 1 << 20);
        var deaf = (SocketChannel) c[0]; // never reads
        int hostPort = (int) c[1];
        int sent = 0;
        while (sent < BUF_ALLOC) {
            int n = Math.min(MAX_PAYLOAD, BUF_ALLOC - sent);
            g.send(5000, hostPort, OP_RW, 1 << 20, 0, pattern(sent, n));
            sent += n;
        }
        // Up to its credit the guest may send more as the socket takes bytes; the device holds the rest.
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        while (true) {
            Thread.sleep(50); // the device's thread writes what the socket takes
            long held = g.device.bufferedBytes();
            assertTrue(held <= BUF_ALLOC, held + " bytes held");
            int room = (int) (BUF_ALLOC - held);
            if (room < MAX_PAYLOAD) break;
            assertTrue(System.nanoTime() < deadline, "the socket never fills: " + g.device.connectionCounters());
            g.send(5000, hostPort, OP_RW, 1 << 20, 0, pattern(sent, MAX_PAYLOAD));
            sent += MAX_PAYLOAD;
        }
        // One byte beyond its credit resets the connection.
        int room = (int) (BUF_ALLOC - g.device.bufferedBytes());
        g.send(5000, hostPort, OP_RW, 1 << 20, 0, pattern(sent, room + 1));
        var rst = g.await("RST", p -> p.op() == OP_RST);
        assertEquals(hostPort, rst.srcPort());
        assertEquals(0, g.device.connections());
        deaf.close();
    }

    @Test
    void aRestoreWithoutItsSocketsResetsTheTransportAndTellsTheNewCid() throws Exception {
        var uds = dir.resolve("v.sock");
        var g = new Guest(new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(uds)));
        g.start();
        var host = (SocketChannel) hostConnects(g, uds, "x".getBytes(StandardCharsets.US_ASCII), 4096)[0];
        g.dev.pause(Duration.ofSeconds(1));
        var state = VirtioMmioCodec.INSTANCE.decode(VirtioMmioCodec.INSTANCE.encode(g.dev.state()), 2, "device/vsock");
        g.close();
        guests.remove(g);
        assertEquals(-1, host.read(ByteBuffer.allocate(16)), "the old process's end closed");

        var clone = new Guest(
                new VirtioVsock("virtio-vsock", 9, new ChannelVsockBackend(dir.resolve("clone.sock"))), state, g);
        int generation = (int) clone.dev.read(CONFIG_GENERATION, 4);
        clone.startDevice();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (clone.events.isEmpty()) {
            clone.poll();
            assertTrue(System.nanoTime() < deadline, "no TRANSPORT_RESET event");
            Thread.sleep(1);
        }
        assertEquals(List.of(0), clone.events, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
        assertEquals(9, clone.dev.read(CONFIG, 4), "the clone's CID in the configuration");
        assertNotEquals(generation, (int) clone.dev.read(CONFIG_GENERATION, 4));
        assertEquals(0, clone.device.connections());
    }

    /**
     * After a restore the driver sends on its old connections until it takes the TRANSPORT_RESET
     * event. An RST for those packets could reach it first, on the receive queue, and reset a
     * connection it is about to reuse the ports of (VsockGuestTest saw its test guest report such
     * resets): they get no answer. A connection that never was still gets its RST, and a new one works.
     */
    @Test
    void packetsOfConnectionsARestoreDroppedGetNoReset() throws Exception {
        var uds = dir.resolve("v.sock");
        var g = new Guest(new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(uds)));
        g.start();
        var c = hostConnects(g, uds, new byte[0], 4096);
        int hostPort = (int) c[1];
        g.dev.pause(Duration.ofSeconds(1));
        var state = VirtioMmioCodec.INSTANCE.decode(VirtioMmioCodec.INSTANCE.encode(g.dev.state()), 2, "device/vsock");
        g.close();
        guests.remove(g);

        var restoredUds = dir.resolve("restored.sock");
        var restored = new Guest(new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(restoredUds)), state, g);
        restored.startDevice();
        restored.send(5000, hostPort, OP_RW, 4096, 0, "late".getBytes(StandardCharsets.US_ASCII));
        restored.send(5000, hostPort, OP_CREDIT_UPDATE, 4096, 0, new byte[0]);
        restored.send(5000, hostPort, OP_SHUTDOWN, 4096, 0, new byte[0]);
        restored.send(5001, 77, OP_RW, 4096, 0, "x".getBytes(StandardCharsets.US_ASCII));
        var rst = restored.await("RST", p -> p.op() == OP_RST);
        assertEquals(5001, rst.dstPort(), "only the connection that never was is reset: " + restored.received);
        assertEquals(77, rst.srcPort());

        var connected = hostConnects(restored, restoredUds, new byte[0], 4096);
        var fresh = (SocketChannel) connected[0];
        restored.send(5000, (int) connected[1], OP_RW, 4096, 0, "new".getBytes(StandardCharsets.US_ASCII));
        assertArrayEquals("new".getBytes(StandardCharsets.US_ASCII), readFully(fresh, 3));
        // The guest may reuse the old ports for a connection of its own: that one is answered again.
        restored.send(5000, hostPort, OP_RW, 4096, 0, "y".getBytes(StandardCharsets.US_ASCII));
        restored.send(5000, hostPort, OP_REQUEST, 4096, 0, new byte[0]);
        var refused = restored.await("RST", p -> p.op() == OP_RST);
        assertEquals(5000, refused.dstPort(), "nothing listens at " + restoredUds + "_" + hostPort);
        assertEquals(hostPort, refused.srcPort());
    }

    @Test
    void aLiveUpdateCarriesTheSocketsAndEveryByteInTransit() throws Exception {
        var uds = dir.resolve("v.sock");
        var g = new Guest(new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(uds)));
        g.start();
        var c = hostConnects(g, uds, new byte[0], 1 << 20);
        var host = (SocketChannel) c[0];
        int hostPort = (int) c[1];
        // Guest to host: more than the socket takes while the host does not read, so some wait in the device.
        int sent = 0;
        while (sent < 200_000) {
            g.send(5000, hostPort, OP_RW, 1 << 20, 0, pattern(sent, MAX_PAYLOAD / 2));
            sent += MAX_PAYLOAD / 2;
        }
        // Host to guest: bytes in the guest's receive buffers, in the device, or still in the socket.
        host.write(ByteBuffer.wrap(pattern(1, 5000)));
        Thread.sleep(100);
        g.dev.pause(Duration.ofSeconds(1));
        var state = VirtioMmioCodec.INSTANCE.decode(VirtioMmioCodec.INSTANCE.encode(g.dev.state()), 2, "device/vsock");
        var passed = g.device.savedStreams();
        assertEquals(1, passed.size());
        // The old device is left as a process that exits would leave it: its sockets live on in the new one.
        guests.remove(g);
        g.queueThread.shutdownNow();

        var next = new Guest(
                new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(dir.resolve("v2.sock"), passed)),
                state,
                g);
        next.startDevice();
        next.dev.resume();
        assertArrayEquals(pattern(0, sent), readFully(host, sent), "every guest byte once, in order");
        var got = next.payload(5000, 5000);
        assertArrayEquals(pattern(1, 5000), got, "every host byte once, in order");
        next.send(5000, hostPort, OP_RW, 1 << 20, 5000, "after".getBytes(StandardCharsets.US_ASCII));
        assertArrayEquals("after".getBytes(StandardCharsets.US_ASCII), readFully(host, 5));
        next.poll();
        assertTrue(next.events.isEmpty(), "no reset");
        host.close();
        g.device.stop(); // only now: its sockets are the new device's too (one process here)
    }

    /**
     * A guest sending nonsense packets (CIDs, ports, operations, lengths that lie, credit counters at
     * random) while host programs connect, write lines and bytes at random and close. Nothing
     * throws, the transport never needs a reset, every packet the guest gets is addressed to it, and
     * connections and buffered bytes stay within their bounds. The state it ends in restores.
     */
    @Test
    void nonsenseFromTheGuestAndHostProgramsStaysBounded() throws Exception {
        var random = new Random(0x750c);
        var uds = dir.resolve("v.sock");
        try (var service = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
            service.bind(UnixDomainSocketAddress.of(Path.of(uds + "_6000")));
            service.configureBlocking(false);
            var g = new Guest(new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(uds)));
            g.start();
            var peers = new ArrayList<SocketChannel>();
            var hostPorts = new ArrayList<Integer>();
            int most = 0;
            for (int i = 0; i < 3000; i++) {
                switch (random.nextInt(12)) {
                    case 0 -> {
                        if (peers.size() < 80) {
                            var ch = SocketChannel.open(UnixDomainSocketAddress.of(uds));
                            ch.configureBlocking(false);
                            String[] lines = {
                                "CONNECT 5000\n",
                                "CONNECT 5001\nxyz",
                                "CONNECT x\n",
                                "HELLO\n",
                                "CONNECT 4294967296\n",
                                "C".repeat(100),
                                "CONNECT 5000"
                            };
                            ch.write(ByteBuffer.wrap(
                                    lines[random.nextInt(lines.length)].getBytes(StandardCharsets.US_ASCII)));
                            peers.add(ch);
                        }
                    }
                    case 1 -> {
                        var ch = service.accept();
                        if (ch != null) {
                            ch.configureBlocking(false);
                            peers.add(ch);
                        }
                    }
                    case 2 -> {
                        if (!peers.isEmpty()) {
                            var ch = peers.get(random.nextInt(peers.size()));
                            try {
                                if (random.nextInt(5) == 0) {
                                    ch.close();
                                    peers.remove(ch);
                                } else if (random.nextBoolean())
                                    ch.write(ByteBuffer.wrap(pattern(i, random.nextInt(70_000))));
                                else ch.read(ByteBuffer.allocate(random.nextInt(100_000) + 1));
                            } catch (IOException e) {
                                peers.remove(ch); // the device closed it
                                ch.close();
                            }
                        }
                    }
                    case 3 -> g.poll();
                    default -> {
                        int[] ports = {5000, 5001, 6000, 6001, 49152, 49153, random.nextInt()};
                        int srcPort =
                                random.nextInt(4) == 0 ? ports[random.nextInt(ports.length)] : 5000 + random.nextInt(2);
                        int dstPort = !hostPorts.isEmpty() && random.nextBoolean()
                                ? hostPorts.get(random.nextInt(hostPorts.size()))
                                : ports[random.nextInt(ports.length)];
                        if (random.nextInt(3) == 0) srcPort = 49152 + random.nextInt(2);
                        int payload = random.nextInt(4) == 0 ? random.nextInt(MAX_PAYLOAD + 100) : random.nextInt(200);
                        int len = random.nextInt(6) == 0 ? random.nextInt() : payload;
                        var h = header(
                                random.nextInt(10) == 0 ? random.nextLong() : CID,
                                random.nextInt(10) == 0 ? random.nextInt(5) : HOST_CID,
                                srcPort,
                                dstPort,
                                len,
                                random.nextInt(10) == 0 ? random.nextInt(4) : TYPE_STREAM,
                                random.nextInt(10),
                                random.nextInt(3) == 0 ? random.nextInt() : 1 << 20,
                                random.nextInt(3) == 0 ? random.nextInt() : 0);
                        int cut = random.nextInt(20) == 0 ? random.nextInt(HEADER) : HEADER;
                        var packet = new byte[cut + payload];
                        System.arraycopy(h, 0, packet, 0, cut);
                        g.transmit(packet);
                    }
                }
                for (var p : g.received) {
                    assertEquals(HOST_CID, p.srcCid(), "from the host");
                    assertEquals(CID, p.dstCid(), "to this guest");
                    if (p.op() == OP_REQUEST && !hostPorts.contains(p.srcPort())) hostPorts.add(p.srcPort());
                    if (p.op() == OP_REQUEST && random.nextBoolean())
                        g.send(p.dstPort(), p.srcPort(), OP_RESPONSE, 1 << 20, 0, new byte[0]);
                }
                g.received.clear();
                int connections;
                long buffered;
                // One look at both (the device's methods lock it): its worker takes host lines meanwhile.
                synchronized (g.device) {
                    connections = g.device.connections();
                    buffered = g.device.bufferedBytes();
                }
                assertTrue(connections <= MAX_CONNECTIONS, connections + " connections");
                most = Math.max(most, connections);
                long bound = (long) connections * (BUF_ALLOC + 32 + TO_GUEST_BUFFER);
                assertTrue(buffered <= bound, buffered + " bytes for " + connections);
                assertEquals(0, g.dev.read(STATUS, 4) & STATUS_NEEDS_RESET, g.dev.lastError());
            }
            assertTrue(g.device.packetsDropped() > 100, "nonsense reached the checks: " + g.device.packetsDropped());
            assertTrue(most >= 5, "connections were made, not only refused: at most " + most);
            g.dev.pause(Duration.ofSeconds(5));
            var state =
                    VirtioMmioCodec.INSTANCE.decode(VirtioMmioCodec.INSTANCE.encode(g.dev.state()), 2, "device/vsock");
            var restored = new Guest(
                    new VirtioVsock("virtio-vsock", CID, new ChannelVsockBackend(dir.resolve("r.sock"))), state, g);
            assertEquals(0, restored.device.connections(), "a restore without the sockets keeps no connection");
            for (var ch : peers) ch.close();
        }
    }
}
