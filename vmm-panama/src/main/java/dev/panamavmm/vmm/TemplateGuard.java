package dev.panamavmm.vmm;

import dev.panamavmm.migration.SnapshotException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermission;

/**
 * What makes a directory a template, and the rule that a template is never run in place: the
 * builder checks it on every build that continues a guest in its memory file ({@link Templates}
 * makes and lists templates; this small class is what the builder needs of them).
 */
final class TemplateGuard {
    private TemplateGuard() {}

    /** The link from a template directory to its memory file. */
    static final String MEMORY_LINK = "memory.ram";
    /** Present while a template is being created. */
    static final String CREATING = ".creating";

    static boolean isTemplate(Path dir) {
        return Files.isSymbolicLink(dir.resolve(MEMORY_LINK)) || Files.exists(dir.resolve(CREATING));
    }

    /**
     * Refuses to continue a guest in a template's memory file: the template would be gone (every
     * later clone is refused because the file changed). Also a read-only memory file (template
     * files are 0444) named by a snapshot found elsewhere, e.g. a copied snapshot.pvm.
     */
    static void refuseTemplate(LoadedSnapshot loaded) {
        Path dir = loaded.dir();
        if (isTemplate(dir)) throw new SnapshotException(dir + " is a template: use vmm clone " + dir);
        for (var e : loaded.snapshot().ram()) {
            if (!e.byReference()) continue;
            try {
                if (!Files.getPosixFilePermissions(e.file()).contains(PosixFilePermission.OWNER_WRITE)) {
                    throw new SnapshotException(
                            "the memory file " + e.file() + " is read-only, as a template's is: clone it"
                                    + " (vmm clone DIR) instead of continuing in it");
                }
            } catch (IOException ignored) {
                // mapping it will say what is wrong
            }
        }
    }
}
