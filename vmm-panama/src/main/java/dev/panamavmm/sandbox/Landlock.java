package dev.panamavmm.sandbox;

import static dev.panamavmm.kvm.bindings.SandboxConstants.*;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LandlockPathBeneathAttr;
import dev.panamavmm.kvm.bindings.LandlockRulesetAttr;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.io.File;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.jar.JarFile;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Landlock for the threads that serve the guest (vCPU and device kinds): they open no file of
 * their own (disks, consoles and memory files are open before they start), so their ruleset allows
 * only reading the JDK and the class path (class loading), {@code /proc}, {@code /sys} and the
 * random devices. Landlock restricts the calling thread (and threads it creates), as seccomp does;
 * the ruleset is made once per process and each thread restricts itself with it. A kernel without
 * Landlock gets one log line and the threads keep the process's file access.
 */
final class Landlock {
    private Landlock() {}

    private static final Logger log = LoggerFactory.getLogger(Landlock.class);

    /** The process's ruleset for guest-serving threads: -1 when Landlock is missing, 0 before it is made. */
    private static int ruleset;

    /** Restricts the calling thread's file access to reading the runtime's files (see the class comment). */
    static void restrictToRuntime() {
        int fd = ruleset();
        if (fd > 0) LibC.landlockRestrictSelf(fd);
    }

    /** The Landlock ABI version this kernel offers, or 0 without Landlock. */
    static int abi() {
        int v = LibC.landlockCreateRulesetOrErrno(MemorySegment.NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
        return Math.max(v, 0);
    }

    private static synchronized int ruleset() {
        if (ruleset != 0) return ruleset;
        int abi = abi();
        if (abi == 0) {
            log.info("sandbox: this kernel offers no Landlock; vCPU and device threads keep the process's file access");
            return ruleset = -1;
        }
        long handled = LANDLOCK_ACCESS_FS_EXECUTE
                | LANDLOCK_ACCESS_FS_WRITE_FILE
                | LANDLOCK_ACCESS_FS_READ_FILE
                | LANDLOCK_ACCESS_FS_READ_DIR
                | LANDLOCK_ACCESS_FS_REMOVE_DIR
                | LANDLOCK_ACCESS_FS_REMOVE_FILE
                | LANDLOCK_ACCESS_FS_MAKE_CHAR
                | LANDLOCK_ACCESS_FS_MAKE_DIR
                | LANDLOCK_ACCESS_FS_MAKE_REG
                | LANDLOCK_ACCESS_FS_MAKE_SOCK
                | LANDLOCK_ACCESS_FS_MAKE_FIFO
                | LANDLOCK_ACCESS_FS_MAKE_BLOCK
                | LANDLOCK_ACCESS_FS_MAKE_SYM;
        if (abi >= 2) handled |= LANDLOCK_ACCESS_FS_REFER;
        try (var arena = Arena.ofConfined()) {
            var attr = arena.allocate(LandlockRulesetAttr.LAYOUT);
            LandlockRulesetAttr.handledAccessFs(attr, handled);
            int fd = LibC.landlockCreateRulesetOrErrno(attr, LandlockRulesetAttr.BYTE_SIZE, 0);
            if (fd < 0) throw new KvmException("landlock_create_ruleset", -fd);
            var rule = arena.allocate(LandlockPathBeneathAttr.LAYOUT);
            for (var path : readable()) {
                boolean dir = Files.isDirectory(path);
                int pathFd;
                try {
                    pathFd = LibC.open(path.toString(), O_PATH | LibcConstants.O_CLOEXEC, 0);
                } catch (KvmException e) {
                    continue; // gone or unreadable: nothing to allow
                }
                try {
                    long read = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_EXECUTE;
                    LandlockPathBeneathAttr.allowedAccess(rule, dir ? read | LANDLOCK_ACCESS_FS_READ_DIR : read);
                    LandlockPathBeneathAttr.parentFd(rule, pathFd);
                    LibC.landlockAddPathRule(fd, rule);
                } finally {
                    LibC.close(pathFd);
                }
            }
            log.debug("sandbox: Landlock ABI {} for vCPU and device threads", abi);
            return ruleset = fd;
        }
    }

    /**
     * The entries of a jar's manifest {@code Class-Path} (relative to the jar's directory, or
     * {@code file:} URLs: a test runner's booter jar names every jar and class directory that way).
     */
    private static List<Path> manifestClassPath(Path jar) {
        if (!Files.isRegularFile(jar)) return List.of();
        try (var file = new JarFile(jar.toFile())) {
            var manifest = file.getManifest();
            String classPath =
                    manifest == null ? null : manifest.getMainAttributes().getValue("Class-Path");
            if (classPath == null) return List.of();
            var out = new ArrayList<Path>();
            for (String entry : classPath.trim().split("\\s+")) {
                if (entry.isEmpty()) continue;
                try {
                    var uri = jar.getParent().toUri().resolve(entry);
                    if (uri.getScheme() == null || !uri.getScheme().equals("file")) continue;
                    var p = Path.of(uri);
                    out.add(Files.isDirectory(p) ? p : p.getParent());
                } catch (IllegalArgumentException e) {
                    // not a path: nothing to allow
                }
            }
            return out;
        } catch (IOException e) {
            return List.of();
        }
    }

    /**
     * The JDK, the class path's and the module path's directories and jars (and those the class
     * path's manifests name), /proc, /sys, the random devices. Classes load lazily, so a confined
     * thread reads them long after it entered the sandbox.
     */
    static Set<Path> readable() {
        var paths = new LinkedHashSet<Path>();
        paths.add(Path.of(System.getProperty("java.home")));
        for (String entry : System.getProperty("java.class.path", "").split(File.pathSeparator)) {
            if (entry.isEmpty()) continue;
            var p = Path.of(entry).toAbsolutePath();
            paths.add(Files.isDirectory(p) ? p : p.getParent() != null ? p.getParent() : p);
            paths.addAll(manifestClassPath(p));
        }
        for (String property : new String[] {"jdk.module.path", "jdk.module.upgrade.path"}) {
            for (String entry : System.getProperty(property, "").split(File.pathSeparator)) {
                if (!entry.isEmpty()) paths.add(Path.of(entry).toAbsolutePath());
            }
        }
        for (String p : new String[] {"/proc", "/sys", "/dev/urandom", "/dev/random", "/dev/null"})
            paths.add(Path.of(p));
        return paths;
    }
}
