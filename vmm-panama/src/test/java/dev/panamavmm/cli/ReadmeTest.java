package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.panamavmm.kvm.testing.KvmTest;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * The README's "Using it" blocks run top to bottom as typed, so that they cannot rot (at 52b27eb
 * several lines failed: files the scripts never make, a restore with nothing on the socket that
 * the next line used, {@code [--json]} typed literally).
 *
 * <p>Each {@code sh} block of the section becomes one bash script ({@code set -euo pipefail}: a line
 * that fails fails the test), run in a temporary directory where {@code ./vmm} is a wrapper that
 * starts the VMM from the test classpath, as {@link dev.panamavmm.testing.VmmProcess} does: the
 * repository's {@code ./vmm} would build the jar with Maven first, inside this Maven run. What the
 * README names under {@code /tmp} and {@code /dev/shm} goes to directories of the test's own (other
 * tests and users run VMMs beside it), removed afterwards. A line marked "(Ctrl-A x quits)" runs a
 * guest until someone quits it: the test ends it with SIGTERM once it printed a heartbeat. After a
 * line that starts a VMM in the background, the test waits for the sockets it names to appear (as a
 * user waits to see it start: a warm-up on a loaded machine can outlast the 5 s {@code ctl} waits). A block
 * whose first line says "Not run by ReadmeTest" (the Linux boots, minutes here) is only checked for
 * syntax and for the scripts it names. Every process started carries a marker in its environment;
 * any still running at the end is ended, and fails the test: the README says how to stop what it
 * starts.
 */
class ReadmeTest {
    static final String SECTION = "## Using it";
    static final String SKIP_MARK = "Not run by ReadmeTest";
    static final String QUIT_MARK = "(Ctrl-A x quits)";
    static final String MARKER_VARIABLE = "PANAMA_VMM_README_TEST";
    static final long SCRIPT_SECONDS = 900;

    /** The lines of one {@code sh} block, and whether the block is marked as not run. */
    record Block(List<String> lines, boolean skipped) {}

    @KvmTest
    void theUsingItBlocksRunInOrder() throws Exception {
        Path root = repositoryRoot();
        var blocks = shellBlocks(Files.readString(root.resolve("README.md")));
        var run = blocks.stream().filter(b -> !b.skipped()).toList();
        assertTrue(
                run.stream().mapToInt(b -> b.lines().size()).sum() > 20,
                "the section should hold the README's examples: " + blocks);

        String marker = UUID.randomUUID().toString();
        Path dir = Files.createTempDirectory("readme-test-");
        Path shm = Files.createTempDirectory(Path.of("/dev/shm"), "readme-test-");
        Path tmp = Files.createDirectory(dir.resolve("tmp"));
        var leftovers = new ArrayList<String>();
        String output = "";
        try {
            writeWrapper(dir);
            Path script = Files.writeString(dir.resolve("readme.sh"), script(run, tmp, shm, dir));
            Path log = dir.resolve("output.log");
            var pb = new ProcessBuilder("bash", script.toString())
                    .directory(dir.toFile())
                    .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")))
                    .redirectErrorStream(true)
                    .redirectOutput(log.toFile());
            pb.environment().put(MARKER_VARIABLE, marker);
            var bash = pb.start();
            boolean ended = bash.waitFor(SCRIPT_SECONDS, TimeUnit.SECONDS);
            output = Files.readString(log, StandardCharsets.UTF_8);
            if (!ended)
                fail("the README's blocks did not finish within " + SCRIPT_SECONDS + " s; output:\n" + tail(output));
            assertEquals(0, bash.exitValue(), "a README line failed; output:\n" + tail(output));
        } finally {
            leftovers.addAll(endMarkedProcesses(marker));
            removeTemplateMemory(tmp.resolve("tpl"));
            deleteTree(dir);
            deleteTree(shm);
        }
        assertTrue(
                leftovers.isEmpty(),
                "the README left processes running (it should say how to stop them): " + leftovers);
        assertTrue(output.contains("README: done"), tail(output));
    }

    /** The skipped blocks still parse, and the scripts they name exist. */
    @Test
    void theBlocksItDoesNotRunAreValidShellAndNameScriptsThatExist() throws Exception {
        Path root = repositoryRoot();
        var skipped = shellBlocks(Files.readString(root.resolve("README.md"))).stream()
                .filter(Block::skipped)
                .toList();
        assertTrue(!skipped.isEmpty(), "the Linux block is marked '" + SKIP_MARK + "'");
        for (var block : skipped) {
            var check =
                    new ProcessBuilder("bash", "-n").redirectErrorStream(true).start();
            try (var in = check.getOutputStream()) {
                in.write(String.join("\n", block.lines()).getBytes(StandardCharsets.UTF_8));
            }
            String err = new String(check.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            assertEquals(0, check.waitFor(), "bash -n: " + err + "\n" + block.lines());
            Matcher m = Pattern.compile("scripts/[\\w-]+").matcher(String.join("\n", block.lines()));
            while (m.find()) assertTrue(Files.isExecutable(root.resolve(m.group())), "no script " + m.group());
        }
    }

    /** The {@code sh} blocks of the "Using it" section, in order. */
    static List<Block> shellBlocks(String readme) {
        int start = readme.indexOf("\n" + SECTION + "\n");
        assertTrue(start >= 0, "README.md has no '" + SECTION + "' section");
        int end = readme.indexOf("\n## ", start + 1);
        var section = readme.substring(start, end < 0 ? readme.length() : end);
        var blocks = new ArrayList<Block>();
        List<String> current = null;
        for (String line : section.lines().toList()) {
            if (current == null && line.equals("```sh")) {
                current = new ArrayList<>();
            } else if (current != null && line.equals("```")) {
                blocks.add(new Block(
                        List.copyOf(current),
                        !current.isEmpty() && current.getFirst().contains(SKIP_MARK)));
                current = null;
            } else if (current != null) {
                current.add(line);
            }
        }
        return blocks;
    }

    /** The bash script: the blocks' lines in order, with the README's /tmp and /dev/shm moved to the test's directories. */
    static String script(List<Block> blocks, Path tmp, Path shm, Path dir) {
        var sb = new StringBuilder("""
                set -euo pipefail
                readme_background=()
                # A VMM whose console is this terminal runs until someone quits it: stop it as Ctrl-A x would,
                # once its guest printed a heartbeat (the proof that the line did what it says).
                readme_until_heartbeat() {
                  local - log pid rc=0
                  set +x
                  log=$(mktemp -p "$README_DIR" foreground-XXXXXX.log)
                  "$@" >"$log" 2>&1 &
                  pid=$!
                  for _ in $(seq 1200); do
                    grep -Eq '^hb [0-9]+ [0-9]+$' "$log" && break
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.1
                  done
                  kill -TERM "$pid" 2>/dev/null || true
                  wait "$pid" || rc=$?
                  cat "$log"
                  grep -Eq '^hb [0-9]+ [0-9]+$' "$log" || { echo "README: no heartbeat from: $*"; return 1; }
                  return "$rc"
                }
                # After a `... &` line: wait for the sockets it makes, as a user waits to see it start. The
                # README's next line would wait 5 s itself (--wait); on a loaded machine a warm-up can take longer.
                readme_await_socket() {
                  local -
                  set +x
                  for _ in $(seq 600); do
                    [ -S "$1" ] && return 0
                    kill -0 "$2" 2>/dev/null || break
                    sleep 0.1
                  done
                  echo "README: the process started last never made $1"
                  return 1
                }
                PS4='README> '
                set -x
                """);
        sb.insert(0, "README_DIR=" + quote(dir.toString()) + "\n");
        for (var block : blocks) {
            for (String line : block.lines()) {
                String moved = moveDirectories(line, tmp, shm);
                if (line.contains(QUIT_MARK)) moved = "readme_until_heartbeat " + moved;
                sb.append(moved).append('\n');
                if (line.matches(".*&\\s*(#.*)?")) {
                    sb.append("readme_background+=($!)\n");
                    Matcher socket = Pattern.compile("(?:--api-socket |incoming unix:)(\\S+)")
                            .matcher(moved);
                    while (socket.find())
                        sb.append("readme_await_socket ")
                                .append(socket.group(1))
                                .append(" $!\n");
                }
            }
        }
        sb.append("""
                set +x
                # Every VMM the README started in the background has been told to end by now: give each
                # a few seconds to exit, then its exit code must be 0.
                for pid in "${readme_background[@]}"; do
                  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                  if kill -0 "$pid" 2>/dev/null; then
                    echo "README: still running: $(tr '\\0' ' ' </proc/$pid/cmdline)"; exit 1
                  fi
                  rc=0; wait "$pid" || rc=$?
                  [ "$rc" = 0 ] || { echo "README: background process $pid exited with $rc"; exit 1; }
                done
                echo "README: done"
                """);
        return sb.toString();
    }

    /** {@code /tmp} and {@code /dev/shm} as path prefixes (not inside other words) to the test's own directories. */
    static String moveDirectories(String line, Path tmp, Path shm) {
        String moved = line.replaceAll("(?<![\\w/.])/tmp(?=[/\\s'\"]|$)", Matcher.quoteReplacement(tmp.toString()));
        return moved.replaceAll("(?<![\\w/.])/dev/shm(?=[/\\s'\"]|$)", Matcher.quoteReplacement(shm.toString()));
    }

    /** {@code ./vmm} in the test directory: the VMM from the test classpath, as the tests start it. */
    private static void writeWrapper(Path dir) throws IOException {
        String java = ProcessHandle.current().info().command().orElse("java");
        Path javaTmp = Files.createDirectory(dir.resolve("java-tmp"));
        // -XX:-UsePerfData: no hsperfdata file in /tmp for a JVM that the cleanup may have to kill.
        String wrapper = "#!/bin/sh\nexec " + quote(java)
                + " --enable-native-access=ALL-UNNAMED -XX:+UseSerialGC -XX:-UsePerfData"
                + " -Djava.io.tmpdir=" + quote(javaTmp.toString())
                + " -cp " + quote(System.getProperty("java.class.path")) + " dev.panamavmm.cli.Main \"$@\"\n";
        Path vmm = Files.writeString(dir.resolve("vmm"), wrapper);
        Files.setPosixFilePermissions(vmm, PosixFilePermissions.fromString("rwx------"));
    }

    /** Ends every process whose environment carries the marker (SIGTERM, then SIGKILL); returns their command lines. */
    private static List<String> endMarkedProcesses(String marker) throws InterruptedException {
        var marked = ProcessHandle.allProcesses()
                .filter(p -> carries(p.pid(), MARKER_VARIABLE + "=" + marker))
                .toList();
        var names = new ArrayList<String>();
        for (var p : marked) {
            names.add(p.pid() + ": " + p.info().commandLine().orElse("?"));
            p.destroy();
        }
        for (var p : marked) {
            try {
                p.onExit().get(10, TimeUnit.SECONDS);
            } catch (Exception e) {
                p.destroyForcibly();
                try {
                    Files.deleteIfExists(
                            Path.of("/tmp", "hsperfdata_" + System.getProperty("user.name"), Long.toString(p.pid())));
                } catch (IOException ignored) {
                    // best effort: the file of a killed JVM
                }
            }
        }
        return names;
    }

    private static boolean carries(long pid, String entry) {
        try {
            byte[] environ = Files.readAllBytes(Path.of("/proc", Long.toString(pid), "environ"));
            for (String e : new String(environ, StandardCharsets.UTF_8).split("\0")) if (e.equals(entry)) return true;
        } catch (IOException | SecurityException e) {
            // gone, or not ours to read
        }
        return false;
    }

    /** After a failure before the README's {@code template rm}: the template's memory file lies outside the test's directories. */
    private static void removeTemplateMemory(Path template) throws IOException {
        Path link = template.resolve("memory.ram");
        if (!Files.isSymbolicLink(link)) return;
        Path target = Files.readSymbolicLink(link);
        if (target.getFileName().toString().startsWith("panama-template-")) Files.deleteIfExists(target);
    }

    private static void deleteTree(Path dir) throws IOException {
        if (!Files.exists(dir)) return;
        List<Path> paths;
        try (var walk = Files.walk(dir)) {
            paths = walk.toList();
        }
        for (Path p : paths)
            if (Files.isDirectory(p, java.nio.file.LinkOption.NOFOLLOW_LINKS))
                p.toFile().setWritable(true, true); // a template is 0555
        for (Path p : paths.stream().sorted(Comparator.reverseOrder()).toList()) Files.deleteIfExists(p);
    }

    private static String quote(String s) {
        return "'" + s.replace("'", "'\\''") + "'";
    }

    private static String tail(String output) {
        var lines = output.lines().toList();
        return String.join("\n", lines.subList(Math.max(0, lines.size() - 80), lines.size()));
    }

    static Path repositoryRoot() {
        for (Path dir = Path.of("").toAbsolutePath(); dir != null; dir = dir.getParent()) {
            if (Files.isRegularFile(dir.resolve("README.md")) && Files.isRegularFile(dir.resolve("vmm"))) return dir;
        }
        throw new IllegalStateException(
                "no README.md and vmm above " + Path.of("").toAbsolutePath());
    }
}
