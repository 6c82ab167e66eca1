package dev.panamavmm.devices.virtio;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.DatagramChannel;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.util.List;

/**
 * A {@link NetBackend} over a real UDP socket on the loopback interface, standing in for a tap
 * where no tap can be had (this module needs no privileges): one datagram is one frame with its
 * 12-byte header, as a tap with IFF_VNET_HDR reads and writes them. {@link #peer} is the other end.
 */
final class DatagramBackend implements NetBackend, AutoCloseable {
    final DatagramChannel channel;
    final DatagramChannel peer;
    private final Selector selector;
    volatile long offloads = -1;

    DatagramBackend() throws IOException {
        var loopback = InetAddress.getLoopbackAddress();
        channel = DatagramChannel.open().bind(new InetSocketAddress(loopback, 0));
        peer = DatagramChannel.open().bind(new InetSocketAddress(loopback, 0));
        channel.connect(peer.getLocalAddress());
        peer.connect(channel.getLocalAddress());
        channel.configureBlocking(false);
        selector = Selector.open();
        channel.register(selector, SelectionKey.OP_READ);
    }

    @Override
    public boolean send(List<MemorySegment> buffers) throws IOException {
        var array = new ByteBuffer[buffers.size()];
        for (int i = 0; i < array.length; i++) array[i] = buffers.get(i).asByteBuffer();
        return channel.write(array) > 0 || buffers.stream().allMatch(b -> b.byteSize() == 0);
    }

    @Override
    public boolean awaitFrame(int timeoutMillis) throws IOException {
        selector.selectedKeys().clear();
        return selector.select(timeoutMillis) > 0;
    }

    private final ByteBuffer datagram = ByteBuffer.allocate(65536);

    /** One datagram scattered over the buffers as far as they go; its whole length, as a tap's read gives. */
    @Override
    public int receive(List<MemorySegment> buffers) throws IOException {
        datagram.clear();
        int n = channel.read(datagram);
        if (n <= 0) return 0;
        var from = MemorySegment.ofBuffer(datagram.flip());
        long at = 0;
        for (var b : buffers) {
            long k = Math.min(b.byteSize(), n - at);
            if (k <= 0) break;
            MemorySegment.copy(from, at, b, 0, k);
            at += k;
        }
        return n;
    }

    @Override
    public void offloads(long guestFeatures) {
        offloads = guestFeatures;
    }

    @Override
    public void close() throws IOException {
        selector.close();
        channel.close();
        peer.close();
    }
}
