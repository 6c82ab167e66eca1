package dev.panamavmm.devices.virtio;

/**
 * A driver broke the virtio protocol (a descriptor loop, a ring outside RAM, an index that moved
 * too far). Never leaves the transport: it turns the device to NEEDS_RESET.
 */
final class VirtioException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    VirtioException(String message) {
        super(message, null, false, false);
    }
}
