package dev.panamavmm.devices.virtio;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * The host side of a {@link VirtioNet}: a tap device in the VMM. Every frame carries the 12-byte
 * {@code virtio_net_hdr_v1} in front, as the tap does with {@code IFF_VNET_HDR}, so offloads pass
 * through unchanged. Sending runs on the transmit queue's thread, receiving on the device's
 * receive thread: one thread each.
 */
public interface NetBackend {

    /**
     * Sends one frame gathered from {@code buffers} (segments of guest RAM: the VMM's writes them
     * with one {@code writev}, no copy). False when the host could not take it now (a full queue):
     * the frame is dropped, as a NIC drops. IOException for anything else (also a drop).
     */
    boolean send(List<MemorySegment> buffers) throws IOException;

    /** Waits at most {@code timeoutMillis} for a frame; true when one can be received now. */
    boolean awaitFrame(int timeoutMillis) throws IOException;

    /**
     * Receives the next frame into {@code buffer} (header and frame); returns its length, or 0
     * when none was waiting after all. A frame longer than the buffer is dropped by the host.
     */
    int receive(MemorySegment buffer) throws IOException;

    /** The driver negotiated these {@code VIRTIO_NET_F_GUEST_*} features: the host may send such frames. */
    void offloads(long guestFeatures);
}
