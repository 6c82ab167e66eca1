package dev.panamavmm.cli;

import dev.panamavmm.devices.Serial8250;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.bindings.Termios;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.log.Log;
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

/**
 * Where the guest's serial console goes and where its input comes from:
 * {@code stdout} (input from stdin when it is a terminal, switched to raw mode; Ctrl-A x quits),
 * {@code file:PATH} (output only), or {@code unix:PATH} (a listening socket; one client at a time
 * gets the output and types the input).
 */
abstract sealed class ConsoleIo implements AutoCloseable {
    private static final Log log = Log.of(ConsoleIo.class);
    /** Ctrl-A, then 'x': quit (as QEMU's -nographic console). */
    static final int ESCAPE = 0x01;

    /** The stream the UART writes the guest's output to. */
    abstract OutputStream output();

    /** Starts feeding input into {@code serial}; {@code quit} runs when the user asks to end the VM. */
    abstract void startInput(Serial8250 serial, Runnable quit);

    @Override
    public abstract void close();

    /** Rejects a malformed {@code --console} before anything is built. */
    static void checkSpec(String spec) {
        if (spec.equals("stdout") || (spec.startsWith("file:") && spec.length() > 5) || (spec.startsWith("unix:") && spec.length() > 5)) return;
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

    /** A Unix socket the console is served on: output to the connected client (dropped when none), input from it. */
    static final class UnixSocket extends ConsoleIo {
        private final Path path;
        private final ServerSocketChannel server;
        private volatile SocketChannel client;
        private final Thread acceptor;
        private Consumer<byte[]> input = b -> { };

        UnixSocket(Path path) {
            this.path = path;
            try {
                server = dev.panamavmm.api.UnixSockets.listen(path);
            } catch (IOException e) {
                throw new UserException("cannot listen for the console on " + path + ": " + IoErrors.reason(e));
            }
            acceptor = Thread.ofPlatform().daemon().name("console-accept").start(this::acceptLoop);
        }

        private void acceptLoop() {
            try {
                while (server.isOpen()) {
                    var c = server.accept();
                    var old = client;
                    client = c;
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
                    var c = client;
                    if (c == null) return;
                    try {
                        var buf = ByteBuffer.wrap(b, off, len);
                        while (buf.hasRemaining()) c.write(buf);
                    } catch (IOException e) {
                        client = null; // the client left; output is dropped until the next one connects
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
}
