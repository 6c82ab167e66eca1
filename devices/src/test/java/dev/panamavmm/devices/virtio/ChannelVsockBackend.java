package dev.panamavmm.devices.virtio;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.MemorySegment;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SelectableChannel;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.util.List;

/**
 * A {@link VsockBackend} over the JDK's Unix socket channels (the VMM's own is over system calls):
 * a non-blocking listener at {@code uds}, connections to {@code uds_PORT}, a selector to wait on.
 * Real sockets, so the device's tests need neither KVM nor the VMM module.
 */
final class ChannelVsockBackend implements VsockBackend, AutoCloseable {
    private final Path uds;
    private final ServerSocketChannel listener;
    private final Selector selector;
    private final List<Stream> adopted;

    static final class ChannelStream implements Stream {
        final SocketChannel channel;

        ChannelStream(SocketChannel channel) throws IOException {
            this.channel = channel;
            channel.configureBlocking(false);
        }

        @Override
        public long read(MemorySegment into) {
            try {
                int n = channel.read(into.asByteBuffer());
                return n < 0 ? -1 : n;
            } catch (IOException e) {
                return -1;
            }
        }

        @Override
        public long write(MemorySegment from) {
            try {
                return channel.write(from.asByteBuffer());
            } catch (IOException e) {
                return -1;
            }
        }

        @Override
        public void close() {
            try {
                channel.close();
            } catch (IOException e) {
                // closed anyway
            }
        }
    }

    ChannelVsockBackend(Path uds) throws IOException {
        this(uds, List.of());
    }

    /** With {@code adopted}: as a live update's new process, which gets the old one's connections. */
    ChannelVsockBackend(Path uds, List<Stream> adopted) throws IOException {
        this.uds = uds;
        this.listener = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        listener.bind(UnixDomainSocketAddress.of(uds));
        listener.configureBlocking(false);
        this.selector = Selector.open();
        this.adopted = List.copyOf(adopted);
    }

    @Override
    public Stream accept() {
        try {
            var ch = listener.accept();
            return ch == null ? null : new ChannelStream(ch);
        } catch (IOException e) {
            return null;
        }
    }

    @Override
    public Stream connect(int port) {
        try {
            return new ChannelStream(SocketChannel.open(
                    UnixDomainSocketAddress.of(Path.of(uds + "_" + Integer.toUnsignedString(port)))));
        } catch (IOException e) {
            return null; // nothing listens there
        }
    }

    @Override
    public void await(boolean listening, List<Stream> reading, List<Stream> writing, int timeoutMillis) {
        try {
            for (var key : selector.keys()) if (key.isValid()) key.interestOps(0);
            if (listening) watch(listener, SelectionKey.OP_ACCEPT);
            for (var s : reading) watch(((ChannelStream) s).channel, SelectionKey.OP_READ);
            for (var s : writing) watch(((ChannelStream) s).channel, SelectionKey.OP_WRITE);
            selector.select(timeoutMillis);
            selector.selectedKeys().clear();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private void watch(SelectableChannel channel, int op) throws IOException {
        if (!channel.isOpen()) return;
        var key = channel.keyFor(selector);
        if (key == null) channel.register(selector, op);
        else if (key.isValid()) key.interestOps(key.interestOps() | op);
    }

    @Override
    public void wake() {
        selector.wakeup();
    }

    @Override
    public List<Stream> adopted() {
        return adopted;
    }

    @Override
    public void close() throws IOException {
        selector.close();
        listener.close();
    }
}
