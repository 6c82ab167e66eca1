package dev.panamavmm.devices;

import static dev.panamavmm.devices.VmmPort.*;
import static org.junit.jupiter.api.Assertions.*;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class VmmPortTest {
    private final List<Integer> exits = new ArrayList<>();
    private final List<Integer> events = new ArrayList<>();
    private final Listener listener = new Listener() {
        @Override
        public void exitRequested(int code) {
            exits.add(code);
        }

        @Override
        public void guestEvent(int event) {
            events.add(event);
        }
    };
    private final VmmPort port = new VmmPort(listener);

    @Test
    void exitCodesPassThroughUnchanged() {
        for (int code : new int[] {0, 1, 42, 0x7FFF_FFFF, -1, 0x1234_5678}) {
            port.write(EXIT, 4, code);
        }
        assertEquals(List.of(0, 1, 42, 0x7FFF_FFFF, -1, 0x1234_5678), exits);
        assertEquals(List.of(), events);
    }

    @Test
    void readyAndOtherEventsAreReportedAsWritten() {
        port.write(EVENT, 1, EVENT_READY);
        port.write(EVENT, 1, 7);
        port.write(EVENT, 1, 0x1FF); // only the low byte travels on a 1-byte write
        assertEquals(List.of(EVENT_READY, 7, 0xFF), events);
        assertEquals(List.of(), exits);
    }

    @Test
    void generationIdReadsAsTwoHalves() {
        assertEquals(0, port.read(GENERATION_ID_LOW, 4));
        port.setGenerationId(0x0123_4567_89AB_CDEFL);
        assertEquals(0x89AB_CDEF, port.read(GENERATION_ID_LOW, 4));
        assertEquals(0x0123_4567, port.read(GENERATION_ID_HIGH, 4));
        long id = (long) port.read(GENERATION_ID_HIGH, 4) << 32 | (port.read(GENERATION_ID_LOW, 4) & 0xFFFF_FFFFL);
        assertEquals(0x0123_4567_89AB_CDEFL, id);
        assertEquals(0, port.ignoredAccesses());
    }

    @Test
    void otherAccessesReadAllOnesAndAreIgnored() {
        assertEquals(0xFFFF_FFFF, port.read(EXIT, 4), "exit is write-only");
        assertEquals(0xFF, port.read(EVENT, 1), "event is write-only");
        assertEquals(0xFFFF, port.read(GENERATION_ID_LOW, 2));
        assertEquals(0xFF, port.read(GENERATION_ID_HIGH, 1));
        assertEquals(0xFFFF_FFFF, port.read(16, 4));
        port.write(EXIT, 1, 3);
        port.write(EXIT, 2, 3);
        port.write(EVENT, 4, EVENT_READY);
        port.write(GENERATION_ID_LOW, 4, 5);
        port.write(-4, 4, 5);
        assertEquals(List.of(), exits);
        assertEquals(List.of(), events);
        assertEquals(0, port.generationId(), "the guest cannot set its generation id");
        assertEquals(10, port.ignoredAccesses());
    }

    @Test
    void stateRoundTripKeepsTheGenerationId() {
        port.setGenerationId(-2);
        var saved = port.state();
        assertEquals(new State(-2), saved);
        var restored = new VmmPort(saved, listener);
        assertEquals(saved, restored.state());
        assertEquals(port.read(GENERATION_ID_LOW, 4), restored.read(GENERATION_ID_LOW, 4));
        assertEquals(port.read(GENERATION_ID_HIGH, 4), restored.read(GENERATION_ID_HIGH, 4));

        // A clone gets a fresh id and the guest sees the change.
        restored.setGenerationId(99);
        assertEquals(99, restored.read(GENERATION_ID_LOW, 4));
        assertEquals(0, restored.read(GENERATION_ID_HIGH, 4));
        assertEquals(new State(-2), port.state());
    }
}
