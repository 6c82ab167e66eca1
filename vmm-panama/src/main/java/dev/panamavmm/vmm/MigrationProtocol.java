package dev.panamavmm.vmm;

import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.SnapshotException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The messages of a local migration, one record per step, and their wire form: one JSON object
 * per message on the Unix socket (descriptors ride along as SCM_RIGHTS). The steps and the
 * receiver's states are drawn in docs/architecture.md ("Live update").
 *
 * <p>Protocol 2 (this version) tags every message with {@code "type"} and puts the sender's
 * protocol number in its first message, {@link Prepare}. Protocol 1 (the previous version,
 * 52b27eb) sent untyped objects ({@code {"prepare": {...}}}, {@code {"snapshot": DIR,
 * "resumeBefore": T}}, {@code {"prepared": true}}, {@code {"running": true, ...}},
 * {@code {"error": WHY}}); a destination reads those and answers a protocol-1 source in its own
 * shapes, so a VMM can be live-updated from the previous version. A refusal always carries its
 * reason under {@code "error"}, which every version so far reads.
 */
public final class MigrationProtocol {
    private MigrationProtocol() {}

    /** The protocol this VMM speaks. */
    public static final int VERSION = 2;
    /** The oldest protocol it still receives from. */
    public static final int OLDEST = 1;

    /** One step of a local migration. */
    public sealed interface Message {}

    /**
     * Source -> destination, first, while the guest still runs: the machine and where its RAM
     * lives ({@code ram} null: private RAM, whose pages travel in the state, so the VM is built
     * after the pause). Descriptors named by the blocks come with this message.
     */
    public record Prepare(int protocol, int cpus, long memory, List<RamBlock> ram) implements Message {}

    /** A RAM block of {@link Prepare}: in the passed descriptor number {@code descriptor}, or in the shared {@code file}. */
    public record RamBlock(String id, long guestAddress, long size, long fileOffset, Integer descriptor, Path file) {}

    /**
     * Destination -> source: the VM is built around the same memory; the source may pause the
     * guest. {@code sharedFile} (TCP): the destination mapped the shared memory file the source
     * announced itself (the same file on shared storage), so no page travels.
     */
    public record Prepared(boolean sharedFile) implements Message {
        public Prepared() {
            this(false);
        }
    }

    /** Source -> destination, in the downtime: the state is in {@code snapshot}; resume only well before {@code resumeBefore} (System.nanoTime). */
    public record State(Path snapshot, long resumeBefore) implements Message {}

    /** Destination -> source: the guest runs here since {@code resumedAtNanos} (System.nanoTime, CLOCK_MONOTONIC). */
    public record Running(long resumedAtNanos) implements Message {}

    /** Either way: the migration is refused, the guest stays (or goes back) where it ran. */
    public record Refused(String reason) implements Message {}

    /**
     * TCP migration, source -> destination: pre-copy pass {@code pass} is complete, {@code pages}
     * pages went in it (pages and zero markers travel as binary frames, {@link MigrationStream}).
     */
    public record PassEnd(int pass, long pages) implements Message {}

    /**
     * TCP migration, source -> destination, guest paused: the device state follows as one binary
     * frame (the snapshot container's sections, RAM by reference); the destination resumes only
     * within {@code resumeWithinMillis} of its arrival, else refuses (the source then takes its
     * guest back).
     */
    public record DeviceState(long resumeWithinMillis, List<Fingerprint> fingerprints) implements Message {
        public DeviceState(long resumeWithinMillis) {
            this(resumeWithinMillis, List.of());
        }
    }

    /**
     * A memory file both sides map (sent by reference): the CRC32C of block {@code block}'s pages
     * {@code pages} (page numbers within the block) as the paused source reads them, for the
     * destination to check it maps the same bytes.
     */
    public record Fingerprint(String block, List<Long> pages, long crc) {
        /** The most pages one fingerprint may name (a bound on what a peer can make the destination read). */
        public static final int MAX_PAGES = 64;
    }

    /**
     * TCP migration by reference, source -> destination, guest running: the pages the
     * {@link Fingerprint}s will read, so that the destination maps them before the pause (a first
     * touch of a page costs its mapping a fault: 0.6-2.4 ms for 64 of them here, in the pause).
     */
    public record Samples(List<BlockPages> blocks) implements Message {}

    /** Pages (page numbers within the block) of RAM block {@code block}: at most {@link Fingerprint#MAX_PAGES}. */
    public record BlockPages(String block, List<Long> pages) {}

    /**
     * TCP migration, source -> destination, guest paused: the switch to post-copy. One bitmap frame
     * per RAM block follows ({@link MigrationStream}: the pages the destination does not have
     * right, {@code pages} of them in all), then {@code DeviceState} and the state; after
     * {@code Running} the connection carries the post-copy page protocol.
     */
    public record Postcopy(long pages) implements Message {}

    /** The wire form of {@code m} for a peer that speaks {@code protocol}. */
    public static byte[] encode(Message m, int protocol) {
        Map<String, Object> json = protocol == 1
                ? legacy(m)
                : switch (m) {
                    case Prepare p ->
                        Json.object(
                                "type",
                                "prepare",
                                "protocol",
                                (long) p.protocol(),
                                "cpus",
                                (long) p.cpus(),
                                "memory",
                                p.memory(),
                                "ram",
                                p.ram() == null ? null : ramRows(p.ram()));
                    case Prepared p ->
                        p.sharedFile()
                                ? Json.object("type", "prepared", "sharedFile", true)
                                : Json.object("type", "prepared");
                    case State s ->
                        Json.object(
                                "type", "state", "snapshot", s.snapshot().toString(), "resumeBefore", s.resumeBefore());
                    case Running r -> Json.object("type", "running", "resumedAtNanos", r.resumedAtNanos());
                    case Refused r -> Json.object("type", "error", "error", r.reason());
                    case PassEnd p -> Json.object("type", "pass-end", "pass", (long) p.pass(), "pages", p.pages());
                    case DeviceState d -> {
                        var row = Json.object("type", "device-state", "resumeWithinMillis", d.resumeWithinMillis());
                        if (!d.fingerprints().isEmpty()) row.put("fingerprints", fingerprintRows(d.fingerprints()));
                        yield row;
                    }
                    case Postcopy p -> Json.object("type", "postcopy", "pages", p.pages());
                    case Samples x -> {
                        var rows = new ArrayList<Object>();
                        for (var b : x.blocks())
                            rows.add(Json.object("block", b.block(), "pages", new ArrayList<Object>(b.pages())));
                        yield Json.object("type", "samples", "blocks", rows);
                    }
                };
        return Json.write(json).getBytes(StandardCharsets.UTF_8);
    }

    private static Map<String, Object> legacy(Message m) {
        return switch (m) {
            case Prepared p -> Json.object("prepared", true);
            case Running r -> Json.object("running", true, "resumedAtNanos", r.resumedAtNanos());
            case Refused r -> Json.object("error", r.reason());
            case Prepare p ->
                Json.object(
                        "prepare", Json.object("cpus", (long) p.cpus(), "memory", p.memory(), "ram", ramRows(p.ram())));
            case State s -> Json.object("snapshot", s.snapshot().toString(), "resumeBefore", s.resumeBefore());
            case PassEnd p -> throw new IllegalArgumentException("protocol 1 has no TCP migration");
            case DeviceState d -> throw new IllegalArgumentException("protocol 1 has no TCP migration");
            case Postcopy p -> throw new IllegalArgumentException("protocol 1 has no TCP migration");
            case Samples x -> throw new IllegalArgumentException("protocol 1 has no TCP migration");
        };
    }

    private static List<Object> fingerprintRows(List<Fingerprint> fingerprints) {
        var rows = new ArrayList<Object>();
        for (var f : fingerprints)
            rows.add(Json.object("block", f.block(), "pages", new ArrayList<Object>(f.pages()), "crc", f.crc()));
        return rows;
    }

    private static List<Fingerprint> fingerprints(Object rows) {
        if (rows == null) return List.of();
        var out = new ArrayList<Fingerprint>();
        for (var row : Json.asList(rows, "fingerprints")) {
            var f = Json.asObject(row, "a fingerprint");
            out.add(new Fingerprint(String.valueOf(f.get("block")), pages(f, "a fingerprint"), (Long) f.get("crc")));
        }
        if (out.size() > 64) throw new SnapshotException("the source sent " + out.size() + " fingerprints");
        return List.copyOf(out);
    }

    private static Samples samples(Object rows) {
        var out = new ArrayList<BlockPages>();
        for (var row : Json.asList(rows, "blocks")) {
            var b = Json.asObject(row, "a block's samples");
            out.add(new BlockPages(String.valueOf(b.get("block")), pages(b, "samples")));
        }
        if (out.size() > 64) throw new SnapshotException("the source sent samples of " + out.size() + " blocks");
        return new Samples(List.copyOf(out));
    }

    /** A row's "pages": at most {@link Fingerprint#MAX_PAGES} of them (a bound on what a peer makes the destination read). */
    private static List<Long> pages(Map<String, Object> row, String what) {
        var pages = new ArrayList<Long>();
        for (var page : Json.asList(row.get("pages"), "pages")) pages.add((Long) page);
        if (pages.size() > Fingerprint.MAX_PAGES)
            throw new SnapshotException("the source sent " + what + " of " + pages.size() + " pages");
        return List.copyOf(pages);
    }

    private static List<Object> ramRows(List<RamBlock> ram) {
        var rows = new ArrayList<Object>();
        for (var b : ram) {
            var row = Json.object(
                    "id", b.id(), "guestAddress", b.guestAddress(), "size", b.size(), "fileOffset", b.fileOffset());
            if (b.descriptor() != null) row.put("descriptor", (long) b.descriptor());
            if (b.file() != null) row.put("file", b.file().toString());
            rows.add(row);
        }
        return rows;
    }

    /**
     * Reads one message, typed (protocol 2) or in protocol 1's shapes. Anything else, malformed or
     * of an unknown type, is a {@link SnapshotException} naming what came.
     */
    public static Message decode(byte[] data) {
        Map<String, Object> m;
        try {
            m = Json.asObject(Json.parse(new String(data, StandardCharsets.UTF_8)), "a message");
        } catch (Json.JsonException e) {
            throw new SnapshotException("the peer sent a malformed message (" + e.getMessage() + ")");
        }
        try {
            if (m.get("type") instanceof String type) return typed(type, m);
            return legacy(m);
        } catch (ClassCastException | ArithmeticException | Json.JsonException | NullPointerException e) {
            throw new SnapshotException("the peer sent a malformed message: " + abbreviate(m));
        }
    }

    private static Message typed(String type, Map<String, Object> m) {
        return switch (type) {
            case "prepare" ->
                new Prepare(
                        Math.toIntExact((Long) m.get("protocol")),
                        Math.toIntExact((Long) m.get("cpus")),
                        (Long) m.get("memory"),
                        m.get("ram") == null ? null : ramBlocks(m.get("ram")));
            case "prepared" -> new Prepared(Boolean.TRUE.equals(m.get("sharedFile")));
            case "state" -> new State(Path.of((String) m.get("snapshot")), (Long) m.get("resumeBefore"));
            case "running" -> new Running((Long) m.get("resumedAtNanos"));
            case "error" -> new Refused(String.valueOf(m.get("error")));
            case "pass-end" -> new PassEnd(Math.toIntExact((Long) m.get("pass")), (Long) m.get("pages"));
            case "device-state" ->
                new DeviceState((Long) m.get("resumeWithinMillis"), fingerprints(m.get("fingerprints")));
            case "postcopy" -> new Postcopy((Long) m.get("pages"));
            case "samples" -> samples(m.get("blocks"));
            default ->
                throw new SnapshotException("the peer sent a message of unknown type '" + abbreviate(type) + "'");
        };
    }

    private static Message legacy(Map<String, Object> m) {
        if (m.get("error") instanceof String error) return new Refused(error);
        if (Boolean.TRUE.equals(m.get("prepared"))) return new Prepared();
        if (Boolean.TRUE.equals(m.get("running"))) {
            return new Running(m.get("resumedAtNanos") instanceof Long t ? t : System.nanoTime());
        }
        if (m.get("prepare") != null) {
            var p = Json.asObject(m.get("prepare"), "prepare");
            return new Prepare(
                    1, Math.toIntExact((Long) p.get("cpus")), (Long) p.get("memory"), ramBlocks(p.get("ram")));
        }
        if (m.get("snapshot") instanceof String dir) {
            if (!(m.get("resumeBefore") instanceof Long deadline)) {
                throw new SnapshotException(
                        "the source speaks a local-migration protocol older than " + OLDEST + " (no deadline)");
            }
            return new State(Path.of(dir), deadline);
        }
        throw new SnapshotException("the peer sent a message that is not part of a migration: " + abbreviate(m));
    }

    private static List<RamBlock> ramBlocks(Object rows) {
        var blocks = new ArrayList<RamBlock>();
        for (var row : Json.asList(rows, "ram")) {
            var b = Json.asObject(row, "a RAM block");
            blocks.add(new RamBlock(
                    String.valueOf(b.get("id")),
                    (Long) b.get("guestAddress"),
                    (Long) b.get("size"),
                    (Long) b.get("fileOffset"),
                    b.get("descriptor") instanceof Long d ? Math.toIntExact(d) : null,
                    b.get("file") instanceof String f ? Path.of(f) : null));
        }
        if (blocks.size() > 64) throw new SnapshotException("the source announced " + blocks.size() + " RAM blocks");
        return List.copyOf(blocks);
    }

    private static String abbreviate(Object o) {
        String s = String.valueOf(o);
        return s.length() > 120 ? s.substring(0, 117) + "..." : s;
    }
}
