package dev.panamavmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;

/** `vmm clone --count N` starts its clone processes the way this one was started. */
class CloneCommandTest {

    @Test
    void aVmmStartedWithMinusJarStartsItsClonesWithTheSameJvmOptionsAndJar() {
        String[] args = {
            "-XX:+UseSerialGC",
            "-XX:AOTCache=/x/vmm.aot",
            "-Xlog:aot=off",
            "-jar",
            "/x/vmm.jar",
            "clone",
            "/t",
            "--count",
            "3"
        };
        assertEquals(
                List.of(
                        "/jdk/bin/java",
                        "-XX:+UseSerialGC",
                        "-XX:AOTCache=/x/vmm.aot",
                        "-Xlog:aot=off",
                        "-jar",
                        "/x/vmm.jar"),
                CloneCommand.sameJvm("/jdk/bin/java", args, "/x/vmm.jar", Path.of("/x/vmm.jar")));
    }

    @Test
    void otherwiseTheClassPathAndMainClassWithNativeAccess() {
        assertEquals(
                List.of(
                        "/jdk/bin/java",
                        "--enable-native-access=ALL-UNNAMED",
                        "-XX:+UseSerialGC",
                        "-cp",
                        "a.jar:b.jar",
                        "dev.panamavmm.cli.Main"),
                CloneCommand.sameJvm(
                        "/jdk/bin/java", new String[] {"-cp", "a.jar:b.jar", "some.Booter"}, "a.jar:b.jar", null));
        // Started with -jar, but another jar (a test runner's booter): not the VMM's, so not reused.
        assertEquals(
                "-cp",
                CloneCommand.sameJvm(
                                "/jdk/bin/java",
                                new String[] {"-jar", "/tmp/booter.jar"},
                                "a.jar",
                                Path.of("/x/vmm.jar"))
                        .get(3));
    }
}
