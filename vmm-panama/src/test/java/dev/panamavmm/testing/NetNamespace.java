package dev.panamavmm.testing;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Pattern;

/**
 * A network namespace of a test's own, with taps in it ({@code tap0}, {@code tap1}, ...: up, no
 * addresses, IPv6 off) and a {@code guest/net-peer.py} on each, so nothing a guest sends leaves
 * it. VMMs run inside with {@link #prefix}. Closing it stops the peers and deletes the namespace
 * (and its taps with it), also after a failure.
 */
public final class NetNamespace implements AutoCloseable {
    private static final AtomicInteger NEXT = new AtomicInteger();

    private final String name;
    private final List<Peer> peers = new ArrayList<>();

    private NetNamespace(String name) {
        this.name = name;
    }

    /** A namespace with {@code taps} taps and a peer on each. */
    public static NetNamespace create(int taps) throws IOException, InterruptedException {
        var ns = new NetNamespace("pvm-test-" + ProcessHandle.current().pid() + "-" + NEXT.incrementAndGet());
        run("ip", "netns", "add", ns.name);
        try {
            for (int i = 0; i < taps; i++) {
                String tap = "tap" + i;
                ns.exec("ip", "tuntap", "add", "dev", tap, "mode", "tap");
                ns.exec("sysctl", "-qw", "net.ipv6.conf." + tap + ".disable_ipv6=1");
                ns.exec("ip", "link", "set", tap, "up");
                ns.peers.add(ns.startPeer(tap));
            }
            return ns;
        } catch (IOException | InterruptedException | RuntimeException | AssertionError e) {
            ns.close();
            throw e;
        }
    }

    /** {@code ip netns exec NAME}: put in front of a command to run it inside. */
    public List<String> prefix() {
        return List.of("ip", "netns", "exec", name);
    }

    public Peer peer(int tap) {
        return peers.get(tap);
    }

    private void exec(String... command) throws IOException, InterruptedException {
        var all = new ArrayList<>(prefix());
        all.addAll(List.of(command));
        run(all.toArray(String[]::new));
    }

    private static void run(String... command) throws IOException, InterruptedException {
        var p = new ProcessBuilder(command).redirectErrorStream(true).start();
        var out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(30, TimeUnit.SECONDS) || p.exitValue() != 0)
            throw new AssertionError(String.join(" ", command) + " failed: " + out);
    }

    private Peer startPeer(String tap) throws IOException, InterruptedException {
        var script = repositoryRoot().resolve("guest/net-peer.py").toString();
        var command = new ArrayList<>(prefix());
        command.addAll(List.of("python3", script, tap));
        var peer =
                new Peer(new ProcessBuilder(command).redirectErrorStream(true).start());
        peer.await("peer ready mac=\\S+", 30);
        return peer;
    }

    static Path repositoryRoot() {
        for (Path dir = Path.of("").toAbsolutePath(); dir != null; dir = dir.getParent())
            if (Files.isRegularFile(dir.resolve("guest/net-peer.py"))) return dir;
        throw new IllegalStateException(
                "no guest/net-peer.py above " + Path.of("").toAbsolutePath());
    }

    @Override
    public void close() {
        for (var p : peers) p.close();
        try {
            run("ip", "netns", "delete", name);
        } catch (IOException | InterruptedException | AssertionError e) {
            // best effort: an earlier step failed already
        }
    }

    /** The echo peer on one tap: its output lines, and commands on its stdin. */
    public static final class Peer implements AutoCloseable {
        private final Process process;
        private final Writer in;
        private final List<String> lines = new ArrayList<>();

        Peer(Process process) {
            this.process = process;
            this.in = new OutputStreamWriter(process.getOutputStream(), StandardCharsets.UTF_8);
            Thread.ofPlatform().daemon().start(() -> {
                try (var r =
                        new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
                    for (String line; (line = r.readLine()) != null; ) {
                        synchronized (this) {
                            lines.add(line);
                            notifyAll();
                        }
                    }
                } catch (IOException e) {
                    // ended
                }
            });
        }

        /** Sends a probe frame to {@code mac}; the guest that has that MAC answers {@code answer mac=MAC seq=SEQ}. */
        public void probe(String mac, int seq) throws IOException {
            command("probe " + mac + " " + seq);
        }

        /** Its counters now: echoed, bench_rx, blasted, answers, other. */
        public String stats(long timeoutSeconds) throws IOException, InterruptedException {
            int from;
            synchronized (this) {
                from = lines.size();
            }
            command("stats");
            return await("stats .*", from, timeoutSeconds);
        }

        private void command(String line) throws IOException {
            in.write(line + "\n");
            in.flush();
        }

        public String await(String regex, long timeoutSeconds) throws InterruptedException {
            return await(regex, 0, timeoutSeconds);
        }

        public synchronized String await(String regex, int from, long timeoutSeconds) throws InterruptedException {
            var p = Pattern.compile(regex);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSeconds);
            for (int i = from; ; ) {
                for (; i < lines.size(); i++) if (p.matcher(lines.get(i)).matches()) return lines.get(i);
                long left = deadline - System.nanoTime();
                if (left <= 0 || (!process.isAlive() && i >= lines.size()))
                    throw new AssertionError("the peer printed no /" + regex + "/:\n" + String.join("\n", lines));
                wait(Math.max(1, TimeUnit.NANOSECONDS.toMillis(left)));
            }
        }

        @Override
        public void close() {
            process.destroyForcibly();
            try {
                process.waitFor(10, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
