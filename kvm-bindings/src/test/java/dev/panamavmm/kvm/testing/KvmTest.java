package dev.panamavmm.kvm.testing;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

import java.lang.annotation.ElementType;
import java.lang.annotation.Retention;
import java.lang.annotation.RetentionPolicy;
import java.lang.annotation.Target;

/**
 * A test that needs a real {@code /dev/kvm}. Where the device exists (or {@code -Dkvm.required=true},
 * as CI sets it) the test always runs, so a broken KVM path fails instead of being skipped; only on
 * a host without the device node is it skipped. Each run is counted for CI's report.
 */
@Target(ElementType.METHOD)
@Retention(RetentionPolicy.RUNTIME)
@Test
@Tag("kvm")
@ExtendWith(KvmTestExtension.class)
public @interface KvmTest {}
