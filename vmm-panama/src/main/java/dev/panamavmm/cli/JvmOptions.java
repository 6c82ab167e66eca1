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

    /** C1 only: the option {@code PANAMA_VMM_JIT=c2} leaves out, as the launcher does. */
    static final String C1_ONLY = "-XX:TieredStopAtLevel=1";

    static final List<String> ONE_VM =
            List.of("-Xms8m", C1_ONLY, "-XX:+UnlockDiagnosticVMOptions", "-XX:ArchiveRelocationMode=0");

    /**
     * {@code launch} (java first, then its options) with every option of {@link #ONE_VM} it lacks
     * added after java; without C1_ONLY when this process's {@code PANAMA_VMM_JIT} is {@code c2}.
     */
    static List<String> forOneVm(List<String> launch) {
        return forOneVm(launch, "c2".equals(System.getenv("PANAMA_VMM_JIT")));
    }

    static List<String> forOneVm(List<String> launch, boolean c2) {
        var command = new ArrayList<>(launch);
        int at = 1;
        for (var option : ONE_VM)
            if (!command.contains(option) && !(c2 && option.equals(C1_ONLY))) command.add(at++, option);
        return command;
    }
}
