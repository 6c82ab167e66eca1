package dev.panamavmm.cli;

import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.RamWriter;

/**
 * Progress of a save on stderr: a bar redrawn in place on a terminal (at most ten times a second),
 * nothing on a pipe or file but the line the caller prints when done. Silent until bytes move, so
 * a save that writes no RAM (bypass) prints nothing.
 */
final class ProgressBar implements RamWriter.Progress, AutoCloseable {
    private final String what;
    private final long total;
    private final boolean terminal = LibC.isatty(2);
    private long done;
    private long lastDraw;
    private boolean drawn;

    ProgressBar(String what, long total) {
        this.what = what;
        this.total = Math.max(total, 1);
    }

    @Override
    public synchronized void advance(long bytes) {
        done += bytes;
        if (!terminal) return;
        long now = System.nanoTime();
        if (drawn && now - lastDraw < 100_000_000L && done < total) return;
        lastDraw = now;
        drawn = true;
        int percent = (int) Math.min(100, done * 100 / total);
        int width = 30;
        int filled = percent * width / 100;
        System.err.printf(
                "\r%s [%s%s] %3d%% (%d of %d MiB)",
                what, "#".repeat(filled), ".".repeat(width - filled), percent, done >> 20, total >> 20);
        System.err.flush();
    }

    /** Ends the bar (as {@link #done()}): an owner that only knows a {@code Progress} closes it. */
    @Override
    public void close() {
        done();
    }

    synchronized void done() {
        if (drawn) {
            System.err.println();
            System.err.flush();
        }
    }
}
