package dev.panamavmm.devices.virtio;

import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * The host side of a {@link VirtioVsock}: Unix stream sockets. A listener where host programs
 * connect (and then write {@code CONNECT PORT\n}), and connections the device opens to a host
 * port (the VMM connects to {@code PATH_PORT}). Every call is non-blocking but {@link #await}.
 */
public interface VsockBackend {

    /** One host connection. */
    interface Stream {
        /** Reads into {@code into}: the bytes read, 0 when none are waiting, -1 at end of stream or on error. */
        long read(MemorySegment into);

        /** Writes from {@code from}: the bytes written (0 when the socket is full), -1 when the peer is gone. */
        long write(MemorySegment from);

        /** Closes this process's end (a connection passed to another process stays open there). */
        void close();
    }

    /** A host program's new connection to the listener, or null when none is waiting. */
    Stream accept();

    /** A connection to host port {@code port}, or null when nothing listens there. */
    Stream connect(int port);

    /**
     * Waits up to {@code timeoutMillis} until a connection waits on the listener (when
     * {@code listening}), one of {@code reading} has bytes (or its end), one of {@code writing}
     * has room, or {@link #wake}.
     */
    void await(boolean listening, List<Stream> reading, List<Stream> writing, int timeoutMillis);

    /** Ends an {@link #await} at once (from another thread). */
    void wake();

    /**
     * The connections a previous process of this VM passed on (a live update), in the order that
     * process's {@link VirtioVsock#savedStreams} listed them; empty when none were (a boot, a
     * restore from a snapshot, a clone).
     */
    List<Stream> adopted();
}
