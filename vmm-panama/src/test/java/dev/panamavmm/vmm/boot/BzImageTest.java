package dev.panamavmm.vmm.boot;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import org.junit.jupiter.api.Test;

class BzImageTest {

    @Test
    void readsTheSetupHeaderFieldsTheLoaderHonours() {
        var s = SyntheticBzImage.standard();
        s.setupSects = 3;
        var bz = assertInstanceOf(BzImage.class, KernelImage.parse(s.build(), "k"));
        assertEquals(0x020f, bz.version());
        assertEquals(4 * 512, bz.kernelOffset(), "(setup_sects + 1) * 512");
        assertEquals(s.payload.length, bz.kernelSize());
        assertEquals(0x1000000, bz.loadAddress(), "pref_address");
        assertEquals(0x1000200, bz.entry64(), "64-bit entry = load address + 0x200");
        assertEquals(0x1000000 + 0x800000, bz.footprintEnd(), "load address + init_size");
        assertEquals(255, bz.commandLineMax(), "cmdline_size");
        assertEquals(0x7fffffff, bz.initrdAddressMax());
        assertEquals(0x26c - 0x1f1, bz.setupHeader().length, "the header up to the jump's target");
    }

    @Test
    void setupSectsZeroMeansFour() {
        var s = SyntheticBzImage.standard();
        s.setupSects = 0;
        assertEquals(5 * 512, BzImage.parse(s.build()).kernelOffset());
    }

    @Test
    void refusesWhatItCannotBoot() {
        var s = SyntheticBzImage.standard();
        byte[] good = s.build();
        assertMessage("truncated bzImage", Arrays.copyOf(good, good.length - 100));
        assertMessage("truncated bzImage", Arrays.copyOf(good, 0x230));
        s.version = 0x020a;
        assertMessage("bzImage boot protocol 2.10 is too old", s.build());
        s = SyntheticBzImage.standard();
        s.xloadFlags = 0;
        assertMessage("bzImage has no 64-bit entry point", s.build());
        s = SyntheticBzImage.standard();
        s.loadFlags = 0;
        assertMessage("bzImage wants to be loaded at 0x10000", s.build());
        s = SyntheticBzImage.standard();
        s.kernelAlignment = 0x3000;
        assertMessage("bzImage has an invalid kernel_alignment", s.build());
        s = SyntheticBzImage.standard();
        s.initSize = 16;
        assertMessage("bzImage init_size", s.build());
        var e = assertThrows(BootException.class, () -> KernelImage.parse("#!/bin/sh\necho hi\n".getBytes(), "run.sh"));
        assertEquals("run.sh is not a kernel: neither an ELF executable nor a bzImage", e.getMessage());
    }

    private static void assertMessage(String start, byte[] image) {
        var e = assertThrows(BootException.class, () -> KernelImage.parse(image, "k"));
        assertTrue(e.getMessage().startsWith(start), e.getMessage());
    }
}
