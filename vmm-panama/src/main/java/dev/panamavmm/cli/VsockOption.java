package dev.panamavmm.cli;

import dev.panamavmm.vmm.VsockConfig;
import java.nio.file.Files;
import java.nio.file.Path;

/** {@code --vsock cid=N,uds=PATH} of {@code run}, and {@code --vsock [cid=N,]uds=PATH} of {@code clone}. */
final class VsockOption {
    private VsockOption() {}

    static VsockConfig parse(String option, String value) {
        try {
            return VsockConfig.parse(value);
        } catch (IllegalArgumentException e) {
            throw new UsageException(option + " " + value + ": " + e.getMessage());
        }
    }

    /** {@code --vsock [cid=N,]uds=PATH} of {@code clone}: the clone's own socket (and CID). */
    static VsockConfig.ForClone parseForClone(String option, String value) {
        try {
            var v = VsockConfig.ForClone.parse(value);
            check(option, v.uds());
            return v;
        } catch (IllegalArgumentException e) {
            throw new UsageException(option + " " + value + ": " + e.getMessage());
        }
    }

    /** Refuses a socket path whose directory is missing, before anything starts. */
    static void check(String option, VsockConfig vsock) {
        check(option, vsock.uds());
    }

    private static void check(String option, Path uds) {
        var dir = uds.toAbsolutePath().getParent();
        if (dir != null && !Files.isDirectory(dir))
            throw new UsageException(option + " uds=" + uds + ": the directory " + dir + " does not exist");
        if (Files.isDirectory(uds)) throw new UsageException(option + " uds=" + uds + " is a directory");
    }
}
