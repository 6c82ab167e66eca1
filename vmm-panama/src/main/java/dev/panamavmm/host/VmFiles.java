package dev.panamavmm.host;

import dev.panamavmm.migration.IoErrors;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Names of a host's VMs and their files: {@code vm-N} by the next N whose files do not exist yet
 * (a VM of an earlier host that still runs keeps its own), with {@code STATE/vm-N.sock} (its API),
 * {@code STATE/vm-N.json} (a worker's record), {@code STATE/vm-N.err} (a worker's stderr),
 * {@code STATE/vm-N.vsock} (a clone's vsock socket when its request names none) and
 * {@code CONSOLES/vm-N.log}.
 */
final class VmFiles {
    private final Path stateDir;
    private final Path consoleDir;
    private final AtomicLong next = new AtomicLong();

    record Names(String id, Path apiSocket, Path console, Path err, Path record) {}

    VmFiles(Path stateDir, Path consoleDir) {
        this.stateDir = stateDir;
        this.consoleDir = consoleDir;
    }

    Path stateDir() {
        return stateDir;
    }

    /**
     * The vsock socket of VM {@code id} when its clone request names none: its own, so clones of
     * one template never share their template's path (guest-initiated connections to port P go
     * to {@code STATE/vm-N.vsock_P}).
     */
    Path vsock(String id) {
        return stateDir.resolve(id + ".vsock");
    }

    /** The next free name; its console file is created (empty), which claims the name. */
    Names claim() {
        while (true) {
            String id = "vm-" + next.incrementAndGet();
            var names = new Names(
                    id,
                    stateDir.resolve(id + ".sock"),
                    consoleDir.resolve(id + ".log"),
                    stateDir.resolve(id + ".err"),
                    stateDir.resolve(id + ".json"));
            if (Files.exists(names.apiSocket(), LinkOption.NOFOLLOW_LINKS)
                    || Files.exists(names.record(), LinkOption.NOFOLLOW_LINKS)) continue;
            try {
                // CREATE_NEW: atomic, and a log of an earlier VM is never truncated: its name is skipped
                Files.newOutputStream(names.console(), StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)
                        .close();
                Files.deleteIfExists(names.err());
                return names;
            } catch (FileAlreadyExistsException e) {
                // taken: the next number
            } catch (IOException e) {
                throw new UncheckedIOException(
                        "cannot create the console file " + names.console() + ": " + IoErrors.reason(e), e);
            }
        }
    }
}
