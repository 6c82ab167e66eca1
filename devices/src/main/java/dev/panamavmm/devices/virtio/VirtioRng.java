package dev.panamavmm.devices.virtio;

import java.lang.foreign.MemorySegment;
import java.util.Objects;
import java.util.function.Consumer;

/**
 * virtio-rng (virtio 1.2, 5.4): one request queue whose writable buffers the device fills with
 * random bytes from the host. No features, no configuration. At most {@value #MAX_BYTES_PER_REQUEST}
 * bytes per request, so one request cannot hold the device for long (the driver asks again).
 */
public final class VirtioRng implements VirtioDevice {
    public static final int DEVICE_ID = 4;
    static final int MAX_BYTES_PER_REQUEST = 64 * 1024;
    static final int QUEUE_SIZE = 256;

    private final String name;
    private final Consumer<MemorySegment> entropy;

    /** A device named {@code name} that fills buffers with {@code entropy} (the host's getrandom). */
    public VirtioRng(String name, Consumer<MemorySegment> entropy) {
        this.name = Objects.requireNonNull(name);
        this.entropy = Objects.requireNonNull(entropy);
    }

    @Override
    public int deviceId() {
        return DEVICE_ID;
    }

    @Override
    public String name() {
        return name;
    }

    @Override
    public long features() {
        return 0;
    }

    @Override
    public int queueCount() {
        return 1;
    }

    @Override
    public int queueMaxSize() {
        return QUEUE_SIZE;
    }

    @Override
    public byte[] initialConfig() {
        return new byte[0];
    }

    @Override
    public void handle(int queue, DescriptorChain chain, Completion done) {
        long left = MAX_BYTES_PER_REQUEST;
        long written = 0;
        for (var buffer : chain.writable()) {
            if (left == 0) break;
            long n = Math.min(left, buffer.byteSize());
            entropy.accept(buffer.asSlice(0, n));
            written += n;
            left -= n;
        }
        done.complete((int) written);
    }
}
