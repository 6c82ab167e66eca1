package dev.panamavmm.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/** Key and trust stores for TLS migrations in tests, made by the JDK's own keytool (password "secret"). */
public final class TestCertificates {
    private TestCertificates() {}

    /** A PKCS12 key store with one EC key pair named {@code name}, made by the JDK's keytool; returns it. */
    public static Path keyStore(Path dir, String name) throws Exception {
        var store = dir.resolve(name + ".p12");
        keytool(
                "-genkeypair",
                "-alias",
                name,
                "-keyalg",
                "EC",
                "-groupname",
                "secp256r1",
                "-dname",
                "CN=" + name,
                "-validity",
                "2",
                "-storetype",
                "PKCS12",
                "-keystore",
                store.toString(),
                "-storepass",
                "secret",
                "-keypass",
                "secret");
        return store;
    }

    public static void trust(Path dir, Path trustStore, String name) throws Exception {
        var cert = dir.resolve(name + ".pem");
        keytool(
                "-exportcert",
                "-rfc",
                "-alias",
                name,
                "-keystore",
                dir.resolve(name + ".p12").toString(),
                "-storetype",
                "PKCS12",
                "-storepass",
                "secret",
                "-file",
                cert.toString());
        keytool(
                "-importcert",
                "-noprompt",
                "-alias",
                name,
                "-file",
                cert.toString(),
                "-keystore",
                trustStore.toString(),
                "-storetype",
                "PKCS12",
                "-storepass",
                "secret");
    }

    private static void keytool(String... args) throws Exception {
        var command = new ArrayList<String>();
        command.add(Path.of(System.getProperty("java.home"), "bin", "keytool").toString());
        command.addAll(List.of(args));
        var p = new ProcessBuilder(command).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, p.waitFor(), "keytool " + String.join(" ", args) + ":\n" + out);
    }
}
