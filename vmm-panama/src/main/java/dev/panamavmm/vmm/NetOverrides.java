package dev.panamavmm.vmm;

import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.SnapshotException;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;

/**
 * A clone's own network identity (Firecracker's {@code network_overrides}): each network device of
 * the template gets the tap and MAC of the override at its index. Two VMs on one MAC address (or
 * one tap) would take each other's frames, so a clone of a template with a network device is
 * refused without overrides, and an override that keeps the template's MAC is refused too.
 */
public final class NetOverrides {
    private NetOverrides() {}

    /**
     * {@code template} as a clone with these network devices sees it (one per device of the
     * template, in order); with none given, the template as it is, which {@link #checkClone} refuses
     * if it has network devices.
     */
    public static LoadedSnapshot apply(LoadedSnapshot template, List<NetConfig> overrides) {
        if (overrides.isEmpty()) return template;
        int want = template.config().nets().size();
        if (overrides.size() != want)
            throw new SnapshotException("the template has " + want + " network device" + (want == 1 ? "" : "s") + ", "
                    + overrides.size() + " override" + (overrides.size() == 1 ? " was" : "s were") + " given");
        var nets = new ArrayList<NetConfig>();
        for (int i = 0; i < want; i++) {
            var o = overrides.get(i);
            nets.add(new NetConfig(
                    o.tap(),
                    o.fd(),
                    o.mac(),
                    o.id().isEmpty() ? template.config().nets().get(i).id() : o.id()));
        }
        return template.withConfig(template.config().withNets(nets));
    }

    /** Refuses a clone whose network device still has its template's MAC (no override given, or the same one). */
    static void checkClone(LoadedSnapshot loaded, MachineConfig config) {
        var saved = new HashSet<String>();
        var machine = Json.asObject(loaded.snapshot().metadata().get("machine"), "machine");
        if (machine.get("nets") instanceof List<?> list)
            for (var item : list) if (item instanceof Map<?, ?> e && e.get("mac") instanceof String mac) saved.add(mac);
        for (var n : config.nets()) {
            if (saved.contains(n.mac()))
                throw new SnapshotException("the template has a network device with MAC " + n.mac()
                        + ": give each clone its own tap and MAC (vmm clone --net tap=NAME[,mac=MAC],"
                        + " or \"net\": [{\"tap\": NAME, \"mac\": MAC}] in a clone request)");
        }
    }

    /** The overrides of a clone request: {@code [{"tap": NAME, "mac": MAC, "id": ID}]}, mac and id optional. */
    public static List<NetConfig> fromJson(Object value) {
        if (value == null) return List.of();
        if (!(value instanceof List<?> list)) throw new IllegalArgumentException("\"net\" must be a list of objects");
        var out = new ArrayList<NetConfig>();
        for (var item : list) {
            if (!(item instanceof Map<?, ?> m) || !(m.get("tap") instanceof String tap))
                throw new IllegalArgumentException("each \"net\" entry needs \"tap\": NAME");
            for (var key : m.keySet())
                if (!List.of("tap", "mac", "id").contains(key))
                    throw new IllegalArgumentException("unknown \"net\" key \"" + key + "\" (tap, mac, id)");
            String mac = m.get("mac") instanceof String s ? s : NetConfig.randomMac();
            String id = m.get("id") instanceof String s ? s : "";
            out.add(new NetConfig(tap, -1, mac, id));
        }
        return out;
    }
}
