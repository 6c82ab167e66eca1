package dev.panamavmm.host;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.OptionalLong;

/** What {@code /proc/PID/stat} says about a process: enough to tell a worker from a process that reused its pid. */
final class ProcStat {
    private ProcStat() {}

    /**
     * The process's start time in clock ticks since boot (field 22), or empty when no such
     * process exists. A pid and this value name one process for the host's uptime.
     */
    static OptionalLong startTime(long pid) {
        String stat;
        try {
            stat = Files.readString(Path.of("/proc", Long.toString(pid), "stat"));
        } catch (IOException e) {
            return OptionalLong.empty();
        }
        // The command name (field 2) is in parentheses and may hold spaces or ')': count from the last ')'.
        int close = stat.lastIndexOf(')');
        if (close < 0) return OptionalLong.empty();
        String[] fields = stat.substring(close + 2).split(" ");
        // fields[0] is field 3 (state); field 22 is fields[19]. A zombie has ended already.
        if (fields.length < 20 || fields[0].equals("Z")) return OptionalLong.empty();
        try {
            return OptionalLong.of(Long.parseLong(fields[19]));
        } catch (NumberFormatException e) {
            return OptionalLong.empty();
        }
    }
}
