package dev.panamavmm.vmm;

import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.vmm.memory.GuestMemory;
import dev.panamavmm.vmm.state.VcpuState;
import dev.panamavmm.vmm.state.VmState;
import java.nio.file.Path;
import java.util.List;

/**
 * A snapshot read, checked and decoded ({@link VmSnapshots#load}), ready to become one VM or many
 * ({@link VmBuilder#fromSnapshot}): everything that does not depend on the new VM.
 * {@code descriptors} are the fds passed with a live update's snapshot; {@code diskDescriptors}
 * gives, per disk of the config, the index of its passed descriptor, or -1 when it is opened by path.
 * {@code chain} is {@code snapshot} and, when it is a diff layer, its bases, newest first.
 * {@code layers} are a chained template's layer files, root first ({@link Templates#open}): a
 * clone maps them copy-on-write over the memory file; empty for anything else.
 */
public record LoadedSnapshot(
        Path dir,
        SnapshotReader snapshot,
        MachineConfig config,
        int xsaveSize,
        List<VcpuState> vcpus,
        VmState vm,
        DeviceTable.States devices,
        int[] descriptors,
        int[] diskDescriptors,
        List<SnapshotReader> chain,
        List<GuestMemory.Layer> layers) {

    public LoadedSnapshot(
            Path dir,
            SnapshotReader snapshot,
            MachineConfig config,
            int xsaveSize,
            List<VcpuState> vcpus,
            VmState vm,
            DeviceTable.States devices,
            int[] descriptors,
            int[] diskDescriptors,
            List<SnapshotReader> chain) {
        this(dir, snapshot, config, xsaveSize, vcpus, vm, devices, descriptors, diskDescriptors, chain, List.of());
    }

    public int cpus() {
        return vcpus.size();
    }

    /** This snapshot with a chained template's layers. */
    LoadedSnapshot withLayers(List<GuestMemory.Layer> layers) {
        return new LoadedSnapshot(
                dir,
                snapshot,
                config,
                xsaveSize,
                vcpus,
                vm,
                devices,
                descriptors,
                diskDescriptors,
                chain,
                List.copyOf(layers));
    }

    /** The same snapshot restored as {@code other} (a clone's own network devices or vsock socket); a chained template's layers kept. */
    public LoadedSnapshot withConfig(MachineConfig other) {
        return new LoadedSnapshot(
                dir, snapshot, other, xsaveSize, vcpus, vm, devices, descriptors, diskDescriptors, chain, layers);
    }
}
