package dev.panamavmm.vmm;

import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.Locale;
import java.util.Objects;
import java.util.regex.Pattern;

/**
 * One virtio-net device of a machine: the tap it is attached to (by name, or {@code fd}, a tap
 * descriptor already open in this process: given by the user with {@code fd=N}, or passed with a
 * live update; -1 when the VMM opens the tap by name), its MAC address ({@code 02:..}, six
 * lower-case hex pairs) and an id for messages (may be empty). The MAC is part of the machine:
 * a snapshot keeps it, and a clone gets another only by an override.
 */
public record NetConfig(String tap, int fd, String mac, String id) implements VirtioConfig {
    private static final Pattern MAC = Pattern.compile("[0-9a-f]{2}(:[0-9a-f]{2}){5}");
    private static final Pattern ID = Pattern.compile("[A-Za-z0-9_.-]{0,32}");
    private static final SecureRandom RANDOM = new SecureRandom();

    public NetConfig {
        Objects.requireNonNull(mac, "mac");
        Objects.requireNonNull(id, "id");
        if (tap == null && fd < 0) throw new IllegalArgumentException("a network device needs tap=NAME or fd=N");
        if (tap != null) checkTapName(tap);
        mac = mac.toLowerCase(Locale.ROOT);
        if (!MAC.matcher(mac).matches())
            throw new IllegalArgumentException("mac=" + mac + " is not six hex pairs like 02:00:00:00:00:01");
        if ((HexFormat.fromHexDigits(mac, 0, 2) & 1) != 0)
            throw new IllegalArgumentException("mac=" + mac + " is a multicast address");
        if (!ID.matcher(id).matches())
            throw new IllegalArgumentException("id=" + id + ": at most 32 letters, digits, '.', '_' or '-'");
    }

    /** Linux's interface names: 1 to 15 bytes, no '/', ':', white space or NUL. */
    static void checkTapName(String tap) {
        if (tap.isEmpty() || tap.length() > 15 || !tap.matches("[^/:\\s\\x00]+") || tap.equals(".") || tap.equals(".."))
            throw new IllegalArgumentException(
                    "tap=" + tap + " is not an interface name (1 to 15 characters, no '/' or ':')");
    }

    /** The MAC's six bytes. */
    public byte[] macBytes() {
        return HexFormat.ofDelimiter(":").parseHex(mac);
    }

    /** A random locally administered unicast MAC (02-style: bit 1 of the first byte set, bit 0 clear). */
    public static String randomMac() {
        var b = new byte[6];
        RANDOM.nextBytes(b);
        b[0] = (byte) ((b[0] & 0xFC) | 0x02);
        return HexFormat.ofDelimiter(":").formatHex(b);
    }

    /** This device on {@code fd} (a descriptor passed with a live update), keeping its tap name for later snapshots. */
    NetConfig withFd(int fd) {
        return new NetConfig(tap, fd, mac, id);
    }

    /** This device as a snapshot restores it: by tap name, no descriptor. */
    NetConfig byName() {
        return new NetConfig(tap, -1, mac, id);
    }

    /**
     * Parses {@code tap=NAME[,mac=MAC][,id=ID]} or {@code fd=N[,mac=MAC][,id=ID]}; without
     * {@code mac=} the device gets a random locally administered one. IllegalArgumentException
     * with a sentence for anything else.
     */
    public static NetConfig parse(String spec) {
        String tap = null, mac = null, id = "";
        int fd = -1;
        for (String p : spec.split(",", -1)) {
            if (p.startsWith("tap=")) tap = p.substring(4);
            else if (p.startsWith("fd=")) {
                try {
                    fd = Integer.parseInt(p.substring(3));
                } catch (NumberFormatException e) {
                    fd = -2;
                }
                if (fd < 0) throw new IllegalArgumentException(p + " is not a descriptor number");
            } else if (p.startsWith("mac=")) mac = p.substring(4);
            else if (p.startsWith("id=")) id = p.substring(3);
            else
                throw new IllegalArgumentException(
                        "unknown network option \"" + p + "\" (tap=NAME or fd=N, then mac=MAC, id=ID)");
        }
        if ((tap == null) == (fd < 0))
            throw new IllegalArgumentException("a network device needs exactly one of tap=NAME and fd=N");
        return new NetConfig(tap, fd, mac != null ? mac : randomMac(), id);
    }
}
