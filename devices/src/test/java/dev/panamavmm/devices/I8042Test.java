package dev.panamavmm.devices;

import static dev.panamavmm.devices.I8042.*;
import static org.junit.jupiter.api.Assertions.*;

import org.junit.jupiter.api.Test;

/** Drives the controller the way Linux's i8042 probe and reboot code do. */
class I8042Test {
    private int resets;
    private final I8042 controller = new I8042(() -> resets++);

    private int status() {
        return controller.read(STATUS_COMMAND, 1);
    }

    private void command(int cmd) {
        // i8042_wait_write: the input buffer must be empty before each write.
        assertEquals(0, status() & 0x02, "input buffer full");
        controller.write(STATUS_COMMAND, 1, cmd);
    }

    private void data(int b) {
        assertEquals(0, status() & 0x02, "input buffer full");
        controller.write(DATA, 1, b);
    }

    /** i8042_wait_read then a read of the data port. */
    private int reply() {
        assertEquals(STATUS_OBF, status() & STATUS_OBF, "no reply waiting");
        int b = controller.read(DATA, 1);
        assertEquals(0, status() & STATUS_OBF, "reading the data port empties the output buffer");
        return b;
    }

    private int readCommandByte() {
        command(CMD_READ_CTR);
        return reply();
    }

    @Test
    void linuxProbeFindsAWorkingController() {
        // i8042_flush: nothing buffered.
        assertEquals(0, status() & STATUS_OBF);
        assertEquals(STATUS_UNLOCKED, status() & STATUS_UNLOCKED, "no keylock");

        // i8042_controller_selftest.
        command(CMD_SELF_TEST);
        assertEquals(SELF_TEST_PASSED, reply());
        assertEquals(STATUS_SYS, status() & STATUS_SYS);

        // i8042_controller_init: two equal CTR reads, then keyboard disabled, interrupt off.
        int ctr = readCommandByte();
        assertEquals(ctr, readCommandByte());
        ctr = (ctr | CTR_KBDDIS) & ~CTR_KBDINT;
        command(CMD_WRITE_CTR);
        assertEquals(STATUS_COMMAND_WRITTEN, status() & STATUS_COMMAND_WRITTEN);
        data(ctr);
        assertEquals(0, status() & STATUS_COMMAND_WRITTEN);
        assertEquals(ctr, readCommandByte());

        // Interface tests.
        command(CMD_TEST_KBD);
        assertEquals(INTERFACE_OK, reply());
        command(CMD_TEST_AUX);
        assertEquals(INTERFACE_OK, reply());

        // i8042_toggle_aux: the AUXDIS bit follows 0xA7/0xA8.
        command(CMD_DISABLE_AUX);
        assertEquals(CTR_AUXDIS, readCommandByte() & CTR_AUXDIS);
        command(CMD_ENABLE_AUX);
        assertEquals(0, readCommandByte() & CTR_AUXDIS);

        // Keyboard port enable/disable.
        command(CMD_ENABLE_KBD);
        assertEquals(0, readCommandByte() & CTR_KBDDIS);
        command(CMD_DISABLE_KBD);
        assertEquals(CTR_KBDDIS, readCommandByte() & CTR_KBDDIS);

        assertEquals(0, resets);
        assertEquals(0, controller.ignoredAccesses());
    }

    @Test
    void pulsingTheResetLineRequestsAReset() {
        // Linux's reboot=k: kb_wait, then 0xFE to port 0x64.
        command(CMD_PULSE_RESET);
        assertEquals(1, resets);
        command(0xF0); // pulses all four lines, reset among them
        assertEquals(2, resets);
        command(0xFF); // pulses none
        command(0xFD); // pulses line 1 (A20) only
        assertEquals(2, resets);
    }

    @Test
    void clearingOutputPortBitZeroRequestsAReset() {
        command(CMD_READ_OUTPUT_PORT);
        assertEquals(OUTPUT_PORT_RESET | OUTPUT_PORT_A20, reply());
        command(CMD_WRITE_OUTPUT_PORT);
        data(OUTPUT_PORT_RESET); // A20 off, not reset
        assertEquals(0, resets);
        command(CMD_WRITE_OUTPUT_PORT);
        data(OUTPUT_PORT_A20);
        assertEquals(1, resets);
        command(CMD_READ_OUTPUT_PORT);
        assertEquals(OUTPUT_PORT_A20, reply());
    }

    @Test
    void bytesForTheAbsentKeyboardAndMouseGoNowhere() {
        data(0xFF); // keyboard reset
        assertEquals(0, status() & STATUS_OBF, "no keyboard answers");
        assertEquals(1, controller.ignoredAccesses());

        command(CMD_WRITE_AUX);
        data(0xF2); // mouse get-id: consumed by the aux command, no answer
        command(CMD_WRITE_AUX_BUFFER);
        data(0x5A); // aux loopback: there is no aux port to loop through
        assertEquals(0, status() & STATUS_OBF);
        assertEquals(1, controller.ignoredAccesses());
        assertEquals(State.RESET.commandByte(), readCommandByte(), "parameters did not leak into the command byte");

        command(CMD_WRITE_KBD_BUFFER);
        data(0x42);
        assertEquals(0x42, reply(), "0xD2 puts a byte in the output buffer as if from the keyboard");
    }

    @Test
    void aNewCommandAbandonsAPendingParameter() {
        command(CMD_WRITE_CTR);
        command(CMD_SELF_TEST);
        assertEquals(SELF_TEST_PASSED, reply());
        data(0x00); // now a keyboard byte, not the command byte
        assertEquals(State.RESET.commandByte(), readCommandByte());
    }

    @Test
    void theOutputLatchKeepsItsLastByteAndANewReplyReplacesAnUnreadOne() {
        command(CMD_SELF_TEST);
        command(CMD_TEST_KBD);
        assertEquals(INTERFACE_OK, reply());
        assertEquals(INTERFACE_OK, controller.read(DATA, 1), "read again with OBF clear: same byte");
        assertEquals(0, status() & STATUS_OBF);
    }

    @Test
    void wideAndForeignAccessesAreIgnored() {
        assertEquals(0xFF, controller.read(1, 1), "port 0x61 is not ours");
        assertEquals(0xFF, controller.read(3, 1));
        assertEquals(0xFFFF, controller.read(STATUS_COMMAND, 2));
        assertEquals(0xFFFF_FFFF, controller.read(DATA, 4));
        controller.write(STATUS_COMMAND, 2, CMD_PULSE_RESET);
        controller.write(STATUS_COMMAND, 4, CMD_PULSE_RESET);
        controller.write(1, 1, CMD_PULSE_RESET);
        command(0x00); // not a command this controller knows
        assertEquals(0, resets);
        assertEquals(8, controller.ignoredAccesses());
        var reset = State.RESET;
        assertEquals(
                new State(reset.commandByte(), reset.outputPort(), 0, false, State.NO_COMMAND, true),
                controller.state(),
                "only the last-write-was-a-command bit moved");
    }

    @Test
    void stateRoundTripKeepsAPendingCommandAndAnUnreadReply() {
        command(CMD_DISABLE_AUX);
        command(CMD_TEST_KBD);
        command(CMD_WRITE_OUTPUT_PORT);
        var saved = controller.state();
        assertEquals(
                new State(
                        State.RESET.commandByte() | CTR_AUXDIS,
                        State.RESET.outputPort(),
                        INTERFACE_OK,
                        true,
                        CMD_WRITE_OUTPUT_PORT,
                        true),
                saved);

        int[] restoredResets = new int[1];
        var restored = new I8042(saved, () -> restoredResets[0]++);
        assertEquals(saved, restored.state());
        assertEquals(status(), restored.read(STATUS_COMMAND, 1));
        assertEquals(controller.read(DATA, 1), restored.read(DATA, 1));

        // The parameter of the saved 0xD1 lands in both: reset line low.
        controller.write(DATA, 1, 0x00);
        restored.write(DATA, 1, 0x00);
        assertEquals(1, resets);
        assertEquals(1, restoredResets[0]);
        assertEquals(controller.state(), restored.state());
    }

    @Test
    void stateRejectsImpossibleValues() {
        assertThrows(IllegalArgumentException.class, () -> new State(0x100, 0, 0, false, 0, false));
        assertThrows(IllegalArgumentException.class, () -> new State(0, -1, 0, false, 0, false));
        assertThrows(IllegalArgumentException.class, () -> new State(0, 0, 256, false, 0, false));
        assertThrows(IllegalArgumentException.class, () -> new State(0, 0, 0, false, CMD_SELF_TEST, false));
        assertEquals(CMD_WRITE_CTR, new State(0, 0, 0, false, CMD_WRITE_CTR, false).pendingCommand());
    }
}
