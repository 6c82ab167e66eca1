package dev.panamavmm.cli;

import dev.panamavmm.api.UnixSockets;
import dev.panamavmm.devices.Serial8250;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.bindings.Termios;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.IoErrors;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.function.Consumer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Where the guest's serial console goes and where its input comes from:
 * {@code stdout} (input from stdin when it is a terminal, switched to raw mode: Ctrl-A x quits,
 * Ctrl-A h lists the keys, Ctrl-C goes to the guest), {@code file:PATH} (output only), or
 * {@code unix:PATH} (a listening socket; one client at a time gets the output and types the input,
 * and what was printed while none was connected, up to 64 KiB, goes to the next one first).
 */
abstract sealed class ConsoleIo implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(ConsoleIo.class);
    /** Ctrl-A, then 'x': quit (as QEMU's -nographic console). */
    static final int ESCAPE = 0x01;
    /** Printed once when the console is this terminal: in raw mode Ctrl-C is the guest's, so say how to leave. */
    static final String TERMINAL_HINT =
            "vmm: console on this terminal: Ctrl-A x quits, Ctrl-A h lists the keys; Ctrl-C goes to the guest";
    /** Ctrl-A h. */
    static final String KEYS = "vmm: console keys: Ctrl-A x quit the VMM (the guest ends), Ctrl-A h this help,"
            + " Ctrl-A Ctrl-A send one Ctrl-A to the guest; every other key (Ctrl-C too) goes to the guest";
    /** Output kept for a {@code unix:} console while no client is connected, handed to the next client. */
    static final int BACKLOG_BYTES = 64 << 10;

    /** The stream the UART writes the guest's output to. */
    abstract OutputStream output();

    /** Starts feeding input into {@code serial}; {@code quit} runs when the user asks to end the VM. */
    abstract void startInput(Serial8250 serial, Runnable quit);

    @Override
    public abstract void close();

    /** Rejects a malformed {@code --console} before anything is built. */
    static void checkSpec(String spec) {
        if (spec.equals("stdout")
                || (spec.startsWith("file:") && spec.length() > 5)
                || (spec.startsWith("unix:") && spec.length() > 5)) return;
        throw new UsageException("--console must be stdout, file:PATH or unix:PATH, not '" + spec + "'");
    }

    static ConsoleIo open(String spec) {
        checkSpec(spec);
        if (spec.equals("stdout")) return new Stdio();
        if (spec.startsWith("file:")) return new ToFile(Path.of(spec.substring(5)));
        if (spec.startsWith("unix:")) return new UnixSocket(Path.of(spec.substring(5)));
        throw new UsageException("--console must be stdout, file:PATH or unix:PATH, not '" + spec + "'");
    }

    /** Feeds bytes to the UART as fast as its capped FIFO takes them. */
    static void feed(Serial8250 serial, byte[] data, int len) throws InterruptedException {
        int off = 0;
        while (off < len) {
            int n = serial.enqueue(data, off, len - off);
            off += n;
            if (n == 0) Thread.sleep(1);
        }
    }

    static final class Stdio extends ConsoleIo {
        private final OutputStream out = new FileOutputStream(FileDescriptor.out);
        private MemorySegment saved;
        private Arena arena;
        private Thread pump;

        @Override
        OutputStream output() {
            return out;
        }

        @Override
        void startInput(Serial8250 serial, Runnable quit) {
            if (!LibC.isatty(0)) return; // input only from a terminal: a pipe or /dev/null is not a user typing
            arena = Arena.ofShared();
            saved = arena.allocate(Termios.LAYOUT);
            LibC.tcgetattr(0, saved);
            var raw = arena.allocate(Termios.LAYOUT);
            MemorySegment.copy(saved, 0, raw, 0, Termios.BYTE_SIZE);
            LibC.cfmakeraw(raw);
            // Keep output post-processing so the guest's "\n" still returns the carriage.
            Termios.cOflag(raw, Termios.cOflag(saved));
            // Before raw mode, while the terminal still does its own line handling.
            System.err.println(TERMINAL_HINT);
            System.err.flush();
            LibC.tcsetattr(0, LibcConstants.TCSANOW, raw);
            pump = Thread.ofPlatform().daemon().name("console-input").start(() -> pumpStdin(serial, quit));
        }

        private void pumpStdin(Serial8250 serial, Runnable quit) {
            InputStream in = System.in;
            byte[] buf = new byte[64];
            boolean escape = false;
            try {
                while (true) {
                    int n = in.read(buf);
                    if (n < 0) return;
                    for (int i = 0; i < n; i++) {
                        int b = buf[i] & 0xff;
                        if (escape) {
                            escape = false;
                            if (b == 'x') {
                                quit.run();
                                return;
                            }
                            if (b == 'h' || b == 'H' || b == '?') {
                                System.err.println();
                                System.err.println(KEYS);
                                System.err.flush();
                                continue;
                            }
                            if (b != ESCAPE) feed(serial, new byte[] {(byte) ESCAPE}, 1);
                        } else if (b == ESCAPE) {
                            escape = true;
                            continue;
                        }
                        feed(serial, new byte[] {(byte) b}, 1);
                    }
                }
            } catch (IOException | InterruptedException e) {
                log.debug("console input ended", e);
            }
        }

        @Override
        public void close() {
            if (saved != null) {
                LibC.tcsetattr(0, LibcConstants.TCSANOW, saved);
                saved = null;
                arena.close();
            }
        }
    }

    static final class ToFile extends ConsoleIo {
        private final OutputStream out;

        ToFile(Path path) {
            if (Files.isDirectory(path)) throw new UsageException("--console file:" + path + " is a directory");
            try {
                out = Files.newOutputStream(path);
            } catch (IOException e) {
                throw new UserException("cannot write the console to " + path + ": " + IoErrors.reason(e));
            }
        }

        @Override
        OutputStream output() {
            return out;
        }

        @Override
        void startInput(Serial8250 serial, Runnable quit) {}

        @Override
        public void close() {
            try {
                out.close();
            } catch (IOException e) {
                log.warn("closing the console file: {}", e.getMessage());
            }
        }
    }

    /**
     * A Unix socket the console is served on: output to the connected client, input from it. While
     * no client is connected the last {@link #BACKLOG_BYTES} of output are kept and sent to the
     * next client first, so a client that connects after the start still sees the boot lines.
     */
    static final class UnixSocket extends ConsoleIo {
        private final Path path;
        private final ServerSocketChannel server;
        /** Written under {@code this}, with the backlog: a new client gets the backlog, then everything after it, in order. */
        private volatile SocketChannel client;

        private final Backlog backlog = new Backlog(BACKLOG_BYTES);
        private final Thread acceptor;
        private Consumer<byte[]> input = b -> {};

        UnixSocket(Path path) {
            this.path = path;
            try {
                server = UnixSockets.listen(path);
            } catch (IOException e) {
                throw new UserException("cannot listen for the console on " + path + ": " + IoErrors.reason(e));
            }
            acceptor = Thread.ofPlatform().daemon().name("console-accept").start(this::acceptLoop);
        }

        private void acceptLoop() {
            try {
                while (server.isOpen()) {
                    var c = server.accept();
                    SocketChannel old;
                    synchronized (this) {
                        old = client;
                        client = c;
                        try {
                            var pending = ByteBuffer.wrap(backlog.drain());
                            while (pending.hasRemaining()) c.write(pending);
                        } catch (IOException e) {
                            client = null;
                        }
                    }
                    if (old != null) old.close();
                    Thread.ofPlatform().daemon().name("console-client").start(() -> readClient(c));
                }
            } catch (IOException e) {
                log.debug("console socket closed", e);
            }
        }

        private void readClient(SocketChannel c) {
            var buf = ByteBuffer.allocate(256);
            try {
                while (c.read(buf.clear()) > 0) {
                    byte[] bytes = new byte[buf.position()];
                    buf.flip().get(bytes);
                    input.accept(bytes);
                }
            } catch (IOException e) {
                log.debug("console client gone", e);
            }
        }

        @Override
        OutputStream output() {
            return new OutputStream() {
                @Override
                public void write(int b) {
                    write(new byte[] {(byte) b}, 0, 1);
                }

                @Override
                public void write(byte[] b, int off, int len) {
                    synchronized (UnixSocket.this) {
                        var c = client;
                        if (c == null) {
                            backlog.add(b, off, len);
                            return;
                        }
                        try {
                            var buf = ByteBuffer.wrap(b, off, len);
                            while (buf.hasRemaining()) c.write(buf);
                        } catch (IOException e) {
                            client = null; // the client left; output is kept for the next one
                            backlog.add(b, off, len);
                        }
                    }
                }
            };
        }

        @Override
        void startInput(Serial8250 serial, Runnable quit) {
            input = bytes -> {
                try {
                    feed(serial, bytes, bytes.length);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            };
        }

        @Override
        public void close() {
            try {
                server.close();
                var c = client;
                if (c != null) c.close();
                Files.deleteIfExists(path);
            } catch (IOException e) {
                log.warn("closing the console socket: {}", e.getMessage());
            }
            acceptor.interrupt();
        }
    }

    /** The last {@code capacity} bytes written: a ring that overwrites its oldest bytes. */
    static final class Backlog {
        private final byte[] ring;
        private long written; // total bytes ever added; the ring holds the last min(written, capacity)

        Backlog(int capacity) {
            ring = new byte[capacity];
        }

        void add(byte[] b, int off, int len) {
            if (len >= ring.length) { // only the tail fits
                off += len - ring.length;
                written += len - ring.length;
                len = ring.length;
            }
            int at = (int) (written % ring.length);
            int first = Math.min(len, ring.length - at);
            System.arraycopy(b, off, ring, at, first);
            System.arraycopy(b, off + first, ring, 0, len - first);
            written += len;
        }

        /** The kept bytes, oldest first; the backlog is empty afterwards. */
        byte[] drain() {
            int size = (int) Math.min(written, ring.length);
            var out = new byte[size];
            int start = (int) ((written - size) % ring.length);
            int first = Math.min(size, ring.length - start);
            System.arraycopy(ring, start, out, 0, first);
            System.arraycopy(ring, 0, out, first, size - first);
            written = 0;
            return out;
        }
    }
}
