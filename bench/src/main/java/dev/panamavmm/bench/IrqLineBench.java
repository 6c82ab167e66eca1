package dev.panamavmm.bench;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmIrqLevel;
import java.lang.foreign.Arena;
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
 * One {@code KVM_IRQ_LINE} ioctl per operation, the level alternating (what the 8250 does per
 * console byte: raise, then lower once the guest reads IIR), on a VM with the in-kernel irqchip
 * and no vCPU. {@link #irqLine} is the API as the VMM calls it ({@link VmFd#irqLine}: one
 * preallocated, immutable struct per line and level); {@link #confinedArenaPerCall} is how it
 * was done before (a confined arena and a fresh struct per call), kept as the peer. Run with
 * {@code -prof gc} to see the allocation per call: {@code bench/run-ioctl-bench} does.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(
        value = 2,
        jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class IrqLineBench {

    /** COM1's line, as the VMM's serial port drives it. */
    private static final int IRQ = 4;

    private Kvm kvm;
    private Arena arena;
    private VmFd vm;
    private boolean level;

    @Setup(Level.Trial)
    public void open() {
        kvm = Kvm.open();
        arena = Arena.ofShared();
        vm = kvm.createVm(arena);
        vm.createIrqchip();
    }

    @TearDown(Level.Trial)
    public void close() {
        vm.close();
        arena.close();
        kvm.close();
    }

    @Benchmark
    public void irqLine() {
        level = !level;
        vm.irqLine(IRQ, level);
    }

    @Benchmark
    public void confinedArenaPerCall() {
        level = !level;
        try (var a = Arena.ofConfined()) {
            var line = a.allocate(KvmIrqLevel.LAYOUT);
            KvmIrqLevel.irq(line, IRQ);
            KvmIrqLevel.level(line, level ? 1 : 0);
            vm.ioctl(Ioctls.KVM_IRQ_LINE, line);
        }
    }
}
