package dev.panamavmm.devices;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.migration.state.SectionEncoder;
import java.nio.charset.StandardCharsets;
import java.util.Random;
import org.junit.jupiter.api.Test;

class DeviceCodecTest {
    @Test
    void everyDeviceStateRoundTrips() {
        var serial = new Serial8250.State(1, 2, 0x0f, 3, 0x1f, 9, true, true, false, new byte[] {'a', 'b'});
        var back = Serial8250Codec.INSTANCE.decode(Serial8250Codec.INSTANCE.encode(serial), 2, "device/serial");
        assertEquals(serial.lcr(), back.lcr());
        assertEquals(serial.overrun(), back.overrun());
        assertArrayEquals(serial.rxFifo(), back.rxFifo());
        assertEquals(
                I8042.State.RESET,
                I8042Codec.INSTANCE.decode(I8042Codec.INSTANCE.encode(I8042.State.RESET), 2, "device/i8042"));
        var port = new VmmPort.State(0x1234_5678_9abc_def0L);
        assertEquals(port, VmmPortCodec.INSTANCE.decode(VmmPortCodec.INSTANCE.encode(port), 2, "device/vmm-port"));
    }

    @Test
    void formatOneJsonAsThePreviousVersionWroteIt() {
        String serial =
                "{\"dll\":12,\"dlm\":0,\"ier\":2,\"lcr\":3,\"mcr\":8,\"scr\":0,\"fifoEnabled\":true,\"overrun\":false,"
                        + "\"thrEmptyPending\":true,\"rxFifo\":\"aGk=\"}";
        var s = Serial8250Codec.INSTANCE.decode(serial.getBytes(StandardCharsets.UTF_8), 1, "device/serial");
        assertEquals(12, s.dll());
        assertArrayEquals("hi".getBytes(StandardCharsets.UTF_8), s.rxFifo());
        String port = "{\"generationId\":-2}";
        assertEquals(
                -2,
                VmmPortCodec.INSTANCE
                        .decode(port.getBytes(StandardCharsets.UTF_8), 1, "device/vmm-port")
                        .generationId());
    }

    @Test
    void theModelsOwnChecksRunOnDecodedValues() {
        byte[] notAByte = new SectionEncoder(1)
                .i32(Serial8250Codec.DLL, 300)
                .i32(Serial8250Codec.DLM, 0)
                .i32(Serial8250Codec.IER, 0)
                .i32(Serial8250Codec.LCR, 0)
                .i32(Serial8250Codec.MCR, 0)
                .i32(Serial8250Codec.SCR, 0)
                .bool(Serial8250Codec.FIFO_ENABLED, false)
                .bool(Serial8250Codec.OVERRUN, false)
                .bool(Serial8250Codec.THR_EMPTY_PENDING, false)
                .bytes(Serial8250Codec.RX_FIFO, new byte[0])
                .toBytes();
        var e = assertThrows(
                SnapshotException.class, () -> Serial8250Codec.INSTANCE.decode(notAByte, 2, "device/serial"));
        assertTrue(
                e.getMessage().startsWith("snapshot section device/serial holds an invalid state: "), e.getMessage());
    }

    @Test
    void randomBytesAreRefusedOrDecodedNeverAnythingElse() {
        var random = new Random(13);
        byte[] good = Serial8250Codec.INSTANCE.encode(Serial8250.State.RESET);
        for (int round = 0; round < 20_000; round++) {
            byte[] bytes = good.clone();
            for (int flips = 1 + random.nextInt(4); flips > 0; flips--)
                bytes[random.nextInt(bytes.length)] = (byte) random.nextInt();
            try {
                Serial8250Codec.INSTANCE.decode(bytes, 2, "device/serial");
            } catch (SnapshotException expected) {
                // one line; anything else (an index error, an NPE) fails the test
            }
        }
    }
}
