package dev.panamavmm.cli;

import dev.panamavmm.vmm.VsockConfig;
import java.nio.file.Files;

/** {@code --vsock cid=N,uds=PATH}, as {@code run} and {@code clone} take it. */
final class VsockOption {
    private VsockOption() {}

    static VsockConfig parse(String option, String value) {
        try {
            return VsockConfig.parse(value);
        } catch (IllegalArgumentException e) {
            throw new UsageException(option + " " + value + ": " + e.getMessage());
        }
    }

    /** Refuses a socket path whose directory is missing, before anything starts. */
    static void check(String option, VsockConfig vsock) {
        var dir = vsock.uds().toAbsolutePath().getParent();
        if (dir != null && !Files.isDirectory(dir))
            throw new UsageException(option + " uds=" + vsock.uds() + ": the directory " + dir + " does not exist");
        if (Files.isDirectory(vsock.uds()))
            throw new UsageException(option + " uds=" + vsock.uds() + " is a directory");
    }
}
