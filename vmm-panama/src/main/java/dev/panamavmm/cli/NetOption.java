package dev.panamavmm.cli;

import dev.panamavmm.vmm.NetConfig;

/** {@code --net tap=NAME|fd=N[,mac=MAC][,id=ID]}, as run, template create and clone read it. */
final class NetOption {
    private NetOption() {}

    /** The network device {@code value} describes; a usage error naming the option otherwise. */
    static NetConfig parse(String value) {
        try {
            return NetConfig.parse(value);
        } catch (IllegalArgumentException e) {
            throw new UsageException("--net " + value + ": " + e.getMessage());
        }
    }
}
