package dev.panamavmm.devices.virtio;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;

/**
 * The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2), around one {@link VirtioDevice}: the
 * register window a vCPU reaches through MMIO exits, the queues in guest RAM, and the interrupt.
 *
 * <p>Register writes in the wrong order are ignored (features after FEATURES_OK, queue setup before
 * FEATURES_OK or after DRIVER_OK, status bits cleared other than by a reset, FEATURES_OK with
 * features the device did not offer or without VERSION_1); a broken ring or request turns the
 * device to NEEDS_RESET (status bit 0x40, with a configuration-change interrupt) until the driver
 * resets it. Nothing a guest writes makes it throw.
 *
 * <p>Threads: vCPU threads call {@link #read} and {@link #write}; the device's own thread calls
 * {@link #processQueue} when the driver notifies a queue (the host's {@link Notifier} gets it
 * there); a device may complete requests from further threads. One lock guards everything.
 * {@link #pause} stops taking requests and waits for those in flight, so {@link #state} is then
 * complete: every request the driver made available is either still in the available ring
 * (after {@code lastAvail}) or finished in the used ring.
 */
public final class VirtioMmio {
    /** Bytes of guest-physical space each device occupies. */
    public static final int WINDOW_SIZE = 0x1000;

    /** Register offsets in the window (4.2.2.1). */
    public static final int MAGIC = 0x000,
            VERSION = 0x004,
            DEVICE_ID = 0x008,
            VENDOR_ID = 0x00c,
            DEVICE_FEATURES = 0x010,
            DEVICE_FEATURES_SEL = 0x014,
            DRIVER_FEATURES = 0x020,
            DRIVER_FEATURES_SEL = 0x024,
            QUEUE_SEL = 0x030,
            QUEUE_NUM_MAX = 0x034,
            QUEUE_NUM = 0x038,
            QUEUE_READY = 0x044,
            QUEUE_NOTIFY = 0x050,
            INTERRUPT_STATUS = 0x060,
            INTERRUPT_ACK = 0x064,
            STATUS = 0x070,
            QUEUE_DESC_LOW = 0x080,
            QUEUE_DESC_HIGH = 0x084,
            QUEUE_DRIVER_LOW = 0x090,
            QUEUE_DRIVER_HIGH = 0x094,
            QUEUE_DEVICE_LOW = 0x0a0,
            QUEUE_DEVICE_HIGH = 0x0a4,
            SHM_LEN_LOW = 0x0b0,
            SHM_LEN_HIGH = 0x0b4,
            SHM_BASE_LOW = 0x0b8,
            SHM_BASE_HIGH = 0x0bc,
            CONFIG_GENERATION = 0x0fc,
            CONFIG = 0x100;

    static final int MAGIC_VALUE = 0x7472_6976; // "virt"
    static final int VENDOR = 0x414e_4150; // "PANA"

    public static final int STATUS_ACKNOWLEDGE = 1,
            STATUS_DRIVER = 2,
            STATUS_DRIVER_OK = 4,
            STATUS_FEATURES_OK = 8,
            STATUS_NEEDS_RESET = 0x40,
            STATUS_FAILED = 0x80;
    public static final int INTERRUPT_USED = 1, INTERRUPT_CONFIG = 2;
    public static final long F_INDIRECT_DESC = 1L << 28, F_EVENT_IDX = 1L << 29, F_VERSION_1 = 1L << 32;
    /** What the transport itself offers on top of the device's features. */
    static final long TRANSPORT_FEATURES = F_INDIRECT_DESC | F_EVENT_IDX | F_VERSION_1;

    /** Gets a notified queue processed on the device's thread: eventually calls {@link #processQueue}. */
    @FunctionalInterface
    public interface Notifier {
        void notify(int queue);
    }

    /** The device's interrupt: an edge (irqfd). May be called with the transport's lock held; must not block. */
    @FunctionalInterface
    public interface Interrupt {
        void trigger();
    }

    /**
     * One queue's registers and ring indexes.
     *
     * @param size the driver's QueueNum
     * @param ready QueueReady
     * @param desc the descriptor table's guest address
     * @param driver the available ring's guest address
     * @param device the used ring's guest address
     * @param lastAvail the next available-ring entry the device will take
     * @param usedIdx the used ring's index as the device last published it
     */
    public record QueueState(int size, boolean ready, long desc, long driver, long device, int lastAvail, int usedIdx) {
        public QueueState {
            if (size < 0 || size > Virtqueue.MAX_SIZE) throw new IllegalArgumentException("queue size " + size);
            if ((lastAvail & ~0xFFFF) != 0 || (usedIdx & ~0xFFFF) != 0)
                throw new IllegalArgumentException("a queue index outside 16 bits");
        }
    }

    /**
     * The transport's guest-visible state.
     *
     * @param deviceId which device type it belongs to (a restore into another type is refused)
     * @param driverFeatures the features the driver accepted
     * @param deviceFeaturesSel DeviceFeaturesSel
     * @param driverFeaturesSel DriverFeaturesSel
     * @param status the device status byte
     * @param queueSel QueueSel
     * @param interruptStatus InterruptStatus (bit 0 used buffer, bit 1 configuration change)
     * @param configGeneration ConfigGeneration
     * @param config the configuration space
     * @param queues every queue
     * @param deviceState the device's own state ({@link VirtioDevice#saveState}; empty: as new)
     */
    public record State(
            int deviceId,
            long driverFeatures,
            int deviceFeaturesSel,
            int driverFeaturesSel,
            int status,
            int queueSel,
            int interruptStatus,
            int configGeneration,
            byte[] config,
            List<QueueState> queues,
            byte[] deviceState) {
        public State {
            if ((status & ~0xFF) != 0) throw new IllegalArgumentException("status " + status + " is not a byte");
            if ((interruptStatus & ~3) != 0)
                throw new IllegalArgumentException("interrupt status " + interruptStatus + " has unknown bits");
            if (config.length > WINDOW_SIZE - CONFIG)
                throw new IllegalArgumentException("a configuration space of " + config.length + " bytes");
            config = config.clone();
            queues = List.copyOf(queues);
            deviceState = deviceState.clone();
        }

        @Override
        public byte[] config() {
            return config.clone();
        }

        @Override
        public byte[] deviceState() {
            return deviceState.clone();
        }

        /** A device as after power-on: nothing negotiated, queues at their largest size. */
        public static State reset(VirtioDevice device) {
            var queues = new ArrayList<QueueState>();
            for (int i = 0; i < device.queueCount(); i++)
                queues.add(new QueueState(device.queueMaxSize(), false, 0, 0, 0, 0, 0));
            return new State(device.deviceId(), 0, 0, 0, 0, 0, 0, 0, device.initialConfig(), queues, new byte[0]);
        }
    }

    private static final class Queue {
        int size;
        boolean ready;
        long desc, driver, device;
        int lastAvail, usedIdx;
        Virtqueue ring; // while ready and its rings were valid
        /**
         * Requests the device completed on the queue's own thread during a batch, put on the used
         * ring together at its end (one index update, no lock per request). Only the thread
         * {@link #processing} names for the queue touches them outside the lock.
         */
        int[] doneHeads = new int[0], doneWritten = new int[0], doneEpochs = new int[0];

        int doneCount;
    }

    /** A request handed to the device: its completion, of which only the first call counts. */
    private static final class Request implements VirtioDevice.Completion {
        private static final VarHandle COMPLETED;

        static {
            try {
                COMPLETED = MethodHandles.lookup().findVarHandle(Request.class, "completed", boolean.class);
            } catch (ReflectiveOperationException e) {
                throw new ExceptionInInitializerError(e);
            }
        }

        private final VirtioMmio transport;
        private final int epoch, queue, head;

        @SuppressWarnings("unused") // through COMPLETED
        private volatile boolean completed;

        Request(VirtioMmio transport, int epoch, int queue, int head) {
            this.transport = transport;
            this.epoch = epoch;
            this.queue = queue;
            this.head = head;
        }

        /** True for the first caller only. */
        boolean claim() {
            return COMPLETED.compareAndSet(this, false, true);
        }

        @Override
        public void complete(int written) {
            if (claim()) transport.completed(this, written);
        }
    }

    private final VirtioDevice device;
    private final GuestRam ram;
    private final Notifier notifier;
    private final Interrupt interrupt;
    private final byte[] config;
    private final Queue[] queues;
    private long driverFeatures;
    private int deviceFeaturesSel, driverFeaturesSel, status, queueSel, interruptStatus, configGeneration;
    /** Counts resets, so a request finished after one is not put on the new rings. */
    private int epoch;

    private int inFlight;
    /** Requests taken from the queues since the device was built (metrics). */
    private long requests;

    private boolean paused;
    /** Per queue, the thread inside processQueue: completions on it are batched into one interrupt. */
    private final Thread[] processing;

    private final boolean[] batchAdded;
    private String lastError;

    /** A fresh device. */
    public VirtioMmio(VirtioDevice device, GuestRam ram, Notifier notifier, Interrupt interrupt) {
        this(device, State.reset(device), ram, notifier, interrupt);
    }

    /** A device restored to {@code state}; throws IllegalArgumentException when it does not fit the device. */
    public VirtioMmio(VirtioDevice device, State state, GuestRam ram, Notifier notifier, Interrupt interrupt) {
        this.device = Objects.requireNonNull(device);
        this.ram = Objects.requireNonNull(ram);
        this.notifier = Objects.requireNonNull(notifier);
        this.interrupt = Objects.requireNonNull(interrupt);
        if (state.deviceId() != device.deviceId())
            throw new IllegalArgumentException(
                    "the state is of virtio device type " + state.deviceId() + ", not " + device.deviceId());
        if (state.queues().size() != device.queueCount())
            throw new IllegalArgumentException(
                    "the state has " + state.queues().size() + " queues, the device " + device.queueCount());
        if (state.config().length != device.initialConfig().length)
            throw new IllegalArgumentException("the state's configuration space has " + state.config().length
                    + " bytes, the device's " + device.initialConfig().length);
        device.restoreState(state.deviceState());
        this.config = state.config();
        this.driverFeatures = state.driverFeatures();
        this.deviceFeaturesSel = state.deviceFeaturesSel();
        this.driverFeaturesSel = state.driverFeaturesSel();
        this.status = state.status();
        this.queueSel = state.queueSel();
        this.interruptStatus = state.interruptStatus();
        this.configGeneration = state.configGeneration();
        this.queues = new Queue[device.queueCount()];
        this.processing = new Thread[queues.length];
        this.batchAdded = new boolean[queues.length];
        for (int i = 0; i < queues.length; i++) {
            var s = state.queues().get(i);
            var q = new Queue();
            q.size = s.size();
            q.ready = s.ready();
            q.desc = s.desc();
            q.driver = s.driver();
            q.device = s.device();
            q.lastAvail = s.lastAvail();
            q.usedIdx = s.usedIdx();
            queues[i] = q;
        }
        synchronized (this) {
            if ((status & STATUS_FEATURES_OK) != 0) device.driverFeatures(driverFeatures);
            if ((status & STATUS_FEATURES_OK) != 0 && (status & STATUS_NEEDS_RESET) == 0) {
                for (var q : queues) {
                    if (q.ready && !openRing(q)) break;
                }
            }
        }
    }

    public VirtioDevice device() {
        return device;
    }

    /** All features offered: the device's and the transport's. */
    public long offeredFeatures() {
        return device.features() | TRANSPORT_FEATURES;
    }

    /** The guest-visible state; complete only while {@linkplain #pause paused}. */
    public synchronized State state() {
        var qs = new ArrayList<QueueState>();
        for (var q : queues) {
            if (q.ring != null) {
                q.lastAvail = q.ring.lastAvail();
                q.usedIdx = q.ring.usedIdx();
            }
            qs.add(new QueueState(q.size, q.ready, q.desc, q.driver, q.device, q.lastAvail, q.usedIdx));
        }
        return new State(
                device.deviceId(),
                driverFeatures,
                deviceFeaturesSel,
                driverFeaturesSel,
                status,
                queueSel,
                interruptStatus,
                configGeneration,
                config,
                qs,
                device.saveState());
    }

    /** Why the device last went to NEEDS_RESET, or null. */
    public synchronized String lastError() {
        return lastError;
    }

    /** Requests the device has taken from its queues since it was built. */
    public synchronized long requests() {
        return requests;
    }

    public synchronized int inFlight() {
        return inFlight;
    }

    // ---- registers (vCPU threads) --------------------------------------------------------------

    /** A read of {@code size} bytes (1, 2, 4 or 8) at {@code offset} in the window; zero where nothing is defined. */
    public synchronized long read(int offset, int size) {
        if (offset >= CONFIG) return readConfig(offset - CONFIG, size);
        if (size != 4) return 0; // registers are 32 bits wide (4.2.2.2)
        return Integer.toUnsignedLong(
                switch (offset) {
                    case MAGIC -> MAGIC_VALUE;
                    case VERSION -> 2;
                    case DEVICE_ID -> device.deviceId();
                    case VENDOR_ID -> VENDOR;
                    case DEVICE_FEATURES ->
                        deviceFeaturesSel == 0
                                ? (int) offeredFeatures()
                                : deviceFeaturesSel == 1 ? (int) (offeredFeatures() >>> 32) : 0;
                    case QUEUE_NUM_MAX -> selected() != null ? device.queueMaxSize() : 0;
                    case QUEUE_NUM -> selected() != null ? selected().size : 0;
                    case QUEUE_READY -> selected() != null && selected().ready ? 1 : 0;
                    case QUEUE_DESC_LOW -> selected() != null ? (int) selected().desc : 0;
                    case QUEUE_DESC_HIGH -> selected() != null ? (int) (selected().desc >>> 32) : 0;
                    case QUEUE_DRIVER_LOW -> selected() != null ? (int) selected().driver : 0;
                    case QUEUE_DRIVER_HIGH -> selected() != null ? (int) (selected().driver >>> 32) : 0;
                    case QUEUE_DEVICE_LOW -> selected() != null ? (int) selected().device : 0;
                    case QUEUE_DEVICE_HIGH -> selected() != null ? (int) (selected().device >>> 32) : 0;
                    case INTERRUPT_STATUS -> interruptStatus;
                    case STATUS -> status;
                    case SHM_LEN_LOW, SHM_LEN_HIGH -> -1; // no shared memory regions
                    case CONFIG_GENERATION -> configGeneration;
                    default -> 0;
                });
    }

    private long readConfig(int offset, int size) {
        if (size != 1 && size != 2 && size != 4 && size != 8) return 0;
        if (offset < 0 || offset + size > config.length) return 0;
        long v = 0;
        for (int i = size - 1; i >= 0; i--) v = (v << 8) | (config[offset + i] & 0xFF);
        return v;
    }

    /** A write of the low {@code size} bytes of {@code value} at {@code offset}; what the state does not allow is ignored. */
    public void write(int offset, int size, long value) {
        int notify = -1;
        synchronized (this) {
            if (offset >= CONFIG) {
                writeConfig(offset - CONFIG, size, value);
                return;
            }
            if (size != 4) return;
            int v = (int) value;
            var q = selected();
            switch (offset) {
                case DEVICE_FEATURES_SEL -> deviceFeaturesSel = v;
                case DRIVER_FEATURES_SEL -> driverFeaturesSel = v;
                case DRIVER_FEATURES -> {
                    if ((status & (STATUS_DRIVER | STATUS_FEATURES_OK)) == STATUS_DRIVER) {
                        if (driverFeaturesSel == 0)
                            driverFeatures = (driverFeatures & 0xFFFF_FFFF_0000_0000L) | Integer.toUnsignedLong(v);
                        else if (driverFeaturesSel == 1)
                            driverFeatures = (driverFeatures & 0xFFFF_FFFFL) | ((long) v << 32);
                    }
                }
                case QUEUE_SEL -> queueSel = v;
                case QUEUE_NUM -> {
                    if (configurable(q)) q.size = Integer.compareUnsigned(v, Virtqueue.MAX_SIZE) <= 0 ? v : 0;
                }
                case QUEUE_DESC_LOW -> {
                    if (configurable(q)) q.desc = low(q.desc, v);
                }
                case QUEUE_DESC_HIGH -> {
                    if (configurable(q)) q.desc = high(q.desc, v);
                }
                case QUEUE_DRIVER_LOW -> {
                    if (configurable(q)) q.driver = low(q.driver, v);
                }
                case QUEUE_DRIVER_HIGH -> {
                    if (configurable(q)) q.driver = high(q.driver, v);
                }
                case QUEUE_DEVICE_LOW -> {
                    if (configurable(q)) q.device = low(q.device, v);
                }
                case QUEUE_DEVICE_HIGH -> {
                    if (configurable(q)) q.device = high(q.device, v);
                }
                case QUEUE_READY -> queueReady(q, v);
                case QUEUE_NOTIFY -> {
                    if (active() && v >= 0 && v < queues.length) notify = v;
                }
                case INTERRUPT_ACK -> interruptStatus &= ~v;
                case STATUS -> writeStatus(v & 0xFF);
                default -> {}
            }
        }
        if (notify >= 0) notifier.notify(notify);
    }

    /** A driver's write into the configuration space: stored only where the device allows it. */
    private void writeConfig(int offset, int size, long value) {
        if (size != 1 && size != 2 && size != 4 && size != 8) return;
        if (offset < 0 || offset + size > config.length || !device.configWritable(offset, size)) return;
        for (int i = 0; i < size; i++) config[offset + i] = (byte) (value >>> (8 * i));
        device.configWritten(offset, size, value);
    }

    /**
     * The device changes its configuration space ({@link VirtioDevice.Context#updateConfig}): the
     * generation moves, and a driver that is running gets a configuration-change interrupt.
     * Bytes outside the space are refused with IllegalArgumentException.
     */
    public synchronized void updateConfig(int offset, byte[] bytes) {
        if (offset < 0 || offset + bytes.length > config.length)
            throw new IllegalArgumentException(
                    bytes.length + " bytes at " + offset + " of a " + config.length + "-byte configuration space");
        System.arraycopy(bytes, 0, config, offset, bytes.length);
        configGeneration++;
        if ((status & (STATUS_DRIVER_OK | STATUS_NEEDS_RESET)) == STATUS_DRIVER_OK) {
            interruptStatus |= INTERRUPT_CONFIG;
            interrupt.trigger();
        }
    }

    private static long low(long old, int v) {
        return (old & 0xFFFF_FFFF_0000_0000L) | Integer.toUnsignedLong(v);
    }

    private static long high(long old, int v) {
        return (old & 0xFFFF_FFFFL) | ((long) v << 32);
    }

    private Queue selected() {
        return queueSel >= 0 && queueSel < queues.length ? queues[queueSel] : null;
    }

    /** Queue registers are written between FEATURES_OK and DRIVER_OK, while the queue is not ready. */
    private boolean configurable(Queue q) {
        return q != null
                && !q.ready
                && (status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_NEEDS_RESET)) == STATUS_FEATURES_OK;
    }

    private void queueReady(Queue q, int v) {
        if (q == null || (status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_NEEDS_RESET)) != STATUS_FEATURES_OK)
            return;
        if (v == 0) {
            q.ready = false;
            q.ring = null;
        } else if (v == 1 && !q.ready) {
            if (!Virtqueue.validSize(q.size, device.queueMaxSize())) return; // ignored: the driver reads 0 back
            q.ready = true;
            q.lastAvail = 0;
            q.usedIdx = 0;
            openRing(q);
        }
    }

    /** Builds the ring of a ready queue; false (and NEEDS_RESET) when its rings are not valid. */
    private boolean openRing(Queue q) {
        try {
            q.ring = new Virtqueue(
                    ram,
                    q.size,
                    q.desc,
                    q.driver,
                    q.device,
                    (driverFeatures & F_INDIRECT_DESC) != 0,
                    (driverFeatures & F_EVENT_IDX) != 0,
                    q.lastAvail,
                    q.usedIdx);
            return true;
        } catch (VirtioException e) {
            q.ring = null;
            fail(e.getMessage());
            return false;
        }
    }

    private void writeStatus(int v) {
        if (v == 0) {
            reset();
            return;
        }
        int old = status & ~STATUS_NEEDS_RESET;
        // Only the device sets NEEDS_RESET; undefined bits are dropped.
        int wanted = v & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED);
        if ((wanted & old) != old) return; // bits are cleared only by a reset
        int added = wanted & ~old;
        if ((added & STATUS_FEATURES_OK) != 0 && !((old & STATUS_DRIVER) != 0 && featuresAcceptable()))
            added &= ~STATUS_FEATURES_OK; // the driver reads it back and gives up (3.1.1)
        if ((added & STATUS_DRIVER_OK) != 0 && ((old | added) & STATUS_FEATURES_OK) == 0) added &= ~STATUS_DRIVER_OK;
        status = (status & STATUS_NEEDS_RESET) | old | added;
        if ((added & STATUS_FEATURES_OK) != 0) device.driverFeatures(driverFeatures);
    }

    private boolean featuresAcceptable() {
        return (driverFeatures & ~offeredFeatures()) == 0 && (driverFeatures & F_VERSION_1) != 0;
    }

    private boolean active() {
        return (status & (STATUS_DRIVER_OK | STATUS_NEEDS_RESET)) == STATUS_DRIVER_OK;
    }

    private void reset() {
        epoch++;
        driverFeatures = 0;
        deviceFeaturesSel = driverFeaturesSel = queueSel = 0;
        status = 0;
        interruptStatus = 0;
        lastError = null;
        for (var q : queues) {
            q.size = device.queueMaxSize();
            q.ready = false;
            q.desc = q.driver = q.device = 0;
            q.lastAvail = q.usedIdx = 0;
            q.ring = null;
        }
        device.reset();
        device.driverFeatures(0);
    }

    /** Marks the device broken until the driver resets it, and tells a driver that is using it. */
    private void fail(String reason) {
        lastError = reason;
        boolean wasActive = (status & STATUS_DRIVER_OK) != 0 && (status & STATUS_NEEDS_RESET) == 0;
        status |= STATUS_NEEDS_RESET;
        if (wasActive) {
            interruptStatus |= INTERRUPT_CONFIG;
            interrupt.trigger();
        }
    }

    // ---- queues (the device's thread) ----------------------------------------------------------

    /**
     * Takes every request available on {@code queue} and hands it to the device, outside the lock
     * (a device may do I/O in {@link VirtioDevice#batchEnd} on this thread while vCPUs read its
     * registers). Never throws. One thread per queue: the device's.
     */
    public void processQueue(int queue) {
        if (queue >= 0 && queue < queues.length && device.fills(queue)) {
            fillQueue(queue);
            return;
        }
        while (takeBatch(queue)) {
            // The driver added requests while it was asked not to notify: they are this thread's to take.
        }
    }

    /**
     * Takes the requests available on {@code queue} (up to the device's limit) with the driver
     * asked not to notify meanwhile, and hands them to the device; true when more came in that the
     * device can take now, which the driver may not have notified.
     */
    private boolean takeBatch(int queue) {
        var chains = new ArrayList<DescriptorChain>();
        Virtqueue ring;
        int usedBefore, requestEpoch;
        synchronized (this) {
            if (paused || !active() || queue < 0 || queue >= queues.length) return false;
            ring = queues[queue].ring;
            if (ring == null) return false;
            usedBefore = ring.usedIdx();
            requestEpoch = epoch;
            int limit = device.takeLimit(queue);
            try {
                ring.quiet();
                while (chains.size() < limit) {
                    var chain = ring.pop();
                    if (chain == null) break; // the driver's later requests: listen() after the batch sees them
                    chains.add(chain);
                }
            } catch (VirtioException e) {
                fail(e.getMessage());
                return false; // the chains taken so far are dropped with the device's state
            }
            inFlight += chains.size();
            requests += chains.size();
            processing[queue] = Thread.currentThread();
            batchAdded[queue] = false;
        }
        boolean more = false;
        try {
            for (var chain : chains) {
                var request = new Request(this, requestEpoch, queue, chain.head());
                try {
                    device.handle(queue, chain, request);
                } catch (RuntimeException e) {
                    synchronized (this) {
                        if (request.claim() && --inFlight == 0) notifyAll(); // it will never complete
                        fail(device.name() + " failed: " + e);
                    }
                }
            }
            device.batchEnd(queue);
        } catch (RuntimeException e) {
            synchronized (this) {
                fail(device.name() + " failed: " + e);
            }
        } finally {
            synchronized (this) {
                try {
                    publishDone(queue);
                    processing[queue] = null;
                    raiseUsedIfDue(queue, ring, usedBefore);
                    more = listen(queue, ring) && !paused && device.takeLimit(queue) > 0;
                } catch (RuntimeException e) {
                    processing[queue] = null;
                    fail(e.getMessage());
                }
            }
        }
        return more;
    }

    /**
     * The driver notifies {@code queue} again, unless the ring is no longer the queue's (a reset
     * built a new one) or the device is broken; true when it made chains available meanwhile.
     * Called holding the lock.
     */
    private boolean listen(int queue, Virtqueue ring) {
        return queues[queue].ring == ring && active() && ring.listen();
    }

    /**
     * Used-ring updates and interrupts at least this often while a queue is filled without a pause
     * (a driver that waits for them sees data).
     */
    static final int FILL_INTERRUPT_EVERY = 32;

    /**
     * A queue the device fills from its backend ({@link VirtioDevice#fills}): a few buffers at a
     * time ({@link VirtioDevice#fillBatch}, often one) until the ring or the backend runs out; the
     * buffers the backend had nothing for go back to the available ring. The filled buffers go on
     * the used ring together, with one interrupt, at the end (and every
     * {@value #FILL_INTERRUPT_EVERY} buffers), as for requests.
     */
    private void fillQueue(int queue) {
        Virtqueue ring;
        int usedBefore, requestEpoch;
        synchronized (this) {
            if (paused || !active()) return;
            ring = queues[queue].ring;
            if (ring == null) return;
            usedBefore = ring.usedIdx();
            requestEpoch = epoch;
            processing[queue] = Thread.currentThread();
            batchAdded[queue] = false;
            ring.quiet(); // a driver that gives buffers back while they are being filled need not notify
        }
        var chains = new ArrayList<DescriptorChain>();
        int[] written = new int[0];
        try {
            int unpublished = 0;
            while (true) {
                int batch = Math.max(1, device.fillBatch(queue));
                if (written.length < batch) written = new int[batch];
                chains.clear();
                synchronized (this) {
                    if (paused || epoch != requestEpoch || queues[queue].ring != ring || !active()) return;
                    try {
                        while (chains.size() < batch) {
                            var chain = ring.pop();
                            if (chain == null && chains.isEmpty()) {
                                // The driver may have added a buffer while it was asked not to notify: look again.
                                if (!ring.listen()) return;
                                ring.quiet();
                                chain = ring.pop();
                            }
                            if (chain == null) break;
                            chains.add(chain);
                        }
                    } catch (VirtioException e) {
                        fail(e.getMessage());
                        return;
                    }
                    if (chains.isEmpty()) return;
                    inFlight += chains.size();
                    requests += chains.size();
                }
                int used;
                try {
                    used = device.fillAll(queue, chains, written);
                    if (used < 0 || used > chains.size())
                        throw new IllegalStateException("used " + used + " of " + chains.size() + " buffers");
                } catch (RuntimeException e) {
                    synchronized (this) {
                        inFlight -= chains.size();
                        if (inFlight == 0) notifyAll();
                        fail(device.name() + " failed: " + e);
                    }
                    return;
                }
                for (int i = 0; i < used; i++)
                    defer(queues[queue], requestEpoch, chains.get(i).head(), written[i]);
                if (used < chains.size()) {
                    int back = chains.size() - used;
                    synchronized (this) {
                        inFlight -= back;
                        if (inFlight == 0) notifyAll();
                        requests -= back;
                        if (epoch == requestEpoch && queues[queue].ring == ring) ring.unpop(back);
                    }
                    return;
                }
                unpublished += used;
                if (unpublished >= FILL_INTERRUPT_EVERY) {
                    unpublished = 0;
                    synchronized (this) {
                        publishDone(queue);
                        raiseUsedIfDue(queue, ring, usedBefore);
                        batchAdded[queue] = false;
                        usedBefore = ring.usedIdx();
                    }
                }
            }
        } catch (RuntimeException e) {
            synchronized (this) {
                fail(device.name() + " failed: " + e);
            }
        } finally {
            synchronized (this) {
                try {
                    publishDone(queue);
                    processing[queue] = null;
                    raiseUsedIfDue(queue, ring, usedBefore);
                    listen(queue, ring); // buffers given back meanwhile wait for the backend's next frame (its kick)
                } catch (RuntimeException e) {
                    processing[queue] = null;
                    fail(e.getMessage());
                }
            }
        }
    }

    /**
     * A request's completion: on the queue's own thread inside a batch it waits for the batch's
     * end ({@link #publishDone}); from any other thread it goes on the used ring now.
     */
    private void completed(Request request, int written) {
        if (processing[request.queue] != Thread.currentThread()) {
            complete(request.epoch, request.queue, request.head, written);
            return;
        }
        defer(queues[request.queue], request.epoch, request.head, written);
    }

    /** Keeps a completion for {@link #publishDone}; only on the thread {@link #processing} names for the queue. */
    private static void defer(Queue q, int epoch, int head, int written) {
        int n = q.doneCount;
        if (n == q.doneHeads.length) {
            int grown = Math.max(16, n * 2);
            q.doneHeads = Arrays.copyOf(q.doneHeads, grown);
            q.doneWritten = Arrays.copyOf(q.doneWritten, grown);
            q.doneEpochs = Arrays.copyOf(q.doneEpochs, grown);
        }
        q.doneHeads[n] = head;
        q.doneWritten[n] = written;
        q.doneEpochs[n] = epoch;
        q.doneCount = n + 1;
    }

    /** Puts the batch's completions ({@link #completed}) on the used ring, with one index update. Holding the lock. */
    private void publishDone(int queue) {
        var q = queues[queue];
        int n = q.doneCount;
        if (n == 0) return;
        q.doneCount = 0;
        inFlight -= n;
        if (inFlight == 0) notifyAll();
        var ring = q.ring;
        if (ring == null || (status & STATUS_NEEDS_RESET) != 0) return;
        boolean added = false;
        try {
            for (int i = 0; i < n; i++) {
                if (q.doneEpochs[i] != epoch) continue; // from before a reset
                ring.putUsed(q.doneHeads[i], q.doneWritten[i]);
                added = true;
            }
        } finally {
            if (added) ring.publishUsed();
        }
        if (added) batchAdded[queue] = true;
    }

    private synchronized void complete(int requestEpoch, int queue, int head, int written) {
        if (--inFlight == 0) notifyAll();
        var ring = queues[queue].ring;
        if (requestEpoch != epoch || ring == null || (status & STATUS_NEEDS_RESET) != 0) return;
        try {
            int before = ring.usedIdx();
            ring.addUsed(head, written); // unsigned: a length of 2 GiB or more is negative here
            if (processing[queue] == Thread.currentThread()) batchAdded[queue] = true;
            else if (ring.needsInterrupt(before)) raiseUsed();
        } catch (RuntimeException e) {
            fail(e.getMessage());
        }
    }

    /**
     * The used-buffer interrupt after a batch, if the batch added any, the ring is still the queue's
     * (not reset meanwhile), the device is not broken and the driver wants one (event index).
     * Called holding the lock.
     */
    private void raiseUsedIfDue(int queue, Virtqueue ring, int usedBefore) {
        if (batchAdded[queue]
                && queues[queue].ring == ring
                && (status & STATUS_NEEDS_RESET) == 0
                && ring.needsInterrupt(usedBefore)) raiseUsed();
    }

    private void raiseUsed() {
        interruptStatus |= INTERRUPT_USED;
        interrupt.trigger();
    }

    // ---- pause and resume (the VMM) ------------------------------------------------------------

    /**
     * Stops taking requests and waits until those in flight have completed into the used ring.
     * Throws IllegalStateException if they do not within {@code timeout} (the device stays paused).
     */
    public void pause(Duration timeout) throws InterruptedException {
        device.pause(); // outside the lock: the device's thread may be waiting for it
        pauseTransport(timeout);
    }

    private synchronized void pauseTransport(Duration timeout) throws InterruptedException {
        paused = true;
        long deadline = System.nanoTime() + timeout.toNanos();
        while (inFlight > 0) {
            long left = deadline - System.nanoTime();
            if (left <= 0)
                throw new IllegalStateException(device.name() + " still has " + inFlight + " requests in flight after "
                        + timeout.toMillis() + " ms");
            wait(Math.max(1, left / 1_000_000));
        }
    }

    /** Takes requests again, and looks at every queue: the driver may have notified while paused. */
    public void resume() {
        synchronized (this) {
            paused = false;
        }
        device.resume();
        for (int i = 0; i < queues.length; i++) notifier.notify(i);
    }
}
