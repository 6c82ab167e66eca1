package dev.panamavmm.bench;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import dev.panamavmm.devices.I8042;
import dev.panamavmm.devices.Serial8250;
import dev.panamavmm.devices.VmmPort;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmRun;
import dev.panamavmm.vmm.IoBus;
import dev.panamavmm.vmm.vcpu.VcpuExit;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The Java side of one exit without KVM: what {@code Vcpu}'s loop does between two
 * {@code KVM_RUN}s for the exit bench's OUT to port 0x3ff, on a fake {@code kvm_run} page: clear
 * {@code immediate_exit} and fence, {@link VcpuExit#decode}, and the {@code Io} branch of
 * {@code Vcpu.handle} (read the data byte, {@link IoBus#write} to {@link Serial8250}, registered
 * with the VMM port and the i8042 as {@link Vm} does). {@code Vcpu} is package-private, so this
 * is a copy of its steps, not a call; the KVM_RUN downcall itself is {@code IoctlBench}'s subject.
 * Only to explain {@link ExitBench}: bench/run-exit-bench prints it next to the exit cost.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(
        value = 1,
        jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class ExitHandlerBench {

    private Arena arena;
    private MemorySegment run;
    private IoBus bus;

    @Setup(Level.Trial)
    public void setUp() {
        arena = Arena.ofConfined();
        run = arena.allocate(4096, 4096);
        KvmRun.exitReason(run, KvmConstants.KVM_EXIT_IO);
        KvmRun.ioDirection(run, KvmConstants.KVM_EXIT_IO_OUT);
        KvmRun.ioSize(run, 1);
        KvmRun.ioPort(run, 0x3ff);
        KvmRun.ioCount(run, 1);
        KvmRun.ioDataOffset(run, 0x800);
        bus = new IoBus(message -> {});
        bus.register(
                Serial8250.COM1_BASE,
                Serial8250.PORT_COUNT,
                new Serial8250(level -> {}, OutputStream.nullOutputStream()));
        bus.register(I8042.BASE, I8042.PORT_COUNT, new I8042(() -> {}));
        bus.register(VmmPort.DEFAULT_BASE, VmmPort.PORT_COUNT, new VmmPort(new VmmPort.Listener() {
            @Override
            public void exitRequested(int code) {}

            @Override
            public void guestEvent(int event) {}
        }));
    }

    @Benchmark
    public VcpuExit outToScratch() {
        KvmRun.immediateExit(run, 0);
        VarHandle.fullFence();
        var exit = VcpuExit.decode(run);
        if (exit instanceof VcpuExit.Io io) {
            for (int i = 0; i < io.count(); i++) {
                long at = io.dataOffset() + (long) i * io.size();
                bus.write(io.port(), io.size(), run.get(JAVA_BYTE, at) & 0xff);
            }
        }
        return exit;
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }
}
