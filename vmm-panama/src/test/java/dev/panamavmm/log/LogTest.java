package dev.panamavmm.log;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Instant;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.slf4j.LoggerFactory;
import org.slf4j.MDC;
import org.slf4j.event.Level;

class LogTest {
    @Test
    void aLineHasTheTimeTheLevelTheThreadTheVmAndTheSource() {
        var at = Instant.parse("2026-12-04T02:40:01.123456Z");
        assertEquals(
                "2026-12-04T02:40:01.123Z vmm: WARN [vcpu-0] vm=vm-3 Vm: guest wrote port 0x80",
                VmmLogger.line(at, Level.WARN, "vcpu-0", "vm-3", "Vm", "guest wrote port 0x80"));
        assertEquals(
                "2026-12-04T02:40:01.123Z vmm: INFO [main] VmSnapshots: saved",
                VmmLogger.line(at, Level.INFO, "main", null, "VmSnapshots", "saved"));
    }

    @Test
    void theTestsRunWithTheVmmsOwnBinding() {
        // surefire sets slf4j.provider as the CLI's Main does
        assertInstanceOf(VmmLogger.class, LoggerFactory.getLogger(LogTest.class));
        assertTrue(LoggerFactory.getLogger(LogTest.class).isInfoEnabled());
    }

    @Test
    void theEnvironmentSetsADefaultAndPerSourceLevels() {
        assertEquals(Level.INFO, LogLevels.parse(null).levelOf("Vm"));
        var config = LogLevels.parse("warn, LocalMigration=debug,VmSnapshots=ERROR");
        assertEquals(Level.WARN, config.levelOf("Vm"));
        assertEquals(Level.DEBUG, config.levelOf("LocalMigration"));
        assertEquals(Level.ERROR, config.levelOf("VmSnapshots"));
        assertEquals(Level.TRACE, LogLevels.parse("trace").levelOf("Vm"));
    }

    @Test
    void unknownWordsAreIgnoredRatherThanStoppingTheVmmAndListedForAWarning() {
        var config = LogLevels.parse("loud,Vm=chatty,,debug, =info");
        assertEquals(Level.DEBUG, config.levelOf("Vm"));
        assertEquals(List.of("loud", "Vm=chatty", "=info"), config.ignored());
        assertTrue(config.warning().startsWith("PANAMA_VMM_LOG: ignored 'loud', 'Vm=chatty', '=info' ("));
        assertNull(LogLevels.parse("warn,LocalMigration=debug").warning());
    }

    /** How a VM's vCPU and device threads get its id: they are started while the building thread has it set. */
    @Test
    void aThreadStartedWhileTheVmIdIsSetCarriesIt() throws InterruptedException {
        var seen = new java.util.concurrent.atomic.AtomicReference<String>();
        Thread child;
        try (var _ = MDC.putCloseable(VmmLogProvider.VM_KEY, "vm-7")) {
            child = Thread.ofPlatform().unstarted(() -> seen.set(MDC.get(VmmLogProvider.VM_KEY)));
        }
        child.start();
        child.join();
        assertEquals("vm-7", seen.get());
        assertNull(MDC.get(VmmLogProvider.VM_KEY), "and the builder's own thread is clear again");
    }
}
