package dev.panamavmm.vmm.state;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.KvmClockData;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.kvm.bindings.KvmDebugregs;
import dev.panamavmm.kvm.bindings.KvmIrqchip;
import dev.panamavmm.kvm.bindings.KvmLapicState;
import dev.panamavmm.kvm.bindings.KvmMpState;
import dev.panamavmm.kvm.bindings.KvmMsrEntry;
import dev.panamavmm.kvm.bindings.KvmMsrs;
import dev.panamavmm.kvm.bindings.KvmPitState2;
import dev.panamavmm.kvm.bindings.KvmRegs;
import dev.panamavmm.kvm.bindings.KvmSregs;
import dev.panamavmm.kvm.bindings.KvmVcpuEvents;
import dev.panamavmm.kvm.bindings.KvmXcrs;
import dev.panamavmm.kvm.bindings.KvmXsave;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Reads and writes {@link VcpuState} and {@link VmState} with the KVM ioctls, in the order the
 * kernel needs on restore (sregs before MSRs, for EFER; the LAPIC before the TSC-deadline MSR;
 * events and MP state last).
 */
public final class KvmState {
    private KvmState() {}

    /** IA32_TSC_DEADLINE: armed relative to the LAPIC timer, so it is written after the LAPIC. */
    static final int MSR_TSC_DEADLINE = 0x6e0;

    /** The MSRs of {@code candidates} this vCPU can read, in order (KVM stops at the first it cannot). */
    public static int[] readableMsrs(VcpuFd vcpu, int[] candidates) {
        var readable = new int[candidates.length];
        int n = 0;
        try (var arena = Arena.ofConfined()) {
            var msrs = msrBuffer(arena, MAX_MSRS_PER_IOCTL);
            // KVM reads entries in order and stops at the first it cannot read: the ones before it are
            // readable, that one is not, and the next ioctl starts after it: one ioctl per unreadable
            // MSR (and per batch) instead of one per MSR.
            int from = 0;
            while (from < candidates.length) {
                int count = Math.min(MAX_MSRS_PER_IOCTL, candidates.length - from);
                KvmMsrs.nmsrs(msrs, count);
                for (int i = 0; i < count; i++) KvmMsrEntry.index(KvmMsrs.entries(msrs, i), candidates[from + i]);
                int read = vcpu.ioctl(Ioctls.KVM_GET_MSRS, msrs);
                System.arraycopy(candidates, from, readable, n, read);
                n += read;
                from += read < count ? read + 1 : count;
            }
        }
        return Arrays.copyOf(readable, n);
    }

    /** KVM_GET_MSRS refuses {@code nmsrs} of MAX_IO_MSRS (256) or more with E2BIG. */
    static final int MAX_MSRS_PER_IOCTL = 255;

    private static MemorySegment msrBuffer(Arena arena, int count) {
        return arena.allocate(KvmMsrs.ENTRIES + (long) count * KvmMsrEntry.BYTE_SIZE, KvmMsrs.BYTE_ALIGNMENT);
    }

    private static byte[] get(VcpuFd vcpu, long request, long size, Arena arena) {
        var seg = arena.allocate(size, 8);
        vcpu.ioctl(request, seg);
        return seg.toArray(JAVA_BYTE);
    }

    /** Captures one paused vCPU. {@code xsaveSize} is KVM_CAP_XSAVE2's answer (at least 4096). */
    public static VcpuState capture(VcpuFd vcpu, int[] msrIndices, int xsaveSize) {
        try (var arena = Arena.ofConfined()) {
            byte[] regs = get(vcpu, Ioctls.KVM_GET_REGS, KvmRegs.BYTE_SIZE, arena);
            byte[] sregs = get(vcpu, Ioctls.KVM_GET_SREGS, KvmSregs.BYTE_SIZE, arena);
            byte[] xsave = get(
                    vcpu,
                    xsaveSize > KvmXsave.BYTE_SIZE ? Ioctls.KVM_GET_XSAVE2 : Ioctls.KVM_GET_XSAVE,
                    Math.max(xsaveSize, KvmXsave.BYTE_SIZE),
                    arena);
            byte[] xcrs = get(vcpu, Ioctls.KVM_GET_XCRS, KvmXcrs.BYTE_SIZE, arena);
            byte[] lapic = get(vcpu, Ioctls.KVM_GET_LAPIC, KvmLapicState.BYTE_SIZE, arena);
            byte[] events = get(vcpu, Ioctls.KVM_GET_VCPU_EVENTS, KvmVcpuEvents.BYTE_SIZE, arena);
            byte[] mp = get(vcpu, Ioctls.KVM_GET_MP_STATE, KvmMpState.BYTE_SIZE, arena);
            byte[] debugregs = get(vcpu, Ioctls.KVM_GET_DEBUGREGS, KvmDebugregs.BYTE_SIZE, arena);

            var msrs = msrBuffer(arena, msrIndices.length);
            KvmMsrs.nmsrs(msrs, msrIndices.length);
            for (int i = 0; i < msrIndices.length; i++) KvmMsrEntry.index(KvmMsrs.entries(msrs, i), msrIndices[i]);
            int read = vcpu.ioctl(Ioctls.KVM_GET_MSRS, msrs);
            if (read != msrIndices.length) {
                throw new KvmException(
                        "KVM_GET_MSRS",
                        String.format(
                                "read %d of %d MSRs (stopped at 0x%x)",
                                read, msrIndices.length, msrIndices[Math.min(read, msrIndices.length - 1)]));
            }
            var values = new long[msrIndices.length];
            for (int i = 0; i < values.length; i++) values[i] = KvmMsrEntry.data(KvmMsrs.entries(msrs, i));
            int mpState = MemorySegment.ofArray(mp).get(ValueLayout.JAVA_INT_UNALIGNED, KvmMpState.MP_STATE);
            return new VcpuState(
                    vcpu.id(), regs, sregs, xsave, xcrs, lapic, msrIndices.clone(), values, events, mpState, debugregs);
        }
    }

    /** A struct image sized for this kernel: padded with zeros, or truncated, to {@code size}. */
    private static MemorySegment image(byte[] saved, long size, Arena arena) {
        var seg = arena.allocate(size, 8);
        MemorySegment.copy(MemorySegment.ofArray(saved), 0, seg, 0, Math.min(saved.length, size));
        return seg;
    }

    /**
     * Writes a captured state into a (freshly created, CPUID set) vCPU. An MSR this host's KVM does
     * not have ({@code hostMsrs}, sorted: KVM_GET_MSR_INDEX_LIST) or refuses with the saved value
     * is left out, as QEMU leaves out what its destination lacks: a state saved on another kind of
     * CPU (Intel's IA32_FEATURE_CONTROL, or its ARCH_CAPABILITIES bits, on an AMD host). Returns
     * those left out, for the caller to say so.
     */
    public static int[] restore(VcpuFd vcpu, VcpuState s, int xsaveSize, int[] hostMsrs) {
        var leftOut = new ArrayList<Integer>();
        for (int index : s.msrIndices()) if (Arrays.binarySearch(hostMsrs, index) < 0) leftOut.add(index);
        try (var arena = Arena.ofConfined()) {
            vcpu.ioctl(Ioctls.KVM_SET_SREGS, image(s.sregs(), KvmSregs.BYTE_SIZE, arena));
            vcpu.ioctl(Ioctls.KVM_SET_REGS, image(s.regs(), KvmRegs.BYTE_SIZE, arena));
            vcpu.ioctl(Ioctls.KVM_SET_XSAVE, image(s.xsave(), Math.max(xsaveSize, KvmXsave.BYTE_SIZE), arena));
            vcpu.ioctl(Ioctls.KVM_SET_XCRS, image(s.xcrs(), KvmXcrs.BYTE_SIZE, arena));
            setMsrs(vcpu, s, false, leftOut, arena);
            vcpu.ioctl(Ioctls.KVM_SET_LAPIC, image(s.lapic(), KvmLapicState.BYTE_SIZE, arena));
            setMsrs(vcpu, s, true, leftOut, arena);
            var mp = arena.allocate(KvmMpState.LAYOUT);
            KvmMpState.mpState(mp, s.mpState());
            vcpu.ioctl(Ioctls.KVM_SET_MP_STATE, mp);
            var events = image(s.events(), KvmVcpuEvents.BYTE_SIZE, arena);
            // Restore exactly what was pending: NMI, SIPI vector, interrupt shadow, SMM, payload.
            KvmVcpuEvents.flags(
                    events,
                    KvmVcpuEvents.flags(events)
                            | KvmConstants.KVM_VCPUEVENT_VALID_NMI_PENDING
                            | KvmConstants.KVM_VCPUEVENT_VALID_SIPI_VECTOR
                            | KvmConstants.KVM_VCPUEVENT_VALID_SHADOW);
            vcpu.ioctl(Ioctls.KVM_SET_VCPU_EVENTS, events);
            vcpu.ioctl(Ioctls.KVM_SET_DEBUGREGS, image(s.debugregs(), KvmDebugregs.BYTE_SIZE, arena));
        }
        return leftOut.stream().mapToInt(Integer::intValue).toArray();
    }

    /**
     * The MSRs other than TSC_DEADLINE ({@code deadline} false), or only it (true), except those in
     * {@code leftOut}. KVM writes entries in order and stops at the first it refuses: that one joins
     * {@code leftOut} and the rest are written.
     */
    private static void setMsrs(VcpuFd vcpu, VcpuState s, boolean deadline, List<Integer> leftOut, Arena arena) {
        int[] indices = s.msrIndices();
        int n = 0;
        for (int index : indices) if ((index == MSR_TSC_DEADLINE) == deadline) n++;
        if (n == 0) return;
        var msrs = msrBuffer(arena, n);
        while (true) {
            int j = 0;
            for (int i = 0; i < indices.length; i++) {
                if ((indices[i] == MSR_TSC_DEADLINE) != deadline) continue;
                if (leftOut.contains(indices[i])) continue;
                var e = KvmMsrs.entries(msrs, j++);
                KvmMsrEntry.index(e, indices[i]);
                KvmMsrEntry.data(e, s.msrValues()[i]);
            }
            if (j == 0) return;
            KvmMsrs.nmsrs(msrs, j);
            int written = vcpu.ioctl(Ioctls.KVM_SET_MSRS, msrs);
            if (written == j) return;
            if (written < 0 || written > j) throw new KvmException("KVM_SET_MSRS", "wrote " + written + " of " + j);
            // Again without the refused one: those before it are written twice, which is harmless.
            leftOut.add(KvmMsrEntry.index(KvmMsrs.entries(msrs, written)));
        }
    }

    /** Captures the in-kernel irqchip, PIT and clock of a VM whose vCPUs are all paused. */
    public static VmState capture(VmFd vm) {
        try (var arena = Arena.ofConfined()) {
            return new VmState(
                    irqchip(vm, KvmConstants.KVM_IRQCHIP_PIC_MASTER, arena),
                    irqchip(vm, KvmConstants.KVM_IRQCHIP_PIC_SLAVE, arena),
                    irqchip(vm, KvmConstants.KVM_IRQCHIP_IOAPIC, arena),
                    vmGet(vm, Ioctls.KVM_GET_PIT2, KvmPitState2.BYTE_SIZE, arena),
                    vmGet(vm, Ioctls.KVM_GET_CLOCK, KvmClockData.BYTE_SIZE, arena));
        }
    }

    private static byte[] irqchip(VmFd vm, int chip, Arena arena) {
        var seg = arena.allocate(KvmIrqchip.LAYOUT);
        KvmIrqchip.chipId(seg, chip);
        vm.ioctl(Ioctls.KVM_GET_IRQCHIP, seg);
        return seg.toArray(JAVA_BYTE);
    }

    private static byte[] vmGet(VmFd vm, long request, long size, Arena arena) {
        var seg = arena.allocate(size, 8);
        vm.ioctl(request, seg);
        return seg.toArray(JAVA_BYTE);
    }

    /**
     * Writes VM state into a new VM (irqchip and PIT created). The clock is set so guest time goes
     * on from the saved value: without KVM_CLOCK_REALTIME the gap while saved does not count.
     */
    public static void restore(VmFd vm, VmState s) {
        try (var arena = Arena.ofConfined()) {
            for (var chip : new byte[][] {s.picMaster(), s.picSlave(), s.ioapic()}) {
                vm.ioctl(Ioctls.KVM_SET_IRQCHIP, image(chip, KvmIrqchip.BYTE_SIZE, arena));
            }
            vm.ioctl(Ioctls.KVM_SET_PIT2, image(s.pit(), KvmPitState2.BYTE_SIZE, arena));
            var clock = image(s.clock(), KvmClockData.BYTE_SIZE, arena);
            KvmClockData.flags(clock, 0); // only the clock value; KVM rejects flags it does not take
            vm.ioctl(Ioctls.KVM_SET_CLOCK, clock);
        }
    }
}
