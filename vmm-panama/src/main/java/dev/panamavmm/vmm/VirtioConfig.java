package dev.panamavmm.vmm;

/**
 * The configuration of one virtio-mmio device a machine asks for. Each type is one case of
 * {@link VirtioHost}'s device switch and one place in {@link DeviceTable#virtio}'s slot order.
 */
public sealed interface VirtioConfig
        permits DiskConfig, VirtioConfig.Rng, NetConfig, VsockConfig, VirtioConfig.Balloon {
    /** The entropy device (virtio-rng): no options, from the host's {@code getrandom}. */
    record Rng() implements VirtioConfig {}

    /**
     * The memory balloon (virtio-balloon): DEFLATE_ON_OOM offered if {@code deflateOnOom}, the
     * guest's statistics every {@code statsSeconds} (0: no statistics queue), free page reporting
     * if {@code reporting}.
     */
    record Balloon(boolean deflateOnOom, int statsSeconds, boolean reporting) implements VirtioConfig {
        public Balloon {
            if (statsSeconds < 0 || statsSeconds > 86_400)
                throw new IllegalArgumentException("balloon statistics every 1 to 86400 seconds (0 for none)");
        }

        /**
         * Parses {@code run --balloon}'s value: comma-separated {@code deflate-on-oom},
         * {@code stats=SECONDS}, {@code reporting} (empty: a balloon with none of them).
         */
        public static Balloon parse(String spec) {
            boolean oom = false, reporting = false;
            int stats = 0;
            for (String part : spec.split(",", -1)) {
                if (part.isEmpty() && spec.isEmpty()) break;
                if (part.equals("deflate-on-oom")) oom = true;
                else if (part.equals("reporting")) reporting = true;
                else if (part.startsWith("stats=")) {
                    try {
                        stats = Integer.parseInt(part.substring(6));
                    } catch (NumberFormatException e) {
                        throw new IllegalArgumentException("stats= takes whole seconds, not " + part.substring(6));
                    }
                    if (stats < 1) throw new IllegalArgumentException("stats= takes 1 to 86400 seconds");
                } else
                    throw new IllegalArgumentException(
                            "unknown balloon option \"" + part + "\" (deflate-on-oom, stats=SECONDS, reporting)");
            }
            return new Balloon(oom, stats, reporting);
        }
    }
}
