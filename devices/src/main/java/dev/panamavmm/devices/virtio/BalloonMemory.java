package dev.panamavmm.devices.virtio;

import java.lang.foreign.MemorySegment;

/**
 * Guest RAM as a balloon gives it back to the host. The VMM implements it over its RAM blocks and
 * knows what giving a page back means for each backing (a private copy-on-write page is dropped, a
 * shared file or memfd page has its hole punched), and which guest pages are its own (boot tables,
 * the generation ID) and never given back.
 */
public interface BalloonMemory {

    /** What became of a range the guest gave up. */
    enum Outcome {
        /** The host has the pages back; the guest reads zeros or the template's bytes there next. */
        RETURNED,
        /** Some of the range is not guest RAM (or it crosses from one RAM block into another). */
        NOT_RAM,
        /** Some of the range holds what the VMM put there for the guest (boot tables, the generation ID). */
        PROTECTED,
        /** RAM the host cannot take back now (a lazy restore still fills it, or the kernel refused). */
        KEPT
    }

    /** Gives back the page-aligned {@code length} bytes at guest-physical {@code address}, all or nothing. */
    Outcome release(long address, long length);

    /** The guest-physical address of {@code buffer}, a segment of guest RAM from a descriptor chain; -1 if it is none. */
    long guestAddress(MemorySegment buffer);
}
