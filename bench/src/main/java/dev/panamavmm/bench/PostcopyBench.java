package dev.panamavmm.bench;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.MigrationParameters;
import dev.panamavmm.vmm.MigrationStatus;
import dev.panamavmm.vmm.TcpAddress;
import dev.panamavmm.vmm.TcpMigration;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.Sizes;
import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.regex.Pattern;

/**
 * One post-copy migration of the test guest between two VMs of this process over loopback TCP
 * (bench/run-postcopy-bench runs it): boots a guest of {@code MEMORY} on {@code CPUS} vCPUs exercising 3/4 of
 * it with {@code testguest.rewrite=REWRITE}, then migrates it with the TCP migration switched to
 * post-copy before its first pass ({@code TcpMigration} with {@code postcopy-ram} and
 * {@code migrate-start-postcopy}): the destination resumes with none of its memory and the source
 * serves the pages. Prints one JSON line: time from the resume (the source's confirmation) to the
 * guest's first heartbeat, to the last page, the heartbeat rate while pages arrive and after, bytes
 * (post-copy's) and pages sent, the source's downtime (its pause to the destination's
 * confirmation), the guest's pause (the source VM's pause to the destination VM's resume), and
 * whether the guest printed CORRUPT.
 *
 * <pre>java -cp benchmarks.jar dev.panamavmm.bench.PostcopyBench MEMORY REWRITE HB_MS CPUS</pre>
 */
public final class PostcopyBench {
    private PostcopyBench() {}

    private static final Pattern HB = Pattern.compile("hb (\\d+) (\\d+)");

    /** A console that keeps each line with the time it was completed. */
    static final class TimedConsole extends OutputStream {
        private final ByteArrayOutputStream line = new ByteArrayOutputStream();
        private final List<long[]> heartbeats = new ArrayList<>(); // {nanoTime, cpu}
        private final StringBuilder text = new StringBuilder();

        @Override
        public synchronized void write(int b) {
            if (b != '\n') {
                line.write(b);
                return;
            }
            String l = line.toString(StandardCharsets.UTF_8);
            line.reset();
            text.append(l).append('\n');
            var m = HB.matcher(l);
            if (m.matches()) heartbeats.add(new long[] {System.nanoTime(), Long.parseLong(m.group(1))});
            notifyAll();
        }

        synchronized long heartbeatsBetween(long from, long to) {
            return heartbeats.stream().filter(h -> h[0] >= from && h[0] < to).count();
        }

        synchronized long firstHeartbeatAfter(long t, long timeoutNanos) throws InterruptedException {
            long deadline = System.nanoTime() + timeoutNanos;
            while (true) {
                for (var h : heartbeats) if (h[0] > t) return h[0];
                long left = deadline - System.nanoTime();
                if (left <= 0) throw new IllegalStateException("no heartbeat after the resume:\n" + text);
                wait(Math.max(1, left / 1_000_000));
            }
        }

        synchronized void awaitLine(String wanted, long seconds) throws InterruptedException {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
            while (!text.toString().contains(wanted + "\n")) {
                long left = deadline - System.nanoTime();
                if (left <= 0) throw new IllegalStateException("no line '" + wanted + "' in:\n" + text);
                wait(Math.max(1, left / 1_000_000));
            }
        }

        synchronized boolean corrupt() {
            return text.toString().contains("CORRUPT");
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: PostcopyBench MEMORY REWRITE HB_MS CPUS");
            System.exit(2);
        }
        long memory = Sizes.parse(args[0]);
        int rewrite = Integer.parseInt(args[1]);
        int hb = Integer.parseInt(args[2]);
        int cpus = Integer.parseInt(args[3]);
        var config = new MachineConfig(
                memory,
                cpus,
                new Backing.Memfd(),
                "test guest",
                TestGuest.elf(),
                null,
                "console=ttyS0 testguest.hb=" + hb + " testguest.mem=" + (memory / 4 * 3 >> 20) + "M testguest.rewrite="
                        + rewrite);
        var console = new TimedConsole();
        // The guest's pause measured as on QEMU (its STOP and RESUME events' timestamps): from the
        // source's pause to the destination's resume, by the instants each VM's listener is given.
        var stoppedAt = new AtomicReference<Instant>();
        var startedAt = new AtomicReference<Instant>();
        try (var kvm = Kvm.open();
                var source = VmBuilder.boot(kvm, config, console, new VmListener() {
                    @Override
                    public void paused() {
                        stoppedAt.compareAndSet(null, Instant.now());
                    }
                })) {
            source.start();
            console.awaitLine("hb 0 3", 300);
            for (int cpu = 1; cpu < cpus; cpu++) console.awaitLine("hb " + cpu + " 3", 300);
            // migrate-start-postcopy before the first pass: every page moves by post-copy, as QEMU's
            // migrate-start-postcopy issued right after migrate.
            var resumedAt = new AtomicLong();
            var status = new MigrationStatus(s -> {
                if (s.equals("postcopy-active")) resumedAt.compareAndSet(0, System.nanoTime());
            });
            status.startPostcopy();
            var params = MigrationParameters.DEFAULTS.withPostcopyRam(true);
            var port = new CompletableFuture<Integer>();
            var arrived = new CompletableFuture<Vm>();
            Thread.ofPlatform().name("bench-incoming").start(() -> {
                try {
                    arrived.complete(TcpMigration.receive(
                            kvm,
                            new TcpAddress("127.0.0.1", 0),
                            params,
                            console,
                            new VmListener() {
                                @Override
                                public void resumed(Instant at) {
                                    startedAt.compareAndSet(null, at);
                                }
                            },
                            c -> null,
                            port::complete));
                } catch (RuntimeException e) {
                    port.completeExceptionally(e);
                    arrived.completeExceptionally(e);
                }
            });
            var result = TcpMigration.send(
                    source,
                    new TcpAddress("127.0.0.1", port.get(60, TimeUnit.SECONDS)),
                    params,
                    status,
                    RamWriter.Progress.NONE);
            long complete = System.nanoTime();
            try (Vm destination = arrived.get(60, TimeUnit.SECONDS)) {
                long resumed = resumedAt.get();
                long pages = status.postcopyPages();
                var received = destination.postcopyIncoming().stats();
                var sent = status.postcopyStats();
                long firstOutput = console.firstHeartbeatAfter(resumed, TimeUnit.SECONDS.toNanos(60));
                // The rate after: over as long as the transfer took, at least 2 s.
                long window = Math.max(complete - resumed, TimeUnit.SECONDS.toNanos(2));
                Thread.sleep(TimeUnit.NANOSECONDS.toMillis(window) + 50);
                double during = console.heartbeatsBetween(resumed, complete) * 1e9 / (complete - resumed);
                double after = console.heartbeatsBetween(complete, complete + window) * 1e9 / window;
                System.out.println(String.format(
                        Locale.ROOT,
                        "{\"vmm\": \"panama\", \"memory\": %d, \"rewrite\": %d, \"cpus\": %d, \"pages\": %d, \"resume_to_first_output_ms\": %.1f,"
                                + " \"resume_to_last_page_ms\": %.1f, \"hb_per_s_during\": %.1f, \"hb_per_s_after\": %.1f,"
                                + " \"bytes_sent\": %d, \"pages_requested\": %d, \"pages_streamed\": %d, \"zero_pages\": %d,"
                                + " \"duplicates\": %d, \"pages_arrived\": %d, \"downtime_ms\": %d, \"paused_ms\": %.1f,"
                                + " \"corrupt\": %b,"
                                + " \"running\": %b}",
                        memory,
                        rewrite,
                        cpus,
                        pages,
                        (firstOutput - resumed) / 1e6,
                        (complete - resumed) / 1e6,
                        during,
                        after,
                        sent.bytes(),
                        received.pagesRequested(),
                        received.pagesStreamed(),
                        received.zeroPages(),
                        received.duplicates(),
                        received.pages(),
                        result.downtimeMillis(),
                        Duration.between(stoppedAt.get(), startedAt.get()).toNanos() / 1e6,
                        console.corrupt(),
                        !destination.termination().isDone()));
            }
        }
    }
}
