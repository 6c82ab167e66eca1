package dev.panamavmm.kvm.testing;

import java.lang.annotation.ElementType;
import java.lang.annotation.Retention;
import java.lang.annotation.RetentionPolicy;
import java.lang.annotation.Target;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * A test that needs a real {@code /dev/kvm}. Where the device exists (or with {@code -Dkvm.required=true})
 * the test always runs, so a broken KVM path fails instead of being skipped; only on a host without
 * the device node is it skipped. Each run is counted in {@code target/kvm-tests-ran.txt}, and
 * {@code .ci/run} fails when the device exists and the count is zero.
 */
@Target(ElementType.METHOD)
@Retention(RetentionPolicy.RUNTIME)
@Test
@Tag("kvm")
@ExtendWith(KvmTestExtension.class)
public @interface KvmTest {}
