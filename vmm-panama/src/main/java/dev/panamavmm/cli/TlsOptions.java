package dev.panamavmm.cli;

import dev.panamavmm.vmm.MigrationTls;
import java.nio.file.Path;

/** {@code --tls-keystore/--tls-truststore/--tls-password-file}: TLS credentials of a TCP migration (incoming and migrate). */
final class TlsOptions {
    Path keyStore, trustStore, passwordFile;

    void declare(Cli.Spec spec) {
        spec.option(
                        "--tls-keystore",
                        "FILE",
                        null,
                        "this side's certificate and key (PKCS12): the migration runs over TLS",
                        v -> keyStore = Path.of(v))
                .option(
                        "--tls-truststore",
                        "FILE",
                        null,
                        "the peers' certificates this side trusts (PKCS12)",
                        v -> trustStore = Path.of(v))
                .option(
                        "--tls-password-file",
                        "FILE",
                        null,
                        "the stores' password (first line)",
                        v -> passwordFile = Path.of(v));
    }

    boolean given() {
        return keyStore != null || trustStore != null || passwordFile != null;
    }

    /** The credentials, or null for plain TCP; all three options or none. */
    MigrationTls credentials() {
        if (!given()) return null;
        if (keyStore == null || trustStore == null || passwordFile == null)
            throw new UsageException("TLS needs --tls-keystore, --tls-truststore and --tls-password-file together");
        var tls = MigrationTls.of(keyStore, trustStore, passwordFile);
        tls.context(); // a wrong store or password fails here, in one line
        return tls;
    }
}
