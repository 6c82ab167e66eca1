package dev.panamavmm.vmm;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.stream.Stream;

/**
 * A private temporary directory for state that lives only as long as one operation (a live
 * update's state, a rehearsal), named {@code PREFIX-PID-random} on tmpfs. It is removed when
 * closed; if the JVM exits first, by a shutdown hook; if the process is killed (no hook runs), by
 * the next {@link #create} with the same prefix in any VMM process, which removes the directories
 * of processes that no longer exist. Nothing is left behind for long.
 */
public final class ScratchDir implements AutoCloseable {
    private final Path path;
    private final Thread hook;
    private volatile Runnable beforeExitCleanup = () -> {};

    private ScratchDir(Path path) {
        this.path = path;
        this.hook = new Thread(
                () -> {
                    beforeExitCleanup.run();
                    deleteTree(path);
                },
                "scratch-cleanup");
        Runtime.getRuntime().addShutdownHook(hook);
    }

    /**
     * What the exit-time cleanup runs first: stopping a thread that may still write here (a
     * background rehearsal goes on while the JVM exits), so that nothing is created after the
     * directory is gone. It should return within a second.
     */
    public void beforeExitCleanup(Runnable stopWriters) {
        this.beforeExitCleanup = stopWriters;
    }

    /** /dev/shm when there is one (tmpfs: nothing reaches a disk), else java.io.tmpdir. */
    public static Path defaultRoot() {
        var shm = Path.of("/dev/shm");
        return Files.isDirectory(shm) && Files.isWritable(shm) ? shm : Path.of(System.getProperty("java.io.tmpdir"));
    }

    /** A new directory {@code root/PREFIX-PID-random}, after removing those of dead processes. */
    public static ScratchDir create(Path root, String prefix) throws IOException {
        removeStale(root, prefix);
        return new ScratchDir(Files.createTempDirectory(
                root, prefix + "-" + ProcessHandle.current().pid() + "-"));
    }

    public Path path() {
        return path;
    }

    @Override
    public void close() {
        deleteTree(path);
        try {
            Runtime.getRuntime().removeShutdownHook(hook);
        } catch (IllegalStateException e) {
            // already shutting down: the hook runs anyway
        }
    }

    /** Removes {@code root/PREFIX-PID-*} directories whose process is gone. */
    static void removeStale(Path root, String prefix) {
        try (Stream<Path> entries = Files.list(root)) {
            entries.forEach(p -> {
                String name = p.getFileName().toString();
                if (!name.startsWith(prefix + "-")) return;
                String rest = name.substring(prefix.length() + 1);
                int dash = rest.indexOf('-');
                if (dash <= 0) return;
                try {
                    if (ProcessHandle.of(Long.parseLong(rest.substring(0, dash)))
                            .isEmpty()) deleteTree(p);
                } catch (NumberFormatException e) {
                    // not one of ours
                }
            });
        } catch (IOException e) {
            // an unreadable root: nothing to sweep
        }
    }

    static void deleteTree(Path dir) {
        try (Stream<Path> paths = Files.walk(dir)) {
            paths.sorted(Comparator.reverseOrder()).forEach(p -> {
                try {
                    Files.deleteIfExists(p);
                } catch (IOException e) {
                    // removed by someone else, or not removable: nothing more to do here
                }
            });
        } catch (IOException e) {
            // already gone
        }
    }
}
