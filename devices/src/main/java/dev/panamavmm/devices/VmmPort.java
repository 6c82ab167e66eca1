package dev.panamavmm.devices;

import java.util.Objects;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The VMM's own port device, for the project's test guest and for tests (in the spirit of QEMU's
 * isa-debug-exit), at port 0x500 by default, {@value #PORT_COUNT} ports:
 * <table>
 *   <caption>Registers</caption>
 *   <tr><th>offset</th><th>access</th><th>meaning</th></tr>
 *   <tr><td>{@value #EXIT}</td><td>4-byte write N</td><td>exit with code N. N is passed through
 *       unchanged, unlike isa-debug-exit, which exits with {@code (N << 1) | 1}.</td></tr>
 *   <tr><td>{@value #EVENT}</td><td>1-byte write E</td><td>guest event E: {@value #EVENT_READY}
 *       means the guest reached its template point; other values are reported as they are.</td></tr>
 *   <tr><td>{@value #GENERATION_ID_LOW}, {@value #GENERATION_ID_HIGH}</td><td>4-byte reads</td>
 *       <td>low and high halves of the 64-bit generation id the VMM sets, so clones can tell they
 *       are clones.</td></tr>
 * </table>
 * Any other access (another offset, or another size at these offsets) reads as all ones or is an
 * ignored write, and is counted. The two halves of the generation id are separate reads, so a
 * guest that may be cloned between them reads low, high, low again and retries if the low halves
 * differ.
 *
 * <p>Thread-safe and lock-free; the listener is called on the vCPU thread that wrote the port.
 */
public final class VmmPort implements PortIoDevice {
    /** The default base port; 0x500-0x50f is free on PCs (QEMU's fw_cfg starts at 0x510). */
    public static final int DEFAULT_BASE = 0x500;
    /** Ports the device occupies from its base. */
    public static final int PORT_COUNT = 16;
    /** Offset of the exit register. */
    public static final int EXIT = 0;
    /** Offset of the guest event register. */
    public static final int EVENT = 4;
    /** Offset of the generation id's low 32 bits. */
    public static final int GENERATION_ID_LOW = 8;
    /** Offset of the generation id's high 32 bits. */
    public static final int GENERATION_ID_HIGH = 12;
    /** The guest event "reached the template point". */
    public static final int EVENT_READY = 1;

    /** Receives what the guest tells the VMM through the port. Called on the writing vCPU thread. */
    public interface Listener {
        /** The guest asks the VMM to exit with {@code code}, exactly as written. */
        void exitRequested(int code);

        /** The guest reports {@code event} (0-255); {@link #EVENT_READY} is the template point. */
        void guestEvent(int event);
    }

    /**
     * The guest-visible state of the port: the generation id the guest reads.
     *
     * @param generationId the id the VMM last set
     */
    public record State(long generationId) {
        /** A port whose generation id has not been set. */
        public static final State INITIAL = new State(0);
    }

    private final Listener listener;
    private volatile long generationId;
    private final AtomicLong ignoredAccesses = new AtomicLong();

    /** A port with generation id 0, reporting to {@code listener}. */
    public VmmPort(Listener listener) {
        this(State.INITIAL, listener);
    }

    /** A port restored to {@code state}. */
    public VmmPort(State state, Listener listener) {
        this.listener = Objects.requireNonNull(listener, "listener");
        this.generationId = Objects.requireNonNull(state, "state").generationId();
    }

    /** The guest-visible state. */
    public State state() {
        return new State(generationId);
    }

    /** Sets the id the guest reads; the VMM gives each clone or restore a fresh one. */
    public void setGenerationId(long id) {
        generationId = id;
    }

    /** The id the guest reads. */
    public long generationId() {
        return generationId;
    }

    @Override
    public int read(int offset, int size) {
        if (size == 4 && offset == GENERATION_ID_LOW) {
            return (int) generationId;
        }
        if (size == 4 && offset == GENERATION_ID_HIGH) {
            return (int) (generationId >>> 32);
        }
        ignoredAccesses.incrementAndGet();
        return PortIoDevice.allOnes(size);
    }

    @Override
    public void write(int offset, int size, int value) {
        if (size == 4 && offset == EXIT) {
            listener.exitRequested(value);
        } else if (size == 1 && offset == EVENT) {
            listener.guestEvent(value & 0xFF);
        } else {
            ignoredAccesses.incrementAndGet();
        }
    }

    /** How many guest accesses were ignored: unknown offsets and wrong sizes. */
    public long ignoredAccesses() {
        return ignoredAccesses.get();
    }
}
