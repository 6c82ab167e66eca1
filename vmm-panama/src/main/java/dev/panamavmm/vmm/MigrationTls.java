package dev.panamavmm.vmm;

import dev.panamavmm.migration.SnapshotException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

/**
 * TLS credentials of a TCP migration, from the JDK's own TLS stack: this side's certificate and
 * key ({@code keyStore}) and the certificates it trusts for the peer ({@code trustStore}), both
 * PKCS12 with one password. Both sides authenticate: the destination demands the source's
 * certificate. The peer is trusted by its certificate alone (no host name check): the trust
 * store should hold only the migration peers' certificates (or the CA that signs only them).
 */
public record MigrationTls(Path keyStore, Path trustStore, char[] password) {
    /** The credentials with the password read from {@code passwordFile} (its first line). */
    public static MigrationTls of(Path keyStore, Path trustStore, Path passwordFile) {
        try {
            var lines = Files.readAllLines(passwordFile, StandardCharsets.UTF_8);
            return new MigrationTls(keyStore, trustStore, (lines.isEmpty() ? "" : lines.getFirst()).toCharArray());
        } catch (IOException e) {
            throw new SnapshotException("cannot read the TLS password file " + passwordFile + ": " + e.getMessage());
        }
    }

    /** A TLS 1.3 context with these credentials; an unreadable or wrong store is a one-line {@link SnapshotException}. */
    public SSLContext context() {
        try {
            var keys = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            keys.init(load(keyStore, "key store"), password);
            var trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            trust.init(load(trustStore, "trust store"));
            var context = SSLContext.getInstance("TLSv1.3");
            context.init(keys.getKeyManagers(), trust.getTrustManagers(), null);
            return context;
        } catch (GeneralSecurityException e) {
            throw new SnapshotException("the TLS credentials are not usable: " + e.getMessage());
        }
    }

    private KeyStore load(Path file, String what) {
        try (InputStream in = Files.newInputStream(file)) {
            var store = KeyStore.getInstance("PKCS12");
            store.load(in, password);
            return store;
        } catch (IOException | GeneralSecurityException e) {
            throw new SnapshotException("cannot read the TLS " + what + " " + file + ": " + e.getMessage());
        }
    }
}
