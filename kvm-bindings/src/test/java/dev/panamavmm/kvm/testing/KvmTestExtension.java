package dev.panamavmm.kvm.testing;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import org.junit.jupiter.api.extension.BeforeEachCallback;
import org.junit.jupiter.api.extension.ConditionEvaluationResult;
import org.junit.jupiter.api.extension.ExecutionCondition;
import org.junit.jupiter.api.extension.ExtensionContext;

/** Runs {@link KvmTest}s whenever KVM can be expected, and records each one that ran. */
public final class KvmTestExtension implements ExecutionCondition, BeforeEachCallback {
    /** One line per KVM test started; .ci/run counts them. */
    public static final Path LEDGER = Path.of("target", "kvm-tests-ran.txt");

    @Override
    public ConditionEvaluationResult evaluateExecutionCondition(ExtensionContext context) {
        if (Files.exists(Path.of("/dev/kvm"))) {
            return ConditionEvaluationResult.enabled("/dev/kvm exists: KVM tests are mandatory");
        }
        if (Boolean.getBoolean("kvm.required")) {
            return ConditionEvaluationResult.enabled(
                    "kvm.required is set: the test must run (and will fail without /dev/kvm)");
        }
        return ConditionEvaluationResult.disabled("no /dev/kvm on this host");
    }

    @Override
    public void beforeEach(ExtensionContext context) throws IOException {
        Files.createDirectories(LEDGER.getParent());
        Files.writeString(
                LEDGER,
                context.getDisplayName().replace('\n', ' ') + " " + context.getUniqueId() + "\n",
                StandardCharsets.UTF_8,
                StandardOpenOption.CREATE,
                StandardOpenOption.APPEND);
    }
}
