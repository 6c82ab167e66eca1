package dev.panamavmm.vmm.memory;

import java.util.Locale;

/** Byte sizes on the command line: {@code 256M}, {@code 8G}, {@code 16777216}; K/M/G/T are powers of 1024. */
public final class Sizes {
    private Sizes() {}

    public static long parse(String value) {
        String v = value.trim().toUpperCase(Locale.ROOT);
        if (v.endsWith("IB")) v = v.substring(0, v.length() - 2);
        else if (v.endsWith("B") && v.length() > 1 && !Character.isDigit(v.charAt(v.length() - 2)))
            v = v.substring(0, v.length() - 1);
        int shift = 0;
        if (!v.isEmpty()) {
            switch (v.charAt(v.length() - 1)) {
                case 'K' -> shift = 10;
                case 'M' -> shift = 20;
                case 'G' -> shift = 30;
                case 'T' -> shift = 40;
                default -> {}
            }
        }
        if (shift > 0) v = v.substring(0, v.length() - 1);
        long n;
        try {
            n = Long.parseLong(v);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("'" + value + "' is not a size (examples: 256M, 8G, 16777216)");
        }
        if (n < 0 || (shift > 0 && n > (Long.MAX_VALUE >> shift))) {
            throw new IllegalArgumentException("'" + value + "' is not a valid size");
        }
        return n << shift;
    }

    /** 268435456 -> "256 MiB", 1099511627776 -> "1 TiB". */
    public static String format(long bytes) {
        if (bytes >= 1L << 40 && bytes % (1L << 40) == 0) return (bytes >> 40) + " TiB";
        if (bytes >= 1L << 30 && bytes % (1L << 30) == 0) return (bytes >> 30) + " GiB";
        if (bytes >= 1L << 20 && bytes % (1L << 20) == 0) return (bytes >> 20) + " MiB";
        return bytes + " bytes";
    }
}
