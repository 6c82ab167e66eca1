package dev.panamavmm.kvm.sys;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.panamavmm.kvm.KvmException;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Failures of the fd-passing socket name the path they are about (at 52b27eb: "bind failed: ENOENT"). */
class UnixSocketTest {
    @Test
    void listeningInAMissingDirectoryNamesThePath(@TempDir Path dir) {
        var path = dir.resolve("no/such/dir/x.in");
        var e = assertThrows(KvmException.class, () -> UnixSocket.listen(path));
        assertEquals("listen on " + path + " failed: ENOENT (No such file or directory)", e.getMessage());
    }
}
