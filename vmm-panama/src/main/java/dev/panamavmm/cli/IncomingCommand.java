package dev.panamavmm.cli;

import dev.panamavmm.control.Rehearsal;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.MigrationParameters;
import dev.panamavmm.vmm.TcpAddress;
import dev.panamavmm.vmm.memory.Sizes;
import java.nio.file.Path;

/** {@code vmm incoming unix:PATH}: waits for a running VMM to hand over its guest (live update), then runs it. */
final class IncomingCommand implements Cli.Command {
    String uri;

    final VmIoOptions vmIo = new VmIoOptions();

    final TlsOptions tls = new TlsOptions();

    Long memory;

    Integer cpus;

    long timeout;

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec(
                        "incoming",
                        "Wait on a Unix socket (live update) or a TCP port (from another host) for a VM from a running"
                                + " VMM (vmm migrate), then run it.")
                .parameter("unix:PATH|tcp:[HOST]:PORT", "where to wait (no HOST: 127.0.0.1)", v -> uri = v)
                .include(tls::declare)
                .include(vmIo::declare)
                .option("--memory", "SIZE", null, "refuse a VM of another RAM size", v -> memory = Sizes.parse(v))
                .option("--cpus", "N", null, "refuse a VM with another vCPU count", v -> cpus = Cli.integer(v))
                .option(
                        "--timeout",
                        "SECONDS",
                        "10",
                        "longest wait for each step after the VM arrives",
                        v -> timeout = Cli.longInteger(v));
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        if (uri.startsWith("tcp:")) return tcp(io);
        if (tls.given()) throw new UsageException("--tls-* options are for tcp: addresses");
        Path socket = socketPath(uri).toAbsolutePath();
        ConsoleIo.checkSpec(vmIo.console);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            // Before the socket appears: whoever waits for it to migrate then meets warm code (~1 s here).
            Rehearsal.runAndWait(kvm);
            // A standby VMM told to wait for a migration: its API (query-status "inmigrate", quit)
            // is there from the start, and a signal ends it with its socket removed.
            return VmSession.serveStandby(
                    kvm,
                    vmIo.console,
                    vmIo.apiSocket,
                    io.err(),
                    standby -> standby.startIncoming(socket, this::refusal),
                    "stopped before a VM arrived");
        }
    }

    /** From another host: the pages, then the state, over one TCP connection (TLS with --tls-*). */
    private int tcp(Cli.Io io) throws Exception {
        TcpAddress address;
        try {
            address = TcpAddress.parse(uri);
        } catch (IllegalArgumentException e) {
            throw new UsageException(e.getMessage());
        }
        var params = MigrationParameters.DEFAULTS.withTimeout(timeout).withTls(tls.credentials());
        ConsoleIo.checkSpec(vmIo.console);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            Rehearsal.runAndWait(kvm);
            return VmSession.serveStandby(
                    kvm,
                    vmIo.console,
                    vmIo.apiSocket,
                    io.err(),
                    standby -> {
                        var incoming = standby.startIncomingTcp(address, params, this::refusal);
                        // Who started it (a script, a test) learns the port when it asked for port 0.
                        io.err()
                                .println("vmm: waiting for a migration on "
                                        + new TcpAddress(address.host(), incoming.port()));
                        io.err().flush();
                        return incoming.vm();
                    },
                    "stopped before a VM arrived");
        }
    }

    /** Why this VMM refuses the machine it is handed, or null (--memory and --cpus, when given). */
    private String refusal(MachineConfig config) {
        if (memory != null && memory != config.memoryBytes()) {
            return "this VMM expects " + Sizes.format(memory) + " of RAM, the VM has "
                    + Sizes.format(config.memoryBytes());
        }
        if (cpus != null && cpus != config.cpus())
            return "this VMM expects " + cpus + " vCPUs, the VM has " + config.cpus();
        return null;
    }

    static Path socketPath(String uri) {
        if (!uri.startsWith("unix:") || uri.length() == 5)
            throw new UsageException("the address must be unix:PATH, not '" + uri + "'");
        return Path.of(uri.substring(5));
    }
}
