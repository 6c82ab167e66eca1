package dev.panamavmm.vmm;

import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.SnapshotException;
import dev.panamavmm.vmm.memory.PageStreams;
import dev.panamavmm.vmm.postcopy.PostcopyDestination;
import dev.panamavmm.vmm.postcopy.Stats;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.SSLSocket;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The destination's side of a TCP migration that switched to post-copy: the guest runs here while
 * its missing pages arrive on the migration's connection. When that connection drops, the guest's
 * threads wait on their missing pages ({@code postcopy-paused}) until {@link #recover} takes a new
 * connection from the source ({@code migrate-recover}); TLS as for the migration.
 */
public final class PostcopyIncoming {
    private static final Logger log = LoggerFactory.getLogger(PostcopyIncoming.class);

    private final PostcopyDestination destination;
    private final MigrationParameters params;
    private volatile String status = "postcopy-active";
    private volatile String error;

    PostcopyIncoming(PostcopyDestination destination, MigrationParameters params) {
        this.destination = destination;
        this.params = params;
    }

    /** Receives on {@code peer} in the background until every page arrived or the connection drops. */
    void receiveOn(Socket peer, InputStream in, OutputStream out) {
        status = "postcopy-active";
        Thread.ofPlatform().daemon().name("postcopy-incoming").start(() -> receive(peer, in, out));
    }

    private void receive(Socket peer, InputStream in, OutputStream out) {
        try {
            var stats = destination.receive(in, out);
            status = "completed";
            error = null;
            log.debug("post-copy complete: {}", stats);
        } catch (IOException | RuntimeException e) {
            error = e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage();
            status = "postcopy-paused";
            log.warn(
                    "post-copy paused, the guest waits for its pages: {} (migrate-recover here, then migrate with"
                            + " resume on the source)",
                    error);
        } finally {
            TcpMigration.close(peer);
        }
    }

    /**
     * Listens at {@code address} (port 0: the system's choice) for the source's new connection
     * and receives on it; returns the port. Refused unless the connection dropped.
     */
    public synchronized int recover(TcpAddress address) {
        if (status.equals("completed")) throw new IllegalStateException("post-copy has completed: nothing to recover");
        if (status.equals("postcopy-recover"))
            throw new IllegalStateException("post-copy already waits for the source (migrate-recover was given)");
        if (!status.equals("postcopy-paused"))
            throw new IllegalStateException(
                    "post-copy is still connected: migrate-recover is for a dropped connection");
        ServerSocket server;
        try {
            server = TcpMigration.listen(address, params);
        } catch (IOException e) {
            throw new SnapshotException("cannot listen on " + address + ": " + e.getMessage());
        }
        status = "postcopy-recover";
        Thread.ofPlatform().daemon().name("postcopy-recover").start(() -> awaitSource(server, address));
        return server.getLocalPort();
    }

    /** Takes the first connection whose TLS handshake succeeds (others are refused in one line) and receives on it. */
    private void awaitSource(ServerSocket server, TcpAddress address) {
        try (server) {
            while (true) {
                var peer = server.accept();
                try {
                    peer.setTcpNoDelay(true);
                    peer.setSoTimeout((int) TimeUnit.SECONDS.toMillis(params.timeoutSeconds()));
                    if (peer instanceof SSLSocket tls) tls.startHandshake();
                } catch (IOException e) {
                    log.warn(
                            "{}: refused a connection that did not finish its TLS handshake: {}",
                            address,
                            e.getMessage());
                    TcpMigration.close(peer);
                    continue;
                }
                log.info("post-copy: the source reconnected from {}", peer.getRemoteSocketAddress());
                status = "postcopy-active";
                receive(peer, PageStreams.in(peer), PageStreams.out(peer));
                return;
            }
        } catch (IOException e) {
            error = e.getMessage();
            status = "postcopy-paused";
            log.warn("post-copy: waiting on {} for the source failed: {}", address, e.getMessage());
        }
    }

    /** {@code postcopy-active}, {@code postcopy-paused}, {@code postcopy-recover} (listening) or {@code completed}. */
    public String status() {
        return status;
    }

    /** What arrived so far, over every connection. */
    public Stats stats() {
        return destination.stats();
    }

    /** Whether every page arrived. */
    public boolean complete() {
        return destination.complete();
    }

    /** {@code query-migrate} on the destination. */
    public Map<String, Object> describe() {
        var s = stats();
        var d = Json.object(
                "status",
                status,
                "postcopy",
                Json.object(
                        "pages-requested",
                        s.pagesRequested(),
                        "pages-streamed",
                        s.pagesStreamed(),
                        "zero-pages",
                        s.zeroPages(),
                        "duplicates",
                        s.duplicates(),
                        "bytes",
                        s.bytes(),
                        "millis-to-last-page",
                        s.millisToLastPage(),
                        "fault-wait-us",
                        s.faultWaitMicros(),
                        "max-fault-wait-us",
                        s.maxFaultWaitMicros()));
        var e = error;
        if (e != null) d.put("error-desc", e);
        return d;
    }
}
