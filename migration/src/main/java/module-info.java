/** The snapshot format: sections with CRC32C, the RAM block table, RAM pages, and the state codecs. */
module dev.panamavmm.migration {
    requires tools.jackson.core;

    exports dev.panamavmm.migration;
    exports dev.panamavmm.migration.state;
}
