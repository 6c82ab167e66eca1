package dev.panamavmm.testing;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;

/**
 * {@code vmm} as a separate process, the way users run it: same JVM, same classpath as the
 * tests, native access on. Its stdout (the guest console) and stderr are collected line by line
 * so a test can wait for what the guest prints.
 */
public final class VmmProcess implements AutoCloseable {
    private final Process process;
    private final List<String> out = new ArrayList<>();
    private final StringBuilder err = new StringBuilder();

    private VmmProcess(Process process) {
        this.process = process;
        Thread.ofPlatform()
                .daemon()
                .start(() -> collect(
                        new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8)),
                        true));
        Thread.ofPlatform()
                .daemon()
                .start(() -> collect(
                        new BufferedReader(new InputStreamReader(process.getErrorStream(), StandardCharsets.UTF_8)),
                        false));
    }

    public static VmmProcess start(String... args) throws IOException {
        return start(Map.of(), args);
    }

    /** With extra environment variables, e.g. PANAMA_VMM_REHEARSAL=sync to have the rehearsal done before the VMM goes on. */
    public static VmmProcess start(Map<String, String> env, String... args) throws IOException {
        return start(List.of(), env, args);
    }

    /** With {@code prefix} in front of the command, e.g. {@code ip netns exec NS} to run it in a network namespace. */
    public static VmmProcess startIn(List<String> prefix, String... args) throws IOException {
        return start(prefix, Map.of(), args);
    }

    /** Both: in front of the command {@code prefix}, in its environment {@code env}. */
    public static VmmProcess startIn(List<String> prefix, Map<String, String> env, String... args) throws IOException {
        return start(prefix, env, args);
    }

    private static VmmProcess start(List<String> prefix, Map<String, String> env, String... args) throws IOException {
        var command = new ArrayList<String>(prefix);
        command.add(ProcessHandle.current().info().command().orElse("java"));
        command.add("--enable-native-access=ALL-UNNAMED");
        command.add("-XX:+UseSerialGC");
        command.add("-cp");
        command.add(System.getProperty("java.class.path"));
        command.add("dev.panamavmm.cli.Main");
        command.addAll(List.of(args));
        var pb = new ProcessBuilder(command).redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")));
        pb.environment().putAll(env);
        return new VmmProcess(pb.start());
    }

    /** Another build of the VMM (an earlier release's {@code vmm.jar}, see scripts/build-release), run like ./vmm runs it. */
    public static VmmProcess startJar(Path jar, Map<String, String> env, String... args) throws IOException {
        var command = new ArrayList<String>(List.of(
                ProcessHandle.current().info().command().orElse("java"), "-XX:+UseSerialGC", "-jar", jar.toString()));
        command.addAll(List.of(args));
        var pb = new ProcessBuilder(command).redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")));
        pb.environment().putAll(env);
        return new VmmProcess(pb.start());
    }

    private void collect(BufferedReader reader, boolean stdout) {
        try (reader) {
            for (String line; (line = reader.readLine()) != null; ) {
                synchronized (this) {
                    if (stdout) out.add(line);
                    else err.append(line).append('\n');
                    notifyAll();
                }
            }
        } catch (IOException e) {
            // the process ended
        }
    }

    /** Waits for a console line matching {@code regex} at or after line {@code from}; returns its index. */
    public synchronized int awaitLine(String regex, int from, long timeoutSeconds) throws InterruptedException {
        var pattern = Pattern.compile(regex);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSeconds);
        for (int i = from; ; ) {
            for (; i < out.size(); i++) if (pattern.matcher(out.get(i)).matches()) return i;
            long left = deadline - System.nanoTime();
            if (left <= 0 || (!process.isAlive() && i >= out.size())) {
                throw new AssertionError("no console line matching /" + regex + "/ within " + timeoutSeconds
                        + " s; console:\n" + String.join("\n", out.subList(Math.max(0, out.size() - 30), out.size()))
                        + "\nstderr:\n" + err);
            }
            wait(Math.max(1, TimeUnit.NANOSECONDS.toMillis(left)));
        }
    }

    public int awaitLine(String regex, long timeoutSeconds) throws InterruptedException {
        return awaitLine(regex, 0, timeoutSeconds);
    }

    public synchronized List<String> lines() {
        return List.copyOf(out);
    }

    public synchronized String stderr() {
        return err.toString();
    }

    /** Sends a signal (e.g. "INT", "TERM") with kill(1). */
    public void signal(String name) throws IOException, InterruptedException {
        new ProcessBuilder("kill", "-" + name, Long.toString(process.pid()))
                .inheritIO()
                .start()
                .waitFor();
    }

    /** Waits for the process to end; returns its exit code. */
    public int waitFor(long timeoutSeconds) throws InterruptedException {
        if (!process.waitFor(timeoutSeconds, TimeUnit.SECONDS)) {
            process.destroyForcibly();
            throw new AssertionError("vmm did not exit within " + timeoutSeconds + " s; stderr:\n" + stderr());
        }
        return process.exitValue();
    }

    /** Waits until the VMM has created {@code socket} (its sockets appear only once they listen). */
    public void awaitSocket(Path socket) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        while (!Files.exists(socket)) {
            if (System.nanoTime() > deadline || !process.isAlive()) {
                throw new AssertionError("no socket " + socket + "; stderr:\n" + stderr());
            }
            Thread.sleep(10);
        }
    }

    public long pid() {
        return process.pid();
    }

    /** Kills the VMM if it still runs; an interrupt while waiting for it stays set for the caller. */
    @Override
    public void close() {
        if (process.isAlive()) {
            process.destroyForcibly();
            try {
                process.waitFor(10, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
