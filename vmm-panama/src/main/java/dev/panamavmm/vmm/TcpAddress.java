package dev.panamavmm.vmm;

/** A TCP migration's address, {@code tcp:[HOST]:PORT} (QEMU's form; no host: 127.0.0.1; an IPv6 host in brackets). */
public record TcpAddress(String host, int port) {
    public static final String DEFAULT_HOST = "127.0.0.1";

    /** Parses {@code uri}; anything else is an {@link IllegalArgumentException} saying the form. */
    public static TcpAddress parse(String uri) {
        if (!uri.startsWith("tcp:")) throw new IllegalArgumentException(usage(uri));
        String rest = uri.substring(4);
        int colon = rest.lastIndexOf(':');
        if (colon < 0) throw new IllegalArgumentException(usage(uri));
        String host = rest.substring(0, colon);
        if (host.startsWith("[") && host.endsWith("]")) host = host.substring(1, host.length() - 1);
        if (host.isEmpty()) host = DEFAULT_HOST;
        int port;
        try {
            port = Integer.parseInt(rest.substring(colon + 1));
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(usage(uri));
        }
        if (port < 0 || port > 65535) throw new IllegalArgumentException("port " + port + " is not 0 to 65535");
        return new TcpAddress(host, port);
    }

    private static String usage(String uri) {
        return "the address must be tcp:[HOST]:PORT, not '" + uri + "'";
    }

    @Override
    public String toString() {
        return "tcp:" + (host.contains(":") ? "[" + host + "]" : host) + ":" + port;
    }
}
