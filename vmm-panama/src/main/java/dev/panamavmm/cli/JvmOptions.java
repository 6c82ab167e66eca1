package dev.panamavmm.cli;

import java.util.ArrayList;
import java.util.List;

/**
 * The JVM options of a process that runs one VM, as {@code ./vmm} gives them to {@code run},
 * {@code restore}, {@code clone}, {@code standby} and {@code incoming} (the launcher explains
 * each; docs/benchmarks.md, "a smaller JVM per VM process", measures them). A host daemon runs
 * with C2 and starts its process-mode workers with these instead, so a worker costs what a
 * {@code vmm standby} started by {@code ./vmm} costs. {@code JvmOptionsTest} keeps the two lists
 * the same.
 */
final class JvmOptions {
    private JvmOptions() {}

    static final List<String> ONE_VM = List.of(
            "-Xms8m", "-XX:TieredStopAtLevel=1", "-XX:+UnlockDiagnosticVMOptions", "-XX:ArchiveRelocationMode=0");

    /** {@code launch} (java first, then its options) with every option of {@link #ONE_VM} it lacks added after java. */
    static List<String> forOneVm(List<String> launch) {
        var command = new ArrayList<>(launch);
        int at = 1;
        for (var option : ONE_VM) if (!command.contains(option)) command.add(at++, option);
        return command;
    }
}
