package dev.panamavmm.devices;

import static dev.panamavmm.devices.Serial8250.*;
import static org.junit.jupiter.api.Assertions.*;

import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;

/** An input thread and a vCPU thread at once, and callbacks that re-enter the device. */
class Serial8250ConcurrencyTest {

    @Test
    void inputAndGuestThreadsLoseNoByteAndLeaveTheLineAtTheRightLevel() throws Exception {
        var level = new AtomicBoolean();
        var uart = new Serial8250(level::set, OutputStream.nullOutputStream());
        uart.write(IIR_FCR, 1, FCR_ENABLE_FIFO);
        uart.write(MCR, 1, MCR_OUT2);
        uart.write(IER, 1, IER_RDI | IER_THRI);
        int total = 20_000;
        var failure = new AtomicReference<Throwable>();

        var input = Thread.ofPlatform().start(() -> {
            var chunk = new byte[17];
            int sent = 0;
            while (sent < total) {
                int n = Math.min(chunk.length, total - sent);
                for (int i = 0; i < n; i++) {
                    chunk[i] = (byte) (sent + i);
                }
                int off = 0;
                while (off < n) {
                    off += uart.enqueue(chunk, off, n - off);
                    if (off < n) {
                        Thread.yield();
                    }
                }
                sent += n;
            }
        });
        var guest = Thread.ofPlatform().start(() -> {
            try {
                int received = 0;
                while (received < total) {
                    if ((uart.read(LSR, 1) & LSR_DR) != 0) {
                        assertEquals(received & 0xFF, uart.read(RBR_THR, 1), "byte " + received);
                        received++;
                        if (received % 7 == 0) {
                            uart.read(IIR_FCR, 1); // acknowledge THRE now and then
                            uart.write(RBR_THR, 1, 'x');
                        }
                    }
                }
            } catch (Throwable t) {
                failure.set(t);
            }
        });
        input.join();
        guest.join();
        if (failure.get() != null) {
            throw new AssertionError(failure.get());
        }

        var state = uart.state();
        assertEquals(0, state.rxFifo().length);
        boolean pending = state.thrEmptyPending(); // RDI has nothing left to report
        assertEquals(pending, level.get(), "the line ends at the level the state implies");
        uart.read(IIR_FCR, 1);
        uart.write(IER, 1, 0);
        assertFalse(level.get());
    }

    @Test
    void interruptLineMayWaitForAnotherThreadThatChangesTheLevel() {
        assertTimeoutPreemptively(Duration.ofSeconds(10), () -> {
            try (ExecutorService handler = Executors.newSingleThreadExecutor()) {
                var holder = new AtomicReference<Serial8250>();
                var levels = new CopyOnWriteArrayList<Boolean>();
                InterruptLine line = asserted -> {
                    levels.add(asserted);
                    var uart = holder.get();
                    if (uart != null) {
                        // Another thread acknowledges THRE meanwhile. This deadlocks if the device
                        // (or the delivery of levels) holds a lock while calling the line.
                        var iir = handler.submit(() -> uart.read(IIR_FCR, 1));
                        try {
                            iir.get();
                        } catch (Exception e) {
                            throw new AssertionError(e);
                        }
                    }
                };
                var uart = new Serial8250(line, OutputStream.nullOutputStream());
                holder.set(uart);
                uart.write(MCR, 1, MCR_OUT2);
                uart.write(IER, 1, IER_RDI | IER_THRI);
                assertEquals(List.of(false, true, false), levels, "the handler's deassert was delivered too");
                uart.enqueue(new byte[] {1}, 0, 1);
                assertEquals(List.of(false, true, false, true), levels);
                assertEquals(IIR_RDI, uart.read(IIR_FCR, 1));
            }
        });
    }

    @Test
    void outputStreamMayWaitForTheInputThread() {
        assertTimeoutPreemptively(Duration.ofSeconds(10), () -> {
            try (ExecutorService inputThread = Executors.newSingleThreadExecutor()) {
                var holder = new AtomicReference<Serial8250>();
                var sink = new ByteArrayOutputStream();
                var out = new OutputStream() {
                    @Override
                    public void write(int b) {
                        // Like a pty echoing back: the input thread must get into the device meanwhile.
                        var echo = inputThread.submit(() -> holder.get().enqueue(new byte[] {(byte) b}, 0, 1));
                        try {
                            echo.get();
                        } catch (Exception e) {
                            throw new AssertionError(e);
                        }
                        sink.write(b);
                    }
                };
                var uart = new Serial8250(_ -> {}, out);
                holder.set(uart);
                uart.write(RBR_THR, 1, 'e');
                assertEquals('e', uart.read(RBR_THR, 1));
                assertEquals("e", sink.toString());
            }
        });
    }

    @Test
    void aLineThatCallsBackIntoTheDeviceOnTheSameThreadEndsAtTheNewestLevel() {
        var holder = new AtomicReference<Serial8250>();
        var level = new AtomicBoolean();
        InterruptLine line = asserted -> {
            level.set(asserted);
            if (asserted && holder.get() != null) {
                holder.get().read(RBR_THR, 1); // a handler draining the receiver at once
            }
        };
        var uart = new Serial8250(line, OutputStream.nullOutputStream());
        holder.set(uart);
        uart.write(MCR, 1, MCR_OUT2);
        uart.write(IER, 1, IER_RDI);
        uart.enqueue(new byte[] {'r'}, 0, 1);
        assertEquals(0, uart.state().rxFifo().length);
        assertFalse(level.get(), "the nested deassert is the newest level and wins");
    }
}
