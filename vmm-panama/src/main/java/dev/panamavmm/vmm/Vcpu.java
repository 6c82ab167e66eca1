package dev.panamavmm.vmm;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import dev.panamavmm.kvm.Errno;
import dev.panamavmm.kvm.HostFlavour;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmRegs;
import dev.panamavmm.kvm.bindings.KvmRun;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.vmm.vcpu.VcpuExit;
import dev.panamavmm.vmm.vcpu.VcpuKick;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;
import java.util.HexFormat;

/**
 * One vCPU's thread: enter the guest, handle the exit, repeat, while the VM's request is RUN.
 *
 * <p>Kick protocol (no lost wake-ups): the VM writes its request, then sets {@code immediate_exit}
 * and signals the thread; this loop clears {@code immediate_exit} <em>before</em> reading the
 * request. Either the loop sees the new request, or KVM sees {@code immediate_exit} and returns
 * at once. Before parking, one more KVM_RUN with {@code immediate_exit} set completes an I/O
 * instruction whose data the VMM just supplied, so a paused vCPU's state is consistent.
 */
final class Vcpu implements Runnable {
    private final ExitContext exits;
    private final VcpuFd fd;
    private final MemorySegment run;
    private final VcpuControl control;
    /** The vCPU thread's kernel thread id while it runs, 0 before and after (a kick then only sets immediate_exit). */
    private volatile int tid;
    /** The last exit was I/O or MMIO, which KVM completes on the next entry (vCPU thread only). */
    private boolean ioToComplete;
    /** Whether this vCPU entered the guest yet (vCPU thread only). */
    private boolean entered;

    Vcpu(ExitContext exits, VcpuFd fd, VcpuControl control) {
        this.exits = exits;
        this.fd = fd;
        this.run = fd.runPage();
        this.control = control;
    }

    int index() {
        return fd.id();
    }

    private volatile Thread thread;

    boolean isCurrentThread() {
        return Thread.currentThread() == thread;
    }

    /** Gets this vCPU out of KVM_RUN (no-op before its thread has started). */
    void kick() {
        int t = tid;
        if (t != 0) VcpuKick.kick(run, t);
        else KvmRun.immediateExit(run, 1);
    }

    @Override
    public void run() {
        thread = Thread.currentThread();
        tid = LibC.gettid();
        try {
            loop();
        } catch (Throwable t) {
            exits.end().accept(new VmExitReason.Failed("vCPU " + index() + " failed: " + t));
        } finally {
            tid = 0; // a thread id can be reused once this thread is gone
            control.exited();
        }
    }

    private void loop() {
        while (true) {
            KvmRun.immediateExit(run, 0);
            VarHandle.fullFence();
            switch (control.request()) {
                case STOP -> {
                    return;
                }
                case PAUSE -> {
                    if (ioToComplete) completePendingIo();
                    if (control.park() == VcpuControl.Request.STOP) return;
                    continue;
                }
                case RUN -> {}
            }
            if (!entered) {
                entered = true;
                exits.firstEntry().entering(index(), System.nanoTime());
            }
            int r = fd.run();
            ioToComplete = false;
            if (r < 0) {
                if (r == -LibcConstants.EINTR || r == -LibcConstants.EAGAIN) {
                    exits.metrics().exit(index(), INTERRUPTED); // a kick (KVM_RUN returns EINTR, no exit reason)
                    continue;
                }
                exits.end()
                        .accept(new VmExitReason.Failed(
                                "KVM_RUN failed on vCPU " + index() + ": " + Errno.describe(-r)));
                return;
            }
            var exit = VcpuExit.decode(run);
            exits.metrics().exit(index(), exit);
            // KVM finishes an I/O or MMIO exit (string I/O's remaining repetitions, a read's value
            // into the register) only on the next KVM_RUN: a pause after one must re-enter first.
            ioToComplete = exit instanceof VcpuExit.Io || exit instanceof VcpuExit.Mmio;
            if (!handle(exit)) return;
        }
    }

    private void completePendingIo() {
        KvmRun.immediateExit(run, 1);
        VarHandle.fullFence();
        int r = fd.run();
        ioToComplete = false;
        if (r < 0 && r != -LibcConstants.EINTR && r != -LibcConstants.EAGAIN) {
            exits.end()
                    .accept(new VmExitReason.Failed("KVM_RUN failed on vCPU " + index() + ": " + Errno.describe(-r)));
        }
    }

    /** Handles one exit; false when the VM has ended. */
    private static final VcpuExit INTERRUPTED = new VcpuExit.Interrupted();

    private boolean handle(VcpuExit exit) {
        switch (exit) {
            case VcpuExit.Io io -> {
                var bus = exits.io();
                for (int i = 0; i < io.count(); i++) {
                    long at = io.dataOffset() + (long) i * io.size();
                    if (io.write()) bus.write(io.port(), io.size(), readData(at, io.size()));
                    else writeData(at, io.size(), bus.read(io.port(), io.size()));
                }
            }
            case VcpuExit.Mmio mmio -> {
                int len = Math.min(mmio.length(), 8);
                if (mmio.write()) {
                    long value = 0;
                    for (int i = len - 1; i >= 0; i--)
                        value = (value << 8) | (run.get(JAVA_BYTE, KvmRun.MMIO_DATA + i) & 0xff);
                    exits.mmio().write(mmio.address(), len, value);
                } else {
                    long value = exits.mmio().read(mmio.address(), len);
                    for (int i = 0; i < len; i++) run.set(JAVA_BYTE, KvmRun.MMIO_DATA + i, (byte) (value >>> (8 * i)));
                }
            }
            case VcpuExit.Interrupted i -> {}
            case VcpuExit.Hlt h ->
                exits.end().accept(new VmExitReason.Shutdown("vCPU " + index() + " halted with no way to wake"));
            case VcpuExit.Shutdown s ->
                exits.end().accept(new VmExitReason.Shutdown("triple fault on vCPU " + index() + " at " + rip()));
            case VcpuExit.SystemEvent e ->
                exits.end()
                        .accept(
                                switch (e.type()) {
                                    case KvmConstants.KVM_SYSTEM_EVENT_RESET ->
                                        new VmExitReason.Reset("system reset event");
                                    case KvmConstants.KVM_SYSTEM_EVENT_CRASH ->
                                        new VmExitReason.Failed("guest crashed (system event) at " + rip());
                                    default -> new VmExitReason.Shutdown("system event " + e.type());
                                });
            case VcpuExit.InternalError e -> exits.end().accept(new VmExitReason.Failed(internalError(e)));
            case VcpuExit.FailEntry f ->
                exits.end()
                        .accept(new VmExitReason.Failed(String.format(
                                "KVM could not enter the guest on vCPU %d: hardware reason 0x%x",
                                index(), f.hardwareReason())));
            case VcpuExit.Unknown u ->
                exits.end()
                        .accept(new VmExitReason.Failed(
                                "unhandled KVM exit reason " + u.reason() + " on vCPU " + index() + " at " + rip()));
        }
        return control.request() != VcpuControl.Request.STOP;
    }

    private String internalError(VcpuExit.InternalError e) {
        var sb =
                new StringBuilder("KVM internal error on vCPU ").append(index()).append(": ");
        sb.append(
                e.suberror() == KvmConstants.KVM_INTERNAL_ERROR_EMULATION
                        ? "emulation failure"
                        : e.suberror() == KvmConstants.KVM_INTERNAL_ERROR_SIMUL_EX
                                ? "exception while delivering an exception"
                                : e.suberror() == KvmConstants.KVM_INTERNAL_ERROR_DELIVERY_EV
                                        ? "event delivery failed"
                                        : "suberror");
        sb.append(" (suberror ").append(e.suberror()).append(") at ").append(rip());
        byte[] insn = VcpuExit.emulationFailureBytes(run);
        if (insn.length > 0)
            sb.append(", instruction bytes ").append(HexFormat.ofDelimiter(" ").formatHex(insn));
        // On PVM the guest's CPL0 code runs in KVM's emulator, which lacks some instructions (cmpxchg16b):
        // an unmodified kernel ends here, and without a word on why this reads as a VMM crash.
        if (e.suberror() == KvmConstants.KVM_INTERNAL_ERROR_EMULATION && Kvm.hostFlavour() == HostFlavour.PVM) {
            sb.append(" (PVM host: unmodified kernels stop here, see docs/linux-guests.md)");
        }
        return sb.toString();
    }

    private String rip() {
        try (var arena = Arena.ofConfined()) {
            var regs = arena.allocate(KvmRegs.LAYOUT);
            fd.getRegs(regs);
            return String.format("RIP 0x%x", KvmRegs.rip(regs));
        } catch (RuntimeException e) {
            return "RIP unknown (" + e.getMessage() + ")";
        }
    }

    private int readData(long at, int size) {
        return switch (size) {
            case 1 -> run.get(JAVA_BYTE, at) & 0xff;
            case 2 -> run.get(JAVA_SHORT, at) & 0xffff;
            default -> run.get(JAVA_INT, at);
        };
    }

    private void writeData(long at, int size, int value) {
        switch (size) {
            case 1 -> run.set(JAVA_BYTE, at, (byte) value);
            case 2 -> run.set(JAVA_SHORT, at, (short) value);
            default -> run.set(JAVA_INT, at, value);
        }
    }
}
