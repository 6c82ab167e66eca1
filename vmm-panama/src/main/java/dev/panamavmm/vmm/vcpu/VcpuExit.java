package dev.panamavmm.vmm.vcpu;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmRun;
import java.lang.foreign.MemorySegment;

/**
 * Why {@code KVM_RUN} returned, decoded from the vCPU's {@code kvm_run} page. {@link Io} and
 * {@link Mmio} point into the page: their data is read or written in place before the next run.
 */
public sealed interface VcpuExit {

    /** Port I/O: {@code count} accesses of {@code size} bytes at {@code port}, data at {@code dataOffset} in the page. */
    record Io(int port, int size, boolean write, int count, long dataOffset) implements VcpuExit {}

    /** An access to guest-physical space that is not RAM: up to 8 bytes at {@code address}. */
    record Mmio(long address, int length, boolean write) implements VcpuExit {}

    /** The guest executed HLT (only without an in-kernel LAPIC; with one, KVM waits itself). */
    record Hlt() implements VcpuExit {}

    /** Triple fault or a shutdown the guest caused. */
    record Shutdown() implements VcpuExit {}

    /** The guest asked for shutdown, reset or reported a crash (PSCI/ACPI-style system event). */
    record SystemEvent(int type) implements VcpuExit {}

    /** KVM could not go on: emulation failure and friends; {@code data} holds the kernel's details. */
    record InternalError(int suberror, long[] data) implements VcpuExit {}

    /** Hardware refused to enter the guest. */
    record FailEntry(long hardwareReason, int cpu) implements VcpuExit {}

    /** KVM_RUN returned because the vCPU was kicked ({@code EINTR}) or immediate_exit was set. */
    record Interrupted() implements VcpuExit {}

    /** An exit reason the VMM does not handle. */
    record Unknown(int reason) implements VcpuExit {}

    /** Decodes the exit that {@code KVM_RUN} just reported in {@code run}. */
    static VcpuExit decode(MemorySegment run) {
        int reason = KvmRun.exitReason(run);
        return switch (reason) {
            case KvmConstants.KVM_EXIT_IO ->
                new Io(
                        KvmRun.ioPort(run),
                        KvmRun.ioSize(run),
                        KvmRun.ioDirection(run) == KvmConstants.KVM_EXIT_IO_OUT,
                        KvmRun.ioCount(run),
                        KvmRun.ioDataOffset(run));
            case KvmConstants.KVM_EXIT_MMIO ->
                new Mmio(KvmRun.mmioPhysAddr(run), KvmRun.mmioLen(run), KvmRun.mmioIsWrite(run) != 0);
            case KvmConstants.KVM_EXIT_HLT -> new Hlt();
            case KvmConstants.KVM_EXIT_SHUTDOWN -> new Shutdown();
            case KvmConstants.KVM_EXIT_SYSTEM_EVENT -> new SystemEvent(KvmRun.systemEventType(run));
            case KvmConstants.KVM_EXIT_INTERNAL_ERROR -> {
                int n = Math.min(KvmRun.internalNdata(run), (int) KvmRun.INTERNAL_DATA_COUNT);
                var data = new long[Math.max(n, 0)];
                for (int i = 0; i < data.length; i++) data[i] = KvmRun.internalData(run, i);
                yield new InternalError(KvmRun.internalSuberror(run), data);
            }
            case KvmConstants.KVM_EXIT_FAIL_ENTRY ->
                new FailEntry(KvmRun.failEntryHardwareEntryFailureReason(run), KvmRun.failEntryCpu(run));
            case KvmConstants.KVM_EXIT_INTR -> new Interrupted();
            default -> new Unknown(reason);
        };
    }

    /** The bytes of an emulation failure's instruction, when KVM reported them (empty otherwise). */
    static byte[] emulationFailureBytes(MemorySegment run) {
        if (KvmRun.internalSuberror(run) != KvmConstants.KVM_INTERNAL_ERROR_EMULATION
                || (KvmRun.emulationFailureFlags(run)
                                & KvmConstants.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                        == 0) {
            return new byte[0];
        }
        int n = Math.min(KvmRun.emulationFailureInsnSize(run), (int) KvmRun.EMULATION_FAILURE_INSN_BYTES_COUNT);
        return run.asSlice(KvmRun.EMULATION_FAILURE_INSN_BYTES, n).toArray(JAVA_BYTE);
    }
}
