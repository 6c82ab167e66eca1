package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.util.List;
import org.junit.jupiter.api.Test;

class JvmOptionsTest {
    /** The launchers' one-VM options (./vmm's and a bundle's, from scripts/java-opts.sh) and the host's for its workers are one list. */
    @Test
    void theLauncherGivesAOneVmProcessTheseOptions() throws Exception {
        String launcher = Files.readString(ReadmeTest.repositoryRoot().resolve("scripts/java-opts.sh"));
        assertTrue(
                Files.readString(ReadmeTest.repositoryRoot().resolve("vmm")).contains("panama_java_opts \"${1:-}\""));
        String oneVm = launcher.substring(launcher.indexOf("    run|restore|clone|standby|incoming)\n"));
        oneVm = oneVm.substring(0, oneVm.indexOf(";;"));
        assertTrue(launcher.contains("serve|host|run|restore|clone|standby|incoming) java_opts+=(-Xms8m)"), launcher);
        for (var option : JvmOptions.ONE_VM.subList(1, JvmOptions.ONE_VM.size()))
            assertTrue(oneVm.contains(option), option + " is not in ./vmm's one-VM options: " + oneVm);
        assertEquals(
                JvmOptions.ONE_VM.size() - 1,
                oneVm.split("java_opts\\+=\\(")[1].trim().split("\\s+").length);
    }

    /** The options after java, as a worker started from {@code java -XX:+UseSerialGC -Xms8m -jar vmm.jar} gets them. */
    private static List<String> worker(boolean c2) {
        var command = JvmOptions.forOneVm(List.of("java", "-XX:+UseSerialGC", "-Xms8m", "-jar", "vmm.jar"), c2);
        assertEquals("java", command.getFirst());
        return command.subList(1, command.size());
    }

    @Test
    void aWorkerGetsTheOptionsItLacksAfterJavaAndWithC2KeepsTheJvmsTiers() {
        var rest =
                List.of("-XX:+UnlockDiagnosticVMOptions", "-XX:ArchiveRelocationMode=0", "-XX:+UseSerialGC", "-Xms8m");
        var c1 = new java.util.ArrayList<>(List.of("-XX:TieredStopAtLevel=1"));
        c1.addAll(rest);
        c1.addAll(List.of("-jar", "vmm.jar"));
        var c2 = new java.util.ArrayList<>(rest);
        c2.addAll(List.of("-jar", "vmm.jar"));
        assertEquals(c1, worker(false));
        assertEquals(c2, worker(true));
    }

    @Test
    void theLauncherLeavesC1OnlyOutForC2AndRefusesOtherValues() throws Exception {
        var script = ReadmeTest.repositoryRoot().resolve("scripts/java-opts.sh");
        assertEquals(
                "-XX:+UseSerialGC -Xms8m -XX:+UnlockDiagnosticVMOptions -XX:ArchiveRelocationMode=0",
                launcherOptions(script, "c2").trim());
        assertTrue(launcherOptions(script, "c1").contains("-XX:TieredStopAtLevel=1"));
        var p = new ProcessBuilder("bash", "-c", ". \"$0\"; panama_java_opts run", script.toString());
        p.environment().put("PANAMA_VMM_JIT", "c3");
        var process = p.redirectErrorStream(true).start();
        String out = new String(process.getInputStream().readAllBytes());
        assertEquals(2, process.waitFor());
        assertEquals("vmm: PANAMA_VMM_JIT=c3 is not c1 (the default) or c2\n", out);
    }

    private static String launcherOptions(java.nio.file.Path script, String jit) throws Exception {
        var p = new ProcessBuilder(
                "bash", "-c", ". \"$0\"; panama_java_opts run; echo \"${java_opts[@]}\"", script.toString());
        p.environment().put("PANAMA_VMM_JIT", jit);
        var process = p.start();
        String out = new String(process.getInputStream().readAllBytes());
        assertEquals(0, process.waitFor());
        return out;
    }
}
