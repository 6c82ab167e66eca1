package dev.panamavmm.devices;

import java.util.Objects;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The PS/2 controller (i8042) of a PC with nothing plugged in: enough for Linux's i8042 probe and
 * for a guest to reset the machine. Offsets are {@code port - 0x60}: {@value #DATA} is the data
 * port 0x60, {@value #STATUS_COMMAND} the status (read) and command (write) port 0x64. Register it
 * as the {@value #PORT_COUNT}-port range from 0x60 (as Firecracker does); offsets 1-3
 * read as all ones and ignore writes, like an empty bus. Port 0x61 (speaker and PIT gate) is not
 * the controller's, but with KVM's in-kernel PIT it never leaves the kernel. A bus that registers
 * 0x60 and 0x64 separately must still pass offsets from 0x60.
 *
 * <p>Modelled: the status register, the command byte (read 0x20, write 0x60), controller self-test
 * (0xAA answers 0x55), interface tests (0xAB, 0xA9 answer 0x00), keyboard and aux disable/enable
 * (0xAD/0xAE/0xA7/0xA8 set and clear the command byte's disable bits), the output port (read
 * 0xD0, write 0xD1; bit 0 clear asserts the reset line), writing the keyboard output buffer
 * (0xD2), and pulsing output port lines (0xF0-0xFF; any command with bit 0 clear, such as 0xFE,
 * pulses reset). A reset request calls the {@link ResetListener}.
 *
 * <p>No keyboard or mouse: bytes the guest sends to them are dropped, aux commands (0xD3, 0xD4)
 * consume their parameter and do nothing, and there is no interrupt output, since the only bytes
 * the controller ever has for the guest are replies to its own commands, which drivers poll for.
 * The output buffer is one byte, as on the chip: a new reply replaces an unread one. A20 gating is
 * not modelled (output port bit 1 is stored, memory is unaffected).
 *
 * <p>Thread-safe; the listener is called after the device lock is released.
 */
public final class I8042 implements PortIoDevice {
    /** The base port to register the controller at. */
    public static final int BASE = 0x60;
    /** Ports from {@link #BASE} to register: 0x60-0x64. */
    public static final int PORT_COUNT = 5;
    /** Offset of the data port, 0x60. */
    public static final int DATA = 0;
    /** Offset of the status/command port, 0x64. */
    public static final int STATUS_COMMAND = 4;

    static final int STATUS_OBF = 0x01, STATUS_SYS = 0x04, STATUS_COMMAND_WRITTEN = 0x08, STATUS_UNLOCKED = 0x10;
    static final int CTR_KBDINT = 0x01, CTR_SYS = 0x04, CTR_KBDDIS = 0x10, CTR_AUXDIS = 0x20, CTR_XLATE = 0x40;
    static final int CMD_READ_CTR = 0x20, CMD_WRITE_CTR = 0x60;
    static final int CMD_DISABLE_AUX = 0xA7, CMD_ENABLE_AUX = 0xA8, CMD_TEST_AUX = 0xA9;
    static final int CMD_SELF_TEST = 0xAA, CMD_TEST_KBD = 0xAB, CMD_DISABLE_KBD = 0xAD, CMD_ENABLE_KBD = 0xAE;
    static final int CMD_READ_OUTPUT_PORT = 0xD0, CMD_WRITE_OUTPUT_PORT = 0xD1;
    static final int CMD_WRITE_KBD_BUFFER = 0xD2, CMD_WRITE_AUX_BUFFER = 0xD3, CMD_WRITE_AUX = 0xD4;
    static final int CMD_PULSE_RESET = 0xFE;

    static final int SELF_TEST_PASSED = 0x55, INTERFACE_OK = 0x00;
    static final int OUTPUT_PORT_RESET = 0x01, OUTPUT_PORT_A20 = 0x02;

    /** Receives the guest's request to reset the machine. */
    @FunctionalInterface
    public interface ResetListener {
        /** The guest pulsed or asserted the CPU reset line. Called on the vCPU thread. */
        void resetRequested();
    }

    /**
     * The guest-visible state of the controller. Values are unsigned bytes in ints.
     *
     * @param commandByte the controller's command byte (configuration), read with 0x20
     * @param outputPort the output port, read with 0xD0 (bit 0 high: not in reset)
     * @param outputByte the output buffer: the reply the guest reads from the data port
     * @param outputFull whether the guest has not read {@code outputByte} yet (status OBF)
     * @param pendingCommand the command waiting for its parameter on the data port, or
     *                       {@link #NO_COMMAND}
     * @param commandWritten whether the last write went to the command port (status bit 3)
     */
    public record State(
            int commandByte,
            int outputPort,
            int outputByte,
            boolean outputFull,
            int pendingCommand,
            boolean commandWritten) {

        /** {@code pendingCommand} when no command waits for a parameter. */
        public static final int NO_COMMAND = 0;

        /**
         * The controller as firmware leaves it: keyboard interrupt, system flag and scan code
         * translation on; not in reset, A20 enabled.
         */
        public static final State RESET = new State(
                CTR_KBDINT | CTR_SYS | CTR_XLATE, OUTPUT_PORT_RESET | OUTPUT_PORT_A20, 0, false, NO_COMMAND, false);

        /** Checks the values are bytes and the pending command is one that takes a parameter. */
        public State {
            requireByte("command byte", commandByte);
            requireByte("output port", outputPort);
            requireByte("output buffer", outputByte);
            if (pendingCommand != NO_COMMAND && !takesParameter(pendingCommand)) {
                throw new IllegalArgumentException(
                        "pending command 0x%x is not one that takes a parameter".formatted(pendingCommand));
            }
        }

        private static void requireByte(String what, int value) {
            if ((value & ~0xFF) != 0) {
                throw new IllegalArgumentException("%s %d is not a byte".formatted(what, value));
            }
        }
    }

    private final Object lock = new Object();
    private final ResetListener resetListener;

    // Guest-visible state, guarded by lock.
    private int commandByte, outputPort, outputByte, pendingCommand;
    private boolean outputFull, commandWritten;

    private final AtomicLong ignoredAccesses = new AtomicLong();

    /** A controller as firmware leaves it, reporting reset requests to {@code resetListener}. */
    public I8042(ResetListener resetListener) {
        this(State.RESET, resetListener);
    }

    /** A controller restored to {@code state}. */
    public I8042(State state, ResetListener resetListener) {
        Objects.requireNonNull(state, "state");
        this.resetListener = Objects.requireNonNull(resetListener, "resetListener");
        synchronized (lock) {
            commandByte = state.commandByte();
            outputPort = state.outputPort();
            outputByte = state.outputByte();
            outputFull = state.outputFull();
            pendingCommand = state.pendingCommand();
            commandWritten = state.commandWritten();
        }
    }

    /** The guest-visible state, consistent as of one instant. */
    public State state() {
        synchronized (lock) {
            return new State(commandByte, outputPort, outputByte, outputFull, pendingCommand, commandWritten);
        }
    }

    @Override
    public int read(int offset, int size) {
        if (size != 1 || (offset != DATA && offset != STATUS_COMMAND)) {
            ignoredAccesses.incrementAndGet();
            return PortIoDevice.allOnes(size);
        }
        synchronized (lock) {
            if (offset == STATUS_COMMAND) {
                return status();
            }
            // The latch keeps the last byte: reading with OBF clear returns it again.
            outputFull = false;
            return outputByte;
        }
    }

    @Override
    public void write(int offset, int size, int value) {
        if (size != 1 || (offset != DATA && offset != STATUS_COMMAND)) {
            ignoredAccesses.incrementAndGet();
            return;
        }
        int b = value & 0xFF;
        boolean reset;
        synchronized (lock) {
            reset = offset == STATUS_COMMAND ? command(b) : data(b);
        }
        if (reset) {
            resetListener.resetRequested();
        }
    }

    /**
     * How many guest accesses were ignored: wrong size, wrong offset, unknown commands, and bytes
     * for the absent keyboard.
     */
    public long ignoredAccesses() {
        return ignoredAccesses.get();
    }

    // ---- controller behaviour; all below run with lock held ----

    private int status() {
        // Input buffer full (bit 1) is never set: commands complete within the write.
        return (outputFull ? STATUS_OBF : 0)
                | ((commandByte & CTR_SYS) != 0 ? STATUS_SYS : 0)
                | (commandWritten ? STATUS_COMMAND_WRITTEN : 0)
                | STATUS_UNLOCKED;
    }

    /** Executes a command written to port 0x64; returns whether it asks for a reset. */
    private boolean command(int cmd) {
        commandWritten = true;
        // A new command abandons a parameter the guest never sent.
        pendingCommand = State.NO_COMMAND;
        if (takesParameter(cmd)) {
            pendingCommand = cmd;
            return false;
        }
        switch (cmd) {
            case CMD_READ_CTR -> reply(commandByte);
            case CMD_DISABLE_AUX -> commandByte |= CTR_AUXDIS;
            case CMD_ENABLE_AUX -> commandByte &= ~CTR_AUXDIS;
            case CMD_TEST_AUX, CMD_TEST_KBD -> reply(INTERFACE_OK);
            case CMD_SELF_TEST -> {
                // A passed self-test sets the system flag, as on the chip.
                commandByte |= CTR_SYS;
                reply(SELF_TEST_PASSED);
            }
            case CMD_DISABLE_KBD -> commandByte |= CTR_KBDDIS;
            case CMD_ENABLE_KBD -> commandByte &= ~CTR_KBDDIS;
            case CMD_READ_OUTPUT_PORT -> reply(outputPort);
            default -> {
                if ((cmd & 0xF0) == 0xF0) {
                    // Pulse output port lines: a clear bit in the low nibble is a line pulsed low;
                    // bit 0 is the CPU reset line.
                    return (cmd & OUTPUT_PORT_RESET) == 0;
                }
                ignoredAccesses.incrementAndGet();
            }
        }
        return false;
    }

    /** Takes a byte written to port 0x60; returns whether it asks for a reset. */
    private boolean data(int b) {
        commandWritten = false;
        int cmd = pendingCommand;
        pendingCommand = State.NO_COMMAND;
        switch (cmd) {
            case CMD_WRITE_CTR -> commandByte = b;
            case CMD_WRITE_OUTPUT_PORT -> {
                outputPort = b;
                return (b & OUTPUT_PORT_RESET) == 0;
            }
            case CMD_WRITE_KBD_BUFFER -> reply(b);
            case State.NO_COMMAND -> ignoredAccesses.incrementAndGet(); // a byte for the absent keyboard
            default -> {} // writes to controller RAM or to the absent mouse: parameter consumed
        }
        return false;
    }

    private void reply(int b) {
        outputByte = b;
        outputFull = true;
    }

    /** Commands whose parameter follows on the data port: RAM writes (0x60-0x7F) and 0xD1-0xD4. */
    private static boolean takesParameter(int cmd) {
        return (cmd >= CMD_WRITE_CTR && cmd <= 0x7F) || (cmd >= CMD_WRITE_OUTPUT_PORT && cmd <= CMD_WRITE_AUX);
    }
}
