/**
 * The VMM: guest memory, VMs and vCPUs, boot, snapshots and migration, the control API and its
 * services, the host daemon, and the command line ({@code dev.panamavmm.cli.Main}, not exported).
 * It calls no restricted FFM method itself: native access goes to {@code dev.panamavmm.kvm} only.
 * Logging goes through slf4j-api; the command line selects its own provider ({@code
 * dev.panamavmm.log.VmmLogProvider}) by the {@code slf4j.provider} property, which is why that
 * package is exported; an embedding application brings its own binding (docs/embedding.md).
 */
module dev.panamavmm.vmm {
    requires transitive dev.panamavmm.kvm;
    requires transitive dev.panamavmm.devices;
    requires transitive dev.panamavmm.migration;
    requires dev.panamavmm.guest;
    requires transitive org.slf4j;
    requires jdk.jfr;
    requires jdk.unsupported;

    exports dev.panamavmm.api;
    exports dev.panamavmm.control;
    exports dev.panamavmm.error;
    exports dev.panamavmm.host;
    exports dev.panamavmm.log;
    exports dev.panamavmm.vmm;
    exports dev.panamavmm.vmm.boot;
    exports dev.panamavmm.vmm.memory;
    exports dev.panamavmm.vmm.postcopy;
    exports dev.panamavmm.vmm.state;
    exports dev.panamavmm.vmm.vcpu;
}
