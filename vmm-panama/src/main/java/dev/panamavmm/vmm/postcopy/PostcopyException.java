package dev.panamavmm.vmm.postcopy;

import java.io.IOException;

/**
 * The peer of a post-copy migration broke the protocol (a page outside RAM, a short page, a
 * message of an unknown type). An {@link IOException}: the connection is as good as dropped, and
 * both sides wait for a new one, as they do when it drops.
 */
public final class PostcopyException extends IOException {
    private static final long serialVersionUID = 1L;

    public PostcopyException(String message) {
        super(message);
    }
}
