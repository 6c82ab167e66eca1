package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.NetBackend;
import dev.panamavmm.devices.virtio.VirtioNet;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.Ifreq;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.Iovec;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.bindings.Pollfd;
import dev.panamavmm.kvm.bindings.VirtioNetHdrV1;
import dev.panamavmm.kvm.sys.IoUring;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.vmm.memory.MemoryException;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A tap device behind a {@link VirtioNet}: {@code /dev/net/tun} attached to an existing tap
 * with {@code IFF_TAP | IFF_NO_PI | IFF_VNET_HDR} and a 12-byte vnet header, so the guest's
 * header and the tap's are the same bytes. Transmit is a {@code writev} a frame from guest RAM,
 * receive a {@code readv} a frame into it, each on its queue's thread, and each queue's batch is
 * submitted through an {@link IoUring} of its own with one system call (one call a frame where
 * the kernel or its policy gives no io_uring, or {@value #IO_URING_ENV}=off). The descriptor is
 * non-blocking: a full tap queue drops the frame (EAGAIN) instead of stalling the queue, a read
 * with no frame waiting fails at once (EAGAIN), and the rings' requests run inline, in order,
 * never on a kernel worker.
 */
final class TapBackend implements NetBackend, AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(TapBackend.class);

    /** Buffers a transmitted chain may have; the queue size (256) bounds a chain anyway. */
    private static final int IOV_MAX = 256;

    /** {@code off}: one {@code writev} or {@code readv} a frame, no io_uring (docs/operating.md). */
    static final String IO_URING_ENV = "PANAMA_VMM_IO_URING";

    /** iovecs of one ring submission: a batch whose frames have more buffers goes in two. */
    private static final int RING_IOVS = 2 * IOV_MAX;

    static {
        // The guest's header and the tap's must be the same bytes: the kernel's struct decides.
        if (VirtioNetHdrV1.BYTE_SIZE != VirtioNet.HEADER_SIZE)
            throw new IllegalStateException("struct virtio_net_hdr_v1 has " + VirtioNetHdrV1.BYTE_SIZE + " bytes, not "
                    + VirtioNet.HEADER_SIZE);
    }

    private final int fd;
    private final String name;
    private final MemorySegment iov;
    /** The receive queue's own: it runs beside the transmit queue's thread. */
    private final MemorySegment rxIov;

    /** errno of the transmit and the receive queue's threads: each its own, and no per-call lookup. */
    private final MemorySegment txErrno, rxErrno;

    private final MemorySegment pollfd;
    private volatile int offloads = -1;

    /**
     * The transmit queue's ring, or null: then one {@code writev} a frame. Only the transmit
     * queue's thread uses it (and drops it if it fails); {@link #close} closes it after that thread ended.
     */
    private IoUring txRing;

    private final MemorySegment txRingIov;
    /** Per ring entry of a submission: the batch's frame it sends, and its result. */
    private final int[] txRingFrame, txRingResult;

    /** The receive queue's ring, as {@link #txRing} (its own: the queues' threads run side by side). */
    private IoUring rxRing;

    private final MemorySegment rxRingIov;
    private final int[] rxRingResult;
    private final long[] rxRingRoom;

    private TapBackend(int fd, String name) {
        this.fd = fd;
        this.name = name;
        var arena = Arena.ofAuto();
        this.txRing = openRing(fd, name, VirtioNet.TX_BATCH);
        this.txRingIov = txRing == null ? null : arena.allocate(Iovec.LAYOUT, RING_IOVS);
        this.txRingFrame = new int[txRing == null ? 0 : txRing.capacity()];
        this.txRingResult = new int[txRingFrame.length];
        this.rxRing = txRing == null ? null : openRing(fd, name, VirtioNet.RX_BATCH);
        this.rxRingIov = rxRing == null ? null : arena.allocate(Iovec.LAYOUT, RING_IOVS);
        this.rxRingResult = new int[rxRing == null ? 0 : rxRing.capacity()];
        this.rxRingRoom = new long[rxRingResult.length];
        this.iov = arena.allocate(Iovec.LAYOUT, IOV_MAX);
        this.rxIov = arena.allocate(Iovec.LAYOUT, IOV_MAX);
        this.txErrno = LibC.errnoCapture(arena);
        this.rxErrno = LibC.errnoCapture(arena);
        this.pollfd = arena.allocate(Pollfd.LAYOUT);
        Pollfd.fd(pollfd, fd);
        Pollfd.events(pollfd, LibcConstants.POLLIN);
    }

    private static IoUring openRing(int fd, String name, int entries) {
        if ("off".equals(System.getenv(IO_URING_ENV))) {
            log.debug("tap {}: {}=off, one system call a frame", name, IO_URING_ENV);
            return null;
        }
        try {
            return IoUring.open(fd, entries);
        } catch (KvmException e) {
            log.info("tap {}: no io_uring here ({}): one system call a frame", name, e.getMessage());
            return null;
        }
    }

    /** Attaches to the tap {@code name} (it must exist: {@code ip tuntap add dev NAME mode tap}). */
    static TapBackend open(String name) {
        NetConfig.checkTapName(name);
        if (!Files.exists(Path.of("/sys/class/net", name)))
            throw new MemoryException(
                    "the tap " + name + " does not exist here (create it: ip tuntap add dev " + name + " mode tap)");
        int fd;
        try {
            fd = LibC.open(
                    "/dev/net/tun", LibcConstants.O_RDWR | LibcConstants.O_CLOEXEC | LibcConstants.O_NONBLOCK, 0);
        } catch (KvmException e) {
            throw new MemoryException("cannot open /dev/net/tun for the tap " + name + ": " + reason(e.errno()));
        }
        try (var arena = Arena.ofConfined()) {
            var req = arena.allocate(Ifreq.LAYOUT);
            var bytes = name.getBytes(StandardCharsets.UTF_8);
            MemorySegment.copy(bytes, 0, req, ValueLayout.JAVA_BYTE, Ifreq.IFR_IFRN_IFRN_NAME, bytes.length);
            Ifreq.ifrIfruIfruFlags(req, LibcConstants.IFF_TAP | LibcConstants.IFF_NO_PI | LibcConstants.IFF_VNET_HDR);
            int r = LibC.ioctlOrErrno(fd, Ioctls.TUNSETIFF, req);
            if (r < 0) {
                LibC.close(fd);
                throw new MemoryException("cannot attach to the tap " + name + ": " + reason(-r)
                        + (-r == LibcConstants.EINVAL ? " (is it a tun device, not a tap?)" : ""));
            }
            setHeaderSize(fd, name);
            return new TapBackend(fd, name);
        } catch (RuntimeException e) {
            closeQuietly(fd);
            throw e;
        }
    }

    /**
     * Takes {@code fd}, a tap already attached with {@code IFF_VNET_HDR} (given with {@code fd=N},
     * or passed with a live update); refuses anything else. The caller still owns {@code fd} if
     * this throws.
     */
    static TapBackend adopt(int fd) {
        try (var arena = Arena.ofConfined()) {
            var req = arena.allocate(Ifreq.LAYOUT);
            int r = LibC.ioctlOrErrno(fd, Ioctls.TUNGETIFF, req);
            if (r < 0) throw new MemoryException("descriptor " + fd + " is not a tap: " + reason(-r));
            int flags = Ifreq.ifrIfruIfruFlags(req) & 0xFFFF;
            if ((flags & LibcConstants.IFF_TAP) == 0
                    || (flags & LibcConstants.IFF_VNET_HDR) == 0
                    || (flags & LibcConstants.IFF_NO_PI) == 0)
                throw new MemoryException(
                        "descriptor " + fd + " is not a tap opened with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR");
            var name = req.getString(Ifreq.IFR_IFRN_IFRN_NAME, StandardCharsets.UTF_8);
            setHeaderSize(fd, name);
            // The receive thread reads until the tap is empty: a blocking read there would hold the device.
            try {
                LibC.setNonBlocking(fd);
            } catch (KvmException e) {
                throw new MemoryException("descriptor " + fd + " cannot be made non-blocking: " + reason(e.errno()));
            }
            return new TapBackend(fd, name);
        }
    }

    private static void setHeaderSize(int fd, String name) {
        try (var arena = Arena.ofConfined()) {
            var size = arena.allocate(ValueLayout.JAVA_INT);
            size.set(ValueLayout.JAVA_INT, 0, VirtioNet.HEADER_SIZE);
            int r = LibC.ioctlOrErrno(fd, Ioctls.TUNSETVNETHDRSZ, size);
            if (r < 0) throw new MemoryException("the tap " + name + " refuses a 12-byte vnet header: " + reason(-r));
        }
    }

    private static String reason(int errno) {
        return LibC.strerror(errno);
    }

    private static void closeQuietly(int fd) {
        try {
            LibC.close(fd);
        } catch (KvmException e) {
            // already failing
        }
    }

    int fd() {
        return fd;
    }

    String name() {
        return name;
    }

    /** The TUN_F_ offload flags set on the tap last, or -1 before the driver negotiated. */
    int offloads() {
        return offloads;
    }

    @Override
    public boolean send(List<MemorySegment> buffers) throws IOException {
        if (buffers.size() > IOV_MAX) return false;
        vector(iov, buffers, buffers.size());
        long r = LibC.writevOrErrno(txErrno, fd, iov, buffers.size());
        if (r >= 0) return true;
        if (r == -LibcConstants.EAGAIN) return false;
        throw new IOException("writing to the tap " + name + ": " + reason((int) -r));
    }

    /**
     * The frames through the ring: each frame's buffers as iovecs of {@link #txRingIov}, one
     * {@code writev} entry a frame, submitted when the ring or the iovecs are full and at the end.
     */
    @Override
    public void sendAll(List<List<MemorySegment>> frames, boolean[] sent) {
        if (txRing == null) {
            NetBackend.super.sendAll(frames, sent);
            return;
        }
        int iovs = 0;
        for (int i = 0; i < frames.size(); i++) {
            var ring = txRing;
            var buffers = frames.get(i);
            int count = buffers.size();
            if (ring == null) { // it failed during this batch: the rest one writev each, still in order
                sent[i] = sendOne(buffers);
                continue;
            }
            if (count > IOV_MAX) {
                sent[i] = false;
                continue;
            }
            if (ring.prepared() == ring.capacity() || iovs + count > RING_IOVS) {
                submit(ring, sent);
                iovs = 0;
                if (txRing == null) {
                    sent[i] = sendOne(buffers);
                    continue;
                }
            }
            vector(txRingIov, iovs, buffers, count);
            txRingFrame[ring.prepared()] = i;
            ring.prepareWritev(txRingIov.address() + iovs * Iovec.BYTE_SIZE, count);
            iovs += count;
        }
        if (txRing != null) submit(txRing, sent);
    }

    private boolean sendOne(List<MemorySegment> buffers) {
        try {
            return send(buffers);
        } catch (IOException e) {
            return false;
        }
    }

    /**
     * Submits the prepared frames; each went unless its result is an error (EAGAIN: the tap's
     * queue is full; others as {@link #send}'s). A ring that fails itself is dropped, with its
     * frames: the tap goes on with one {@code writev} a frame.
     */
    private void submit(IoUring ring, boolean[] sent) {
        int n = ring.prepared();
        try {
            ring.submit(txRingResult);
            for (int k = 0; k < n; k++) sent[txRingFrame[k]] = txRingResult[k] >= 0;
        } catch (KvmException e) {
            for (int k = 0; k < n; k++) sent[txRingFrame[k]] = false;
            txRing = null;
            ring.close();
            log.warn("tap {}: its io_uring failed ({}): one writev a frame from now on", name, e.getMessage());
        }
    }

    /** The first {@code count} of {@code buffers} as {@code struct iovec}s at {@code iov}; their bytes. */
    private static long vector(MemorySegment iov, List<MemorySegment> buffers, int count) {
        return vector(iov, 0, buffers, count);
    }

    /** As {@link #vector(MemorySegment, List, int)}, from iovec {@code first} of {@code iov}. */
    private static long vector(MemorySegment iov, int first, List<MemorySegment> buffers, int count) {
        long bytes = 0;
        for (int i = 0; i < count; i++) {
            var b = buffers.get(i);
            long at = (first + i) * Iovec.BYTE_SIZE;
            iov.set(ValueLayout.JAVA_LONG, at + Iovec.IOV_BASE, b.address());
            iov.set(ValueLayout.JAVA_LONG, at + Iovec.IOV_LEN, b.byteSize());
            bytes += b.byteSize();
        }
        return bytes;
    }

    @Override
    public boolean awaitFrame(int timeoutMillis) throws IOException {
        Pollfd.revents(pollfd, 0);
        if (LibC.poll(pollfd, 1, timeoutMillis) == 0) return false;
        int revents = Pollfd.revents(pollfd);
        if ((revents & (LibcConstants.POLLERR | LibcConstants.POLLHUP)) != 0)
            throw new IOException("the tap " + name + " went away");
        return (revents & LibcConstants.POLLIN) != 0;
    }

    @Override
    public int receive(List<MemorySegment> buffers) throws IOException {
        // An indirect chain may have more buffers than an iovec array here: the frame goes into the first ones.
        int count = Math.min(buffers.size(), IOV_MAX);
        long room = vector(rxIov, buffers, count);
        return received(LibC.readvOrErrno(rxErrno, fd, rxIov, count), room);
    }

    /**
     * Frames through the receive ring: a {@code readv} entry for each list of buffers (as many as
     * one submission takes), run in order by the kernel; EAGAIN where no frame was waiting. A
     * ring that fails itself is dropped: the tap goes on with one {@code readv} a frame.
     */
    @Override
    public void receiveAll(List<List<MemorySegment>> buffers, int[] lengths) throws IOException {
        var ring = rxRing;
        if (ring == null) {
            NetBackend.super.receiveAll(buffers, lengths);
            return;
        }
        int iovs = 0, n = 0;
        for (int most = Math.min(buffers.size(), ring.capacity()); n < most; n++) {
            var b = buffers.get(n);
            int count = Math.min(b.size(), IOV_MAX); // more: the frame goes into the first ones
            if (iovs + count > RING_IOVS) break;
            rxRingRoom[n] = vector(rxRingIov, iovs, b, count);
            ring.prepareReadv(rxRingIov.address() + iovs * Iovec.BYTE_SIZE, count);
            iovs += count;
        }
        try {
            ring.submit(rxRingResult);
        } catch (KvmException e) {
            rxRing = null;
            ring.close();
            log.warn("tap {}: its receive io_uring failed ({}): one readv a frame from now on", name, e.getMessage());
            // Reported as none: they wait in the tap (a read the broken ring made but never reported is lost).
            for (int i = 0; i < n; i++) lengths[i] = 0;
            return;
        }
        for (int i = 0; i < n; i++) lengths[i] = received(rxRingResult[i], rxRingRoom[i]);
        for (int i = n; i < buffers.size(); i++) lengths[i] = 0;
    }

    /** A read's result as {@link #receive}'s: the frame's length, beyond {@code room} when cut short, 0 for none. */
    private int received(long r, long room) throws IOException {
        if (r >= 0) return r > room ? Integer.MAX_VALUE : (int) r; // beyond the buffers: the kernel cut it short
        if (r == -LibcConstants.EAGAIN) return 0;
        // Buffers too short for even the vnet header (EINVAL) or a bad address (EFAULT): the frame is gone.
        if (r == -LibcConstants.EINVAL || r == -LibcConstants.EFAULT) return Integer.MAX_VALUE;
        throw new IOException("reading the tap " + name + ": " + reason((int) -r));
    }

    @Override
    public void offloads(long guestFeatures) {
        int flags = 0;
        if ((guestFeatures & VirtioNet.F_GUEST_CSUM) != 0) {
            flags |= LibcConstants.TUN_F_CSUM;
            if ((guestFeatures & VirtioNet.F_GUEST_TSO4) != 0) flags |= LibcConstants.TUN_F_TSO4;
            if ((guestFeatures & VirtioNet.F_GUEST_TSO6) != 0) flags |= LibcConstants.TUN_F_TSO6;
            if ((guestFeatures & VirtioNet.F_GUEST_ECN) != 0) flags |= LibcConstants.TUN_F_TSO_ECN;
            if ((guestFeatures & VirtioNet.F_GUEST_UFO) != 0) flags |= LibcConstants.TUN_F_UFO;
        }
        // Newer kernels may refuse UFO: then without it, then without anything (plain frames).
        for (int f : new int[] {flags, flags & ~LibcConstants.TUN_F_UFO, 0}) {
            if (LibC.ioctlOrErrno(fd, Ioctls.TUNSETOFFLOAD, f) >= 0) {
                offloads = f;
                return;
            }
        }
    }

    @Override
    public void close() {
        for (var ring : new IoUring[] {txRing, rxRing}) {
            if (ring == null) continue;
            try {
                ring.close();
            } catch (KvmException e) {
                // already failing
            }
        }
        txRing = null;
        rxRing = null;
        closeQuietly(fd);
    }
}
