package dev.panamavmm.vmm;

import dev.panamavmm.devices.I8042;
import dev.panamavmm.devices.I8042Codec;
import dev.panamavmm.devices.PortIoDevice;
import dev.panamavmm.devices.Serial8250;
import dev.panamavmm.devices.Serial8250Codec;
import dev.panamavmm.devices.VmmPort;
import dev.panamavmm.devices.VmmPortCodec;
import dev.panamavmm.devices.virtio.VirtioMmio;
import dev.panamavmm.devices.virtio.VirtioMmioCodec;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.migration.state.StateCodec;
import java.io.OutputStream;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;
import java.util.function.Function;

/**
 * The VM's devices, one row each: the snapshot section its state goes in, its port range, its
 * state codec and fresh state, and how it is built from a state. Building a VM, saving, restoring,
 * cloning and live update iterate over {@link #ROWS} (the fixed port devices every VM has) and
 * {@link #virtio} (the virtio-mmio devices its {@link MachineConfig} asks for: each disk in order,
 * then the entropy device). Adding a port device is one row here plus its model and codec in
 * {@code devices/}; a virtio device type is one more case of {@link VirtioSlot} and
 * {@link VirtioHost}.
 */
public final class DeviceTable {
    private DeviceTable() {}

    /** What a device may use of the VM it is built into. */
    record Context(OutputStream console, VmFd vmFd, Consumer<VmExitReason> end, VmListener listener) {}

    /**
     * One device type of the table. Public so that {@link Vm#device} can be asked for one; how a row
     * builds its device ({@code Builder}, {@code Context}) stays inside this package, hence "exports".
     */
    @SuppressWarnings("exports")
    public record Row<S, D extends PortIoDevice>(
            String section,
            int port,
            int ports,
            StateCodec<S> codec,
            S fresh,
            Builder<S, D> builder,
            Function<D, S> state) {
        /** Builds the device model in state {@code state}. */
        interface Builder<S, D> {
            D build(S state, Context vm);
        }

        D build(Object state, Context vm) {
            return builder.build(codecType(state), vm);
        }

        @SuppressWarnings("unchecked")
        private S codecType(Object state) {
            return (S) state;
        }

        @SuppressWarnings("unchecked")
        byte[] encode(PortIoDevice device) {
            return codec.encode(state.apply((D) device));
        }

        @SuppressWarnings("unchecked")
        Object stateOf(PortIoDevice device) {
            return state.apply((D) device);
        }
    }

    /** COM1: the console. */
    public static final Row<Serial8250.State, Serial8250> SERIAL = new Row<>(
            "device/serial",
            Serial8250.COM1_BASE,
            Serial8250.PORT_COUNT,
            Serial8250Codec.INSTANCE,
            Serial8250.State.RESET,
            (state, vm) -> new Serial8250(state, level -> vm.vmFd().irqLine(Serial8250.COM1_IRQ, level), vm.console()),
            Serial8250::state);

    /** The PS/2 controller, for its reset line (how Linux reboots). */
    public static final Row<I8042.State, I8042> I8042_CONTROLLER = new Row<>(
            "device/i8042",
            I8042.BASE,
            I8042.PORT_COUNT,
            I8042Codec.INSTANCE,
            I8042.State.RESET,
            (state, vm) -> new I8042(state, () -> vm.end().accept(new VmExitReason.Reset("i8042 reset"))),
            I8042::state);

    /** The VMM port: exit codes, the guest's ready point, the generation id. */
    public static final Row<VmmPort.State, VmmPort> VMM_PORT = new Row<>(
            "device/vmm-port",
            VmmPort.DEFAULT_BASE,
            VmmPort.PORT_COUNT,
            VmmPortCodec.INSTANCE,
            VmmPort.State.INITIAL,
            (state, vm) -> new VmmPort(state, new VmmPort.Listener() {
                @Override
                public void exitRequested(int code) {
                    vm.end().accept(new VmExitReason.GuestExit(code));
                }

                @Override
                public void guestEvent(int event) {
                    if (event == VmmPort.EVENT_READY) vm.listener().ready();
                    else vm.listener().guestEvent(event);
                }
            }),
            VmmPort::state);

    /** Every device of a VM, in the order they are built and saved. */
    public static final List<Row<?, ?>> ROWS = List.of(SERIAL, I8042_CONTROLLER, VMM_PORT);

    /** The section names of every device, as a snapshot's metadata lists them. */
    static List<String> sections() {
        return ROWS.stream().map(Row::section).toList();
    }

    /** The section names of every device of a machine: the port devices, then its virtio devices. */
    static List<String> sections(MachineConfig config) {
        var all = new ArrayList<>(sections());
        for (var slot : virtio(config)) all.add(slot.section());
        return all;
    }

    /** Where virtio-mmio devices start: the bottom of the 32-bit hole (3 GiB). */
    public static final long VIRTIO_MMIO_BASE = 0xC000_0000L;
    /** The GSI of the first virtio device; device i has {@code VIRTIO_FIRST_GSI + i}. */
    public static final int VIRTIO_FIRST_GSI = 5;
    /** GSIs 5 to 20: the I/O APIC has 24 pins and the machine's own devices use the low ones. */
    public static final int VIRTIO_MAX_DEVICES = 16;
    /** The state codec of every virtio device. */
    static final StateCodec<VirtioMmio.State> VIRTIO_CODEC = VirtioMmioCodec.INSTANCE;

    /**
     * One virtio-mmio device of a machine: slot {@code index} at {@code VIRTIO_MMIO_BASE + index *
     * 4 KiB}, GSI {@code 5 + index}, configured by {@code config} (a disk is named
     * {@code virtio-blkN}, the entropy device {@code virtio-rng}).
     */
    public record VirtioSlot(int index, String name, VirtioConfig config) {
        public long address() {
            return VIRTIO_MMIO_BASE + (long) index * VirtioMmio.WINDOW_SIZE;
        }

        public int gsi() {
            return VIRTIO_FIRST_GSI + index;
        }

        public String section() {
            return "device/" + name;
        }

        /** The disk of a virtio-blk slot, else null. */
        public DiskConfig disk() {
            return config instanceof DiskConfig d ? d : null;
        }

        /** How Linux learns of the device: {@code virtio_mmio.device=4K@0xc0000000:5} on its command line. */
        public String cmdlineToken() {
            return String.format("virtio_mmio.device=4K@0x%x:%d", address(), gsi());
        }
    }

    /**
     * The virtio devices {@code config} asks for, in slot order: every disk, the entropy device, every
     * network device, then the balloon.
     */
    public static List<VirtioSlot> virtio(MachineConfig config) {
        var slots = new ArrayList<VirtioSlot>();
        for (var disk : config.disks()) slots.add(new VirtioSlot(slots.size(), "virtio-blk" + slots.size(), disk));
        if (config.rng()) slots.add(new VirtioSlot(slots.size(), "virtio-rng", new VirtioConfig.Rng()));
        for (int i = 0; i < config.nets().size(); i++)
            slots.add(
                    new VirtioSlot(slots.size(), "virtio-net" + i, config.nets().get(i)));
        if (config.vsock() != null) slots.add(new VirtioSlot(slots.size(), "virtio-vsock", config.vsock()));
        if (config.balloon() != null) slots.add(new VirtioSlot(slots.size(), "virtio-balloon", config.balloon()));
        if (slots.size() > VIRTIO_MAX_DEVICES)
            throw new IllegalArgumentException(
                    "at most " + VIRTIO_MAX_DEVICES + " virtio devices (disks, rng and nets)");
        return slots;
    }

    /** {@code cmdline} with one {@code virtio_mmio.device=} token per virtio device appended. */
    static String cmdlineWithVirtio(String cmdline, MachineConfig config) {
        var line = new StringBuilder(cmdline);
        for (var slot : virtio(config)) line.append(line.isEmpty() ? "" : " ").append(slot.cmdlineToken());
        return line.toString();
    }

    /** Device states by section: what a VM's devices are built from. */
    public record States(Map<String, Object> bySection) {
        public States {
            bySection = Map.copyOf(bySection);
        }

        /** Every device fresh. */
        static final States FRESH = fresh();

        private static States fresh() {
            var m = new LinkedHashMap<String, Object>();
            for (var row : ROWS) m.put(row.section(), row.fresh());
            return new States(m);
        }

        /** The state of {@code row}'s device. */
        public <S> S of(Row<S, ?> row) {
            @SuppressWarnings("unchecked")
            S s = (S) bySection.get(row.section());
            return s;
        }
    }
}
