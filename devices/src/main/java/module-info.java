/** Device models in pure Java (UART, PS/2 controller, VMM port, virtio-mmio) and their state codecs. */
module dev.panamavmm.devices {
    requires transitive dev.panamavmm.migration;

    exports dev.panamavmm.devices;
    exports dev.panamavmm.devices.virtio;
}
