package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.VirtioBalloon;
import dev.panamavmm.devices.virtio.VirtioMmio;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.SnapshotException;
import java.util.Map;

/**
 * A VM's memory balloon from the outside: its target ({@code balloon {"target-mib": N}}), what
 * {@code query-balloon} shows, and how its configuration is named in a snapshot's metadata.
 */
public final class Balloons {
    private Balloons() {}

    private static final long PAGES_PER_MIB = (1 << 20) / VirtioBalloon.PAGE;

    /**
     * Sets the balloon's target to {@code targetMib} MiB taken from the guest (0 gives all back):
     * {@code num_pages} changes and a running driver gets a configuration-change interrupt.
     * IllegalArgumentException when the VM has no balloon or the target is beyond its RAM.
     */
    public static void setTarget(Vm vm, long targetMib) {
        var transport = transport(vm);
        long ramMib = vm.memory().size() >> 20;
        if (targetMib < 0 || targetMib > ramMib)
            throw new IllegalArgumentException(
                    "\"target-mib\" must be 0 to " + ramMib + " (the guest's RAM), not " + targetMib);
        transport.updateConfig(VirtioBalloon.CONFIG_NUM_PAGES, VirtioBalloon.numPages(targetMib * PAGES_PER_MIB));
    }

    /** The target, the driver's actual size, the device's counters and the guest's latest statistics. */
    public static Map<String, Object> query(Vm vm) {
        var transport = transport(vm);
        var balloon = (VirtioBalloon) transport.device();
        long target = transport.read(VirtioMmio.CONFIG + VirtioBalloon.CONFIG_NUM_PAGES, 4);
        long actual = transport.read(VirtioMmio.CONFIG + VirtioBalloon.CONFIG_ACTUAL, 4);
        var c = balloon.counters();
        var reply = Json.object(
                "target-mib",
                target / PAGES_PER_MIB,
                "target-pages",
                target,
                "actual-pages",
                actual,
                "actual-mib",
                actual / PAGES_PER_MIB,
                "pages-inflated",
                c.inflated(),
                "pages-deflated",
                c.deflated(),
                "pages-reported",
                c.reported(),
                "pages-returned",
                c.returned(),
                "pages-kept",
                c.kept(),
                "pages-ignored",
                c.ignored(),
                "stats-updates",
                c.statsUpdates());
        if (balloon.statisticsOffered()) reply.put("stats", balloon.statistics());
        return reply;
    }

    private static VirtioMmio transport(Vm vm) {
        for (var host : vm.virtioDevices())
            if (host.slot().config() instanceof VirtioConfig.Balloon) return host.transport();
        throw new IllegalArgumentException("this VM has no balloon (run it with --balloon)");
    }

    /** The balloon's entry in a snapshot's {@code machine} metadata. */
    static Map<String, Object> toJson(VirtioConfig.Balloon b) {
        return Json.object(
                "deflateOnOom", b.deflateOnOom(), "statsSeconds", (long) b.statsSeconds(), "reporting", b.reporting());
    }

    /** The balloon a snapshot's metadata names; null for none (and for snapshots from before balloons). */
    static VirtioConfig.Balloon fromJson(Object entry) {
        if (entry == null) return null;
        try {
            var e = Json.asObject(entry, "balloon");
            long stats = e.get("statsSeconds") instanceof Long l ? l : 0;
            return new VirtioConfig.Balloon(
                    Boolean.TRUE.equals(e.get("deflateOnOom")),
                    (int) Math.min(stats, Integer.MAX_VALUE),
                    Boolean.TRUE.equals(e.get("reporting")));
        } catch (IllegalArgumentException | Json.JsonException ex) {
            throw new SnapshotException("the snapshot names its balloon badly: " + ex.getMessage());
        }
    }
}
