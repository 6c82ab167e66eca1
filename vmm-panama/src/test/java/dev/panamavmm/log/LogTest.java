package dev.panamavmm.log;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;

import java.util.List;
import org.junit.jupiter.api.Test;

class LogTest {
    @Test
    void placeholdersTakeTheArgumentsInOrder() {
        var out = new StringBuilder();
        assertNull(Log.format(out, "saved {}: pause {} us", new Object[] {"/x", 12L}));
        assertEquals("saved /x: pause 12 us", out.toString());
    }

    @Test
    void aThrowableAfterThePlaceholdersIsReturnedForItsStackTrace() {
        var failure = new IllegalStateException("boom");
        var out = new StringBuilder();
        assertSame(failure, Log.format(out, "command {} failed", new Object[] {"cont", failure}));
        assertEquals("command cont failed", out.toString());
    }

    @Test
    void missingArgumentsLeaveThePlaceholderAndExtraOnesAreDropped() {
        var out = new StringBuilder();
        Log.format(out, "a {} b {}", new Object[] {1});
        assertEquals("a 1 b {}", out.toString());
        out.setLength(0);
        Log.format(out, "no placeholder", new Object[] {1, 2});
        assertEquals("no placeholder", out.toString());
    }

    @Test
    void theEnvironmentSetsADefaultAndPerSourceLevels() {
        assertEquals(Log.Level.INFO, Log.Config.parse(null).levelOf("Vm"));
        var config = Log.Config.parse("warn, LocalMigration=debug,VmSnapshots=ERROR");
        assertEquals(Log.Level.WARN, config.levelOf("Vm"));
        assertEquals(Log.Level.DEBUG, config.levelOf("LocalMigration"));
        assertEquals(Log.Level.ERROR, config.levelOf("VmSnapshots"));
    }

    @Test
    void unknownWordsAreIgnoredRatherThanStoppingTheVmmAndListedForAWarning() {
        var config = Log.Config.parse("loud,Vm=chatty,,debug, =info");
        assertEquals(Log.Level.DEBUG, config.levelOf("Vm"));
        assertEquals(List.of("loud", "Vm=chatty", "=info"), config.ignored());
        assertEquals(List.of(), Log.Config.parse("warn,LocalMigration=debug").ignored());
    }
}
