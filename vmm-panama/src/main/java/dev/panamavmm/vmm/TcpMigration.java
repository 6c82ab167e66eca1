package dev.panamavmm.vmm;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.DirtyLog;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.memory.PageStreams;
import dev.panamavmm.vmm.postcopy.PageSet;
import dev.panamavmm.vmm.postcopy.PostcopyDestination;
import dev.panamavmm.vmm.postcopy.PostcopySource;
import dev.panamavmm.vmm.postcopy.Stats;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CancellationException;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import java.util.function.Function;
import java.util.function.IntConsumer;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Live migration between hosts: pre-copy over one TCP connection (optionally TLS with mutual
 * authentication), every byte of the guest on that connection ({@link MigrationStream} frames
 * carrying {@link MigrationProtocol} messages).
 *
 * <p>Source: connect (and finish the TLS handshake) -> {@code Prepare} (vCPUs, RAM blocks) ->
 * the destination maps fresh memory and builds the VM shell -> {@code Prepared}; dirty logging
 * on; pass 1 sends every non-zero page, later passes the pages the guest dirtied meanwhile (a
 * page that became zero as a marker), each ended by {@code PassEnd}, until the dirty set fits the
 * downtime limit at the measured bandwidth (a guest that dirties faster than that is throttled:
 * auto-converge) and another pass no longer pays ({@link #nextStep}); then pause, the last dirty
 * pages, {@code DeviceState} and the state's bytes; the destination applies it, resumes and
 * answers {@code Running}; the source ends its VM.
 *
 * <p>Post-copy (the {@code postcopy-ram} capability; on request, or when a pass does not shrink the
 * dirty set with the {@code postcopy} convergence policy): instead of the last pages the source
 * sends {@code Postcopy} with the bitmaps of the pages the destination does not have right, then the
 * device state; the destination punches those pages out of its memory and registers them with
 * userfaultfd before its devices are built, resumes and answers {@code Running}, and the same
 * streams then carry the post-copy page protocol ({@link PostcopySource}, {@link PostcopyIncoming}).
 * From {@code Running} on neither side resumes the guest alone: a dropped connection waits for
 * {@code migrate-recover} and {@code migrate "resume"}.
 *
 * <p>Failure safety, as for the local migration: until {@code Running} arrives any failure
 * (refusal, a closed or silent connection, a cancel, a bug) gives the guest back here in a
 * {@code finally}. The destination resumes only within {@code resumeWithinMillis} of the
 * state's arrival, which ends before the source stops waiting, and a destination whose source
 * vanished never runs the guest.
 */
public final class TcpMigration {
    private TcpMigration() {}

    private static final Logger log = LoggerFactory.getLogger(TcpMigration.class);

    private static final MemorySegment ZERO_PAGE = Arena.global().allocate(MigrationStream.PAGE);

    /** The source waits this much longer for the confirmation than the destination may take to resume. */
    static final long CONFIRM_MARGIN_MILLIS = 5_000;

    /** Auto-converge: the first throttle, its step, its ceiling (percent of each 100 ms the vCPUs are parked). */
    static final int THROTTLE_INITIAL = 20, THROTTLE_STEP = 10, THROTTLE_MAX = 99;

    /**
     * What a migration did, from the source's side (downtime: pause to confirmation);
     * {@code sharedFile}: the memory file the destination mapped itself (no page was sent), or null.
     */
    public record Result(
            long downtimeMillis, long totalMillis, long bytesSent, int passes, int throttlePercent, Path sharedFile) {}

    /**
     * Migrates {@code vm} to the VMM waiting at {@code target}. On failure the guest runs on here
     * and the exception says why; {@code status} follows the migration, {@code progress} gets the
     * bytes sent (and may cancel by throwing).
     */
    public static Result send(
            Vm vm, TcpAddress target, MigrationParameters params, MigrationStatus status, RamWriter.Progress progress)
            throws InterruptedException {
        var timing = VmMetrics.begin("migrate-out");
        long start = timing.startNanos();
        boolean wasPaused = vm.isPaused();
        boolean handedOver = false;
        Throttle throttle = null;
        HostFacts.ScratchVcpu scratch = null;
        Path sharedFile = null; // the memory file the destination maps itself: no page travels
        boolean lockReleased = false;
        status.total(vm.memory().size());
        try (var socket = connect(target, params)) {
            // Pages not loaded yet (a lazy restore) would read as zeros.
            vm.memory().awaitLoaded();
            var out = MigrationStream.Writer.on(socket, params.maxBandwidth());
            var in = MigrationStream.Reader.on(socket);
            var watchdog = Watchdog.start(socket, TimeUnit.SECONDS.toNanos(params.timeoutSeconds()));
            try {
                long connectedAt = System.nanoTime();
                Path ownFile = SharedMemoryFile.of(vm.memory()); // null: pages travel whatever the destination maps
                out.message(prepareMessage(vm, ownFile));
                out.flush();
                // While the destination builds the VM's shell: what this side needs before a pause.
                long warmAt = System.nanoTime();
                // By reference (if the destination maps the file too): the pages the fingerprints
                // read, picked now (the file's data extents take ms on tmpfs), and their first, cold
                // fingerprint run (5-6 ms where a warm one takes 0.3): the pause pays only a warm one.
                var samples = ownFile == null ? null : SharedMemoryFile.samples(vm.memory());
                if (samples != null) SharedMemoryFile.fingerprints(vm.memory(), samples);
                long sampledAt = System.nanoTime();
                // Post-copy's serving side is first built after the pause, with the guest waiting on
                // the destination for its first pages: its classes load here (10-12 ms, once).
                if (params.postcopyRam()) PostcopySource.warmUp(vm.memory());
                try {
                    // A scratch vCPU probes the MSRs a save reads and stands in for the running ones
                    // in the save's warm-up; its VM's teardown waits for the end (the finally below).
                    scratch = HostFacts.of(vm.kvm()).scratchVcpu();
                    // The save the pause makes, made on this VM as it runs, at least a few times and
                    // then until the destination is ready or WARM_SAVE_NANOS have passed.
                    MigrationProtocol.encode(warmUpDeviceState(), MigrationProtocol.VERSION);
                    // And the two answers this side reads, the second one inside the pause.
                    for (var answer : List.of(new MigrationProtocol.Prepared(true), new MigrationProtocol.Running(0)))
                        MigrationProtocol.decode(MigrationProtocol.encode(answer, MigrationProtocol.VERSION));
                    VmSnapshots.warmUpSaveState(
                            vm, scratch.vcpu(), () -> in.ready() || System.nanoTime() - warmAt > WARM_SAVE_NANOS);
                } catch (RuntimeException e) {
                    // Only time is lost: the pause runs the save cold (and probes the MSRs itself).
                    log.debug("warming the save up failed: {}", reason(e));
                }
                long warmedAt = System.nanoTime();
                var prepared = expect(in, MigrationProtocol.Prepared.class, "prepared");
                log.debug(
                        "connected in {} us; meanwhile sampled the memory file in {} us, warmed the state path in {} us;"
                                + " prepared after {} us",
                        (connectedAt - start) / 1000,
                        (sampledAt - warmAt) / 1000,
                        (warmedAt - sampledAt) / 1000,
                        (System.nanoTime() - connectedAt) / 1000);
                if (prepared.sharedFile()) sharedFile = ownFile;
                if (sharedFile != null) {
                    out.message(SharedMemoryFile.message(vm.memory(), samples));
                    out.flush();
                }
                var sender = new Sender(vm, out, status, progress, watchdog);
                if (sharedFile == null) {
                    vm.startDirtyLog();
                    vm.takeChanged(false); // logged from here on; everything before is in pass 1
                }
                // Post-copy asked for before any pass (in setup): every page is missing on the destination.
                boolean postcopy = sharedFile == null && params.postcopyRam() && status.postcopyRequested();
                status.status("active"); // a request from here on switches at the end of a pass
                long[][] pending = null;
                int pass = 0;
                if (!postcopy && sharedFile == null) {
                    long passStart = System.nanoTime();
                    var blocks = vm.memory().blocks();
                    pass = 1;
                    status.pass(1);
                    for (int i = 0; i < blocks.size(); i++)
                        for (long[] extent : blocks.get(i).dataExtents()) sender.range(i, extent[0], extent[1], true);
                    out.message(new MigrationProtocol.PassEnd(1, sender.pagesThisPass));
                    long passBytes = sender.bytesThisPass, sendNanos = System.nanoTime() - passStart;
                    logPass(1, sender, sendNanos);
                    long lastDirty = Long.MAX_VALUE;
                    int passesPastFit = 0;
                    while (true) {
                        long now = System.nanoTime();
                        long[][] dirty = vm.takeChanged(false);
                        long pages = DirtyLog.pages(dirty);
                        double bandwidth = Math.max(1, passBytes * 1e9 / Math.max(1, sendNanos));
                        long expected = (long) (pages * (double) MigrationStream.PAGE * 1000 / bandwidth);
                        status.dirty(
                                pages * MigrationStream.PAGE,
                                (long) (pages * 1e9 / Math.max(1, now - passStart)),
                                expected);
                        pending = dirty;
                        // migrate-start-postcopy: the switch at the end of the pass it came in.
                        if (params.postcopyRam() && status.postcopyRequested()) {
                            postcopy = true;
                            break;
                        }
                        boolean postcopyWhenStuck = params.postcopyRam()
                                && params.convergence() == MigrationParameters.Convergence.POSTCOPY;
                        var next = nextStep(
                                pages,
                                sender.pagesThisPass,
                                lastDirty,
                                expected,
                                params.downtimeLimitMillis(),
                                pass,
                                passesPastFit,
                                postcopyWhenStuck);
                        if (next == Next.PAUSE) break;
                        if (next == Next.POSTCOPY) {
                            log.debug("pass {}: {} pages still dirty, switching to post-copy", pass, pages);
                            postcopy = true;
                            break;
                        }
                        if (expected <= params.downtimeLimitMillis()) passesPastFit++;
                        if (next == Next.THROTTLED_PASS) { // auto-converge
                            if (throttle == null) throttle = Throttle.start(vm, THROTTLE_INITIAL);
                            else throttle.raise();
                            status.throttle(throttle.percent());
                        }
                        log.debug(
                                "pass {}: {} pages dirty, {} ms expected paused: {}{}",
                                pass,
                                pages,
                                expected,
                                next,
                                throttle == null ? "" : ", vCPUs throttled to " + throttle.percent() + "%");
                        lastDirty = pages;
                        pass++;
                        status.pass(pass);
                        passStart = System.nanoTime();
                        sender.newPass();
                        for (int i = 0; i < dirty.length; i++) sender.bits(i, dirty[i]);
                        out.message(new MigrationProtocol.PassEnd(pass, sender.pagesThisPass));
                        passBytes += sender.bytesThisPass;
                        sendNanos += System.nanoTime() - passStart;
                        logPass(pass, sender, System.nanoTime() - passStart);
                    }
                }
                if (throttle != null) throttle.close();
                if (postcopy) {
                    long pausedAt = System.nanoTime();
                    var missing = switchToPostcopy(vm, params, status, socket, in, out, watchdog, pending);
                    handedOver = true; // the guest runs there now; it must never resume here
                    long confirmedAt = System.nanoTime();
                    // The pages to serve as a set once the guest runs there, not in its pause.
                    var source = postcopySource(vm, missing, status);
                    status.downtime((confirmedAt - pausedAt) / 1_000_000);
                    watchdog.cancel();
                    var stats = servePostcopy(source, params, status, socket, in, out);
                    long doneAt = System.nanoTime();
                    status.transferred(out.bytes() + stats.bytes());
                    timing.end(
                            vm.metrics(),
                            VmMetrics.phases(
                                    "precopy",
                                    pausedAt - start,
                                    "downtime",
                                    confirmedAt - pausedAt,
                                    "postcopy",
                                    doneAt - confirmedAt));
                    vm.end(new VmExitReason.Stopped("migration to " + target));
                    status.status("completed");
                    log.debug("migrated to {} with post-copy after {} passes: {}", target, pass, stats);
                    return new Result(
                            (confirmedAt - pausedAt) / 1_000_000,
                            (doneAt - start) / 1_000_000,
                            out.bytes() + stats.bytes(),
                            pass,
                            status.throttlePercent(),
                            null);
                }
                // The downtime: the last dirty pages (or the shared file handed over) and the device state.
                status.status("device");
                long pausedAt = System.nanoTime();
                vm.pause();
                List<MigrationProtocol.Fingerprint> fingerprints = List.of();
                if (sharedFile == null) {
                    long[][] last = vm.takeChanged(true);
                    sender.newPass();
                    for (int i = 0; i < last.length; i++) {
                        long[] bits = last[i].clone();
                        for (int w = 0; w < bits.length; w++) bits[w] |= pending[i][w];
                        sender.bits(i, bits);
                    }
                } else {
                    fingerprints = SharedMemoryFile.fingerprints(vm.memory(), samples);
                    lockReleased = true;
                    SharedMemoryFile.release(vm.memory());
                }
                long stateAt = System.nanoTime();
                long sentAt = sendStateAndAwaitRunning(vm, params, socket, in, out, watchdog, fingerprints);
                handedOver = true; // the guest runs there now; it must never resume here
                long confirmedAt = System.nanoTime();
                long downtime = (confirmedAt - pausedAt) / 1_000_000;
                status.downtime(downtime);
                status.transferred(out.bytes());
                // The downtime's parts: pausing and the last pages, the state saved and sent, the
                // destination applying it and confirming (its own parts: its "migrate-in").
                var phases = VmMetrics.phases(
                        "precopy",
                        pausedAt - start,
                        "last-pages",
                        stateAt - pausedAt,
                        "state",
                        sentAt - stateAt,
                        "confirmation",
                        confirmedAt - sentAt);
                timing.end(vm.metrics(), phases);
                vm.end(new VmExitReason.Stopped("migration to " + target));
                status.status("completed");
                log.debug(
                        "migrated to {}{}: {} passes, {} bytes, downtime {} ms, total {} ms, phases (us) {}",
                        target,
                        sharedFile == null ? "" : " (memory file " + sharedFile + " by reference)",
                        pass,
                        out.bytes(),
                        downtime,
                        (confirmedAt - start) / 1_000_000,
                        phases);
                return new Result(
                        downtime,
                        (confirmedAt - start) / 1_000_000,
                        out.bytes(),
                        pass,
                        status.throttlePercent(),
                        sharedFile);
            } finally {
                watchdog.cancel();
            }
        } catch (CancellationException e) {
            status.failed(e.getMessage(), true);
            throw new SnapshotException("migration to " + target + " cancelled, the guest runs on here", e);
        } catch (IOException | RuntimeException e) {
            String why = e instanceof java.net.ConnectException
                    ? "nothing listens at " + target + " (start vmm incoming " + target + " there first)"
                    : reason(e);
            status.failed(why, false);
            if (handedOver) // a bug after the switch: the guest is the destination's now
            throw new SnapshotException("post-copy to " + target + " failed, the guest stays paused here: " + why, e);
            throw new SnapshotException("migration to " + target + " failed, the guest runs on here: " + why, e);
        } finally {
            if (throttle != null) throttle.close();
            if (scratch != null) scratch.close(); // the kernel's teardown, after the guest's pause
            if (!handedOver && lockReleased) {
                try {
                    SharedMemoryFile.retake(vm.memory(), sharedFile);
                } catch (RuntimeException e) {
                    log.warn("the guest runs on here, but its memory file is unlocked: {}", e.getMessage());
                }
            }
            if (!handedOver && !wasPaused) VmSnapshots.giveBack(vm);
        }
    }

    /**
     * The switch: pauses the guest, sends {@code Postcopy} with the pages the destination does not
     * have right (dirty since sent: {@code pending} and the last dirty log; every page when
     * {@code pending} is null, no pass ran), then the device state, and waits for {@code Running};
     * returns those pages, a bitmap per block. Until it returns, a failure gives the guest back here
     * (the caller's {@code finally}); once it has, the guest is the destination's.
     */
    private static long[][] switchToPostcopy(
            Vm vm,
            MigrationParameters params,
            MigrationStatus status,
            Socket socket,
            MigrationStream.Reader in,
            MigrationStream.Writer out,
            Watchdog watchdog,
            long[][] pending)
            throws IOException, InterruptedException {
        status.status("device");
        vm.pause();
        // No pass yet (pending null): every page is missing, whatever the dirty log says.
        long[][] last = pending == null ? null : vm.takeChanged(true);
        var blocks = vm.memory().blocks();
        long[][] bitmaps = new long[blocks.size()][];
        long count = 0;
        for (int i = 0; i < blocks.size(); i++) {
            long pages = blocks.get(i).size() / MigrationStream.PAGE;
            long[] bits = new long[(int) ((pages + 63) / 64)];
            for (int w = 0; w < bits.length; w++) {
                bits[w] = pending == null
                        ? -1L
                        : (w < last[i].length ? last[i][w] : 0) | (w < pending[i].length ? pending[i][w] : 0);
            }
            if (pages % 64 != 0) bits[bits.length - 1] &= (1L << (pages % 64)) - 1;
            bitmaps[i] = bits;
            for (long word : bits) count += Long.bitCount(word);
        }
        status.postcopyPages(count);
        out.message(new MigrationProtocol.Postcopy(count));
        for (int i = 0; i < bitmaps.length; i++) out.bitmap(i, bitmaps[i]);
        out.flush(); // the destination registers its memory for them while the state is saved here
        sendStateAndAwaitRunning(vm, params, socket, in, out, watchdog, List.of());
        log.debug("post-copy: the guest runs on the destination, {} pages to serve", count);
        return bitmaps;
    }

    /** The source's side of post-copy, serving the pages of {@code missing} (a bitmap per block). */
    private static PostcopySource postcopySource(Vm vm, long[][] missing, MigrationStatus status) {
        var set = PageSet.of(vm.memory());
        for (int i = 0; i < missing.length; i++) set.addAll(i, missing[i]);
        var source = new PostcopySource(vm.memory(), set);
        status.postcopy(source::stats);
        return source;
    }

    /**
     * Serves the destination's missing pages on the migration's connection until it has every
     * page. A dropped connection pauses it ({@code postcopy-paused}): the guest stays paused here
     * and keeps its memory, until {@code migrate {"resume": true}} names the destination's
     * {@code migrate-recover} address; then it serves on the new connection.
     */
    private static Stats servePostcopy(
            PostcopySource source,
            MigrationParameters params,
            MigrationStatus status,
            Socket socket,
            MigrationStream.Reader in,
            MigrationStream.Writer out)
            throws IOException, InterruptedException {
        socket.setSoTimeout(0); // the destination may not fault for a long while: silence is no failure
        socket.setSendBufferSize(POSTCOPY_SEND_BUFFER);
        status.status("postcopy-active");
        Socket connection = socket;
        java.io.InputStream input = in.stream();
        OutputStream output = out.stream();
        while (true) {
            try {
                return source.serve(input, output);
            } catch (IOException e) {
                close(connection);
                String why = reason(e);
                status.paused(why);
                log.warn(
                        "post-copy paused, the guest waits on the destination: {} (migrate-recover there, then"
                                + " migrate with resume here)",
                        why);
            }
            while (true) {
                var at = status.awaitResume();
                try {
                    connection = connect(at, params);
                    connection.setSoTimeout(0);
                    connection.setSendBufferSize(POSTCOPY_SEND_BUFFER);
                    input = PageStreams.in(connection);
                    output = PageStreams.out(connection);
                    break;
                } catch (IOException | RuntimeException e) {
                    status.paused("cannot reconnect to " + at + ": " + reason(e));
                    log.warn("post-copy: cannot reconnect to {}: {}", at, reason(e));
                }
            }
            status.status("postcopy-active");
            log.info("post-copy resumed on a new connection");
        }
    }

    /**
     * The socket's send buffer while post-copy streams (the kernel doubles it): a faulting vCPU's
     * page queues behind what the background stream put there, so it is kept small (loopback's
     * default grows to megabytes, milliseconds per fault).
     */
    static final int POSTCOPY_SEND_BUFFER = 128 << 10;

    /** What pre-copy does after a pass. */
    enum Next {
        /** Pause the guest and send what is left. */
        PAUSE,
        /** Another pass. */
        PASS,
        /** Another pass with the vCPUs throttled (started, or raised a step). */
        THROTTLED_PASS,
        /** Switch to post-copy. */
        POSTCOPY
    }

    /** {@link #nextStep}: a pause expected to be this short is not worth another pass. */
    static final long PAUSE_FLOOR_MILLIS = 2;

    /** {@link #nextStep}: a pause expected to be longer than this is worth throttling the guest for. */
    static final long SQUEEZE_MILLIS = 20;

    /** {@link #nextStep}: passes made at most after the dirty set first fit the downtime limit. */
    static final int MAX_PASSES_PAST_FIT = 10;

    /**
     * After pass {@code pass}, which sent {@code sentPages} while the guest dirtied {@code
     * dirtyPages} ({@code lastDirty} were dirty after the pass before; none before pass 2), whose
     * sending would take {@code expectedMillis} at the bandwidth measured so far:
     *
     * <ul>
     *   <li>The set does not fit {@code limitMillis}: another pass; from pass 2, a set that did not
     *       shrink by a tenth never will, so the pass is throttled (auto-converge), or post-copy
     *       takes over ({@code postcopyWhenStuck}).
     *   <li>It fits (where QEMU pauses and sends it): another pass while passes pay, for at most
     *       {@link #MAX_PASSES_PAST_FIT}: if the guest dirtied at most half of what the pass sent,
     *       the next pause should be at most half of this one; if not, a pause still expected above
     *       {@link #SQUEEZE_MILLIS} is worth throttling the guest for one more pass. The pause then
     *       becomes what the guest dirties in a short pass, not whatever it had dirtied when the
     *       set first fit; it costs a few more pages and, for a guest that dirties almost as fast
     *       as the link carries, a pass or two at a throttle of {@link #THROTTLE_INITIAL} %.
     *       Below {@link #PAUSE_FLOOR_MILLIS} nothing is worth a pass.
     * </ul>
     */
    static Next nextStep(
            long dirtyPages,
            long sentPages,
            long lastDirty,
            long expectedMillis,
            long limitMillis,
            int pass,
            int passesPastFit,
            boolean postcopyWhenStuck) {
        if (expectedMillis > limitMillis) {
            boolean stuck = pass >= 2 && dirtyPages * 10 > lastDirty * 9;
            if (!stuck) return Next.PASS;
            return postcopyWhenStuck ? Next.POSTCOPY : Next.THROTTLED_PASS;
        }
        if (expectedMillis <= PAUSE_FLOOR_MILLIS || passesPastFit >= MAX_PASSES_PAST_FIT) return Next.PAUSE;
        if (dirtyPages * 2 <= sentPages) return Next.PASS;
        return expectedMillis > SQUEEZE_MILLIS && !postcopyWhenStuck ? Next.THROTTLED_PASS : Next.PAUSE;
    }

    private static void logPass(int pass, Sender sender, long nanos) {
        log.debug(
                "pass {}: {} pages, {} bytes in {} ms ({} MB/s)",
                pass,
                sender.pagesThisPass,
                sender.bytesThisPass,
                nanos / 1_000_000,
                sender.bytesThisPass * 1000 / Math.max(1, nanos));
    }

    /** The connection, TLS handshake completed (so an untrusted peer is refused before the first message). */
    private static Socket connect(TcpAddress target, MigrationParameters params)
            throws IOException, InterruptedException {
        // A destination started just before (vmm incoming ... & then vmm migrate) listens only after
        // its warm-up: a refused connection is tried again for CONNECT_MILLIS.
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(CONNECT_MILLIS);
        while (true) {
            try {
                return connectOnce(target, params);
            } catch (java.net.ConnectException e) {
                if (System.nanoTime() > deadline) throw e;
                Thread.sleep(50);
            }
        }
    }

    /** How long a source tries again to reach a destination that refuses connections. */
    static final long CONNECT_MILLIS = 5_000;

    private static Socket connectOnce(TcpAddress target, MigrationParameters params) throws IOException {
        var plain = SocketChannel.open().socket(); // with a channel: pages go out without a copy
        try {
            plain.connect(new InetSocketAddress(target.host(), target.port()), 5_000);
            plain.setTcpNoDelay(true);
            plain.setSoTimeout((int) TimeUnit.SECONDS.toMillis(params.timeoutSeconds()));
            if (params.tls() == null) return plain;
            var tls = (SSLSocket)
                    params.tls().context().getSocketFactory().createSocket(plain, target.host(), target.port(), true);
            tls.setUseClientMode(true);
            try {
                tls.startHandshake();
            } catch (SSLException e) {
                tls.close();
                throw new SnapshotException("the TLS handshake with " + target + " failed: " + e.getMessage());
            }
            return tls;
        } catch (IOException | RuntimeException e) {
            plain.close();
            if (e instanceof SnapshotException || e instanceof java.net.ConnectException) throw e;
            throw new IOException("cannot connect to " + target + ": " + e.getMessage(), e);
        }
    }

    /** The machine and its RAM blocks; a shared memory {@code file} is named, for a destination that can map it itself. */
    private static MigrationProtocol.Prepare prepareMessage(Vm vm, Path file) {
        var rows = new ArrayList<MigrationProtocol.RamBlock>();
        for (var b : vm.memory().blocks())
            rows.add(new MigrationProtocol.RamBlock(
                    b.id(), b.guestAddress(), b.size(), file == null ? 0 : b.fileOffset(), null, file));
        return new MigrationProtocol.Prepare(
                MigrationProtocol.VERSION, vm.vcpuCount(), vm.memory().size(), List.copyOf(rows));
    }

    /**
     * The paused guest's device state, then the destination's confirmation that it runs there:
     * the end of a pre-copy and the switch to post-copy alike. The destination has
     * {@code resumeWithin} to resume; the watchdog and the socket wait that long and a margin.
     */
    private static long sendStateAndAwaitRunning(
            Vm vm,
            MigrationParameters params,
            Socket socket,
            MigrationStream.Reader in,
            MigrationStream.Writer out,
            Watchdog watchdog,
            List<MigrationProtocol.Fingerprint> fingerprints)
            throws IOException, InterruptedException {
        byte[] state = deviceState(vm);
        long resumeWithin = TimeUnit.SECONDS.toMillis(params.timeoutSeconds());
        out.message(new MigrationProtocol.DeviceState(resumeWithin, fingerprints));
        out.state(state);
        out.flush();
        long sentAt = System.nanoTime();
        watchdog.extend(TimeUnit.MILLISECONDS.toNanos(resumeWithin + CONFIRM_MARGIN_MILLIS));
        socket.setSoTimeout((int) (resumeWithin + CONFIRM_MARGIN_MILLIS));
        expect(in, MigrationProtocol.Running.class, "running");
        return sentAt;
    }

    /** How long a source warms its save up at most while the destination prepares. */
    static final long WARM_SAVE_NANOS = TimeUnit.MILLISECONDS.toNanos(40);

    /** A {@code DeviceState} as large as a by-reference one, to warm its encoding. */
    private static MigrationProtocol.DeviceState warmUpDeviceState() {
        var pages = new ArrayList<Long>();
        for (long p = 0; p < MigrationProtocol.Fingerprint.MAX_PAGES; p++) pages.add(p * 4099);
        return new MigrationProtocol.DeviceState(
                10_000, List.of(new MigrationProtocol.Fingerprint("ram-low", pages, 0x5eed)));
    }

    /**
     * The paused VM's state as the bytes of a snapshot container, kept in memory, with every RAM
     * block by reference (its pages travelled already, or the destination maps the same file).
     */
    private static byte[] deviceState(Vm vm) throws InterruptedException {
        return VmSnapshots.saveState(vm, VmSnapshots.inMemoryReferences(vm)).container();
    }

    /** Sends pages of the guest's blocks in batches, zero pages as markers, and counts them. */
    private static final class Sender {
        private final Vm vm;
        private final MigrationStream.Writer out;
        private final MigrationStatus status;
        private final RamWriter.Progress progress;
        private final Watchdog watchdog;
        long pagesThisPass, bytesThisPass;

        Sender(Vm vm, MigrationStream.Writer out, MigrationStatus status, RamWriter.Progress progress, Watchdog w) {
            this.vm = vm;
            this.out = out;
            this.status = status;
            this.progress = progress;
            this.watchdog = w;
        }

        void newPass() {
            pagesThisPass = 0;
            bytesThisPass = 0;
        }

        void bits(int block, long[] bits) throws IOException {
            for (long[] run : DirtyLog.runs(bits)) range(block, run[0], run[1], false);
        }

        /** Bytes {@code [start, end)} of block {@code block}; {@code skipZeros}: pass 1, the destination's memory is zero. */
        void range(int block, long start, long end, boolean skipZeros) throws IOException {
            var segment = vm.memory().blocks().get(block).segment();
            int page = MigrationStream.PAGE;
            long p = start;
            while (p < end) {
                if (status.cancelRequested()) throw new CancellationException("cancelled by migrate-cancel");
                boolean zero = isZero(segment, p);
                long q = p + page;
                while (q < end && q - p < (long) MigrationStream.MAX_BATCH_PAGES * page && isZero(segment, q) == zero)
                    q += page;
                int count = (int) ((q - p) / page);
                long before = out.bytes();
                if (!zero) out.pages(block, p / page, count, segment, p);
                else if (!skipZeros) out.zeros(block, p / page, count);
                if (!zero || !skipZeros) pagesThisPass += count;
                long sent = out.bytes() - before;
                bytesThisPass += sent;
                status.transferred(out.bytes());
                watchdog.moved();
                if (sent > 0) progress.advance(sent);
                p = q;
            }
        }
    }

    /** Whether the page at byte {@code offset} of {@code segment} is all zeros (a marker, not its bytes, travels). */
    static boolean isZero(MemorySegment segment, long offset) {
        return MemorySegment.mismatch(
                        segment, offset, offset + MigrationStream.PAGE, ZERO_PAGE, 0, MigrationStream.PAGE)
                < 0;
    }

    /** Auto-converge: a thread that parks the vCPUs for {@code percent} of every 100 ms. */
    private static final class Throttle implements AutoCloseable {
        private volatile int percent;
        private volatile boolean stopped;
        private final Thread thread;

        private Throttle(Vm vm, int percent) {
            this.percent = percent;
            this.thread = Thread.ofPlatform()
                    .daemon()
                    .name("migration-throttle")
                    .start(() -> {
                        try {
                            while (!stopped) {
                                long parked = TimeUnit.MILLISECONDS.toNanos(this.percent);
                                vm.throttleVcpus(parked);
                                TimeUnit.NANOSECONDS.sleep(TimeUnit.MILLISECONDS.toNanos(100) - parked);
                            }
                        } catch (InterruptedException e) {
                            // closed
                        }
                    });
        }

        static Throttle start(Vm vm, int percent) {
            return new Throttle(vm, percent);
        }

        void raise() {
            percent = Math.min(THROTTLE_MAX, percent + THROTTLE_STEP);
        }

        int percent() {
            return percent;
        }

        @Override
        public void close() {
            stopped = true;
            thread.interrupt();
            try {
                thread.join();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /** Closes the socket when the stream has not moved for its period: a stalled peer fails the migration instead of hanging it. */
    private static final class Watchdog {
        private final Socket socket;
        private volatile long period;
        private volatile long lastMoved = System.nanoTime();
        private volatile boolean fired;
        private volatile boolean cancelled;

        private Watchdog(Socket socket, long period) {
            this.socket = socket;
            this.period = period;
            Thread.ofPlatform().daemon().name("migration-watchdog").start(this::watch);
        }

        static Watchdog start(Socket socket, long periodNanos) {
            return new Watchdog(socket, periodNanos);
        }

        private void watch() {
            try {
                for (long left; !cancelled && (left = lastMoved + period - System.nanoTime()) > 0; )
                    TimeUnit.NANOSECONDS.sleep(Math.min(left, 100_000_000L));
                if (cancelled) return;
                fired = true;
                socket.close();
            } catch (InterruptedException | IOException e) {
                // cancelled, or closed anyway
            }
        }

        void moved() {
            lastMoved = System.nanoTime();
        }

        void extend(long periodNanos) {
            period = periodNanos;
            moved();
        }

        /**
         * Stops watching, without waking the thread: the destination cancels inside the guest's
         * pause, where a wake-up can give the woken thread the CPU and then a compiler thread the
         * next scheduler tick (seen: 3.3 ms). It sees the flag within its 100 ms sleep.
         */
        void cancel() {
            cancelled = true;
        }

        /** Whether it closed the socket: a read that failed then failed because the peer went silent. */
        boolean fired() {
            return fired;
        }
    }

    private static <M extends MigrationProtocol.Message> M expect(MigrationStream.Reader in, Class<M> type, String what)
            throws IOException {
        MigrationProtocol.Message m;
        try {
            m = in.message(what);
        } catch (SocketTimeoutException e) {
            throw new SnapshotException("the destination did not answer in time");
        }
        if (m instanceof MigrationProtocol.Refused r)
            throw new SnapshotException("the destination refused: " + r.reason());
        if (!type.isInstance(m))
            throw new SnapshotException(
                    "the destination sent " + m.getClass().getSimpleName().toLowerCase() + " instead of " + what);
        return type.cast(m);
    }

    private static String reason(Exception e) {
        if (e instanceof java.net.SocketException
                && e.getMessage() != null
                && e.getMessage().contains("closed")) return "the connection was closed";
        String m = e.getMessage();
        return m == null ? e.getClass().getSimpleName() : m;
    }

    // ---- the destination ----

    /**
     * Listens at {@code address} for one incoming VM ({@code listening} gets the port, which
     * {@code address} may leave to the system with port 0), builds it with {@code accept} checking
     * the machine, resumes it and confirms. A connection whose TLS handshake fails, or that does
     * not start with a migration's first message within {@link LocalMigration#FIRST_MESSAGE_MILLIS},
     * is refused in one logged line and the wait goes on. Once a source has started, any failure
     * (it vanished, refused, sent garbage) ends this call with a one-line {@link SnapshotException}
     * and the guest never runs here.
     */
    public static Vm receive(
            Kvm kvm,
            TcpAddress address,
            MigrationParameters params,
            OutputStream console,
            VmListener listener,
            Function<MachineConfig, String> accept,
            IntConsumer listening) {
        return receiveStoppable(
                kvm, address, params, console, listener, accept, server -> listening.accept(server.getLocalPort()));
    }

    /**
     * As {@link #receive}, handing {@code listening} the listening socket itself: closing it
     * stops the wait (this call then fails) for a caller that gives up before a source came.
     */
    public static Vm receiveStoppable(
            Kvm kvm,
            TcpAddress address,
            MigrationParameters params,
            OutputStream console,
            VmListener listener,
            Function<MachineConfig, String> accept,
            Consumer<ServerSocket> listening) {
        try (var server = listen(address, params)) {
            listening.accept(server);
            while (true) {
                var peer = server.accept();
                if (server.isClosed()) { // stopped (receiveStoppable) as this connection came: no migration
                    close(peer);
                    throw new SnapshotException("stopped waiting for a migration on " + address);
                }
                String from = peer.getRemoteSocketAddress().toString();
                MigrationStream.Reader in;
                MigrationStream.Writer out;
                MigrationProtocol.Prepare prepare;
                boolean handshaken = !(peer instanceof SSLSocket);
                try {
                    peer.setSoTimeout((int) LocalMigration.FIRST_MESSAGE_MILLIS);
                    peer.setTcpNoDelay(true);
                    if (peer instanceof SSLSocket tls) {
                        tls.startHandshake();
                        handshaken = true;
                    }
                    in = MigrationStream.Reader.on(peer);
                    out = MigrationStream.Writer.on(peer, 0);
                    var first = in.next();
                    if (!(first instanceof MigrationStream.Message m
                            && m.message() instanceof MigrationProtocol.Prepare p)) {
                        throw new SnapshotException(
                                first == null
                                        ? "it closed the connection"
                                        : "it sent " + MigrationStream.describe(first) + " first");
                    }
                    prepare = p;
                } catch (IOException | RuntimeException e) {
                    String why = e instanceof SocketTimeoutException ? "it sent nothing" : reason(e);
                    log.warn("{}: refused a connection from {} that did not start a migration: {}", address, from, why);
                    if (handshaken) refuse(peer, "not a migration: " + why);
                    else close(peer); // nothing can be said to a peer without the handshake
                    continue;
                }
                try {
                    peer.setSoTimeout((int) TimeUnit.SECONDS.toMillis(params.timeoutSeconds()));
                    var vm = receiveOn(kvm, prepare, in, out, console, listener, accept, params, peer);
                    if (vm.postcopyIncoming() == null) close(peer); // else post-copy goes on on it
                    return vm;
                } catch (IOException e) {
                    close(peer);
                    throw new SnapshotException("the incoming migration failed: " + reason(e));
                } catch (RuntimeException e) {
                    close(peer);
                    throw e;
                }
            }
        } catch (IOException e) {
            throw new SnapshotException("cannot listen on " + address + ": " + reason(e));
        }
    }

    static ServerSocket listen(TcpAddress address, MigrationParameters params) throws IOException {
        ServerSocket server;
        if (params.tls() != null) {
            var tls = (SSLServerSocket)
                    params.tls().context().getServerSocketFactory().createServerSocket();
            tls.setNeedClientAuth(true); // mutual: the source proves who it is too
            server = tls;
        } else {
            server = ServerSocketChannel.open().socket(); // its sockets have channels: pages arrive without a copy
        }
        server.setReuseAddress(true);
        server.bind(new InetSocketAddress(address.host(), address.port()), 4);
        return server;
    }

    static void close(Socket peer) {
        try {
            peer.close();
        } catch (IOException e) {
            // gone already
        }
    }

    /** Best effort: tells a peer why, then closes. */
    private static void refuse(Socket peer, String why) {
        try (peer) {
            var out = MigrationStream.Writer.on(peer, 0);
            out.message(new MigrationProtocol.Refused(why));
            out.flush();
        } catch (IOException | RuntimeException e) {
            // it is gone already
        }
    }

    private static Vm receiveOn(
            Kvm kvm,
            MigrationProtocol.Prepare prepare,
            MigrationStream.Reader in,
            MigrationStream.Writer out,
            OutputStream console,
            VmListener listener,
            Function<MachineConfig, String> accept,
            MigrationParameters params,
            Socket peer)
            throws IOException {
        long arrivedAt = System.nanoTime();
        long pagesReceived = 0;
        VmBuilder.Shell shell = null;
        PrestartedThreads vcpuThreads = null;
        Vm vm = null;
        PostcopyDestination postcopy = null;
        Path sharedFile = null; // mapped here from the same file as the source's: no page may arrive
        List<MigrationProtocol.Fingerprint> fingerprints = List.of();
        VmMetrics.Timing applying = null; // from the state's arrival to the resume: this side's share of the downtime
        long loadedAt = 0, checkedAt = 0, builtAt = 0;
        Watchdog watchdog = null;
        try {
            try {
                if (prepare.protocol() != MigrationProtocol.VERSION)
                    throw new SnapshotException("this VMM speaks TCP-migration protocol " + MigrationProtocol.VERSION
                            + ", the source speaks " + prepare.protocol());
                String refusal = accept.apply(new MachineConfig(
                        prepare.memory(), prepare.cpus(), new Backing.Memfd(), "incoming", new byte[0], null, ""));
                if (refusal != null) throw new SnapshotException(refusal);
                checkAnnounced(prepare);
                var why = new StringBuilder();
                var byReference =
                        prepare.ram().getFirst().file() == null ? null : SharedMemoryFile.open(prepare.ram(), why);
                if (byReference != null)
                    sharedFile = byReference.getFirst().backing().file();
                else if (!why.isEmpty())
                    log.info("the source's memory file cannot be mapped here, its pages travel: {}", why);
                long buildStart = System.nanoTime();
                shell = VmBuilder.shell(kvm, byReference != null ? byReference : memfdSources(prepare), prepare.cpus());
                long shellAt = System.nanoTime();
                vcpuThreads = PrestartedThreads.start(prepare.cpus());
                VmSnapshots.warmUpInMemory();
                log.debug(
                        "built the VM's shell in {} us, its threads in {} us",
                        (shellAt - buildStart) / 1000,
                        (System.nanoTime() - shellAt) / 1000);
                out.message(new MigrationProtocol.Prepared(sharedFile != null));
                out.flush();
                if (byReference == null) warmUpPostcopySwitch(); // while the source starts its first pass
                var blocks = shell.memory().blocks();
                long pages = 0;
                byte[] state = null;
                long resumeWithin = 0, stateAt = 0;
                long[][] missing = null; // post-copy: the pages to come after the guest runs here
                // A batch's pages are read from the socket's channel, which has no read timeout.
                watchdog = Watchdog.start(peer, TimeUnit.SECONDS.toNanos(params.timeoutSeconds()));
                while (state == null) {
                    MigrationStream.Frame frame;
                    try {
                        frame = in.next();
                    } catch (MigrationStream.Ended | java.net.SocketException e) {
                        if (watchdog.fired()) throw sourceSilent(params, "");
                        frame = null; // cut mid-frame, or reset: the source is gone all the same
                    }
                    watchdog.moved();
                    switch (frame) {
                        case null -> throw sourceGone();
                        case MigrationStream.Pages p -> {
                            if (sharedFile != null) throw sharedPages();
                            if (missing != null) throw pagesAfterSwitch();
                            try {
                                in.readPages(pageRange(blocks, p.block(), p.firstPage(), p.count()));
                            } catch (MigrationStream.Ended | java.net.SocketException | ClosedChannelException e) {
                                throw watchdog.fired()
                                        ? sourceSilent(params, " in the middle of a page batch")
                                        : sourceGone();
                            }
                            pages += p.count();
                        }
                        case MigrationStream.Zeros z -> {
                            if (sharedFile != null) throw sharedPages();
                            if (missing != null) throw pagesAfterSwitch();
                            pageRange(blocks, z.block(), z.firstPage(), z.count())
                                    .fill((byte) 0);
                            pages += z.count();
                        }
                        case MigrationStream.Message m -> {
                            switch (m.message()) {
                                case MigrationProtocol.PassEnd e ->
                                    log.debug("pass {} received: {} pages", e.pass(), e.pages());
                                case MigrationProtocol.Samples x -> {
                                    if (sharedFile == null)
                                        throw new SnapshotException(
                                                "the source sent the samples of a memory file this side does not map");
                                    SharedMemoryFile.touch(shell.memory(), x.blocks());
                                }
                                case MigrationProtocol.DeviceState d -> {
                                    resumeWithin = d.resumeWithinMillis();
                                    fingerprints = d.fingerprints();
                                    var next = in.next();
                                    stateAt = System.nanoTime();
                                    if (!(next instanceof MigrationStream.State s))
                                        throw new SnapshotException("the source sent "
                                                + (next == null ? "nothing" : MigrationStream.describe(next))
                                                + " instead of the device state");
                                    state = s.bytes();
                                }
                                case MigrationProtocol.Postcopy p -> {
                                    if (sharedFile != null) throw sharedPages();
                                    if (missing != null)
                                        throw new SnapshotException("the source switched to post-copy twice");
                                    missing = readBitmaps(in, blocks, p.pages());
                                    // While the source saves the device state: what must happen before
                                    // the devices are built (VmBuilder.forPostcopy's order) is done here,
                                    // out of the guest's pause (1.5-3.5 ms of it).
                                    postcopy = registerPostcopy(shell, blocks, missing, pages);
                                }
                                case MigrationProtocol.Refused r ->
                                    throw new SnapshotException("the source gave up: " + r.reason());
                                default ->
                                    throw new SnapshotException("the source sent "
                                            + m.message()
                                                    .getClass()
                                                    .getSimpleName()
                                                    .toLowerCase()
                                            + " during pre-copy");
                            }
                        }
                        case MigrationStream.State s ->
                            throw new SnapshotException("the source sent the device state without announcing it");
                        case MigrationStream.Bitmap b ->
                            throw new SnapshotException("the source sent a page bitmap without announcing post-copy");
                    }
                }
                watchdog.cancel();
                log.debug("received {} pages and {} bytes of state", pages, state.length);
                pagesReceived = pages;
                applying = VmMetrics.begin("migrate-in");
                var loaded =
                        VmSnapshots.load(state, new int[] {blocks.getFirst().fd()});
                loadedAt = System.nanoTime();
                var config = loaded.config()
                        .withBacking(sharedFile != null ? new Backing.SharedFile(sharedFile) : new Backing.Memfd());
                refusal = accept.apply(config);
                if (refusal != null) throw new SnapshotException(refusal);
                LocalMigration.checkSameRam(shell, loaded);
                // The source unlocked the file once paused; from here this VMM is its user.
                if (sharedFile != null) SharedMemoryFile.takeOver(shell.memory(), sharedFile, fingerprints);
                checkedAt = System.nanoTime();
                var s = shell;
                shell = null; // the VM owns it (or finish closes it) from here
                vm = VmBuilder.finish(kvm, s, loaded.withConfig(config), config, console, listener);
                builtAt = System.nanoTime();
                vm.pauseBeforeStart();
                vm.start(vcpuThreads);
                if (System.nanoTime() - stateAt > TimeUnit.MILLISECONDS.toNanos(resumeWithin))
                    throw new SnapshotException(
                            "the VM's state took too long to apply: the source resumes its guest at its deadline");
            } catch (IOException | RuntimeException e) {
                // The memory may be registered for post-copy already (at the switch's message).
                if (postcopy != null) postcopy.close();
                if (shell != null) shell.close();
                if (vm != null) vm.close();
                refuseQuietly(out, reason(e));
                throw e;
            }
            vm.resume();
            long resumedAt = System.nanoTime();
            var phases = VmMetrics.phases(
                    "load",
                    loadedAt - applying.startNanos(),
                    "check",
                    checkedAt - loadedAt,
                    "build",
                    builtAt - checkedAt,
                    "start",
                    resumedAt - builtAt);
            applying.end(vm.metrics(), phases);
            log.debug("applied the state in {} us: {}", (resumedAt - applying.startNanos()) / 1000, phases);
            try {
                out.message(new MigrationProtocol.Running(resumedAt));
                out.flush();
            } catch (IOException e) {
                // The source never hears of it and takes its guest back: this copy must not run on.
                vm.close();
                throw new SnapshotException(
                        "the source vanished before the destination could confirm; it runs the guest");
            }
            if (postcopy != null) {
                try {
                    postcopy.sendHello(out.stream());
                } catch (IOException e) {
                    // The receiving thread finds the connection broken too: post-copy waits for recovery.
                }
                var incoming = new PostcopyIncoming(postcopy, params);
                vm.postcopyIncoming(incoming);
                incoming.receiveOn(peer, in.stream(), out.stream());
            } else {
                vm.arrival(new Vm.Arrival((resumedAt - arrivedAt) / 1_000_000, pagesReceived, sharedFile));
            }
            return vm;
        } finally {
            if (watchdog != null) watchdog.cancel();
            if (vcpuThreads != null) vcpuThreads.close();
        }
    }

    /**
     * The bitmaps after {@code Postcopy}: one per block, in order, each exactly the block's size in
     * words with no bit past its last page, {@code pages} bits in all.
     */
    private static long[][] readBitmaps(
            MigrationStream.Reader in, List<dev.panamavmm.vmm.memory.RamBlock> blocks, long pages) throws IOException {
        long[][] bitmaps = new long[blocks.size()][];
        long count = 0;
        for (int i = 0; i < blocks.size(); i++) {
            var frame = in.next();
            if (!(frame instanceof MigrationStream.Bitmap b) || b.block() != i)
                throw new SnapshotException("the source sent "
                        + (frame == null ? "nothing" : MigrationStream.describe(frame))
                        + " instead of block " + i + "'s post-copy bitmap");
            long blockPages = blocks.get(i).size() / MigrationStream.PAGE;
            if (b.words().length != (blockPages + 63) / 64
                    || (blockPages % 64 != 0 && (b.words()[b.words().length - 1] >>> (blockPages % 64)) != 0))
                throw new SnapshotException("the source sent a post-copy bitmap that does not fit block " + i);
            for (long w : b.words()) count += Long.bitCount(w);
            bitmaps[i] = b.words();
        }
        if (count != pages)
            throw new SnapshotException(
                    "the source announced " + pages + " post-copy pages and its bitmaps hold " + count);
        return bitmaps;
    }

    /**
     * The destination's switch to post-copy once on scratch memory, before the source can ask for
     * it: the first run in a process of the hole punching, the page set and the userfaultfd
     * registration with its fault thread took ~7 ms of the guest's pause. A failure changes nothing
     * (the real switch, if it comes, says why).
     */
    private static void warmUpPostcopySwitch() {
        long start = System.nanoTime();
        try (var arena = Arena.ofShared();
                var memory = GuestMemory.create(GuestMemory.MIN_SIZE, arena)) {
            var blocks = memory.blocks();
            long[] words = new long[(int) (blocks.getFirst().size() / MigrationStream.PAGE / 64)];
            java.util.Arrays.fill(words, -1L);
            punchHoles(blocks, new long[][] {words});
            var set = PageSet.of(memory);
            set.addAll(0, words);
            try (var destination = PostcopyDestination.register(memory, set)) {
                // Its receiving side up to the source's first byte: the HELLO it sends first went
                // out 7-15 ms after the resume while its classes loaded, with the guest waiting.
                destination.receive(InputStream.nullInputStream(), OutputStream.nullOutputStream());
            } catch (java.io.EOFException expected) {
                // no source: the stream ends at once
            }
            log.debug("warmed the post-copy switch in {} us", (System.nanoTime() - start) / 1000);
        } catch (IOException | RuntimeException e) {
            log.debug("warming the post-copy switch failed: {}", reason(e));
        }
    }

    /** Drops the pages of {@code bitmaps} from the memfd: each becomes a hole, so its first touch faults. */
    private static void punchHoles(List<dev.panamavmm.vmm.memory.RamBlock> blocks, long[][] bitmaps) {
        for (int i = 0; i < blocks.size(); i++) {
            var b = blocks.get(i);
            for (long[] run : DirtyLog.runs(bitmaps[i]))
                LibC.fallocate(
                        b.fd(),
                        LibcConstants.FALLOC_FL_PUNCH_HOLE | LibcConstants.FALLOC_FL_KEEP_SIZE,
                        b.fileOffset() + run[0],
                        run[1] - run[0]);
        }
    }

    private static void refuseQuietly(MigrationStream.Writer out, String why) {
        try {
            out.message(new MigrationProtocol.Refused(why));
            out.flush();
        } catch (IOException | RuntimeException ignored) {
            // the source is gone
        }
    }

    /** Block {@code block}'s pages {@code [first, first + count)}, checked against the block. */
    private static MemorySegment pageRange(
            List<dev.panamavmm.vmm.memory.RamBlock> blocks, int block, long first, int count) {
        if (block < 0 || block >= blocks.size())
            throw new SnapshotException("the source sent pages of RAM block " + block + " of " + blocks.size());
        var segment = blocks.get(block).segment();
        long pages = segment.byteSize() / MigrationStream.PAGE;
        if (first < 0 || first + count > pages)
            throw new SnapshotException("the source sent pages " + first + "+" + count + " of a block of " + pages);
        return segment.asSlice(first * MigrationStream.PAGE, (long) count * MigrationStream.PAGE);
    }

    /** The watchdog closed a connection on which nothing came for the migration's timeout. */
    private static SnapshotException sourceSilent(MigrationParameters params, String where) {
        return new SnapshotException("the source sent nothing for " + params.timeoutSeconds() + " s" + where);
    }

    private static SnapshotException sourceGone() {
        return new SnapshotException("the source closed the connection before the migration completed");
    }

    /** Pages after {@code Postcopy}: they would land in memory whose missing pages now fault to the source. */
    private static SnapshotException pagesAfterSwitch() {
        return new SnapshotException("the source sent pages after its switch to post-copy");
    }

    /**
     * The destination's side of the switch, before the devices are built and any vCPU runs: the
     * stale copies of the pages to come are dropped (missing faults fire only for pages not
     * present; none when no page came, as punching a GiB of nothing takes milliseconds), and the
     * memory is registered with userfaultfd for the pages of {@code missing}.
     */
    private static PostcopyDestination registerPostcopy(
            VmBuilder.Shell shell,
            List<dev.panamavmm.vmm.memory.RamBlock> blocks,
            long[][] missing,
            long pagesReceived) {
        if (pagesReceived > 0) punchHoles(blocks, missing);
        var set = PageSet.of(shell.memory());
        for (int i = 0; i < blocks.size(); i++) set.addAll(i, missing[i]);
        return PostcopyDestination.register(shell.memory(), set);
    }

    private static SnapshotException sharedPages() {
        return new SnapshotException(
                "the source sent pages of a memory file the destination maps itself (pages by reference)");
    }

    /** The announced blocks: page-aligned, as much RAM as the machine says, within bounds. */
    private static void checkAnnounced(MigrationProtocol.Prepare prepare) {
        var ram = prepare.ram();
        if (ram == null || ram.isEmpty()) throw new SnapshotException("the source announced no RAM blocks");
        long total = 0;
        for (var b : ram) {
            if (b.size() <= 0 || b.size() % MigrationStream.PAGE != 0 || b.guestAddress() % MigrationStream.PAGE != 0)
                throw new SnapshotException("the source announced RAM block " + b.id() + " of " + b.size() + " bytes");
            total += b.size();
        }
        if (total != prepare.memory())
            throw new SnapshotException(
                    "the source's RAM blocks hold " + total + " bytes, its machine " + prepare.memory());
        if (total > GuestMemory.MAX_SIZE)
            throw new SnapshotException("the source announced " + total + " bytes of RAM");
    }

    /** The announced blocks in one fresh memfd, one after another. */
    private static List<GuestMemory.BlockSource> memfdSources(MigrationProtocol.Prepare prepare) {
        var ram = prepare.ram();
        long total = prepare.memory();
        int memfd = LibC.memfdCreate("panama-vmm-ram", LibcConstants.MFD_CLOEXEC);
        try {
            LibC.ftruncate(memfd, total);
        } catch (RuntimeException e) {
            LibC.close(memfd);
            throw e;
        }
        var sources = new ArrayList<GuestMemory.BlockSource>();
        long offset = 0;
        for (var b : ram) {
            sources.add(new GuestMemory.BlockSource(
                    b.id(), b.guestAddress(), b.size(), new Backing.Memfd(), offset, memfd));
            offset += b.size();
        }
        return sources;
    }
}
