package dev.panamavmm.devices;

import static org.junit.jupiter.api.Assertions.*;

import java.io.IOException;
import java.io.OutputStream;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import org.junit.jupiter.api.Test;

/**
 * A guest writing nonsense: random offsets, sizes and values, with host input, output failures and
 * save/restore mixed in. Nothing may throw, and each device's invariants hold after every step.
 */
class DeviceFuzzTest {
    private static final int OPERATIONS = 300_000;
    private static final int[] SIZES = {1, 1, 1, 2, 4};

    private static int offset(Random random, int span, int... hot) {
        return switch (random.nextInt(10)) {
            case 0 -> random.nextInt();
            case 1, 2, 3 -> hot.length == 0 ? random.nextInt(span) : hot[random.nextInt(hot.length)];
            default -> random.nextInt(-2, span + 4);
        };
    }

    private static int size(Random random) {
        return random.nextInt(20) == 0 ? random.nextInt(-2, 9) : SIZES[random.nextInt(SIZES.length)];
    }

    private static int value(Random random) {
        return random.nextBoolean() ? random.nextInt(256) : random.nextInt();
    }

    private static void assertFitsSize(int value, int size) {
        if (size == 1) {
            assertEquals(value & 0xFF, value, "a 1-byte read");
        } else if (size == 2) {
            assertEquals(value & 0xFFFF, value, "a 2-byte read");
        }
    }

    /** The line level the 16550 and PC wiring imply for a state: pending, enabled, OUT2, no loopback. */
    private static boolean expectedLevel(Serial8250.State s) {
        boolean pending = ((s.ier() & 0x04) != 0 && s.overrun())
                || ((s.ier() & 0x01) != 0 && s.rxFifo().length > 0)
                || ((s.ier() & 0x02) != 0 && s.thrEmptyPending());
        return pending && (s.mcr() & 0x18) == 0x08;
    }

    @Test
    void serialSurvivesNonsenseAndKeepsItsInvariants() {
        var random = new Random(0x8250);
        var level = new AtomicBoolean(true);
        InterruptLine line = level::set;
        // Fails every third write, to run the error path too.
        var flaky = new OutputStream() {
            int writes;

            @Override
            public void write(int b) throws IOException {
                if (++writes % 3 == 0) {
                    throw new IOException("flaky");
                }
            }
        };
        var uart = new Serial8250(line, flaky);
        var input = new byte[100];
        for (int i = 0; i < OPERATIONS; i++) {
            switch (random.nextInt(20)) {
                case 0 -> {
                    random.nextBytes(input);
                    int len = random.nextInt(input.length + 1);
                    boolean couldAccept = uart.canAcceptInput();
                    int accepted = uart.enqueue(input, 0, len);
                    assertTrue(accepted >= 0 && accepted <= len);
                    assertTrue(accepted == 0 || couldAccept);
                }
                case 1 -> uart.flush();
                case 2 -> {
                    // Save and restore mid-stream; the new device carries on from the state.
                    var saved = uart.state();
                    uart = new Serial8250(saved, line, flaky);
                    assertEquals(saved, uart.state());
                }
                case 3, 4, 5, 6, 7, 8, 9, 10 -> {
                    int size = size(random);
                    assertFitsSize(uart.read(offset(random, Serial8250.PORT_COUNT), size), size);
                }
                default -> uart.write(offset(random, Serial8250.PORT_COUNT), size(random), value(random));
            }
            var state = uart.state();
            assertTrue(state.rxFifo().length <= Serial8250.RX_FIFO_CAPACITY, "receive FIFO over its cap");
            assertTrue(state.fifoEnabled() || state.rxFifo().length <= 1, "holding register over one byte");
            assertEquals(expectedLevel(state), level.get(), "line level after step " + i);
        }
        assertTrue(uart.ignoredAccesses() > 0);
    }

    @Test
    void i8042SurvivesNonsenseAndKeepsItsInvariants() {
        var random = new Random(0x8042);
        int[] resets = new int[1];
        I8042.ResetListener listener = () -> resets[0]++;
        var controller = new I8042(listener);
        int expectedResets = 0;
        for (int i = 0; i < OPERATIONS; i++) {
            int offset = offset(random, 8, I8042.DATA, I8042.STATUS_COMMAND);
            int size = size(random);
            switch (random.nextInt(10)) {
                case 0 -> {
                    var saved = controller.state();
                    controller = new I8042(saved, listener);
                    assertEquals(saved, controller.state());
                }
                case 1, 2, 3, 4 -> {
                    int value = controller.read(offset, size);
                    assertFitsSize(value, size);
                    if (offset == I8042.STATUS_COMMAND && size == 1) {
                        assertEquals(0, value & 0x02, "the input buffer never stays full");
                    }
                }
                default -> {
                    int value = value(random);
                    var before = controller.state();
                    controller.write(offset, size, value);
                    if (size == 1 && offset == I8042.STATUS_COMMAND && (value & 0xF1) == 0xF0) {
                        expectedResets++;
                    } else if (size == 1
                            && offset == I8042.DATA
                            && before.pendingCommand() == I8042.CMD_WRITE_OUTPUT_PORT
                            && (value & 1) == 0) {
                        expectedResets++;
                    }
                }
            }
            assertEquals(expectedResets, resets[0], "resets after step " + i);
            var state = controller.state();
            assertEquals(
                    state,
                    new I8042.State(
                            state.commandByte(),
                            state.outputPort(),
                            state.outputByte(),
                            state.outputFull(),
                            state.pendingCommand(),
                            state.commandWritten()),
                    "state stays valid");
        }
        assertTrue(expectedResets > 0, "the fuzz reached the reset paths");
    }

    @Test
    void vmmPortSurvivesNonsenseAndReportsOnlyItsProtocol() {
        var random = new Random(0x500);
        int[] exits = new int[1];
        int[] events = new int[1];
        var port = new VmmPort(new VmmPort.Listener() {
            @Override
            public void exitRequested(int code) {
                exits[0]++;
            }

            @Override
            public void guestEvent(int event) {
                assertTrue(event >= 0 && event <= 0xFF);
                events[0]++;
            }
        });
        int expectedExits = 0, expectedEvents = 0;
        for (int i = 0; i < OPERATIONS; i++) {
            int offset = offset(
                    random,
                    VmmPort.PORT_COUNT,
                    VmmPort.EXIT,
                    VmmPort.EVENT,
                    VmmPort.GENERATION_ID_LOW,
                    VmmPort.GENERATION_ID_HIGH);
            int size = size(random);
            if (random.nextInt(50) == 0) {
                port.setGenerationId(random.nextLong());
            }
            if (random.nextBoolean()) {
                int value = port.read(offset, size);
                assertFitsSize(value, size);
                if (size == 4 && offset == VmmPort.GENERATION_ID_LOW) {
                    assertEquals((int) port.generationId(), value);
                } else if (size == 4 && offset == VmmPort.GENERATION_ID_HIGH) {
                    assertEquals((int) (port.generationId() >>> 32), value);
                } else {
                    assertEquals(PortIoDevice.allOnes(size), value);
                }
            } else {
                port.write(offset, size, value(random));
                if (size == 4 && offset == VmmPort.EXIT) {
                    expectedExits++;
                } else if (size == 1 && offset == VmmPort.EVENT) {
                    expectedEvents++;
                }
            }
            assertEquals(expectedExits, exits[0]);
            assertEquals(expectedEvents, events[0]);
        }
        assertTrue(expectedExits > 0 && expectedEvents > 0);
    }
}
