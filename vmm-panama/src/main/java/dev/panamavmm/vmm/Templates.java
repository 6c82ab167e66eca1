package dev.panamavmm.vmm;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.migration.SnapshotFormat;
import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.MemoryFileLocks;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * VM templates: a guest booted once with its RAM in a shared memory file, saved with
 * bypass-shared-memory at its ready point; clones map the file copy-on-write and restore the
 * state, so each starts where the template stopped and pays only for the pages it writes.
 *
 * <p>A template directory holds {@code snapshot.pvm} (state; it refers to the memory file) and
 * {@code memory.ram}, a symbolic link to the memory file (on /dev/shm by default). Once created it
 * is read-only: files 0444, directory 0555. While it is being created, {@code .creating} holds
 * the creating process's pid, so a clone from an unfinished template is refused.
 */
public final class Templates {
    private Templates() {}

    public static final String MEMORY_LINK = TemplateGuard.MEMORY_LINK;
    static final String CREATING = TemplateGuard.CREATING;

    /** What a template creation did. */
    public record Created(Path dir, Path memoryFile, long saveMillis, long bootMillis) {}

    /**
     * Boots {@code config} (its backing replaced by a new shared file in {@code memDir}), waits for
     * the guest's ready point (or {@code readySignal} completing, e.g. the API's stop), saves it
     * into {@code dir} and ends the VM.
     */
    public static Created create(
            Kvm kvm,
            Path dir,
            MachineConfig config,
            Path memDir,
            OutputStream console,
            CompletableFuture<Void> readySignal,
            long timeoutSeconds)
            throws Exception {
        return create(kvm, dir, config, memDir, console, readySignal, new CompletableFuture<>(), timeoutSeconds);
    }

    /** As above; completing {@code cancel} ends the booting VM and the creation fails, leaving nothing behind. */
    public static Created create(
            Kvm kvm,
            Path dir,
            MachineConfig config,
            Path memDir,
            OutputStream console,
            CompletableFuture<Void> readySignal,
            CompletableFuture<String> cancel,
            long timeoutSeconds)
            throws Exception {
        if (Files.exists(dir.resolve(SnapshotFormat.FILE_NAME)) || Files.exists(dir.resolve(CREATING))) {
            throw new SnapshotException("template directory " + dir + " is not empty: a template is created once");
        }
        if (!Files.isDirectory(memDir)) throw new SnapshotException("memory directory " + memDir + " does not exist");
        Files.createDirectories(dir);
        Path marker = dir.resolve(CREATING);
        Files.writeString(marker, Long.toString(ProcessHandle.current().pid()));
        Path memory = memDir.resolve("panama-template-" + dir.toAbsolutePath().getFileName() + "-"
                        + Long.toHexString(System.nanoTime()) + ".ram")
                .toAbsolutePath();
        boolean done = false;
        try {
            var ready = new CompletableFuture<Void>();
            readySignal.whenComplete((v, t) -> ready.complete(null));
            var shared = config.withBacking(new Backing.SharedFile(memory));
            long start = System.nanoTime();
            try (var vm = VmBuilder.boot(kvm, shared, console, new VmListener() {
                @Override
                public void ready() {
                    ready.complete(null);
                }
            })) {
                cancel.thenAccept(why -> vm.end(new VmExitReason.Stopped(why)));
                vm.start();
                var first = CompletableFuture.anyOf(ready, vm.termination()).get(timeoutSeconds, TimeUnit.SECONDS);
                if (first instanceof VmExitReason reason) {
                    throw new SnapshotException(
                            "the template's guest ended before its ready point: " + reason.describe());
                }
                long bootMillis = (System.nanoTime() - start) / 1_000_000;
                vm.pause();
                // Read-only before the save records the file's identity (a chmod changes its ctime).
                Files.setPosixFilePermissions(memory, READ_ONLY);
                var saved = VmSnapshots.save(vm, dir, true, false, RamWriter.Progress.NONE);
                Files.createSymbolicLink(dir.resolve(MEMORY_LINK), memory);
                Files.setPosixFilePermissions(dir.resolve(SnapshotFormat.FILE_NAME), READ_ONLY);
                Files.delete(marker);
                Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("r-xr-xr-x"));
                done = true;
                return new Created(dir, memory, saved.millis(), bootMillis);
            } catch (TimeoutException e) {
                throw new SnapshotException(
                        "the template's guest did not reach its ready point within " + timeoutSeconds + " s");
            }
        } finally {
            if (!done) {
                Files.deleteIfExists(marker);
                Files.deleteIfExists(memory);
                Files.deleteIfExists(dir.resolve(SnapshotFormat.FILE_NAME));
            }
        }
    }

    private static final Set<PosixFilePermission> READ_ONLY = PosixFilePermissions.fromString("r--r--r--");

    /** Opens a template for cloning: refuses an unfinished one, then loads and checks its snapshot. */
    public static LoadedSnapshot open(Path dir) {
        if (!Files.isDirectory(dir)) throw new SnapshotException("no template directory " + dir);
        Path marker = dir.resolve(CREATING);
        if (Files.exists(marker)) {
            String pid = "";
            try {
                pid = Files.readString(marker).strip();
            } catch (IOException ignored) {
                // the marker vanished: creation just finished
            }
            boolean alive = !pid.isEmpty()
                    && ProcessHandle.of(Long.parseLong(pid))
                            .map(ProcessHandle::isAlive)
                            .orElse(false);
            throw new SnapshotException(
                    alive
                            ? "template " + dir + " is still being created (process " + pid + " is running)"
                            : "template " + dir + " is incomplete: its creation did not finish");
        }
        if (!Files.exists(dir.resolve(SnapshotFormat.FILE_NAME)))
            throw new SnapshotException(dir + " is not a template (no snapshot.pvm)");
        var loaded = VmSnapshots.load(dir);
        if (loaded.snapshot().ram().stream().noneMatch(e -> e.byReference())) {
            throw new SnapshotException(dir + " is a snapshot, not a template: its RAM is not in a shared memory file");
        }
        return loaded;
    }

    /** Whether {@code dir} is a template directory (finished or being created), not a plain snapshot. */
    public static boolean isTemplate(Path dir) {
        return TemplateGuard.isTemplate(dir);
    }

    /** See {@link TemplateGuard#refuseTemplate}. */
    public static void refuseTemplate(LoadedSnapshot loaded) {
        TemplateGuard.refuseTemplate(loaded);
    }

    /** A template found by {@link #list}: its directory, memory file, guest RAM, creation time and the clones that map it. */
    public record Listed(Path dir, Path memoryFile, long memoryBytes, int cpus, long createdAtMillis, int users) {}

    /** The finished templates in {@code dir} (itself, or its immediate subdirectories), by directory name. */
    public static List<Listed> list(Path dir) throws IOException {
        if (!Files.isDirectory(dir)) throw new SnapshotException("no directory " + dir);
        var candidates = new ArrayList<Path>();
        if (isTemplate(dir)) candidates.add(dir);
        else
            try (var children = Files.list(dir)) {
                children.filter(Files::isDirectory).sorted().forEach(candidates::add);
            }
        var found = new ArrayList<Listed>();
        for (var d : candidates) {
            if (!Files.isSymbolicLink(d.resolve(MEMORY_LINK)) || Files.exists(d.resolve(CREATING))) continue;
            try {
                var snapshot = SnapshotReader.open(d);
                var machine = Json.asObject(snapshot.metadata().get("machine"), "machine");
                Path memory = Files.readSymbolicLink(d.resolve(MEMORY_LINK));
                int users =
                        Files.exists(memory) ? MemoryFileLocks.holders(memory).size() : 0;
                found.add(new Listed(
                        d,
                        memory,
                        (Long) machine.get("memory"),
                        (int) (long) (Long) machine.get("cpus"),
                        snapshot.createdAtMillis(),
                        users));
            } catch (RuntimeException | IOException e) {
                // not readable as a template: list shows templates, inspect says what is wrong with the rest
            }
        }
        return found;
    }

    /** What {@link #remove} did: the memory file it deleted (null if it was already gone) and how many clones still map it. */
    public record Removed(Path dir, Path memoryFile, int runningClones, boolean otherFilesKept) {}

    /**
     * Removes a template: its memory file, its snapshot and link, and the directory unless it holds
     * other files. Running clones keep their private copy-on-write mapping of the memory (the
     * kernel frees it when the last one ends). Refuses a directory that is not a template and
     * one that is still being created.
     */
    public static Removed remove(Path dir) throws IOException {
        if (!Files.isDirectory(dir)) throw new SnapshotException("no template directory " + dir);
        Path link = dir.resolve(MEMORY_LINK);
        Path marker = dir.resolve(CREATING);
        if (!isTemplate(dir)) {
            throw new SnapshotException(dir + " is not a template (no " + MEMORY_LINK + " link): nothing removed");
        }
        if (Files.exists(marker)) {
            String pid = "";
            try {
                pid = Files.readString(marker).strip();
            } catch (IOException ignored) {
                // creation just finished or failed
            }
            if (!pid.isEmpty()
                    && pid.chars().allMatch(Character::isDigit)
                    && ProcessHandle.of(Long.parseLong(pid))
                            .map(ProcessHandle::isAlive)
                            .orElse(false)) {
                throw new SnapshotException("template " + dir + " is still being created (process " + pid
                        + " is running): nothing removed");
            }
        }
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxr-xr-x")); // created 0555
        Path memory = Files.isSymbolicLink(link) ? Files.readSymbolicLink(link) : null;
        int clones = 0;
        if (memory != null && Files.isRegularFile(memory)) {
            clones = MemoryFileLocks.holders(memory).size();
            Files.delete(memory);
        } else {
            memory = null;
        }
        Files.deleteIfExists(link);
        Files.deleteIfExists(dir.resolve(SnapshotFormat.FILE_NAME));
        Files.deleteIfExists(marker);
        boolean others;
        try (var rest = Files.list(dir)) {
            others = rest.findAny().isPresent();
        }
        if (!others) Files.delete(dir);
        return new Removed(dir, memory, clones, others);
    }

    /** A clone of a loaded template, paused until started, with a fresh random generation id. */
    public static Vm clone(Kvm kvm, LoadedSnapshot template, OutputStream console, VmListener listener) {
        return clone(kvm, template, List.of(), console, listener);
    }

    /** As above, the clone's private disks made at {@code disks} (in the order of the template's writable disks; the rest beside the template's). */
    public static Vm clone(
            Kvm kvm, LoadedSnapshot template, List<Path> disks, OutputStream console, VmListener listener) {
        var vm = VmBuilder.fromSnapshot(kvm, template, VmBuilder.Mode.CLONE, disks, console, listener);
        vm.vmmPort().setGenerationId(newGenerationId());
        return vm;
    }

    private static final SecureRandom RANDOM = new SecureRandom();

    /** A non-zero random 64-bit generation id (0 means "never cloned"). */
    static long newGenerationId() {
        long id;
        do {
            id = RANDOM.nextLong();
        } while (id == 0);
        return id;
    }
}
