package dev.panamavmm.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

import dev.panamavmm.guest.TestGuest;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** The test guest's oracle: per CPU the heartbeats count 1, 2, 3, ... with no gap or repeat, and nothing is CORRUPT. */
public final class Heartbeats {
    private Heartbeats() {}

    /** Checks a console transcript (several VMs' consoles concatenated, for a guest that moved); returns each CPU's last heartbeat. */
    public static Map<Integer, Integer> check(String console) {
        return check(console.lines().toList(), console);
    }

    /**
     * As {@link #check(String)} for a console that is still being written: a last line without
     * its newline may be half of one (a save or migration can land mid-line, and the next VM
     * prints the rest), so it is left out.
     */
    public static Map<Integer, Integer> checkLive(String console) {
        var lines = console.lines().toList();
        if (!console.isEmpty() && !console.endsWith("\n")) lines = lines.subList(0, lines.size() - 1);
        return check(lines, console);
    }

    public static Map<Integer, Integer> check(List<String> lines) {
        return check(lines, String.join("\n", lines));
    }

    private static Map<Integer, Integer> check(List<String> lines, String context) {
        var last = new HashMap<Integer, Integer>();
        for (var line : lines) {
            assertFalse(TestGuest.CORRUPT.matcher(line).matches(), "guest reported corruption: " + line);
            var m = TestGuest.HEARTBEAT.matcher(line);
            if (!m.matches()) continue;
            int cpu = Integer.parseInt(m.group(1)), seq = Integer.parseInt(m.group(2));
            assertEquals(
                    last.getOrDefault(cpu, 0) + 1,
                    seq,
                    "heartbeat of CPU " + cpu + " at: " + line + "\nconsole:\n" + context);
            last.put(cpu, seq);
        }
        return last;
    }
}
