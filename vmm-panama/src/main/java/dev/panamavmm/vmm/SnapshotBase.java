package dev.panamavmm.vmm;

import dev.panamavmm.migration.SnapshotIdentity;
import java.util.Set;

/**
 * The snapshot a VM's next diff is taken against: the last one it was saved to and resumed from,
 * or restored from.
 *
 * @param identity the snapshot (its top layer), as the diff names its base
 * @param blocksWithData the RAM blocks whose pages that snapshot's chain holds (not by reference):
 *     only those can be written as a diff; any other block goes into the diff whole
 * @param copiedSinceBase the changes since the base are the private mappings' copied-on-write
 *     pages (a mapped restore, before dirty logging was turned on): nothing else wrote them
 */
record SnapshotBase(SnapshotIdentity identity, Set<String> blocksWithData, boolean copiedSinceBase) {}
