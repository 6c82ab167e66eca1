package dev.panamavmm.vmm.vcpu;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import dev.panamavmm.kvm.bindings.KvmRun;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.bindings.Sigaction;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;

/**
 * Gets a vCPU thread out of {@code KVM_RUN}: set {@code immediate_exit} in its {@code kvm_run}
 * page (so a vCPU about to enter returns at once), then send its thread a real-time signal so a
 * vCPU already inside returns with {@code EINTR}.
 *
 * <p>The signal's handler is native code that does nothing: one {@code ret} instruction on a page
 * of its own. An FFM upcall must never run in a signal handler (it could interrupt the JVM
 * anywhere), and the handler is needed at all only because an ignored signal would not
 * interrupt the ioctl. {@code SA_RESTART} is not set, so the ioctl is not resumed.
 */
public final class VcpuKick {
    private VcpuKick() {}

    /** SIGRTMIN+4: clear of glibc's own real-time signals and of those the JVM uses. */
    private static final class Signal {
        static final int NUMBER = install();
    }

    /** The signal used to kick vCPUs; installs its handler on first use. */
    public static int signal() {
        return Signal.NUMBER;
    }

    private static int install() {
        int signal = LibC.sigrtmin() + 4;
        // The handler page lives as long as the process: signals may arrive at any time.
        var page = LibC.mapInto(
                Arena.global(),
                4096,
                LibcConstants.PROT_READ | LibcConstants.PROT_WRITE,
                LibcConstants.MAP_PRIVATE | LibcConstants.MAP_ANONYMOUS,
                -1,
                0);
        page.set(JAVA_BYTE, 0, (byte) 0xC3); // ret
        LibC.mprotect(page, LibcConstants.PROT_READ | LibcConstants.PROT_EXEC);
        try (var arena = Arena.ofConfined()) {
            var action = arena.allocate(Sigaction.LAYOUT); // zeroed: empty mask, no SA_RESTART
            Sigaction.saHandler(action, page);
            Sigaction.saFlags(action, 0);
            LibC.sigaction(signal, action, MemorySegment.NULL);
        }
        return signal;
    }

    /** Sets {@code immediate_exit} and signals the thread (kernel thread id {@code tid}) running the vCPU. */
    public static void kick(MemorySegment runPage, int tid) {
        KvmRun.immediateExit(runPage, 1);
        VarHandle.fullFence(); // the store must be visible before the signal lands
        LibC.tgkill(tid, signal());
    }

    /** Clears {@code immediate_exit} before the vCPU is run again. */
    public static void clear(MemorySegment runPage) {
        KvmRun.immediateExit(runPage, 0);
    }
}
