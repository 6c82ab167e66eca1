package dev.panamavmm.vmm.boot;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;

/**
 * The few ACPI Machine Language terms the DSDT needs (ACPI 6.5, chapter 20), encoded by hand: a
 * whole AML compiler for two devices would be most of this module. Each method returns the bytes
 * of one term; {@link #of} concatenates terms into a term list.
 */
final class Aml {
    private Aml() {}

    private static final int NAME_OP = 0x08,
            BYTE_PREFIX = 0x0a,
            DWORD_PREFIX = 0x0c,
            STRING_PREFIX = 0x0d,
            SCOPE_OP = 0x10,
            BUFFER_OP = 0x11,
            PACKAGE_OP = 0x12,
            METHOD_OP = 0x14,
            ROOT_CHAR = 0x5c,
            DUAL_NAME_PREFIX = 0x2e,
            EXT_OP_PREFIX = 0x5b,
            DEVICE_OP = 0x82,
            ARG0_OP = 0x68,
            NOTIFY_OP = 0x86,
            LEQUAL_OP = 0x93,
            IF_OP = 0xa0;

    /** Terms one after the other. */
    static byte[] of(byte[]... terms) {
        var out = new ByteArrayOutputStream();
        for (var t : terms) out.writeBytes(t);
        return out.toByteArray();
    }

    /** {@code Name(NAME, value)}. */
    static byte[] name(String name, byte[] value) {
        return of(new byte[] {NAME_OP}, nameString(name), value);
    }

    /** {@code Scope(PATH) { terms }}. */
    static byte[] scope(String path, byte[]... terms) {
        return of(new byte[] {SCOPE_OP}, packaged(of(nameString(path), of(terms))));
    }

    /** {@code Device(NAME) { terms }}. */
    static byte[] device(String name, byte[]... terms) {
        return of(new byte[] {EXT_OP_PREFIX, (byte) DEVICE_OP}, packaged(of(nameString(name), of(terms))));
    }

    /** {@code Method(NAME, args, NotSerialized) { terms }}. */
    static byte[] method(String name, int args, byte[]... terms) {
        if (args < 0 || args > 7) throw new IllegalArgumentException("a method takes 0 to 7 arguments");
        return of(new byte[] {METHOD_OP}, packaged(of(nameString(name), new byte[] {(byte) args}, of(terms))));
    }

    /** {@code If (LEqual(Arg0, value)) { terms }}. */
    static byte[] ifArg0Equals(long value, byte[]... terms) {
        return of(
                new byte[] {(byte) IF_OP},
                packaged(of(new byte[] {(byte) LEQUAL_OP, ARG0_OP}, integer(value), of(terms))));
    }

    /** {@code Notify(PATH, value)}. */
    static byte[] notify(String path, int value) {
        return of(new byte[] {(byte) NOTIFY_OP}, nameString(path), integer(value));
    }

    /** A string constant (ASCII, NUL-terminated). */
    static byte[] string(String s) {
        return of(new byte[] {STRING_PREFIX}, s.getBytes(StandardCharsets.US_ASCII), new byte[] {0});
    }

    /** An integer constant as a byte or a double word (the only widths the tables need). */
    static byte[] integer(long value) {
        if (value < 0 || value > 0xffff_ffffL) throw new IllegalArgumentException("0 to 2^32-1: " + value);
        if (value <= 0xff) return new byte[] {BYTE_PREFIX, (byte) value};
        return new byte[] {
            DWORD_PREFIX, (byte) value, (byte) (value >>> 8), (byte) (value >>> 16), (byte) (value >>> 24)
        };
    }

    /** {@code Package() { elements }} (at most 255 elements). */
    static byte[] packageOf(byte[]... elements) {
        return of(new byte[] {PACKAGE_OP}, packaged(of(new byte[] {(byte) elements.length}, of(elements))));
    }

    /** A buffer holding {@code bytes}, as {@code ResourceTemplate} compiles to. */
    static byte[] buffer(byte[] bytes) {
        return of(new byte[] {BUFFER_OP}, packaged(of(integer(bytes.length), bytes)));
    }

    /** A resource template ({@code ResourceTemplate() { descriptors }}): the descriptors, then the end tag. */
    static byte[] resources(byte[]... descriptors) {
        return buffer(of(of(descriptors), new byte[] {0x79, 0})); // end tag; checksum 0 means "not checked"
    }

    /**
     * An extended interrupt descriptor (ACPI 6.5, 6.4.3.6):
     * {@code Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {gsi}}.
     */
    static byte[] edgeInterrupt(int gsi) {
        return new byte[] {
            (byte) 0x89,
            6,
            0, // extended interrupt descriptor, 6 bytes follow
            0b0011, // consumer, edge-triggered, active high, exclusive
            1, // one interrupt
            (byte) gsi,
            (byte) (gsi >>> 8),
            (byte) (gsi >>> 16),
            (byte) (gsi >>> 24)
        };
    }

    /** A 32-bit fixed memory range descriptor (ACPI 6.5, 6.4.3.4): {@code Memory32Fixed(ReadWrite, address, length)}. */
    static byte[] memory32Fixed(long address, long length) {
        if (address < 0 || address + length > 0x1_0000_0000L) throw new IllegalArgumentException("below 4 GiB");
        return new byte[] {
            (byte) 0x86,
            9,
            0, // 32-bit fixed memory range, 9 bytes follow
            1, // read-write
            (byte) address,
            (byte) (address >>> 8),
            (byte) (address >>> 16),
            (byte) (address >>> 24),
            (byte) length,
            (byte) (length >>> 8),
            (byte) (length >>> 16),
            (byte) (length >>> 24)
        };
    }

    /**
     * A name: {@code \} for the root, then one or two 4-character segments separated by a dot
     * (shorter segments are padded with {@code _}), e.g. {@code \_SB.VGEN} or {@code _HID}.
     */
    static byte[] nameString(String path) {
        var out = new ByteArrayOutputStream();
        String rest = path;
        if (rest.startsWith("\\")) {
            out.write(ROOT_CHAR);
            rest = rest.substring(1);
        }
        String[] segments = rest.split("\\.");
        if (segments.length == 2) out.write(DUAL_NAME_PREFIX);
        else if (segments.length != 1) throw new IllegalArgumentException("one or two name segments: " + path);
        for (var seg : segments) {
            if (seg.isEmpty() || seg.length() > 4 || !seg.matches("[A-Z_][A-Z0-9_]*"))
                throw new IllegalArgumentException("not an AML name segment: " + seg);
            out.writeBytes((seg + "___").substring(0, 4).getBytes(StandardCharsets.US_ASCII));
        }
        return out.toByteArray();
    }

    /** A PkgLength (20.2.4) followed by {@code body}; the length counts its own bytes. */
    static byte[] packaged(byte[] body) {
        int n = body.length;
        byte[] lead;
        if (n + 1 < 0x40) {
            lead = new byte[] {(byte) (n + 1)};
        } else if (n + 2 < 0x1000) {
            int len = n + 2;
            lead = new byte[] {(byte) (0x40 | (len & 0xf)), (byte) (len >>> 4)};
        } else if (n + 3 < 0x10_0000) {
            int len = n + 3;
            lead = new byte[] {(byte) (0x80 | (len & 0xf)), (byte) (len >>> 4), (byte) (len >>> 12)};
        } else {
            throw new IllegalArgumentException("AML package of " + n + " bytes is too long for these tables");
        }
        return of(lead, body);
    }
}
