package dev.panamavmm.vmm.memory;

import java.nio.file.Path;

/**
 * Where a RAM block's bytes live. The kind decides what saving, migrating and cloning must do
 * with the block: a {@link SharedFile} already holds the guest's memory outside the process
 * (only a reference needs saving); a {@link Memfd} can be handed to another process over a
 * Unix socket; a {@link PrivateFile} is a copy-on-write view of a template that never changes.
 */
public sealed interface Backing {

    /** An anonymous memory file (the default): mapped shared, so its fd can be passed on. */
    record Memfd() implements Backing {}

    /** A file on tmpfs or disk, mapped {@code MAP_SHARED}: guest writes land in the file. */
    record SharedFile(Path path) implements Backing {}

    /** A file mapped {@code MAP_PRIVATE}: guest writes are copy-on-write, the file never changes. */
    record PrivateFile(Path path) implements Backing {}

    /** The file the block maps, if any. */
    default Path file() {
        return switch (this) {
            case Memfd m -> null;
            case SharedFile f -> f.path();
            case PrivateFile f -> f.path();
        };
    }
}
