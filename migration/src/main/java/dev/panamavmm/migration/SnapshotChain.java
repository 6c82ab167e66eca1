package dev.panamavmm.migration;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A snapshot and, if it is a diff layer, the bases under it down to a full snapshot: what a
 * restore or a merge stacks. Each base is checked to be the very file its layer was taken
 * against (creation time, header CRC, length): a base written again, or missing, is refused in
 * one line.
 */
public final class SnapshotChain {
    private SnapshotChain() {}

    /** Layers stacked at most: each costs a file and mappings per run at restore. */
    public static final int MAX_DEPTH = 64;

    /** The chain from {@code dir} down, newest first; its last element is a full snapshot. */
    public static List<SnapshotReader> open(Path dir) {
        var chain = new ArrayList<SnapshotReader>();
        var top = SnapshotReader.open(dir);
        chain.add(top);
        for (var layer = top; layer.isLayer(); layer = chain.getLast()) {
            if (chain.size() > MAX_DEPTH)
                throw new SnapshotException(
                        "the diff snapshot " + dir + " stacks more than " + MAX_DEPTH + " layers: merge it first");
            var want = layer.base();
            Path baseDir = want.dir();
            if (!Files.exists(baseDir.resolve(SnapshotFormat.FILE_NAME)))
                throw new SnapshotException("the base snapshot " + baseDir + " of the diff snapshot "
                        + layer.file().getParent() + " is missing");
            var base = SnapshotReader.open(baseDir);
            if (!base.identity().sameFile(want))
                throw new SnapshotException("refusing to restore: the base snapshot " + baseDir
                        + " of the diff snapshot " + layer.file().getParent() + " changed after the diff was taken");
            chain.add(base);
        }
        return List.copyOf(chain);
    }

    /** A run of pages of a layer laid over a block: byte ranges of the block, found at {@code dataOffset + start} in {@code file}. */
    public record Overlay(Path file, long dataOffset, long[][] runs) {}

    /**
     * Where one block's pages come from: {@code bottom}, the newest entry that holds the whole
     * block (stored in {@code bottomFile}, or by reference to a memory file), then the pages of
     * the layers above it, oldest first (newer ones win).
     */
    public record BlockPlan(RamBlockEntry bottom, Path bottomFile, List<Overlay> overlays) {}

    /** One plan per block of the newest snapshot's RAM table, in its order. */
    public static List<BlockPlan> plan(List<SnapshotReader> chain) {
        var plans = new ArrayList<BlockPlan>();
        for (var top : chain.getFirst().ram()) {
            var overlays = new ArrayList<Overlay>();
            BlockPlan plan = null;
            for (var reader : chain) {
                var entry = reader.ram().stream()
                        .filter(e -> e.id().equals(top.id()))
                        .findFirst()
                        .orElse(null);
                if (entry == null || entry.size() != top.size() || entry.guestAddress() != top.guestAddress())
                    throw new SnapshotException("the snapshot " + reader.file() + " has no RAM block " + top.id()
                            + " as its diff layers do");
                var runs = reader.layerPages(entry);
                if (runs == null || LayerPages.whole(runs, entry.size())) {
                    if (entry.byReference() && !overlays.isEmpty())
                        throw new SnapshotException("the snapshot " + reader.file() + " holds RAM block " + top.id()
                                + " by reference to a memory file, under a diff layer that holds part of it");
                    plan = new BlockPlan(entry, entry.byReference() ? null : reader.file(), List.copyOf(overlays));
                    break;
                }
                overlays.addFirst(new Overlay(reader.file(), entry.dataOffset(), runs));
            }
            if (plan == null) throw new SnapshotException("the diff chain ends without a full snapshot");
            plans.add(plan);
        }
        return plans;
    }
}
