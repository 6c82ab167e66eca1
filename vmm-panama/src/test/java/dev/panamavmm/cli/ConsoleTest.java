package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.testing.VmmProcess;
import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The console as a user meets it: on a terminal (a real pty, through script(1)) and on a unix: socket. */
class ConsoleTest {

    @Test
    void theBacklogKeepsTheLastBytesInOrder() {
        var backlog = new ConsoleIo.Backlog(8);
        assertArrayEquals(new byte[0], backlog.drain());
        backlog.add("abc".getBytes(), 0, 3);
        backlog.add("defgh".getBytes(), 0, 5);
        backlog.add("ij".getBytes(), 0, 2);
        assertEquals("cdefghij", new String(backlog.drain()));
        assertArrayEquals(new byte[0], backlog.drain(), "drained");
        backlog.add("0123456789abcdef".getBytes(), 2, 12);
        assertEquals("6789abcd", new String(backlog.drain()), "only the tail of a long write");
    }

    /** A unix: console keeps what the guest printed before anyone connected (at 52b27eb it was dropped). */
    @KvmTest
    void aUnixConsoleClientGetsTheLinesPrintedBeforeItConnected(@TempDir Path dir) throws Exception {
        var socket = dir.resolve("console.sock");
        var api = dir.resolve("api.sock");
        try (var vmm = VmmProcess.start(
                "run",
                "--memory",
                "32M",
                "--console",
                "unix:" + socket,
                "--api-socket",
                api.toString(),
                "--cmdline",
                "console=ttyS0 testguest.hb=50 testguest.mem=4M")) {
            vmm.awaitSocket(socket);
            vmm.awaitSocket(api);
            Thread.sleep(1500); // the guest boots and beats a while with nobody connected
            try (var ch = SocketChannel.open(UnixDomainSocketAddress.of(socket))) {
                var in = new BufferedReader(new InputStreamReader(Channels.newInputStream(ch)));
                var lines = new ArrayList<String>();
                String line;
                while ((line = in.readLine()) != null && !line.equals("hb 0 3")) lines.add(line);
                assertTrue(lines.getFirst().startsWith("testguest "), "the boot banner came first: " + lines);
                assertTrue(lines.contains("ready"), lines.toString());
                assertEquals(
                        List.of("hb 0 1", "hb 0 2"), lines.subList(lines.size() - 2, lines.size()), lines.toString());
            }
            vmm.signal("TERM");
            assertEquals(0, vmm.waitFor(20), vmm.stderr());
        }
    }

    /** On a terminal: one line says how to quit, Ctrl-A h lists the keys, Ctrl-C reaches the guest, Ctrl-A x quits. */
    @KvmTest
    void onATerminalTheVmmSaysHowToQuitAndCtrlAHListsTheKeys() throws Exception {
        var vmm = new ArrayList<String>();
        vmm.add(ProcessHandle.current().info().command().orElse("java"));
        vmm.addAll(List.of(
                "--enable-native-access=ALL-UNNAMED",
                "-XX:+UseSerialGC",
                "-cp",
                System.getProperty("java.class.path"),
                Main.class.getName(),
                "run",
                "--memory",
                "32M",
                "--cmdline",
                "console=ttyS0 testguest.hb=100 testguest.mem=4M"));
        String shellCommand = String.join(
                " ", vmm.stream().map(a -> "'" + a.replace("'", "'\\''") + "'").toList());
        var process = new ProcessBuilder("script", "-qefc", shellCommand, "/dev/null")
                .redirectErrorStream(true)
                .start();
        var output = new ByteArrayOutputStream();
        Thread.ofPlatform().daemon().start(() -> copy(process.getInputStream(), output));
        try (OutputStream keys = process.getOutputStream()) {
            awaitOutput(output, "hb 0 2");
            assertTrue(text(output).contains(ConsoleIo.TERMINAL_HINT), text(output));
            keys.write(new byte[] {0x03}); // Ctrl-C: the guest's, the VMM runs on
            keys.flush();
            keys.write(new byte[] {0x01, 'h'});
            keys.flush();
            awaitOutput(output, "vmm: console keys: .*");
            int at = text(output).length();
            awaitOutput(output, "hb 0 \\d+", at);
            keys.write(new byte[] {0x01, 'x'});
            keys.flush();
            assertTrue(process.waitFor(30, TimeUnit.SECONDS), text(output));
        } finally {
            process.destroyForcibly();
        }
        assertEquals(0, process.exitValue(), text(output));
        assertTrue(text(output).contains("vmm: stopped by the console (Ctrl-A x)"), text(output));
    }

    private static void copy(InputStream in, ByteArrayOutputStream out) {
        byte[] buf = new byte[4096];
        try (in) {
            for (int n; (n = in.read(buf)) > 0; ) {
                synchronized (out) {
                    out.write(buf, 0, n);
                }
            }
        } catch (IOException e) {
            // the process ended
        }
    }

    private static String text(ByteArrayOutputStream out) {
        synchronized (out) {
            return out.toString(StandardCharsets.UTF_8).replace("\r", "");
        }
    }

    private static void awaitOutput(ByteArrayOutputStream out, String regex) throws InterruptedException {
        awaitOutput(out, regex, 0);
    }

    private static void awaitOutput(ByteArrayOutputStream out, String regex, int from) throws InterruptedException {
        var pattern = Pattern.compile("(?m)^" + regex + "$");
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        while (!pattern.matcher(text(out).substring(Math.min(from, text(out).length())))
                .find()) {
            if (System.nanoTime() > deadline) throw new AssertionError("no /" + regex + "/ in:\n" + text(out));
            Thread.sleep(20);
        }
    }
}
