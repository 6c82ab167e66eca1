package dev.panamavmm.devices;

import java.io.IOException;
import java.io.OutputStream;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A 16550A-compatible UART as Linux's 8250 driver and early consoles expect at COM1 (base port
 * 0x3f8, IRQ {@value #COM1_IRQ}): eight byte-wide registers at offsets 0-7 with the
 * divisor latch behind LCR's DLAB bit, FIFO control, loopback, scratch register, and the received
 * data available, transmitter holding register empty and receiver line status interrupts with
 * 16550 priorities. MCR's OUT2 gates the interrupt output as it does on PCs.
 *
 * <p>Transmission is instant: every byte written to THR goes to the host {@link OutputStream} at
 * once (flushed after each newline and on {@link #flush()}), so LSR always reports THRE and TEMT
 * and the THRE interrupt is raised again right after each THR write. Output errors never reach
 * the guest: they are counted ({@link #outputErrors()}) and the byte is lost.
 *
 * <p>Host input goes in through {@link #enqueue}, which takes only what fits in the receive FIFO:
 * {@value #RX_FIFO_CAPACITY} bytes with FIFOs enabled, the single holding register without. The
 * cap is the fix for the unbounded serial input buffer found in Firecracker and rust-vmm's
 * vm-superio in 2020 (advisories firecracker#2177, vm-superio#17): a host-side flood must not grow
 * the VMM's memory. Bytes that do not fit stay with the caller, who retries once
 * {@link #canAcceptInput()} says so; they are not an overrun. An overrun (LSR OE) happens when a
 * byte really is lost: a loopback transmit into a full FIFO.
 *
 * <p>Thread-safe: vCPU threads and an input thread may call it at once. The interrupt line and the
 * output stream are called after the device lock is released (see {@link InterruptLine}); output
 * bytes are written under a separate lock, one caller at a time.
 */
public final class Serial8250 implements PortIoDevice {
    /** The base port of COM1. */
    public static final int COM1_BASE = 0x3f8;
    /** The ISA interrupt of COM1. */
    public static final int COM1_IRQ = 4;
    /** Ports the UART occupies from its base. */
    public static final int PORT_COUNT = 8;
    /** Capacity of the receive FIFO; host input beyond it is refused, never buffered. */
    public static final int RX_FIFO_CAPACITY = 64;

    // Register offsets; 0 and 1 are the divisor latch while LCR.DLAB is set.
    static final int RBR_THR = 0, IER = 1, IIR_FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;
    static final int DLL = 0, DLM = 1;
    static final int IER_RDI = 0x01, IER_THRI = 0x02, IER_RLSI = 0x04, IER_MSI = 0x08;
    static final int IER_MASK = IER_RDI | IER_THRI | IER_RLSI | IER_MSI;

    static final int IIR_NO_INT = 0x01, IIR_THRI = 0x02, IIR_RDI = 0x04, IIR_RLSI = 0x06;
    static final int IIR_FIFO_ENABLED = 0xC0;

    static final int FCR_ENABLE_FIFO = 0x01, FCR_CLEAR_RCVR = 0x02, FCR_CLEAR_XMIT = 0x04;

    static final int LCR_DLAB = 0x80;

    static final int MCR_DTR = 0x01, MCR_RTS = 0x02, MCR_OUT1 = 0x04, MCR_OUT2 = 0x08, MCR_LOOP = 0x10;
    static final int MCR_MASK = 0x1F;

    static final int LSR_DR = 0x01, LSR_OE = 0x02, LSR_THRE = 0x20, LSR_TEMT = 0x40;
    static final int MSR_CTS = 0x10, MSR_DSR = 0x20, MSR_RI = 0x40, MSR_DCD = 0x80;

    /**
     * The guest-visible state of the UART: every writable register, the FCR FIFO-enable bit, the
     * sticky overrun bit of LSR, whether a THRE interrupt is pending, and the receive FIFO's
     * contents oldest first. IIR, LSR and MSR are derived from these. Values are unsigned bytes in
     * ints; the array is copied in and out, and equality compares its contents.
     *
     * @param dll divisor latch, low byte
     * @param dlm divisor latch, high byte
     * @param ier interrupt enable register (low four bits)
     * @param lcr line control register
     * @param mcr modem control register (low five bits)
     * @param scr scratch register
     * @param fifoEnabled FCR bit 0: FIFOs on
     * @param overrun LSR's OE bit, set until LSR is read
     * @param thrEmptyPending a THRE interrupt is pending (cleared by an IIR read that reports it)
     * @param rxFifo bytes received and not yet read, oldest first
     */
    public record State(
            int dll,
            int dlm,
            int ier,
            int lcr,
            int mcr,
            int scr,
            boolean fifoEnabled,
            boolean overrun,
            boolean thrEmptyPending,
            byte[] rxFifo) {

        /** A UART after reset, its divisor latch at 9600 baud. */
        public static final State RESET = new State(12, 0, 0, 0, 0, 0, false, false, false, new byte[0]);

        /** Checks that a real 16550A could hold these values. */
        public State {
            requireByte("DLL", dll);
            requireByte("DLM", dlm);
            requireByte("LCR", lcr);
            requireByte("SCR", scr);
            if ((ier & ~IER_MASK) != 0) {
                throw new IllegalArgumentException("IER 0x%x sets bits a 16550A does not have".formatted(ier));
            }
            if ((mcr & ~MCR_MASK) != 0) {
                throw new IllegalArgumentException("MCR 0x%x sets bits a 16550A does not have".formatted(mcr));
            }
            Objects.requireNonNull(rxFifo, "rxFifo");
            if (rxFifo.length > rxCapacity(fifoEnabled)) {
                throw new IllegalArgumentException("receive FIFO holds %d bytes, more than the %d it can hold"
                        .formatted(rxFifo.length, rxCapacity(fifoEnabled)));
            }
            rxFifo = rxFifo.clone();
        }

        /** The receive FIFO's contents, oldest first (a copy). */
        @Override
        public byte[] rxFifo() {
            return rxFifo.clone();
        }

        @Override
        public boolean equals(Object o) {
            return o instanceof State s
                    && dll == s.dll
                    && dlm == s.dlm
                    && ier == s.ier
                    && lcr == s.lcr
                    && mcr == s.mcr
                    && scr == s.scr
                    && fifoEnabled == s.fifoEnabled
                    && overrun == s.overrun
                    && thrEmptyPending == s.thrEmptyPending
                    && Arrays.equals(rxFifo, s.rxFifo);
        }

        @Override
        public int hashCode() {
            return Objects.hash(dll, dlm, ier, lcr, mcr, scr, fifoEnabled, overrun, thrEmptyPending) * 31
                    + Arrays.hashCode(rxFifo);
        }

        @Override
        public String toString() {
            return "Serial8250.State[dll=0x%02x, dlm=0x%02x, ier=0x%02x, lcr=0x%02x, mcr=0x%02x, scr=0x%02x, "
                            .formatted(dll, dlm, ier, lcr, mcr, scr)
                    + "fifoEnabled=%s, overrun=%s, thrEmptyPending=%s, rxFifo=[%s]]"
                            .formatted(
                                    fifoEnabled,
                                    overrun,
                                    thrEmptyPending,
                                    HexFormat.ofDelimiter(" ").formatHex(rxFifo));
        }

        private static void requireByte(String register, int value) {
            if ((value & ~0xFF) != 0) {
                throw new IllegalArgumentException("%s %d is not a byte".formatted(register, value));
            }
        }
    }

    private final Object lock = new Object();
    private final Object outputLock = new Object();
    private final LineDriver irq;
    private final OutputStream out;

    // Guest-visible state, guarded by lock. The receive FIFO is a ring of rxCount bytes from rxHead.
    private int dll, dlm, ier, lcr, mcr, scr;
    private boolean fifoEnabled, overrun, thrEmptyPending;
    private final byte[] rx = new byte[RX_FIFO_CAPACITY];
    private int rxHead, rxCount;

    // Host-side counters: not guest-visible, not state.
    private final AtomicLong ignoredAccesses = new AtomicLong();
    private final AtomicLong outputErrors = new AtomicLong();
    private volatile boolean outputFailed;

    /** A UART after reset, interrupt output {@code irq}, transmitting to {@code out}. */
    public Serial8250(InterruptLine irq, OutputStream out) {
        this(State.RESET, irq, out);
    }

    /**
     * A UART restored to {@code state}. Construction drives {@code irq} to the level the state
     * implies (deasserted for a reset UART), so the interrupt controller must already exist.
     */
    public Serial8250(State state, InterruptLine irq, OutputStream out) {
        Objects.requireNonNull(state, "state");
        this.irq = new LineDriver(irq);
        this.out = Objects.requireNonNull(out, "out");
        long stamp;
        synchronized (lock) {
            dll = state.dll();
            dlm = state.dlm();
            ier = state.ier();
            lcr = state.lcr();
            mcr = state.mcr();
            scr = state.scr();
            fifoEnabled = state.fifoEnabled();
            overrun = state.overrun();
            thrEmptyPending = state.thrEmptyPending();
            for (byte b : state.rxFifo) {
                rx[rxCount++] = b;
            }
            stamp = this.irq.stamp(interruptLevel());
        }
        this.irq.deliver(stamp);
    }

    /** The guest-visible state, consistent as of one instant. */
    public State state() {
        synchronized (lock) {
            var fifo = new byte[rxCount];
            for (int i = 0; i < rxCount; i++) {
                fifo[i] = rx[(rxHead + i) % RX_FIFO_CAPACITY];
            }
            return new State(dll, dlm, ier, lcr, mcr, scr, fifoEnabled, overrun, thrEmptyPending, fifo);
        }
    }

    @Override
    public int read(int offset, int size) {
        if (size != 1 || offset < 0 || offset >= PORT_COUNT) {
            ignoredAccesses.incrementAndGet();
            return PortIoDevice.allOnes(size);
        }
        int value;
        long stamp;
        synchronized (lock) {
            value = switch (offset) {
                case RBR_THR -> dlab() ? dll : popRx();
                case IER -> dlab() ? dlm : ier;
                case IIR_FCR -> readIir();
                case LCR -> lcr;
                case MCR -> mcr;
                case LSR -> readLsr();
                case MSR -> msr();
                default -> scr;
            };
            stamp = irq.stamp(interruptLevel());
        }
        irq.deliver(stamp);
        return value;
    }

    @Override
    public void write(int offset, int size, int value) {
        if (size != 1 || offset < 0 || offset >= PORT_COUNT) {
            ignoredAccesses.incrementAndGet();
            return;
        }
        int b = value & 0xFF;
        int transmitted = -1;
        long stamp;
        synchronized (lock) {
            switch (offset) {
                case RBR_THR -> {
                    if (dlab()) {
                        dll = b;
                    } else {
                        transmitted = transmit(b);
                    }
                }
                case IER -> {
                    if (dlab()) {
                        dlm = b;
                    } else {
                        writeIer(b);
                    }
                }
                case IIR_FCR -> writeFcr(b);
                case LCR -> lcr = b;
                case MCR -> mcr = b & MCR_MASK;
                case SCR -> scr = b;
                default -> {} // LSR and MSR: read-only (factory test registers on real parts)
            }
            stamp = irq.stamp(interruptLevel());
        }
        irq.deliver(stamp);
        if (transmitted >= 0) {
            emit(transmitted);
        }
    }

    /**
     * Offers host input to the receiver and returns how many bytes, from the front of
     * {@code data[off, off+len)}, it took: no more than the receive FIFO has room for, and none
     * in loopback mode (the receiver is disconnected from the line then). The caller keeps the
     * rest and offers it again later.
     */
    public int enqueue(byte[] data, int off, int len) {
        Objects.checkFromIndexSize(off, len, data.length);
        int accepted;
        long stamp;
        synchronized (lock) {
            accepted = loopback() ? 0 : Math.min(len, rxCapacity(fifoEnabled) - rxCount);
            for (int i = 0; i < accepted; i++) {
                pushRx(data[off + i]);
            }
            stamp = irq.stamp(interruptLevel());
        }
        irq.deliver(stamp);
        return accepted;
    }

    /** Whether {@link #enqueue} would take at least one byte now. */
    public boolean canAcceptInput() {
        synchronized (lock) {
            return !loopback() && rxCount < rxCapacity(fifoEnabled);
        }
    }

    /** Flushes the output stream; a failure is counted like a failed write. */
    public void flush() {
        synchronized (outputLock) {
            try {
                out.flush();
            } catch (IOException e) {
                recordOutputFailure();
            }
        }
    }

    /** How many writes or flushes of the output stream failed (each lost output). */
    public long outputErrors() {
        return outputErrors.get();
    }

    /** Whether any write or flush of the output stream has failed. */
    public boolean outputFailed() {
        return outputFailed;
    }

    /** How many guest accesses were ignored: wrong size (the UART is byte-wide) or offset past 7. */
    public long ignoredAccesses() {
        return ignoredAccesses.get();
    }

    // ---- register behaviour; all below run with lock held ----

    private boolean dlab() {
        return (lcr & LCR_DLAB) != 0;
    }

    private boolean loopback() {
        return (mcr & MCR_LOOP) != 0;
    }

    /** Returns the byte for the output stream, or -1 when loopback took it. */
    private int transmit(int b) {
        // THR empties at once, so the THRE interrupt this write cleared is raised again at once.
        thrEmptyPending = (ier & IER_THRI) != 0;
        if (loopback()) {
            if (rxCount < rxCapacity(fifoEnabled)) {
                pushRx((byte) b);
            } else {
                overrun = true;
            }
            return -1;
        }
        return b;
    }

    private void writeIer(int b) {
        int changed = (ier ^ b) & IER_MASK;
        ier = b & IER_MASK;
        // THR is always empty, so enabling THRI raises the interrupt even if an IIR read had
        // cleared it before: Linux's startup THRE test depends on this (as does Windows).
        if ((changed & IER_THRI) != 0) {
            thrEmptyPending = (ier & IER_THRI) != 0;
        }
    }

    private void writeFcr(int b) {
        boolean enable = (b & FCR_ENABLE_FIFO) != 0;
        // Changing the FIFO mode clears the FIFOs; the clear bits only act while FIFOs are on.
        // The transmit side has nothing to clear: bytes leave at once.
        if (enable != fifoEnabled || (enable && (b & FCR_CLEAR_RCVR) != 0)) {
            rxHead = 0;
            rxCount = 0;
        }
        fifoEnabled = enable;
    }

    private int readIir() {
        int id = pendingInterrupt();
        // Reading IIR acknowledges THRE only when THRE is the interrupt it reports.
        if (id == IIR_THRI) {
            thrEmptyPending = false;
        }
        return id | (fifoEnabled ? IIR_FIFO_ENABLED : 0);
    }

    private int readLsr() {
        int lsr = (rxCount > 0 ? LSR_DR : 0) | (overrun ? LSR_OE : 0) | LSR_THRE | LSR_TEMT;
        overrun = false;
        return lsr;
    }

    private int msr() {
        if (!loopback()) {
            // A connected line: drivers that wait for CTS/DSR/DCD go ahead.
            return MSR_CTS | MSR_DSR | MSR_DCD;
        }
        return ((mcr & MCR_RTS) != 0 ? MSR_CTS : 0)
                | ((mcr & MCR_DTR) != 0 ? MSR_DSR : 0)
                | ((mcr & MCR_OUT1) != 0 ? MSR_RI : 0)
                | ((mcr & MCR_OUT2) != 0 ? MSR_DCD : 0);
    }

    private int pendingInterrupt() {
        if ((ier & IER_RLSI) != 0 && overrun) {
            return IIR_RLSI;
        }
        if ((ier & IER_RDI) != 0 && rxCount > 0) {
            return IIR_RDI;
        }
        if ((ier & IER_THRI) != 0 && thrEmptyPending) {
            return IIR_THRI;
        }
        return IIR_NO_INT;
    }

    private boolean interruptLevel() {
        // On a PC the UART's interrupt reaches the PIC only through the OUT2 pin, which loopback
        // forces inactive (16550 datasheet), so loopback interrupts show in IIR but not on the line.
        return pendingInterrupt() != IIR_NO_INT && (mcr & (MCR_OUT2 | MCR_LOOP)) == MCR_OUT2;
    }

    private void pushRx(byte b) {
        rx[(rxHead + rxCount) % RX_FIFO_CAPACITY] = b;
        rxCount++;
    }

    private int popRx() {
        if (rxCount == 0) {
            return 0;
        }
        int b = rx[rxHead] & 0xFF;
        rxHead = (rxHead + 1) % RX_FIFO_CAPACITY;
        rxCount--;
        return b;
    }

    private static int rxCapacity(boolean fifoEnabled) {
        return fifoEnabled ? RX_FIFO_CAPACITY : 1;
    }

    // ---- output, outside the device lock ----

    private void emit(int b) {
        synchronized (outputLock) {
            try {
                out.write(b);
                if (b == '\n') {
                    out.flush();
                }
            } catch (IOException e) {
                recordOutputFailure();
            }
        }
    }

    private void recordOutputFailure() {
        outputErrors.incrementAndGet();
        outputFailed = true;
    }
}
