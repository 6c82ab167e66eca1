package dev.panamavmm.bench;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmConstants;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;
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
 * One {@code KVM_CHECK_EXTENSION(KVM_CAP_IRQCHIP)} ioctl on {@code /dev/kvm} through FFM, per
 * operation. The peer is {@code bench/src/main/c/check_extension.c}, the same call in a C loop;
 * {@code bench/run-ioctl-bench} runs both in one go and prints the ratio (docs/benchmarks.md).
 *
 * <p>{@link #checkExtension} is the measured API: {@link Kvm#checkExtension} as the VMM calls it.
 * The {@code downcall*} methods are for explaining its cost only: they call glibc's
 * {@code ioctl} through handles linked here, taking away one layer at a time (the per-thread
 * errno segment lookup and result check, the errno capture, the thread-state transition).
 * The {@code nullCall*} methods make the same three kinds of downcall to glibc's {@code abs},
 * which enters no kernel: they measure FFM's own cost per call, which is lost in the ioctl's noise.
 * kvm-bindings does not use any of these handles.
 *
 * <p>Every JVM is a multi-threaded process, and that alone makes an fd-based syscall dearer than
 * in a single-threaded C program (the kernel then refcounts the struct file on each call): the
 * C peer is therefore run both ways, {@code check_extension} and {@code check_extension -t 1}.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
// Native access for the FFM calls; the Unsafe flag only quiets JMH 1.37's own use of sun.misc.Unsafe.
@Fork(
        value = 2,
        jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
@SuppressWarnings("restricted") // native access is enabled for the unnamed module (README, "Native access")
public class IoctlBench {

    private static final long REQUEST = Ioctls.KVM_CHECK_EXTENSION;
    private static final long CAP = KvmConstants.KVM_CAP_IRQCHIP;

    /** ioctl(int, unsigned long, ...) with one variadic long, as kvm-bindings links it. */
    private static final FunctionDescriptor IOCTL_LONG =
            FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_LONG);

    private static final MemorySegment IOCTL =
            Linker.nativeLinker().defaultLookup().find("ioctl").orElseThrow();

    /** Same linkage as kvm-bindings' LibC.ioctl(int, long, long): variadic, errno captured. */
    private static final MethodHandle WITH_ERRNO = Linker.nativeLinker()
            .downcallHandle(
                    IOCTL, IOCTL_LONG, Linker.Option.firstVariadicArg(2), Linker.Option.captureCallState("errno"));

    /** Without errno capture. */
    private static final MethodHandle NO_ERRNO =
            Linker.nativeLinker().downcallHandle(IOCTL, IOCTL_LONG, Linker.Option.firstVariadicArg(2));

    /**
     * Without errno capture and without the Java-to-native thread-state transition: a "critical"
     * call, which holds off safepoints (GC) for its duration. Here only as the floor of what a
     * downcall can cost.
     */
    private static final MethodHandle CRITICAL = Linker.nativeLinker()
            .downcallHandle(IOCTL, IOCTL_LONG, Linker.Option.firstVariadicArg(2), Linker.Option.critical(false));

    /**
     * glibc's {@code abs(int)}: a native function that makes no system call, so what its
     * downcalls cost is FFM's own per-call cost, free of the kernel's noise.
     */
    private static final FunctionDescriptor ABS_DESC = FunctionDescriptor.of(JAVA_INT, JAVA_INT);

    private static final MemorySegment ABS =
            Linker.nativeLinker().defaultLookup().find("abs").orElseThrow();
    private static final MethodHandle ABS_ERRNO =
            Linker.nativeLinker().downcallHandle(ABS, ABS_DESC, Linker.Option.captureCallState("errno"));
    private static final MethodHandle ABS_NO_ERRNO = Linker.nativeLinker().downcallHandle(ABS, ABS_DESC);
    private static final MethodHandle ABS_CRITICAL =
            Linker.nativeLinker().downcallHandle(ABS, ABS_DESC, Linker.Option.critical(false));

    private Kvm kvm;
    private int fd;
    private Arena arena;
    private MemorySegment capture;
    /** Argument to abs: a field, so the JIT cannot fold it. */
    private int minusOne = -1;

    @Setup(Level.Trial)
    public void open() {
        kvm = Kvm.open();
        fd = kvm.fd();
        arena = Arena.ofConfined();
        capture = arena.allocate(Linker.Option.captureStateLayout());
        if (kvm.checkExtension(KvmConstants.KVM_CAP_IRQCHIP) <= 0) {
            throw new IllegalStateException("host lacks KVM_CAP_IRQCHIP: the C peer and this benchmark would disagree");
        }
    }

    @TearDown(Level.Trial)
    public void close() {
        arena.close();
        kvm.close();
    }

    /** The API under test: Kvm.checkExtension -> LibC.ioctl -> glibc ioctl. */
    @Benchmark
    public int checkExtension() {
        return kvm.checkExtension(KvmConstants.KVM_CAP_IRQCHIP);
    }

    /** The same downcall with errno capture, but no ThreadLocal lookup and no result check. */
    @Benchmark
    public int downcallErrno() throws Throwable {
        return (int) WITH_ERRNO.invokeExact(capture, fd, REQUEST, CAP);
    }

    /** The downcall without errno capture. */
    @Benchmark
    public int downcallNoErrno() throws Throwable {
        return (int) NO_ERRNO.invokeExact(fd, REQUEST, CAP);
    }

    /** The downcall without errno capture or thread-state transition (critical). */
    @Benchmark
    public int downcallCritical() throws Throwable {
        return (int) CRITICAL.invokeExact(fd, REQUEST, CAP);
    }

    /** No syscall: abs(-1) linked with errno capture, as kvm-bindings links its calls. */
    @Benchmark
    public int nullCallErrno() throws Throwable {
        return (int) ABS_ERRNO.invokeExact(capture, minusOne);
    }

    /** No syscall: abs(-1), plain downcall. */
    @Benchmark
    public int nullCallNoErrno() throws Throwable {
        return (int) ABS_NO_ERRNO.invokeExact(minusOne);
    }

    /** No syscall: abs(-1), critical downcall. */
    @Benchmark
    public int nullCallCritical() throws Throwable {
        return (int) ABS_CRITICAL.invokeExact(minusOne);
    }
}
