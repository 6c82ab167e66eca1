package dev.panamavmm.devices;

import static dev.panamavmm.devices.Serial8250.*;
import static org.junit.jupiter.api.Assertions.*;

import java.io.ByteArrayOutputStream;
import java.io.FilterOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Drives the UART the way Linux's 8250 driver and a polled early console do. */
class Serial8250Test {
    private final List<Boolean> levels = new ArrayList<>();
    private final ByteArrayOutputStream output = new ByteArrayOutputStream();
    private final Serial8250 uart = new Serial8250(levels::add, output);

    private int in(int offset) {
        int v = uart.read(offset, 1);
        assertEquals(v & 0xFF, v, "a byte read has nothing above bit 7");
        return v;
    }

    private void out(int offset, int value) {
        uart.write(offset, 1, value);
    }

    private boolean line() {
        return levels.getLast();
    }

    private String transmitted() {
        return output.toString(StandardCharsets.ISO_8859_1);
    }

    /** serial8250_do_startup then set_termios for 115200 8N1, as Linux leaves an idle port. */
    private void linuxStartup() {
        out(IIR_FCR, FCR_ENABLE_FIFO);
        out(IIR_FCR, FCR_ENABLE_FIFO | FCR_CLEAR_RCVR | FCR_CLEAR_XMIT);
        out(IIR_FCR, 0);
        in(LSR);
        in(RBR_THR);
        in(IIR_FCR);
        in(MSR);
        out(LCR, 0x03);
        out(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
        out(IER, IER_RLSI | IER_RDI);
        out(LCR, LCR_DLAB | 0x03);
        out(DLL, 1);
        out(DLM, 0);
        out(LCR, 0x03);
        out(IIR_FCR, FCR_ENABLE_FIFO | 0x80); // 16550A: RX trigger at 8 bytes
    }

    @Test
    void constructionDrivesTheLineLow() {
        assertEquals(List.of(false), levels);
        assertEquals(State.RESET, uart.state());
        assertEquals(IIR_NO_INT, in(IIR_FCR));
        assertEquals(LSR_THRE | LSR_TEMT, in(LSR));
    }

    @Test
    void linuxAutoconfigDetectsA16550A() {
        // IER probe: the low four bits stick, nothing else.
        out(IER, 0);
        assertEquals(0, in(IER) & 0x0F);
        out(IER, 0x0F);
        assertEquals(0x0F, in(IER) & 0x0F);
        out(IER, 0);

        // Loopback probe: RTS and OUT2 come back as CTS and DCD.
        int savedMcr = in(MCR);
        out(MCR, MCR_LOOP | 0x0A);
        assertEquals(0x90, in(MSR) & 0xF0);
        out(MCR, savedMcr);

        // With FIFOs on, IIR's top bits say 16550A.
        out(LCR, 0);
        out(IIR_FCR, FCR_ENABLE_FIFO);
        assertEquals(3, in(IIR_FCR) >> 6);

        // No EFR behind LCR 0x80 or 0xBF (offset 2 still reads IIR, non-zero): not a 16650.
        out(LCR, 0x80);
        assertNotEquals(0, in(IIR_FCR));
        out(LCR, 0xBF);
        assertNotEquals(0, in(IIR_FCR));

        // The 64-byte FIFO bit never shows: not a 16750.
        out(LCR, 0);
        out(IIR_FCR, FCR_ENABLE_FIFO | 0x20);
        assertEquals(0xC0, in(IIR_FCR) & 0xE0);
        out(LCR, LCR_DLAB);
        out(IIR_FCR, FCR_ENABLE_FIFO | 0x20);
        assertEquals(0xC0, in(IIR_FCR) & 0xE0);
        out(LCR, 0);

        // IER bit 6 (XScale UUE) does not stick.
        out(IER, 0x40);
        assertEquals(0, in(IER) & 0x40);

        // Scratch register holds what is written.
        out(SCR, 0xA5);
        assertEquals(0xA5, in(SCR));
        out(SCR, 0x5A);
        assertEquals(0x5A, in(SCR));
        assertEquals(List.of(false), levels, "nothing here enables an interrupt on the line");
    }

    @Test
    void linuxStartupSeesTheThreInterruptReassertedWhenIerEnablesItAgain() {
        out(IIR_FCR, 0);
        out(LCR, 0x03);
        out(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
        levels.clear();

        // The UART_BUG_THRE test in serial8250_do_startup.
        out(IER, IER_THRI);
        int iir1 = in(IIR_FCR);
        out(IER, 0);
        out(IER, IER_THRI);
        int iir = in(IIR_FCR);
        out(IER, 0);

        assertEquals(IIR_THRI, iir1);
        assertEquals(IIR_THRI, iir, "a real 16550 re-asserts THRE when IER enables it with THR empty");
        assertEquals(List.of(true, false, true, false), levels);
        assertEquals(IIR_NO_INT, in(IIR_FCR));
    }

    @Test
    void interruptDrivenTransmitAssertsAndDeassertsLikeLinuxExpects() {
        linuxStartup();
        levels.clear();
        var text = "Linux version 6.1\n".getBytes(StandardCharsets.ISO_8859_1);

        // __start_tx enables THRI: the interrupt comes at once, THR being empty.
        out(IER, IER_RLSI | IER_RDI | IER_THRI);
        assertEquals(List.of(true), levels);

        // serial8250_handle_irq: IIR says THRE (and acknowledges it), LSR says room, up to 16 bytes go.
        assertEquals(IIR_FIFO_ENABLED | IIR_THRI, in(IIR_FCR));
        assertFalse(line());
        assertEquals(LSR_THRE | LSR_TEMT, in(LSR) & (LSR_THRE | LSR_TEMT));
        for (int i = 0; i < 16; i++) {
            out(RBR_THR, text[i]);
        }
        assertEquals(List.of(true, false, true), levels, "THR emptied again: THRE re-raised");

        // Next round: the rest, then the buffer is empty and __stop_tx disables THRI.
        assertEquals(IIR_FIFO_ENABLED | IIR_THRI, in(IIR_FCR));
        for (int i = 16; i < text.length; i++) {
            out(RBR_THR, text[i]);
        }
        assertEquals(IIR_FIFO_ENABLED | IIR_THRI, in(IIR_FCR));
        out(IER, IER_RLSI | IER_RDI);
        assertEquals(IIR_FIFO_ENABLED | IIR_NO_INT, in(IIR_FCR));

        assertEquals(List.of(true, false, true, false, true, false), levels);
        assertEquals("Linux version 6.1\n", transmitted());
    }

    @Test
    void receivedDataRaisesRdaUntilTheFifoIsDrained() {
        linuxStartup();
        levels.clear();
        var input = "root\n".getBytes(StandardCharsets.ISO_8859_1);

        assertEquals(input.length, uart.enqueue(input, 0, input.length));
        assertEquals(List.of(true), levels);

        // serial8250_rx_chars: read RBR while LSR says data ready.
        assertEquals(IIR_FIFO_ENABLED | IIR_RDI, in(IIR_FCR));
        var received = new StringBuilder();
        int lsr = in(LSR);
        while ((lsr & LSR_DR) != 0) {
            received.append((char) in(RBR_THR));
            lsr = in(LSR);
        }
        assertEquals("root\n", received.toString());
        assertEquals(List.of(true, false), levels, "the line drops with the last byte read");
        assertEquals(IIR_FIFO_ENABLED | IIR_NO_INT, in(IIR_FCR));
        assertEquals(0, in(RBR_THR), "an empty receiver reads 0");
    }

    @Test
    void polledDriverLikeEarlyPrintkTransmitsWithoutInterrupts() {
        // arch/x86/kernel/early_printk.c: early_serial_init then early_serial_putc.
        out(LCR, 0x03);
        out(IER, 0);
        out(IIR_FCR, 0);
        out(MCR, MCR_DTR | MCR_RTS);
        out(LCR, LCR_DLAB | 0x03);
        out(DLL, 115200 / 9600);
        out(DLM, 0);
        out(LCR, 0x03);
        for (byte b : "early console in setup code\n".getBytes(StandardCharsets.ISO_8859_1)) {
            int spins = 0;
            while ((in(LSR) & LSR_THRE) == 0) {
                assertTrue(++spins < 10, "THRE never came");
            }
            out(RBR_THR, b);
        }
        assertEquals("early console in setup code\n", transmitted());
        assertEquals(List.of(false), levels);
        var state = uart.state();
        assertEquals(12, state.dll());
        assertEquals(0, state.dlm());
    }

    @Test
    void out2GatesTheInterruptOutput() {
        out(IER, IER_RDI);
        uart.enqueue(new byte[] {'x'}, 0, 1);
        assertEquals(IIR_RDI, in(IIR_FCR), "pending inside the UART");
        assertFalse(line(), "but OUT2 is low");
        out(MCR, MCR_OUT2);
        assertTrue(line());
        out(MCR, MCR_OUT2 | MCR_LOOP);
        assertFalse(line(), "loopback forces the OUT2 pin inactive");
        out(MCR, MCR_OUT2);
        assertTrue(line());
        assertEquals('x', in(RBR_THR));
        assertFalse(line());
        assertEquals(List.of(false, true, false, true, false), levels);
    }

    @Test
    void iirReportsTheHighestPriorityAndOnlyAcknowledgesThreWhenReportingIt() {
        out(MCR, MCR_OUT2);
        out(IER, IER_RDI | IER_THRI);
        uart.enqueue(new byte[] {'a'}, 0, 1);
        assertEquals(IIR_RDI, in(IIR_FCR));
        assertEquals(IIR_RDI, in(IIR_FCR), "reading IIR does not acknowledge received data");
        assertEquals('a', in(RBR_THR));
        assertTrue(line(), "THRE is still pending behind RDA");
        assertEquals(IIR_THRI, in(IIR_FCR));
        assertEquals(IIR_NO_INT, in(IIR_FCR));
        assertFalse(line());
    }

    @Test
    void writingThrWhileThreIsDisabledLeavesNothingPending() {
        out(MCR, MCR_OUT2);
        out(RBR_THR, 'z');
        assertFalse(uart.state().thrEmptyPending());
        out(IER, IER_THRI);
        assertTrue(line(), "enabling THRI with THR empty raises it");
    }

    @Test
    void receiveFifoIsCappedAt64AndRefusedInputStaysWithTheCaller() {
        out(IIR_FCR, FCR_ENABLE_FIFO);
        var flood = new byte[100];
        for (int i = 0; i < flood.length; i++) {
            flood[i] = (byte) i;
        }
        assertEquals(RX_FIFO_CAPACITY, uart.enqueue(flood, 0, flood.length));
        assertFalse(uart.canAcceptInput());
        assertEquals(0, uart.enqueue(flood, 64, 36));
        assertEquals(LSR_DR, in(LSR) & (LSR_DR | LSR_OE), "refused input is not an overrun");
        assertEquals(64, uart.state().rxFifo().length);

        assertEquals(0, in(RBR_THR));
        assertTrue(uart.canAcceptInput());
        assertEquals(1, uart.enqueue(flood, 64, 36));
        for (int i = 1; i <= 64; i++) {
            assertEquals(i, in(RBR_THR));
        }
        assertEquals(0, in(LSR) & LSR_DR);
    }

    @Test
    void withoutFifosTheReceiverHoldsOneByte() {
        var input = "abc".getBytes(StandardCharsets.ISO_8859_1);
        assertEquals(1, uart.enqueue(input, 0, 3));
        assertFalse(uart.canAcceptInput());
        assertEquals('a', in(RBR_THR));
        assertEquals(1, uart.enqueue(input, 1, 2));
        assertEquals('b', in(RBR_THR));
    }

    @Test
    void loopbackOverflowSetsOverrunAndRaisesLineStatusFirst() {
        out(IIR_FCR, FCR_ENABLE_FIFO);
        out(MCR, MCR_LOOP | MCR_OUT2);
        out(IER, IER_RLSI | IER_RDI);
        for (int i = 0; i <= RX_FIFO_CAPACITY; i++) {
            out(RBR_THR, i);
        }
        assertEquals(IIR_FIFO_ENABLED | IIR_RLSI, in(IIR_FCR));
        assertEquals(LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT, in(LSR));
        assertEquals(LSR_DR | LSR_THRE | LSR_TEMT, in(LSR), "reading LSR clears OE");
        assertEquals(IIR_FIFO_ENABLED | IIR_RDI, in(IIR_FCR));
        for (int i = 0; i < RX_FIFO_CAPACITY; i++) {
            assertEquals(i, in(RBR_THR), "the 65th byte was the one lost");
        }
        assertEquals("", transmitted(), "loopback sends nothing to the line");
        assertEquals(List.of(false), levels, "no interrupt leaves the chip in loopback");
    }

    @Test
    void loopbackMsrReflectsMcrAndTheReceiverIgnoresTheLine() {
        assertEquals(MSR_CTS | MSR_DSR | MSR_DCD, in(MSR), "a connected line outside loopback");
        for (int bits = 0; bits < 16; bits++) {
            out(MCR, MCR_LOOP | bits);
            int expected = ((bits & MCR_DTR) != 0 ? MSR_DSR : 0)
                    | ((bits & MCR_RTS) != 0 ? MSR_CTS : 0)
                    | ((bits & MCR_OUT1) != 0 ? MSR_RI : 0)
                    | ((bits & MCR_OUT2) != 0 ? MSR_DCD : 0);
            assertEquals(expected, in(MSR), "MCR bits 0x%x".formatted(bits));
        }
        assertFalse(uart.canAcceptInput());
        assertEquals(0, uart.enqueue(new byte[] {'q'}, 0, 1));
        out(RBR_THR, 'L');
        assertEquals('L', in(RBR_THR));
        out(MCR, 0);
        assertTrue(uart.canAcceptInput());
    }

    @Test
    void fcrClearsTheReceiveFifo() {
        out(IIR_FCR, FCR_ENABLE_FIFO);
        uart.enqueue(new byte[5], 0, 5);
        out(IIR_FCR, FCR_ENABLE_FIFO | FCR_CLEAR_RCVR);
        assertEquals(0, in(LSR) & LSR_DR);

        uart.enqueue(new byte[5], 0, 5);
        out(IIR_FCR, 0);
        assertEquals(0, in(LSR) & LSR_DR, "turning FIFOs off clears them");

        uart.enqueue(new byte[1], 0, 1);
        out(IIR_FCR, FCR_CLEAR_RCVR);
        assertEquals(LSR_DR, in(LSR) & LSR_DR, "FCR clear bits need FCR bit 0");
        assertEquals(0, in(IIR_FCR) & IIR_FIFO_ENABLED, "FIFOs stay off");
    }

    @Test
    void dlabSwitchesOffsetsZeroAndOneToTheDivisorLatch() {
        out(IER, IER_RDI);
        out(LCR, LCR_DLAB | 0x03);
        out(DLL, 0x34);
        out(DLM, 0x12);
        assertEquals(0x34, in(DLL));
        assertEquals(0x12, in(DLM));
        assertEquals("", transmitted(), "a DLL write is not a transmit");
        out(LCR, 0x03);
        assertEquals(IER_RDI, in(IER));
        var state = uart.state();
        assertEquals(0x34, state.dll());
        assertEquals(0x12, state.dlm());
    }

    @Test
    void flushesAfterEachNewlineAndWhenAsked() {
        var flushes = new int[1];
        var sink = new ByteArrayOutputStream();
        var counting = new FilterOutputStream(sink) {
            @Override
            public void flush() throws IOException {
                flushes[0]++;
                super.flush();
            }
        };
        var serial = new Serial8250(_ -> {}, counting);
        for (byte b : "one\ntwo".getBytes(StandardCharsets.ISO_8859_1)) {
            serial.write(RBR_THR, 1, b);
        }
        assertEquals(1, flushes[0]);
        serial.flush();
        assertEquals(2, flushes[0]);
        assertEquals("one\ntwo", sink.toString(StandardCharsets.ISO_8859_1));
    }

    @Test
    void outputErrorsAreCountedAndNeverReachTheGuest() {
        var broken = new OutputStream() {
            @Override
            public void write(int b) throws IOException {
                throw new IOException("pipe closed");
            }

            @Override
            public void flush() throws IOException {
                throw new IOException("pipe closed");
            }
        };
        var serial = new Serial8250(_ -> {}, broken);
        assertFalse(serial.outputFailed());
        serial.write(RBR_THR, 1, 'a');
        serial.write(RBR_THR, 1, 'b');
        serial.flush();
        assertEquals(3, serial.outputErrors());
        assertTrue(serial.outputFailed());
        assertEquals(LSR_THRE | LSR_TEMT, serial.read(LSR, 1), "the guest sees a healthy transmitter");
    }

    @Test
    void wideAndOutOfRangeAccessesAreIgnored() {
        assertEquals(0xFFFF, uart.read(LSR, 2));
        assertEquals(0xFFFF_FFFF, uart.read(RBR_THR, 4));
        assertEquals(0xFF, uart.read(8, 1));
        assertEquals(0xFF, uart.read(-1, 1));
        uart.write(SCR, 2, 0x1234);
        uart.write(RBR_THR, 4, 'x');
        uart.write(8, 1, 'x');
        assertEquals(0, in(SCR));
        assertEquals("", transmitted());
        assertEquals(7, uart.ignoredAccesses());
    }

    @Test
    void stateRoundTripRestoresRegistersFifoAndTheInterruptLevel() {
        linuxStartup();
        out(SCR, 0x77);
        out(IER, IER_RLSI | IER_RDI | IER_THRI);
        in(IIR_FCR); // acknowledge THRE so the saved state has it clear
        uart.enqueue("saved".getBytes(StandardCharsets.ISO_8859_1), 0, 5);
        assertTrue(line());
        var saved = uart.state();

        var restoredLevels = new ArrayList<Boolean>();
        var restoredOutput = new ByteArrayOutputStream();
        var restored = new Serial8250(saved, restoredLevels::add, restoredOutput);
        assertEquals(saved, restored.state());
        assertEquals(saved.hashCode(), restored.state().hashCode());
        assertEquals(List.of(true), restoredLevels, "a pending interrupt is re-asserted on restore");

        // Both devices now behave the same under the same accesses.
        int[][] script = {
            {LSR},
            {IIR_FCR},
            {RBR_THR},
            {MSR},
            {RBR_THR, 'k'},
            {IER, IER_RDI},
            {RBR_THR},
            {RBR_THR},
            {RBR_THR},
            {RBR_THR},
            {IIR_FCR},
            {LCR},
            {SCR},
            {DLM}
        };
        for (int[] step : script) {
            if (step.length == 1) {
                assertEquals(uart.read(step[0], 1), restored.read(step[0], 1), "read offset " + step[0]);
            } else {
                uart.write(step[0], 1, step[1]);
                restored.write(step[0], 1, step[1]);
            }
            assertEquals(uart.state(), restored.state());
            assertEquals(line(), restoredLevels.getLast());
        }
        assertEquals(transmitted(), restoredOutput.toString(StandardCharsets.ISO_8859_1));
    }

    @Test
    void stateRejectsValuesNoUartCouldHoldAndCopiesTheFifo() {
        assertThrows(
                IllegalArgumentException.class, () -> new State(256, 0, 0, 0, 0, 0, false, false, false, new byte[0]));
        assertThrows(
                IllegalArgumentException.class, () -> new State(0, 0, 0x10, 0, 0, 0, false, false, false, new byte[0]));
        assertThrows(
                IllegalArgumentException.class, () -> new State(0, 0, 0, 0, 0x20, 0, false, false, false, new byte[0]));
        assertThrows(
                IllegalArgumentException.class, () -> new State(0, 0, 0, -1, 0, 0, false, false, false, new byte[0]));
        assertThrows(
                IllegalArgumentException.class, () -> new State(0, 0, 0, 0, 0, 0, true, false, false, new byte[65]));
        assertThrows(
                IllegalArgumentException.class, () -> new State(0, 0, 0, 0, 0, 0, false, false, false, new byte[2]));
        assertThrows(NullPointerException.class, () -> new State(0, 0, 0, 0, 0, 0, false, false, false, null));

        var fifo = new byte[] {1, 2, 3};
        var state = new State(0, 0, 0, 0, 0, 0, true, false, false, fifo);
        fifo[0] = 9;
        assertEquals(1, state.rxFifo()[0]);
        state.rxFifo()[1] = 9;
        assertEquals(2, state.rxFifo()[1]);
        assertTrue(state.toString().contains("rxFifo=[01 02 03]"), state.toString());
    }
}
