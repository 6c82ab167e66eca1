package dev.panamavmm.devices.virtio;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * The host side of a {@link VirtioNet}: a tap device in the VMM. Every frame carries the 12-byte
 * {@code virtio_net_hdr_v1} in front, as the tap does with {@code IFF_VNET_HDR}, so offloads pass
 * through unchanged. Sending runs on the transmit queue's thread, receiving on the receive
 * queue's thread, and {@link #awaitFrame} on the device's watcher thread while receiving is idle.
 */
public interface NetBackend {

    /**
     * Sends one frame gathered from {@code buffers} (segments of guest RAM: the VMM's writes them
     * with one {@code writev}, no copy). False when the host could not take it now (a full queue):
     * the frame is dropped, as a NIC drops. IOException for anything else (also a drop).
     */
    boolean send(List<MemorySegment> buffers) throws IOException;

    /**
     * Sends {@code frames} in order, as {@link #send} each (the transmit queue's batch): {@code
     * sent[i]} says whether frame i went; a frame {@link #send} refuses or fails is dropped. A
     * backend that can hand the host several frames in one system call does so here.
     */
    default void sendAll(List<List<MemorySegment>> frames, boolean[] sent) {
        for (int i = 0; i < frames.size(); i++) {
            try {
                sent[i] = send(frames.get(i));
            } catch (IOException e) {
                sent[i] = false;
            }
        }
    }

    /** Waits at most {@code timeoutMillis} for a frame; true when one can be received now. */
    boolean awaitFrame(int timeoutMillis) throws IOException;

    /**
     * Receives the next frame into {@code buffers} (header and frame, scattered over segments of
     * guest RAM: the VMM's reads them with one {@code readv}, no copy); returns its length, or 0
     * when none was waiting. A length beyond the buffers' means the frame did not fit: it was cut
     * short (the device drops it).
     */
    int receive(List<MemorySegment> buffers) throws IOException;

    /**
     * Receives frames into {@code buffers.get(0)}, {@code buffers.get(1)}, ... in the order they
     * arrive: {@code lengths[i]} is the frame's length in buffers i (beyond their size: cut short,
     * as {@link #receive}), or 0 when no frame was waiting for them. A backend that reads several
     * in one system call may find a frame for later buffers after none for earlier ones (it
     * arrived meanwhile); by default one {@link #receive} each until none is waiting.
     */
    default void receiveAll(List<List<MemorySegment>> buffers, int[] lengths) throws IOException {
        int i = 0;
        for (; i < buffers.size(); i++) {
            lengths[i] = receive(buffers.get(i));
            if (lengths[i] == 0) break;
        }
        for (i++; i < buffers.size(); i++) lengths[i] = 0;
    }

    /** The driver negotiated these {@code VIRTIO_NET_F_GUEST_*} features: the host may send such frames. */
    void offloads(long guestFeatures);
}
