package dev.panamavmm.vmm;

import dev.panamavmm.devices.virtio.BalloonMemory;
import dev.panamavmm.kvm.KvmException;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.vmm.boot.X86Boot;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.lang.foreign.MemorySegment;

/**
 * Gives guest pages back to the host the way each RAM block's backing allows: a copy-on-write
 * page of a {@link Backing.PrivateFile} mapping (a clone of a template, a full snapshot's own
 * file) is dropped with {@code MADV_DONTNEED}, so the clone maps the file's page again and its
 * private copy is freed; a page of a {@link Backing.SharedFile} or {@link Backing.Memfd}
 * ({@code MAP_SHARED}) has its hole punched with {@code MADV_REMOVE} (the file's page is freed; the
 * guest reads zeros next). The first MiB of guest RAM is the VMM's (GDT, boot parameters, page
 * tables, the command line, ACPI tables and the generation ID, which a clone gets anew): never
 * given back. While a lazy restore still fills RAM through userfaultfd nothing is given back (a
 * removed page that the loader already copied would fault for ever).
 */
final class BalloonBackend implements BalloonMemory {
    /** Below this guest address RAM holds what the VMM wrote for the guest. */
    static final long VMM_PAGES_END = X86Boot.KERNEL_MIN;

    private final GuestMemory memory;

    BalloonBackend(GuestMemory memory) {
        this.memory = memory;
    }

    @Override
    public Outcome release(long address, long length) {
        if (address < 0 || length <= 0 || address + length < address) return Outcome.NOT_RAM;
        var block = memory.blockAt(address, length);
        if (block == null) return Outcome.NOT_RAM;
        if (address < VMM_PAGES_END) return Outcome.PROTECTED;
        var stats = memory.loadStats();
        if (stats != null && !stats.complete()) return Outcome.KEPT;
        var pages = block.segment().asSlice(address - block.guestAddress(), length);
        int advice = block.backing() instanceof Backing.PrivateFile
                ? LibcConstants.MADV_DONTNEED
                : LibcConstants.MADV_REMOVE;
        try {
            LibC.madvise(pages, advice);
            return Outcome.RETURNED;
        } catch (KvmException e) {
            return Outcome.KEPT; // a file system without hole punching: the pages stay
        }
    }

    @Override
    public long guestAddress(MemorySegment buffer) {
        long at = buffer.address();
        for (var b : memory.blocks()) {
            long start = b.segment().address();
            if (at >= start && at - start < b.size()) return b.guestAddress() + (at - start);
        }
        return -1;
    }
}
