package dev.panamavmm.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

/** The packaged ELF follows the boot contract of README.md; the line patterns match the guest's output. */
class TestGuestTest {

    private static final int PT_LOAD = 1, PT_NOTE = 4;

    @Test
    void elfIsAnX86_64ExecutableLoadedAtOneMiB() {
        checkElf(TestGuest.elf());
        assertEquals(-1, pvhEntry(TestGuest.elf()), "no PVH note: Panama VMM must use the 64-bit entry");
    }

    @Test
    void pvhElfIsTheSameProgramWithAPvhEntryNote() {
        checkElf(TestGuest.pvhElf());
        long pvh = pvhEntry(TestGuest.pvhElf());
        assertTrue(pvh >= 0x100000 && pvh < 0x200000, "PVH entry inside the image: 0x" + Long.toHexString(pvh));
    }

    /** The XEN_ELFNOTE_PHYS32_ENTRY (type 18) address, or -1. */
    private static long pvhEntry(byte[] elf) {
        ByteBuffer b = ByteBuffer.wrap(elf).order(ByteOrder.LITTLE_ENDIAN);
        long phoff = b.getLong(32);
        int phentsize = b.getShort(54), phnum = b.getShort(56);
        for (int i = 0; i < phnum; i++) {
            int ph = (int) (phoff + (long) i * phentsize);
            if (b.getInt(ph) != PT_NOTE) continue;
            int off = (int) b.getLong(ph + 8), end = off + (int) b.getLong(ph + 32);
            while (off + 12 <= end) {
                int namesz = b.getInt(off), descsz = b.getInt(off + 4), type = b.getInt(off + 8);
                byte[] name = new byte[namesz];
                b.get(off + 12, name);
                int desc = off + 12 + ((namesz + 3) & ~3);
                if (type == 18 && descsz == 8 && new String(name, StandardCharsets.US_ASCII).equals("Xen\0")) {
                    return b.getLong(desc);
                }
                off = desc + ((descsz + 3) & ~3);
            }
        }
        return -1;
    }

    private static void checkElf(byte[] elf) {
        ByteBuffer b = ByteBuffer.wrap(elf).order(ByteOrder.LITTLE_ENDIAN);
        assertEquals(0x464c457f, b.getInt(0), "ELF magic");
        assertEquals(2, b.get(4), "ELFCLASS64");
        assertEquals(1, b.get(5), "little endian");
        assertEquals(2, b.getShort(16), "ET_EXEC");
        assertEquals(0x3e, b.getShort(18), "EM_X86_64");
        long entry = b.getLong(24);
        long phoff = b.getLong(32);
        int phentsize = b.getShort(54), phnum = b.getShort(56);

        long lowest = Long.MAX_VALUE;
        boolean entryLoaded = false, note = false;
        for (int i = 0; i < phnum; i++) {
            int ph = (int) (phoff + (long) i * phentsize);
            int type = b.getInt(ph);
            long offset = b.getLong(ph + 8), vaddr = b.getLong(ph + 16), paddr = b.getLong(ph + 24);
            long filesz = b.getLong(ph + 32), memsz = b.getLong(ph + 40);
            if (type == PT_LOAD) {
                assertEquals(vaddr, paddr, "p_paddr == p_vaddr");
                assertTrue(memsz >= filesz);
                lowest = Math.min(lowest, paddr);
                entryLoaded |= entry >= paddr && entry < paddr + filesz;
            } else if (type == PT_NOTE) {
                note |= hasPanamaNote(b, (int) offset, (int) filesz);
            }
        }
        assertEquals(0x100000, lowest, "loaded at 1 MiB");
        assertTrue(entryLoaded, "entry point inside a loaded segment");
        assertTrue(note, "PT_NOTE \"PanamaVMM\" type 1 (start every vCPU)");
    }

    private static boolean hasPanamaNote(ByteBuffer b, int off, int size) {
        int end = off + size;
        while (off + 12 <= end) {
            int namesz = b.getInt(off), descsz = b.getInt(off + 4), type = b.getInt(off + 8);
            byte[] name = new byte[namesz];
            b.get(off + 12, name);
            int desc = off + 12 + ((namesz + 3) & ~3);
            if (namesz == 10
                    && type == 1
                    && descsz == 4
                    && new String(name, StandardCharsets.US_ASCII).equals("PanamaVMM\0")
                    && b.getInt(desc) == 0) {
                return true;
            }
            off = desc + ((descsz + 3) & ~3);
        }
        return false;
    }

    @Test
    void patternsMatchTheGuestsLines() {
        assertTrue(TestGuest.BANNER.matcher("testguest 0.1 cpus=2 mem=65863680").matches());
        assertTrue(TestGuest.GENID.matcher("genid 0x1122334455667788").matches());
        assertTrue(TestGuest.READY.matcher("ready").matches());
        assertTrue(TestGuest.HEARTBEAT.matcher("hb 1 12").matches());
        assertTrue(TestGuest.CORRUPT
                .matcher("CORRUPT 0 addr=0x2000008 expected=0x31994a7133088326 got=0x31994a7133088327")
                .matches());
        assertFalse(TestGuest.HEARTBEAT.matcher("hb 1").matches());
        assertTrue(
                TestGuest.VIRTIO_DEVICE.matcher("virtio 0xfeb00e00 irq=12 id=2").matches());
        assertTrue(TestGuest.VIRTIO_DEVICE
                .matcher("virtio 0xc0000000 irq=5 id=4 error features")
                .matches());
        assertTrue(TestGuest.VIRTIO_DEVICE
                .matcher("virtio 0xfeb00c00 irq=11 unusable magic=0x74726976 version=1")
                .matches());
        assertTrue(TestGuest.RNG.matcher("rng 2 0xdb471b298af7ce41").matches());
        assertTrue(
                TestGuest.CORRUPT_RNG.matcher("CORRUPT rng constant byte=0x00").matches());
        assertTrue(TestGuest.BLK_INFO
                .matcher("blk capacity=131072 size=67108864 qd=8 rw flush table=0x1120000")
                .matches());
        assertTrue(TestGuest.BLK_ID.matcher("blk id disk-one").matches());
        assertTrue(TestGuest.BLK_READONLY.matcher("blk readonly write-status=1").matches());
        assertTrue(TestGuest.BLK
                .matcher("blk 48534 reads=16260 writes=31793 flushes=481")
                .matches());
        assertFalse(TestGuest.BLK.matcher("blk id 1 reads=2 writes=3 flushes=4").matches());
        assertTrue(TestGuest.CORRUPT_BLK
                .matcher("CORRUPT blk sector=10656 expected-gen=4 got=0x0000000000000000")
                .matches());
        assertTrue(TestGuest.CORRUPT_BLK
                .matcher("CORRUPT blk sector=8 expected-gen=4 got=gen:3")
                .matches());
        assertFalse(TestGuest.CORRUPT
                .matcher("CORRUPT blk sector=8 expected-gen=4 got=gen:3")
                .matches());
        assertTrue(TestGuest.CORRUPT_BLK_STALLED
                .matcher("CORRUPT blk stalled inflight=8")
                .matches());
        assertTrue(TestGuest.BLKBENCH
                .matcher("blkbench randread bs=4096 qd=32 ios=29319 us=1007327 iops=29105 mbps=119.2")
                .matches());
    }

    /** A disk of 4 blocks (32 sectors) at generation 3 and its table; {@code table} may be changed. */
    private static byte[] diskAtGeneration3(ByteBuffer table) {
        byte[] disk = new byte[32 * 512];
        for (int sector = 0; sector < 32; sector++) {
            TestGuest.fillDiskSector(disk, 512 * sector, sector, 3);
            table.putInt(4 * sector, 3);
        }
        return disk;
    }

    @Test
    void diskOracleAcceptsWritesNotYetTakenAndOneBlockBeingPrepared() {
        var table = ByteBuffer.allocate(32 * 4).order(ByteOrder.LITTLE_ENDIAN);
        byte[] disk = diskAtGeneration3(table);
        assertEquals(java.util.List.of(), TestGuest.diskAgainstTable(disk, table, 32, 1));
        // block 1 submitted, not taken: all 8 sectors one behind
        for (int s = 8; s < 16; s++) table.putInt(4 * s, 4);
        assertEquals(java.util.List.of(), TestGuest.diskAgainstTable(disk, table, 32, 1));
        assertEquals(1, TestGuest.diskAgainstTable(disk, table, 32, 0).size(), "more than the queue depth behind");
        // block 2 paused while the guest counted its sectors: the first 7 one behind
        for (int s = 16; s < 23; s++) table.putInt(4 * s, 4);
        assertEquals(java.util.List.of(), TestGuest.diskAgainstTable(disk, table, 32, 1));
        // a second such block cannot be: one vCPU prepares one block at a time
        table.putInt(4 * 24, 4);
        assertEquals(1, TestGuest.diskAgainstTable(disk, table, 32, 1).size());
    }

    @Test
    void diskOracleFindsTornStaleAndMisplacedWrites() {
        var table = ByteBuffer.allocate(32 * 4).order(ByteOrder.LITTLE_ENDIAN);
        byte[] disk = diskAtGeneration3(table);
        // a write that stopped inside the block: its first sectors new, the last ones old
        for (int s = 8; s < 16; s++) table.putInt(4 * s, 4);
        for (int s = 8; s < 13; s++) TestGuest.fillDiskSector(disk, 512 * s, s, 4);
        var problems = TestGuest.diskAgainstTable(disk, table, 32, 4);
        assertEquals(1, problems.size(), problems.toString());
        assertTrue(problems.get(0).contains("torn"), problems.get(0));
        // a stale sector (two behind) and one holding another sector's data
        disk = diskAtGeneration3(table);
        table.putInt(4 * 2, 5);
        System.arraycopy(disk, 512 * 20, disk, 512 * 21, 512);
        assertEquals(2, TestGuest.diskAgainstTable(disk, table, 32, 4).size());
    }
}
