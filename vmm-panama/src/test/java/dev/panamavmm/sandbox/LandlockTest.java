package dev.panamavmm.sandbox;

import static dev.panamavmm.kvm.bindings.SandboxConstants.PR_SET_NO_NEW_PRIVS;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Landlock on a thread of its own: the runtime's files stay readable, nothing else opens, open files stay usable. */
class LandlockTest {
    @Test
    void aGuestServingThreadReadsTheRuntimeAndOpensNothingElse(@TempDir Path dir) throws Exception {
        assertTrue(Landlock.abi() > 0, "this project's hosts offer Landlock (kernel 6.18, ABI 7)");
        var file = Files.writeString(dir.resolve("disk.img"), "before");
        int openBefore = LibC.open(file.toString(), LibcConstants.O_RDWR | LibcConstants.O_CLOEXEC, 0);
        var seen = new ArrayList<String>();
        var t = Thread.ofPlatform().start(() -> {
            LibC.prctl("PR_SET_NO_NEW_PRIVS", PR_SET_NO_NEW_PRIVS, 1);
            Landlock.restrictToRuntime();
            for (var path :
                    List.of(Path.of(System.getProperty("java.home"), "release"), file, Path.of("/etc/hostname"))) {
                try {
                    LibC.close(LibC.open(path.toString(), LibcConstants.O_RDONLY | LibcConstants.O_CLOEXEC, 0));
                    seen.add("opened");
                } catch (KvmException e) {
                    seen.add(e.errno() == LibcConstants.EACCES ? "refused" : e.getMessage());
                }
            }
            try (var arena = Arena.ofConfined()) {
                seen.add(LibC.write(openBefore, arena.allocateFrom("after")) > 0 ? "wrote" : "nothing");
            }
            // Classes still load from the class path (here: named by the test runner's booter jar's manifest).
            seen.add(new LoadedLate().toString());
        });
        t.join();
        LibC.close(openBefore);
        assertEquals(List.of("opened", "refused", "refused", "wrote", "loaded"), seen);
        // Landlock restricted that thread only.
        LibC.close(LibC.open("/etc/hostname", LibcConstants.O_RDONLY | LibcConstants.O_CLOEXEC, 0));
    }

    /** Loaded only on the restricted thread. */
    private static final class LoadedLate {
        @Override
        public String toString() {
            return "loaded";
        }
    }
}
