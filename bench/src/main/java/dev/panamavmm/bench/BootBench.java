package dev.panamavmm.bench;

import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmExitReason;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.memory.Backing;
import java.io.OutputStream;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
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
 * Boot to ready, in process: from {@link Vm#create} to the {@link VmListener#ready()} callback
 * (the embedded test guest writes 1 to port 0x504 once it has filled its memory), one fresh VM
 * per invocation, 1 vCPU, {@code memMiB} of RAM in a memfd. {@code guestMem} is the test
 * guest's {@code testguest.mem=} ("default": no token, i.e. 64 MiB capped to the usable RAM).
 * {@link Kvm} is opened once per trial and the ELF read once, as the C peer
 * ({@code outloop_vmm -u ready}) does; closing the VM is not timed. bench/run-boot-bench runs
 * both (docs/benchmarks.md).
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.SingleShotTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3)
@Measurement(iterations = 8)
@Fork(
        value = 2,
        jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow"})
public class BootBench {

    @Param({"16M", "default"})
    public String guestMem;

    @Param("64")
    public int memMiB;

    private Kvm kvm;
    private byte[] image;
    private Vm vm;

    @Setup(Level.Trial)
    public void openKvm() {
        image = TestGuest.elf();
        kvm = Kvm.open();
    }

    @Benchmark
    public Vm bootToReady() throws InterruptedException, ExecutionException, TimeoutException {
        var ready = new CompletableFuture<Void>();
        String cmdline = "console=ttyS0" + ("default".equals(guestMem) ? "" : " testguest.mem=" + guestMem);
        var config = new MachineConfig((long) memMiB << 20, 1, new Backing.Memfd(), "testguest", image, null, cmdline);
        vm = VmBuilder.boot(kvm, config, OutputStream.nullOutputStream(), new VmListener() {
            @Override
            public void ready() {
                ready.complete(null);
            }

            @Override
            public void ended(VmExitReason reason) {
                ready.completeExceptionally(new IllegalStateException("VM ended before ready: " + reason.describe()));
            }
        });
        vm.start();
        ready.get(60, TimeUnit.SECONDS);
        return vm;
    }

    @TearDown(Level.Invocation)
    public void tearDown() {
        if (vm != null) vm.close();
        vm = null;
    }

    @TearDown(Level.Trial)
    public void closeKvm() {
        kvm.close();
    }
}
