package dev.panamavmm.bench;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.memory.Backing;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.invoke.MethodHandle;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.AuxCounters;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * Exit round trip: the guest {@code bench/src/main/asm/outloop.S} runs {@code n} iterations of
 * {@code out %al, %dx} to COM1's scratch register (port 0x3ff, handled by {@code Serial8250}),
 * each one an exit from {@code KVM_RUN} to the vCPU thread and back, then exits through port
 * 0x500. One invocation is one fresh VM: {@link #setUp} builds it ({@link Vm#create}, not
 * timed), the benchmark times {@link Vm#start()} to {@link Vm#termination()}. ns per exit =
 * score / n (bench/run-exit-bench divides).
 *
 * <p>{@code mode=kernel} (same loop, port 0x21, which the in-kernel PIC handles without leaving
 * KVM) and {@code mode=none} (a {@code nop} instead of the {@code out}) are baselines: on a PVM
 * host the guest's CPL0 instructions are emulated, and these say how much of an iteration is
 * that emulation rather than the trip to user space. The peer is
 * {@code bench/src/main/c/outloop_vmm.c} running the same ELF (docs/benchmarks.md).
 *
 * <p>Secondary result {@code vcpuUserUs} / {@code vcpuSysUs}: the vCPU thread's user and system CPU
 * time for the whole run, from {@code getrusage(RUSAGE_THREAD)} on that thread when the guest
 * exits (in {@link VmListener#ended}), as the C peer reports it. The user part is the VMM's own
 * work per exit (plus the syscall entry and exit); the kernel's part is in the system time. Linux
 * splits a thread's CPU time into user and system by sampling at the timer tick (250 Hz here),
 * so one run's split is coarse; the mean over many runs is what means something.
 *
 * <p>The ELF is built by bench/run-exit-bench ({@code gcc -c} + {@code ld}) and passed as the
 * {@code elf} parameter.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.SingleShotTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3)
@Measurement(iterations = 8)
@Fork(
        value = 2,
        jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class ExitBench {

    /** The outloop ELF (built at benchmark time). */
    @Param("bench/target/outloop.elf")
    public String elf;

    /** Loop iterations, i.e. exits to user space in mode exit. */
    @Param("50000")
    public int n;

    /** exit: OUT to 0x3ff (user space); kernel: OUT to 0x21 (in-kernel PIC); none: NOP. */
    @Param({"exit", "kernel", "none"})
    public String mode;

    private static final int RUSAGE_THREAD = 1;

    @SuppressWarnings("restricted") // native access is enabled for the unnamed module (README, "Native access")
    private static final MethodHandle GETRUSAGE = Linker.nativeLinker()
            .downcallHandle(
                    Linker.nativeLinker().defaultLookup().find("getrusage").orElseThrow(),
                    FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS));

    /**
     * CPU time of the vCPU thread over one run (one VM), in µs. JMH's score for these is the sum
     * over the iterations; bench/run-exit-bench takes the mean of the per-VM raw values.
     */
    @State(Scope.Thread)
    @AuxCounters(AuxCounters.Type.EVENTS)
    public static class VcpuTime {
        public double vcpuUserUs;
        public double vcpuSysUs;
    }

    private Kvm kvm;
    private byte[] image;
    private Vm vm;
    private long userUs, sysUs; // written on the vCPU thread, read after Vm.close() joined it

    @Setup(Level.Trial)
    public void openKvm() throws IOException {
        image = Files.readAllBytes(Path.of(elf));
        kvm = Kvm.open();
    }

    @Setup(Level.Invocation)
    public void setUp() {
        var config = new MachineConfig(
                16L << 20, 1, new Backing.Memfd(), "outloop", image, null, "n=" + n + " mode=" + mode);
        userUs = -1;
        vm = VmBuilder.boot(kvm, config, OutputStream.nullOutputStream(), new VmListener() {
            @Override
            public void ended(VmExitReason reason) {
                // Called on the vCPU thread when the guest's exit port write ends the VM.
                if (reason instanceof VmExitReason.GuestExit) threadTimes();
            }
        });
    }

    /** getrusage(RUSAGE_THREAD): struct rusage starts with ru_utime and ru_stime (struct timeval each). */
    private void threadTimes() {
        try (var arena = Arena.ofConfined()) {
            var usage = arena.allocate(144, 8);
            if ((int) GETRUSAGE.invokeExact(RUSAGE_THREAD, usage) != 0) return;
            sysUs = usage.get(JAVA_LONG, 16) * 1_000_000 + usage.get(JAVA_LONG, 24);
            userUs = usage.get(JAVA_LONG, 0) * 1_000_000 + usage.get(JAVA_LONG, 8);
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    @Benchmark
    public VmExitReason run() throws InterruptedException, ExecutionException {
        vm.start();
        var reason = vm.termination().get();
        if (!(reason instanceof VmExitReason.GuestExit(int code)) || code != 0) {
            throw new IllegalStateException("outloop did not exit cleanly: " + reason.describe());
        }
        return reason;
    }

    @TearDown(Level.Invocation)
    public void tearDown(VcpuTime time) {
        // Vm.end() completes termination() before it calls ended(), so the benchmark method cannot
        // read the times; close() joins the vCPU thread, after which ended() has recorded them.
        vm.close();
        vm = null;
        if (userUs < 0) throw new IllegalStateException("the vCPU thread did not report its CPU time");
        time.vcpuUserUs = userUs;
        time.vcpuSysUs = sysUs;
    }

    @TearDown(Level.Trial)
    public void closeKvm() {
        kvm.close();
    }
}
