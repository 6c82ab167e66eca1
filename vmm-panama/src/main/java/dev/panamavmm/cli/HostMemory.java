package dev.panamavmm.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/** The host's physical memory, from /proc/meminfo (0 when it cannot be read). */
final class HostMemory {
    private HostMemory() {}

    static long total() {
        try {
            for (var line : Files.readAllLines(Path.of("/proc/meminfo"))) {
                if (line.startsWith("MemTotal:")) {
                    return Long.parseLong(line.replaceAll("[^0-9]", "")) * 1024;
                }
            }
        } catch (IOException | NumberFormatException e) {
            return 0;
        }
        return 0;
    }
}
