package dev.panamavmm.vmm;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.VcpuFd;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.kvm.bindings.KvmConstants;
import dev.panamavmm.vmm.state.KvmState;
import dev.panamavmm.vmm.vcpu.Cpuid;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.Collections;
import java.util.Map;
import java.util.WeakHashMap;

/**
 * What this host's KVM offers, probed once per {@link Kvm} handle and shared by every VM of the
 * process: the XSAVE buffer size, the supported CPUID (cached by {@code Kvm} itself) and the MSRs
 * a save captures. The MSRs are probed in batches ({@link KvmState#readableMsrs}) on a vCPU that is
 * not running: a save's own paused vCPU, or before a migration's pause a scratch VM's (or a rehearsal's).
 */
public final class HostFacts {
    private static final Map<Kvm, HostFacts> BY_KVM = Collections.synchronizedMap(new WeakHashMap<>());

    private final Kvm kvm;
    private volatile int xsaveSize;
    private volatile int[] savedMsrs;
    private volatile int[] msrIndexList;

    private HostFacts(Kvm kvm) {
        this.kvm = kvm;
    }

    public static HostFacts of(Kvm kvm) {
        return BY_KVM.computeIfAbsent(kvm, HostFacts::new);
    }

    /** KVM_CAP_XSAVE2's answer: the XSAVE buffer size, at least 4096 (asked of a VM fd, where the capability lives). */
    public int xsaveSize(VmFd vm) {
        int size = xsaveSize;
        if (size == 0) xsaveSize = size = Math.max(vm.checkExtension(KvmConstants.KVM_CAP_XSAVE2), 4096);
        return size;
    }

    /** The CPUID entries KVM supports, copied into {@code arena}. */
    public MemorySegment supportedCpuid(Arena arena) {
        return kvm.supportedCpuid(arena);
    }

    /** KVM_GET_MSR_INDEX_LIST, sorted: the MSRs a restore can write here (one list per host). */
    public int[] msrIndexList() {
        int[] msrs = msrIndexList;
        if (msrs == null) {
            msrs = kvm.msrIndexList();
            Arrays.sort(msrs);
            msrIndexList = msrs;
        }
        return msrs;
    }

    /**
     * The MSRs a save captures: those of KVM's list that {@code stopped}, a vCPU that is not running
     * (a paused VM's), can read. The same for every VM (same CPUID); probed once per process.
     */
    public int[] msrsToSave(VcpuFd stopped) {
        int[] msrs = savedMsrs;
        if (msrs == null) savedMsrs = msrs = KvmState.readableMsrs(stopped, kvm.msrIndexList());
        return msrs;
    }

    /**
     * {@link #msrsToSave} while the VM runs (a migration, before its pause), probed on a vCPU of a
     * scratch VM like the VMs' (in-kernel LAPIC, the host's CPUID) that never runs: on a running
     * vCPU each ioctl waits for it to leave KVM_RUN, which took 4-90 ms before a migration's first
     * page. Once per process: building and probing the scratch VM takes 1-3 ms here.
     */
    public int[] msrsToSaveWhileRunning() {
        if (savedMsrs != null) return savedMsrs;
        try (var scratch = scratchVcpu()) {
            return msrsToSave(scratch.vcpu());
        }
    }

    /** A vCPU of a VM of its own, like the VMs' and never run: its state can be read while theirs cannot. */
    public ScratchVcpu scratchVcpu() {
        var arena = Arena.ofShared();
        VmFd vm = null;
        VcpuFd vcpu = null;
        try {
            vm = kvm.createVm(arena);
            vm.createIrqchip();
            vcpu = vm.createVcpu(0);
            vcpu.setCpuid2(Cpuid.forVcpu(kvm.supportedCpuid(arena), 0, 1, arena));
            return new ScratchVcpu(arena, vm, vcpu);
        } catch (RuntimeException e) {
            new ScratchVcpu(arena, vm, vcpu).close();
            throw e;
        }
    }

    /**
     * A scratch VM and its vCPU. Tearing a VM down takes the kernel 13-18 ms here (1-3 ms to build
     * one), so {@link #close} leaves it to a thread of its own: whoever closes one should do it
     * where that CPU time hurts least (a migration's source: after the guest's pause).
     */
    public record ScratchVcpu(Arena arena, VmFd vm, VcpuFd vcpu) implements AutoCloseable {
        @Override
        public void close() {
            Thread.ofPlatform().daemon().name("scratch-vm-close").start(() -> {
                if (vcpu != null) vcpu.close();
                if (vm != null) vm.close();
                arena.close();
            });
        }
    }
}
