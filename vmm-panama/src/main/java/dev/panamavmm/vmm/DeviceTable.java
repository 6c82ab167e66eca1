package dev.panamavmm.vmm;

import dev.panamavmm.devices.I8042;
import dev.panamavmm.devices.I8042Codec;
import dev.panamavmm.devices.PortIoDevice;
import dev.panamavmm.devices.Serial8250;
import dev.panamavmm.devices.Serial8250Codec;
import dev.panamavmm.devices.VmmPort;
import dev.panamavmm.devices.VmmPortCodec;
import dev.panamavmm.kvm.VmFd;
import dev.panamavmm.migration.state.StateCodec;
import java.io.OutputStream;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;
import java.util.function.Function;

/**
 * The VM's devices, one row each: the snapshot section its state goes in, its port range, its
 * state codec and fresh state, and how it is built from a state. Building a VM, saving, restoring,
 * cloning and live update iterate over {@link #ROWS}; adding a device is one row here plus its
 * model and codec in {@code devices/}.
 */
public final class DeviceTable {
    private DeviceTable() {}

    /** What a device may use of the VM it is built into. */
    record Context(OutputStream console, VmFd vmFd, Consumer<VmExitReason> end, VmListener listener) {}

    /** One device type of the table. */
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
