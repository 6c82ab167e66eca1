package dev.panamavmm.control;

import dev.panamavmm.api.ApiClient;
import dev.panamavmm.api.ApiServer;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.vmm.DiskConfig;
import dev.panamavmm.vmm.LocalMigration;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.MigrationParameters;
import dev.panamavmm.vmm.MigrationStatus;
import dev.panamavmm.vmm.ScratchDir;
import dev.panamavmm.vmm.TcpAddress;
import dev.panamavmm.vmm.TcpMigration;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.VmSnapshots;
import dev.panamavmm.vmm.boot.BootProtocol;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.OutputStream;
import java.io.Serial;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A dress rehearsal of the control path on a throwaway VM, run once in the background of a VMM
 * process whose VM may be saved, migrated or restored next.
 *
 * <p>Why: a JVM runs a path the first time interpreted, loading and linking its classes, lambda
 * forms and FFM downcalls as it goes. The first {@code stop} or {@code snapshot} of a process
 * used to take 50-150 ms, the tenth a few; in a bypass save or a live update that time is guest
 * downtime. So, right after the real VM runs, a 16 MiB VM whose guest is one {@code hlt} takes
 * the path a user's request takes: an API server on a socket, a client sending
 * {@code qmp_capabilities}, {@code stop} and {@code cont}; repeated bypass saves; a live update
 * to a receiving thread of this process; a bypass {@code snapshot} over the API; that snapshot
 * read and its state encoded again until the JIT has compiled the codec; then the snapshot is
 * restored and cloned, run, paused and closed. Everything lives in a private temporary
 * directory deleted afterwards. In the background it runs at nice 19, so vCPUs and the API come
 * first; {@code vmm incoming} runs it at normal priority and waits for it.
 * Failures are logged at debug level and otherwise ignored: the rehearsal only saves time.
 */
public final class Rehearsal {
    private Rehearsal() {}

    private static final Logger log = LoggerFactory.getLogger(Rehearsal.class);
    /** Set PANAMA_VMM_NO_REHEARSAL=1 to skip it (e.g. to measure a cold process). */
    static final String DISABLE_ENV = "PANAMA_VMM_NO_REHEARSAL";

    /**
     * PANAMA_VMM_REHEARSAL=sync runs it on the calling thread, to the end, where it would start (how
     * ./vmm trains its AOT cache on these paths too); =background runs it as usual. Either one
     * also asks {@code run} and {@code restore}, which do not warm up by default, to do it.
     */
    static final String MODE_ENV = "PANAMA_VMM_REHEARSAL";

    /**
     * Whether a process of one VM ({@code run}, {@code restore}) should warm up: only when asked
     * ({@code --warm-up} or PANAMA_VMM_REHEARSAL). On a host of many VMs every such process would
     * pay its CPU and keep its heap; a VMM that must be warm is started as {@code vmm standby}.
     */
    public static boolean requested(boolean option) {
        return option || System.getenv(MODE_ENV) != null;
    }
    /** Scratch directories are named PREFIX-PID-*: a later one removes those of processes that are gone (ScratchDir). */
    static final String PREFIX = "panama-rehearsal";

    /** Starts the rehearsal on a background thread at nice 19 unless disabled; returns that thread (or null). */
    public static Thread startInBackground(Kvm kvm) {
        return start(kvm, true);
    }

    /**
     * Rehearses and waits for it, at normal priority (niced, it could starve for as long as other
     * VMs keep the CPUs busy): for {@code vmm incoming}, whose socket should appear only once a
     * migration into it would run warm code.
     */
    public static void runAndWait(Kvm kvm) throws InterruptedException {
        var thread = start(kvm, false);
        if (thread != null) thread.join();
    }

    private static Thread start(Kvm kvm, boolean niced) {
        if (System.getenv(DISABLE_ENV) != null) return null;
        if ("sync".equals(System.getenv(MODE_ENV))) {
            run(kvm);
            return null;
        }
        // Its own thread either way: a nice value is per thread and inherited by the threads it creates.
        return Thread.ofPlatform().daemon().name("rehearsal").start(() -> {
            if (niced) {
                try {
                    LibC.niceCurrentThread(19);
                } catch (RuntimeException e) {
                    log.debug("rehearsal runs at normal priority: {}", e.getMessage());
                }
            }
            run(kvm);
        });
    }

    /** One rehearsal, on the calling thread; failures are logged, never thrown. */
    static void run(Kvm kvm) {
        long start = System.nanoTime();
        try {
            rehearseIn(kvm, ScratchDir.defaultRoot());
            log.debug("rehearsal done in {} ms", TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start));
        } catch (Exception e) {
            log.debug("rehearsal failed (nothing depends on it): {}", e.toString());
        }
    }

    /** One rehearsal in a new scratch directory under {@code root}, removed afterwards (stale ones too); failures are thrown. */
    static void rehearseIn(Kvm kvm, Path root) throws Exception {
        try (var scratch = ScratchDir.create(root, PREFIX)) {
            // A VMM can exit while it rehearses in the background: the exit's cleanup first stops
            // the rehearsal (at its next step) and waits for it, then removes the directory.
            var rehearsing = Thread.currentThread();
            var stop = new AtomicBoolean();
            scratch.beforeExitCleanup(() -> {
                stop.set(true);
                try {
                    rehearsing.join(EXIT_WAIT_MILLIS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            });
            // First every path once, so that a request arriving early finds its classes
            // initialised and its downcalls linked; then the rounds that get the JIT to compile them.
            rehearse(kvm, Files.createDirectory(scratch.path().resolve("once")), stop, Rounds.ONCE);
            rehearse(kvm, Files.createDirectory(scratch.path().resolve("warm")), stop, Rounds.WARM);
        }
    }

    /** How long an exiting VMM waits for its rehearsal to stop before removing its directory. */
    static final long EXIT_WAIT_MILLIS = 1000;

    /** Thrown between two steps once the VMM is exiting. */
    private static final class Stopped extends RuntimeException {
        @Serial
        private static final long serialVersionUID = 1L;

        Stopped() {
            super("the VMM is exiting", null, false, false);
        }
    }

    private static void step(AtomicBoolean stop) {
        if (stop.get()) throw new Stopped();
    }

    private static void rehearse(Kvm kvm, Path dir, AtomicBoolean stop, Rounds rounds) throws Exception {
        var memoryFile = dir.resolve("ram");
        var config = new MachineConfig(
                GuestMemory.MIN_SIZE,
                1,
                new Backing.SharedFile(memoryFile),
                "rehearsal",
                haltingGuest(),
                null,
                "",
                BootProtocol.LINUX64);
        // A disk and an entropy device: their build, pause, state and fd passing are on the paths a
        // live update's downtime takes (cold, they added ~20-40 ms to it; docs/benchmarks.md).
        var disk = dir.resolve("disk");
        try (var f = FileChannel.open(disk, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
            f.write(ByteBuffer.allocate(1), (1 << 20) - 1);
        }
        config = config.withVirtio(List.of(new DiskConfig(disk, false, "rehearsal")), true);
        var snapshot = dir.resolve("snapshot");
        try (var vm = VmBuilder.boot(kvm, config, OutputStream.nullOutputStream(), new VmListener() {})) {
            vm.start();
            try (var server = ApiServer.start(dir.resolve("api.sock"), new VmControl(vm));
                    var client = ApiClient.connect(server.path())) { // connect negotiates (qmp_capabilities)
                for (int i = 0; i < rounds.api(); i++) {
                    step(stop);
                    client.execute("stop", Json.object());
                    client.execute("cont", Json.object());
                    client.execute("query-status", Json.object());
                }
            }
            // Saves staying paused, so the loop can repeat. A save runs each of its methods once, so
            // it takes hundreds of saves before the JIT compiles them (C1 after ~200 calls): with 30
            // rounds the commit of a real save still took 0.4-2 ms, with 300 it takes 0.3-0.5 ms.
            for (int i = 0; i < rounds.saves(); i++) {
                step(stop);
                VmSnapshots.save(vm, dir.resolve("practice"), true, VmSnapshots.After.STAY_PAUSED, false, null);
                vm.resume();
            }
            // Live updates within this process: both ends of LocalMigration, as incoming and migrate run them.
            Vm moved = vm;
            for (int i = 0; i < rounds.migrations(); i++) {
                step(stop);
                var next = migrate(kvm, moved, dir.resolve("migrate-" + i + ".sock"));
                if (moved != vm) moved.close();
                moved = next;
            }
            try (var last = moved) {
                step(stop);
                try (var server = ApiServer.start(dir.resolve("api2.sock"), new VmControl(last));
                        var client = ApiClient.connect(server.path())) {
                    client.execute("snapshot", Json.object("path", snapshot.toString(), "bypass-shared-memory", true));
                }
                last.termination().get(10, TimeUnit.SECONDS);
            }
        }
        // A migration over TCP on loopback, by reference (its memory is a shared file), with both
        // ends here: the connection, the messages and the state's way as migrate tcp: and incoming
        // tcp: take them, so their classes are linked (and in the AOT cache ./vmm trains). Once per
        // pass: every standby worker rehearses, and more rounds were not measured to help. A VM of
        // its own: a writable disk cannot move over TCP on one host (its lock stays with the source).
        var tcpConfig = new MachineConfig(
                GuestMemory.MIN_SIZE,
                1,
                new Backing.SharedFile(dir.resolve("tcp-ram")),
                "rehearsal",
                haltingGuest(),
                null,
                "",
                BootProtocol.LINUX64);
        Vm moving = VmBuilder.boot(kvm, tcpConfig, OutputStream.nullOutputStream(), new VmListener() {});
        try {
            moving.start();
            for (int i = 0; i < rounds.tcp(); i++) {
                step(stop);
                var next = migrateTcp(kvm, moving);
                moving.close();
                moving = next;
            }
        } finally {
            moving.close();
        }
        // The state codec until the JIT has compiled it: a live update's downtime reads and writes
        // ~10 KiB of state per vCPU (JSON, base64, CRC32C), ~5 ms per vCPU interpreted, well under
        // 0.5 ms compiled (measured: it takes a few hundred rounds to get there).
        for (int i = 0; i < rounds.codec(); i++) {
            step(stop);
            VmSnapshots.encodeAll(VmSnapshots.load(snapshot));
        }
        step(stop);
        // One restore that continues in the memory file (it claims the file, so a second would be
        // refused), then clones of the same snapshot: the paths of restore, incoming and serve.
        var loaded = VmSnapshots.load(snapshot);
        exercise(VmBuilder.fromSnapshot(
                kvm, loaded, VmBuilder.Mode.CONTINUE, OutputStream.nullOutputStream(), new VmListener() {}));
        for (int i = 0; i < rounds.clones(); i++) {
            step(stop);
            exercise(VmBuilder.fromSnapshot(
                    kvm, loaded, VmBuilder.Mode.CLONE, OutputStream.nullOutputStream(), new VmListener() {}));
        }
    }

    /** Receives {@code vm} on a thread of this process and sends it there; returns the running copy. */
    private static Vm migrate(Kvm kvm, Vm vm, Path socket) throws Exception {
        var received = new CompletableFuture<Vm>();
        Thread.ofPlatform().daemon().name("rehearsal-incoming").start(() -> {
            try {
                received.complete(LocalMigration.receive(
                        kvm, socket, 10, OutputStream.nullOutputStream(), new VmListener() {}, c -> null));
            } catch (Throwable t) {
                received.completeExceptionally(t);
            }
        });
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (!Files.exists(socket)) { // it appears once it listens
            if (System.nanoTime() > deadline || received.isDone()) break;
            Thread.sleep(1);
        }
        LocalMigration.send(vm, socket, 10);
        return received.get(10, TimeUnit.SECONDS);
    }

    /** Receives {@code vm} over TCP on 127.0.0.1 on a thread of this process and sends it there; returns the running copy. */
    private static Vm migrateTcp(Kvm kvm, Vm vm) throws Exception {
        var received = new CompletableFuture<Vm>();
        var port = new CompletableFuture<Integer>();
        Thread.ofPlatform().daemon().name("rehearsal-incoming-tcp").start(() -> {
            try {
                received.complete(TcpMigration.receive(
                        kvm,
                        new TcpAddress("127.0.0.1", 0),
                        MigrationParameters.DEFAULTS,
                        OutputStream.nullOutputStream(),
                        new VmListener() {},
                        c -> null,
                        port::complete));
            } catch (Throwable t) {
                port.completeExceptionally(t);
                received.completeExceptionally(t);
            }
        });
        TcpMigration.send(
                vm,
                new TcpAddress("127.0.0.1", port.get(10, TimeUnit.SECONDS)),
                MigrationParameters.DEFAULTS,
                new MigrationStatus(),
                RamWriter.Progress.NONE);
        return received.get(10, TimeUnit.SECONDS);
    }

    private static void exercise(Vm restored) throws InterruptedException {
        try (restored) {
            restored.pauseBeforeStart();
            restored.start();
            restored.resume();
            restored.pause();
        }
    }

    /**
     * Rounds of each part of one pass; measured on this project's machines (docs/benchmarks.md).
     * {@link #ONCE} takes every path once (~0.3 s), so that an early request (a save right after
     * boot) does not link a downcall or initialise classes itself. {@link #WARM} then repeats them
     * until the JIT compiles them: a save calls each of its methods once, and the JIT compiles a
     * method after ~200 calls. With 10 API rounds and 30 saves, parsing a request still took
     * 0.3-0.8 ms and a settled bypass save over the API 4.4-5.4 ms (median); with 100 and 300,
     * 2.3-3.6 ms. The whole rehearsal takes ~4 s at nice 19.
     */
    record Rounds(int api, int saves, int migrations, int clones, int codec, int tcp) {
        static final Rounds ONCE = new Rounds(1, 1, 1, 1, 1, 1);
        static final Rounds WARM = new Rounds(100, 300, 5, 3, 400, 1);
    }

    /** An ELF64 executable whose code at 1 MiB is {@code hlt; jmp hlt}: with interrupts off the vCPU sleeps in KVM. */
    static byte[] haltingGuest() {
        byte[] code = {(byte) 0xf4, (byte) 0xeb, (byte) 0xfd};
        long address = 0x100000;
        int codeOffset = 0x80;
        var b = ByteBuffer.allocate(codeOffset + code.length).order(ByteOrder.LITTLE_ENDIAN);
        b.put(new byte[] {0x7f, 'E', 'L', 'F', 2, 1, 1, 0});
        b.position(16);
        b.putShort((short) 2)
                .putShort((short) 62)
                .putInt(1)
                .putLong(address)
                .putLong(64)
                .putLong(0); // EXEC, x86-64, entry, phoff
        b.putInt(0)
                .putShort((short) 64)
                .putShort((short) 56)
                .putShort((short) 1)
                .putShort((short) 64)
                .putShort((short) 0)
                .putShort((short) 0);
        b.position(64);
        b.putInt(1)
                .putInt(5)
                .putLong(codeOffset)
                .putLong(address)
                .putLong(address) // PT_LOAD, R+X
                .putLong(code.length)
                .putLong(code.length)
                .putLong(0x1000);
        b.position(codeOffset);
        b.put(code);
        return b.array();
    }
}
