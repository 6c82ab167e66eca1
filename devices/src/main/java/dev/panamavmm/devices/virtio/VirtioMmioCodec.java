package dev.panamavmm.devices.virtio;

import dev.panamavmm.migration.state.Field;
import dev.panamavmm.migration.state.SectionEncoder;
import dev.panamavmm.migration.state.StateCodec;
import dev.panamavmm.migration.state.StateFields;
import java.util.ArrayList;

/**
 * Sections {@code device/virtio-*}: a virtio-mmio device's {@link VirtioMmio.State}. Queues are
 * parallel arrays, one element per queue. The state's own checks run on every decoded value, and
 * the transport refuses a state of another device type or queue count.
 *
 * <p>Schema 1: every field below but {@code deviceState}. Schema 2 adds {@code deviceState} (a
 * device's own state, {@link VirtioDevice#saveState}; read as empty from schema 1).
 */
public final class VirtioMmioCodec implements StateCodec<VirtioMmio.State> {
    public static final VirtioMmioCodec INSTANCE = new VirtioMmioCodec();

    static final Field DEVICE_ID = new Field(1, "deviceId"),
            DRIVER_FEATURES = new Field(2, "driverFeatures"),
            DEVICE_FEATURES_SEL = new Field(3, "deviceFeaturesSel"),
            DRIVER_FEATURES_SEL = new Field(4, "driverFeaturesSel"),
            STATUS = new Field(5, "status"),
            QUEUE_SEL = new Field(6, "queueSel"),
            INTERRUPT_STATUS = new Field(7, "interruptStatus"),
            CONFIG_GENERATION = new Field(8, "configGeneration"),
            CONFIG = new Field(9, "config"),
            QUEUE_SIZE = new Field(10, "queueSize"),
            QUEUE_READY = new Field(11, "queueReady"),
            QUEUE_DESC = new Field(12, "queueDesc"),
            QUEUE_DRIVER = new Field(13, "queueDriver"),
            QUEUE_DEVICE = new Field(14, "queueDevice"),
            QUEUE_LAST_AVAIL = new Field(15, "queueLastAvail"),
            QUEUE_USED_IDX = new Field(16, "queueUsedIdx"),
            DEVICE_STATE = new Field(17, "deviceState");

    private VirtioMmioCodec() {}

    @Override
    public int schema() {
        return 2;
    }

    @Override
    public void write(VirtioMmio.State s, SectionEncoder out) {
        int n = s.queues().size();
        int[] size = new int[n], ready = new int[n], lastAvail = new int[n], usedIdx = new int[n];
        long[] desc = new long[n], driver = new long[n], device = new long[n];
        for (int i = 0; i < n; i++) {
            var q = s.queues().get(i);
            size[i] = q.size();
            ready[i] = q.ready() ? 1 : 0;
            desc[i] = q.desc();
            driver[i] = q.driver();
            device[i] = q.device();
            lastAvail[i] = q.lastAvail();
            usedIdx[i] = q.usedIdx();
        }
        out.i32(DEVICE_ID, s.deviceId())
                .i64(DRIVER_FEATURES, s.driverFeatures())
                .i32(DEVICE_FEATURES_SEL, s.deviceFeaturesSel())
                .i32(DRIVER_FEATURES_SEL, s.driverFeaturesSel())
                .i32(STATUS, s.status())
                .i32(QUEUE_SEL, s.queueSel())
                .i32(INTERRUPT_STATUS, s.interruptStatus())
                .i32(CONFIG_GENERATION, s.configGeneration())
                .bytes(CONFIG, s.config())
                .ints(QUEUE_SIZE, size)
                .ints(QUEUE_READY, ready)
                .longs(QUEUE_DESC, desc)
                .longs(QUEUE_DRIVER, driver)
                .longs(QUEUE_DEVICE, device)
                .ints(QUEUE_LAST_AVAIL, lastAvail)
                .ints(QUEUE_USED_IDX, usedIdx)
                .bytes(DEVICE_STATE, s.deviceState());
    }

    @Override
    public VirtioMmio.State read(StateFields in) {
        int[] size = in.ints(QUEUE_SIZE), ready = in.ints(QUEUE_READY);
        long[] desc = in.longs(QUEUE_DESC), driver = in.longs(QUEUE_DRIVER), device = in.longs(QUEUE_DEVICE);
        int[] lastAvail = in.ints(QUEUE_LAST_AVAIL), usedIdx = in.ints(QUEUE_USED_IDX);
        int n = size.length;
        if (ready.length != n
                || desc.length != n
                || driver.length != n
                || device.length != n
                || lastAvail.length != n
                || usedIdx.length != n) throw new IllegalArgumentException("the queue arrays differ in length");
        var queues = new ArrayList<VirtioMmio.QueueState>();
        for (int i = 0; i < n; i++) {
            if (ready[i] != 0 && ready[i] != 1) throw new IllegalArgumentException("queue ready " + ready[i]);
            queues.add(new VirtioMmio.QueueState(
                    size[i], ready[i] == 1, desc[i], driver[i], device[i], lastAvail[i], usedIdx[i]));
        }
        return new VirtioMmio.State(
                in.i32(DEVICE_ID),
                in.i64(DRIVER_FEATURES),
                in.i32(DEVICE_FEATURES_SEL),
                in.i32(DRIVER_FEATURES_SEL),
                in.i32(STATUS),
                in.i32(QUEUE_SEL),
                in.i32(INTERRUPT_STATUS),
                in.i32(CONFIG_GENERATION),
                in.bytes(CONFIG),
                queues,
                in.bytes(DEVICE_STATE, new byte[0]));
    }
}
