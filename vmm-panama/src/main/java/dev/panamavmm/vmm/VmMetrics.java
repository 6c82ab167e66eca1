package dev.panamavmm.vmm;

import dev.panamavmm.vmm.vcpu.VcpuExit;
import java.time.Instant;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicLongArray;
import jdk.jfr.Category;
import jdk.jfr.Description;
import jdk.jfr.Event;
import jdk.jfr.FlightRecorder;
import jdk.jfr.Label;
import jdk.jfr.Name;

/**
 * What one VM has done, for {@code query-metrics}: its vCPUs' exits by kind, its pauses, and the
 * last of each operation (save, restore, clone, live update) with its phases. Each operation is
 * also a JFR event ({@code dev.panamavmm.VmOperation}), which costs nothing while no recording
 * runs and puts the operations on a timeline with the JVM's own events when one does
 * ({@code jcmd PID JFR.start}).
 */
public final class VmMetrics {
    /** The kinds of exits counted: those a running guest makes again and again. */
    public enum Exit {
        IO,
        MMIO,
        /** KVM_RUN returned for the VMM (a pause, a stop): the kick. */
        INTERRUPTED,
        OTHER;

        static Exit of(VcpuExit exit) {
            return switch (exit) {
                case VcpuExit.Io i -> IO;
                case VcpuExit.Mmio m -> MMIO;
                case VcpuExit.Interrupted i -> INTERRUPTED;
                default -> OTHER;
            };
        }

        String label() {
            return name().toLowerCase();
        }
    }

    /** One operation as it last ran: when, how long, and its phases in microseconds, in order. */
    public record Operation(String name, Instant at, long micros, Map<String, Long> phases) {
        public Operation {
            phases = java.util.Collections.unmodifiableMap(new LinkedHashMap<>(phases));
        }
    }

    /** The JFR event of one operation. */
    @Name("dev.panamavmm.VmOperation")
    @Label("VM operation")
    @Category({"Panama VMM"})
    @Description("A save, restore, clone or live update of a VM, with its phases")
    static final class OperationEvent extends Event {
        @Label("Operation")
        String operation;

        @Label("Phases")
        @Description("each phase's microseconds, in order")
        String phases;
    }

    /**
     * An operation under way, timed from {@link #begin}: {@link #end} records it on the VM it
     * concerns (a restore's VM exists only at its end).
     */
    public static final class Timing {
        private final String name;
        private final long startNanos = System.nanoTime();
        /** Null while JFR has not run in this process (see the constructor). */
        private final OperationEvent event;

        private Timing(String name) {
            this.name = name;
            // A process's first event object initialises JFR's event machinery: 40 ms with the AOT
            // cache, 65 without (measured), paid by the first save, restore or migration. JFR has
            // been initialised once a recording ran (jcmd PID JFR.start does it): only then are
            // there events to make, and from then on each operation makes one.
            event = FlightRecorder.isInitialized() ? new OperationEvent() : null;
            if (event != null) event.begin();
        }

        public long startNanos() {
            return startNanos;
        }

        /** Records the operation on {@code vm}'s metrics, with {@code phases} (microseconds each, in order). */
        public Operation end(VmMetrics vm, Map<String, Long> phases) {
            long micros = (System.nanoTime() - startNanos) / 1000;
            var op = new Operation(name, Instant.now(), micros, phases);
            vm.last.put(name, op);
            vm.counts.computeIfAbsent(name, n -> new AtomicLong()).incrementAndGet();
            if (event != null && event.shouldCommit()) {
                event.operation = name;
                event.phases = phases.toString();
                event.commit();
            }
            return op;
        }
    }

    /** Phase names and nanosecond durations, as microseconds in order: what {@link Timing#end} records. */
    static Map<String, Long> phases(Object... namesAndNanos) {
        var phases = new LinkedHashMap<String, Long>();
        for (int i = 0; i < namesAndNanos.length; i += 2)
            phases.put((String) namesAndNanos[i], (Long) namesAndNanos[i + 1] / 1000);
        return phases;
    }

    /** Starts timing operation {@code name} (e.g. {@code save}). */
    public static Timing begin(String name) {
        return new Timing(name);
    }

    /** Per vCPU, written only by that vCPU's thread (opaque: no lock on its exit path). */
    private final AtomicLongArray[] exits;

    private final AtomicLong pauses = new AtomicLong();
    private final AtomicLong pausedNanos = new AtomicLong();
    private final Map<String, Operation> last = new ConcurrentHashMap<>();
    private final Map<String, AtomicLong> counts = new ConcurrentHashMap<>();

    VmMetrics(int vcpus) {
        exits = new AtomicLongArray[vcpus];
        for (int i = 0; i < vcpus; i++) exits[i] = new AtomicLongArray(Exit.values().length);
    }

    /** Counts one exit of vCPU {@code vcpu}; its thread only. */
    void exit(int vcpu, VcpuExit exit) {
        var counters = exits[vcpu];
        int k = Exit.of(exit).ordinal();
        counters.setOpaque(k, counters.getPlain(k) + 1);
    }

    /** A pause of {@code nanos} ended. */
    void paused(long nanos) {
        pauses.incrementAndGet();
        pausedNanos.addAndGet(nanos);
    }

    /** The exits of vCPU {@code vcpu} of kind {@code kind} so far. */
    public long exits(int vcpu, Exit kind) {
        return exits[vcpu].getOpaque(kind.ordinal());
    }

    /** The last run of operation {@code name}, or null. */
    public Operation last(String name) {
        return last.get(name);
    }

    /** Everything, as {@code query-metrics} returns it. */
    public Map<String, Object> describe() {
        var vcpus = new java.util.ArrayList<Object>();
        for (int i = 0; i < exits.length; i++) {
            var byKind = new LinkedHashMap<String, Object>();
            for (var kind : Exit.values()) byKind.put(kind.label(), exits(i, kind));
            vcpus.add(Map.of("exits", byKind));
        }
        var operations = new LinkedHashMap<String, Object>();
        for (var e : new java.util.TreeMap<>(last).entrySet()) {
            var op = e.getValue();
            var entry = new LinkedHashMap<String, Object>();
            entry.put("count", counts.get(e.getKey()).get());
            entry.put("last-at", op.at().toString());
            entry.put("last-us", op.micros());
            entry.put("last-phases-us", new LinkedHashMap<String, Object>(op.phases()));
            operations.put(e.getKey(), entry);
        }
        var all = new LinkedHashMap<String, Object>();
        all.put("vcpus", vcpus);
        all.put("pauses", pauses.get());
        all.put("paused-us", pausedNanos.get() / 1000);
        all.put("operations", operations);
        return all;
    }
}
