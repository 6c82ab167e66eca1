package dev.panamavmm.guest;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Pattern;

/**
 * The test guest built by this module (see {@code guest/README.md}): where the ELF is on the
 * class path, and the shapes of the lines it writes to COM1.
 */
public final class TestGuest {

    /** Class-path resource of the ELF image. */
    public static final String RESOURCE = "guest/testguest.elf";
    /**
     * Class-path resource of the same program with a PVH entry note, for QEMU ({@code -kernel});
     * Panama VMM boots {@link #RESOURCE}, whose 64-bit entry starts every vCPU.
     */
    public static final String PVH_RESOURCE = "guest/testguest-pvh.elf";

    /** {@code testguest <version> cpus=<n> mem=<bytes>}, once at boot. */
    public static final Pattern BANNER = Pattern.compile("testguest (\\S+) cpus=(\\d+) mem=(\\d+)");
    /** {@code genid 0x<16 hex digits>}: at boot, and on CPU 0 when the generation id changed. */
    public static final Pattern GENID = Pattern.compile("genid 0x([0-9a-f]{16})");
    /** {@code ready}: every CPU has filled its memory; the guest then writes 1 to port 0x504. */
    public static final Pattern READY = Pattern.compile("ready");
    /** {@code hb <cpu> <seq>}: seq counts 1, 2, 3, ... on every CPU. */
    public static final Pattern HEARTBEAT = Pattern.compile("hb (\\d+) (\\d+)");
    /** {@code CORRUPT <cpu> addr=0x<hex> expected=0x<16 hex> got=0x<16 hex>}. */
    public static final Pattern CORRUPT =
            Pattern.compile("CORRUPT (\\d+) addr=0x([0-9a-f]+) expected=0x([0-9a-f]{16}) got=0x([0-9a-f]{16})");

    /**
     * {@code virtio 0x<addr> irq=<n> id=<device id>[ error <what>]} or {@code virtio 0x<addr>
     * irq=<n> unusable ...}: once per {@code virtio_mmio.device=} token, after {@code genid}.
     */
    public static final Pattern VIRTIO_DEVICE =
            Pattern.compile("virtio 0x([0-9a-f]+) irq=(\\d+) (?:id=(\\d+)(?: error (\\S+))?|unusable .*)");
    /** {@code rng <n> 0x<first 8 bytes, little endian>}: the n-th 64-byte read of the entropy device. */
    public static final Pattern RNG = Pattern.compile("rng (\\d+) 0x([0-9a-f]{16})");
    /** {@code CORRUPT rng <why>}: constant output, the same 64 bytes twice, or no answer. */
    public static final Pattern CORRUPT_RNG =
            Pattern.compile("CORRUPT rng (constant byte=0x[0-9a-f]{2}|repeated|timeout)");
    /**
     * {@code blk capacity=<sectors> size=<bytes used> qd=<n> ro|rw flush|noflush table=0x<address>}:
     * the block device driven, and where in guest RAM the generation of each sector is (a {@code u32}).
     */
    public static final Pattern BLK_INFO =
            Pattern.compile("blk capacity=(\\d+) size=(\\d+) qd=(\\d+) (ro|rw) (flush|noflush) table=0x([0-9a-f]+)");
    /** {@code blk id <serial>} (GET_ID, once; may be empty) or {@code blk id-status <status>}. */
    public static final Pattern BLK_ID = Pattern.compile("blk id (.*)");
    /** {@code blk readonly write-status=<status>}: a read-only device answered a write (the spec: 1, IOERR). */
    public static final Pattern BLK_READONLY = Pattern.compile("blk readonly write-status=(\\d+)");
    /** {@code blk <completed> reads=<n> writes=<n> flushes=<n>}: on CPU 0 before each heartbeat. */
    public static final Pattern BLK = Pattern.compile("blk (\\d+) reads=(\\d+) writes=(\\d+) flushes=(\\d+)");
    /**
     * {@code CORRUPT blk sector=<n> expected-gen=<g> got=<what>}: {@code gen:<h>} (a whole sector of
     * generation h), {@code torn:<h>}, {@code 0x<16 hex>} (not this sector's data) or
     * {@code status:<s>-read|-write|-flush}.
     */
    public static final Pattern CORRUPT_BLK =
            Pattern.compile("CORRUPT blk sector=(\\d+) expected-gen=(\\d+) got=(\\S+)");
    /** {@code CORRUPT blk used id=<n> not in flight}: a completion for a request not outstanding. */
    public static final Pattern CORRUPT_BLK_USED = Pattern.compile("CORRUPT blk used id=(\\d+) not in flight");
    /** {@code CORRUPT blk stalled inflight=<n>}: 5 heartbeats of CPU 0 with requests in flight and none completed. */
    public static final Pattern CORRUPT_BLK_STALLED = Pattern.compile("CORRUPT blk stalled inflight=(\\d+)");
    /** {@code blkbench <row> bs=<bytes> qd=<n> ios=<n> us=<n> iops=<n> mbps=<n.n>}: one benchmark row. */
    public static final Pattern BLKBENCH =
            Pattern.compile("blkbench (\\S+) bs=(\\d+) qd=(\\d+) ios=(\\d+) us=(\\d+) iops=(\\d+) mbps=(\\d+\\.\\d)");
    /** {@code blkbench done}: every row printed. */
    public static final Pattern BLKBENCH_DONE = Pattern.compile("blkbench done");
    /** {@code balloon 0x<mmio> region=0x<addr> pages=<n> features=0x<hex>}: the balloon driver started. */
    public static final Pattern BALLOON_INFO =
            Pattern.compile("balloon 0x([0-9a-f]+) region=0x([0-9a-f]+) pages=(\\d+) features=0x([0-9a-f]+)");
    /**
     * {@code balloon reported=<pages> reused=<pages> dirtied=<pages> inflated=<pages> actual=<pages>
     * target=<pages> stats=<n>}: on CPU 0 before each heartbeat, totals since boot (actual and
     * target: now).
     */
    public static final Pattern BALLOON = Pattern.compile(
            "balloon reported=(\\d+) reused=(\\d+) dirtied=(\\d+) inflated=(\\d+) actual=(\\d+) target=(\\d+) stats=(\\d+)");
    /** {@code CORRUPT balloon addr=0x<hex> expected=0x<16 hex> got=0x<16 hex>}: a page the driver wrote read back wrong. */
    public static final Pattern CORRUPT_BALLOON =
            Pattern.compile("CORRUPT balloon addr=0x([0-9a-f]+) expected=0x([0-9a-f]{16}) got=0x([0-9a-f]{16})");

    /** {@code net mac=MAC link=L echo|answer window=N size=N}: the network device driven (guest/README.md). */
    public static final Pattern NET_INFO =
            Pattern.compile("net mac=([0-9a-f:]{17}) link=(\\d+) (echo|answer) window=(\\d+) size=(\\d+)");
    /** {@code net mac=MAC}: the MAC in the configuration space changed (a clone's override). */
    public static final Pattern NET_MAC = Pattern.compile("net mac=([0-9a-f:]{17})");
    /** {@code net ECHOED sent=N echoed=N lost=N probes=N}, every heartbeat of CPU 0. */
    public static final Pattern NET = Pattern.compile("net (\\d+) sent=(\\d+) echoed=(\\d+) lost=(\\d+) probes=(\\d+)");
    /** The network oracle's failures. */
    public static final Pattern CORRUPT_NET =
            Pattern.compile("CORRUPT net (mac|data|duplicate|lost|unknown) seq=(\\d+)");
    /** One row of the network benchmark. */
    public static final Pattern NETBENCH = Pattern.compile(
            "netbench (tx|rx) size=(\\d+) frames=(\\d+) us=(\\d+) fps=(\\d+) mbps=(\\d+\\.\\d) peer=(\\d+)");
    /** The network benchmark's end. */
    public static final Pattern NETBENCH_DONE = Pattern.compile("netbench done");

    /** The vsock driver's per-heartbeat line: the option's port and the payload bytes each way so far. */
    public static final Pattern VSOCK = Pattern.compile("vsock (\\d+) rx=(\\d+) tx=(\\d+)");
    /** A connection set up (accepted from the host, or connected to it), or ended by the host ({@code closed}). */
    public static final Pattern VSOCK_EVENT =
            Pattern.compile("vsock (accepted|connected|refused|closed) (\\d+) rx=(\\d+) tx=(\\d+)");
    /** The device reset every connection (a restore or clone); the guest listens and connects again. */
    public static final Pattern VSOCK_RESET = Pattern.compile("vsock transport reset cid=(\\d+)");
    /** A bad byte, an unexpected reset, a stalled connection, or more bytes than its credit allowed. */
    public static final Pattern CORRUPT_VSOCK =
            Pattern.compile("CORRUPT vsock (\\d+) rx=(\\d+) tx=(\\d+) (byte at \\d+ .*|reset|stalled|overrun)");

    /** Byte {@code i} of the stream the vsock driver sends, and expects, on every connection. */
    public static byte vsockPattern(long i) {
        int x = (int) i;
        return (byte) (((x * 0x9E3779B1) >>> 24) ^ x);
    }

    /** Exit code (port 0x500) for an unexpected CPU exception: this plus the vector. */
    public static final int EXIT_EXCEPTION = 0x100;
    /** Exit code (port 0x500) when the boot contract was not met (image not in e820 RAM, ...). */
    public static final int EXIT_BAD_BOOT = 0x200;

    private TestGuest() {}

    /**
     * The generation the block oracle wrote to the 512-byte sector {@code sector}, read from its
     * content at {@code offset} in {@code disk}: 0 for a sector of zeros (never written), -1 for
     * anything else that is not a whole sector of that number's pattern (guest/README.md, "The
     * disk oracle": the sector number, the generation, then 62 words mixed from both).
     */
    public static long diskSectorGeneration(byte[] disk, int offset, long sector) {
        var b = ByteBuffer.wrap(disk).order(ByteOrder.LITTLE_ENDIAN);
        long first = b.getLong(offset), gen = b.getLong(offset + 8);
        if (first == 0 && gen == 0) {
            for (int i = 2; i < 64; i++) if (b.getLong(offset + 8 * i) != 0) return -1;
            return 0;
        }
        if (first != sector || gen <= 0) return -1;
        for (int i = 2; i < 64; i++) {
            if (b.getLong(offset + 8 * i) != sectorWord(sector, i, gen)) return -1;
        }
        return gen;
    }

    /**
     * Compares a paused guest's disk with its generation table ({@code gens}: one little-endian u32
     * per sector) for the first {@code sectors} sectors, and returns what does not match, empty
     * when all is well. The guest counts a write in its table when it submits it, so a write still
     * in the available ring (made available, not yet taken by the device) leaves its 4 KiB block
     * (8 sectors) exactly one generation behind on disk, all 8 alike; at most {@code queueDepth}
     * blocks may be. The guest counts a block's sectors one at a time as it fills its buffer, so a
     * pause in that loop leaves one block whose <em>leading</em> sectors are one behind and the
     * rest as the table says (nothing of it submitted yet); one such block is allowed. A device that
     * stops inside a write leaves the opposite (trailing sectors behind). Anything else (a lost,
     * torn, stale or misplaced write) is a mismatch.
     */
    public static List<String> diskAgainstTable(byte[] disk, ByteBuffer gens, int sectors, int queueDepth) {
        var problems = new ArrayList<String>();
        int behind = 0, beingPrepared = 0;
        for (int block = 0; block < sectors / 8; block++) {
            int oneBehind = 0, leadingBehind = 0;
            for (int sector = block * 8; sector < block * 8 + 8; sector++) {
                long expected = Integer.toUnsignedLong(gens.getInt(4 * sector));
                long onDisk = diskSectorGeneration(disk, 512 * sector, sector);
                if (onDisk == expected) continue;
                if (expected > 0 && onDisk == expected - 1) {
                    if (oneBehind++ == sector - block * 8) leadingBehind++;
                } else
                    problems.add(
                            "sector " + sector + ": generation " + onDisk + " on disk, " + expected + " in the table");
            }
            if (oneBehind == 8) behind++;
            else if (oneBehind > 0 && leadingBehind == oneBehind && beingPrepared++ == 0) continue;
            else if (oneBehind > 0)
                problems.add(
                        "block " + block + ": " + oneBehind + " of 8 sectors one generation behind (a torn write)");
        }
        if (behind > queueDepth)
            problems.add(behind + " blocks one generation behind: more than the " + queueDepth + " requests in flight");
        return problems;
    }

    /** Writes what the guest's {@code fill_sector} writes: sector {@code sector} of generation {@code gen}. */
    static void fillDiskSector(byte[] disk, int offset, long sector, long gen) {
        var b = ByteBuffer.wrap(disk).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(offset, sector).putLong(offset + 8, gen);
        for (int i = 2; i < 64; i++) b.putLong(offset + 8 * i, sectorWord(sector, i, gen));
    }

    private static long sectorWord(long sector, int i, long gen) {
        long z = ((sector << 9) + 8L * i) ^ Long.MIN_VALUE ^ (gen * 0x9E3779B97F4A7C15L);
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** Opens the ELF image; the caller closes the stream. */
    public static InputStream open() {
        return open(RESOURCE);
    }

    /** The ELF image. */
    public static byte[] elf() {
        return read(RESOURCE);
    }

    /** The ELF image with the PVH entry note (for QEMU). */
    public static byte[] pvhElf() {
        return read(PVH_RESOURCE);
    }

    private static InputStream open(String resource) {
        // Through the class, not its loader: in a named module only the module's own classes see
        // its resources (guest/ is not a package that could be opened).
        InputStream in = TestGuest.class.getResourceAsStream("/" + resource);
        if (in == null) {
            throw new IllegalStateException(resource + " is not on the class path (build the guest module)");
        }
        return in;
    }

    private static byte[] read(String resource) {
        try (InputStream in = open(resource)) {
            return in.readAllBytes();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
