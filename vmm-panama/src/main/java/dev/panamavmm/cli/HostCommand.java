package dev.panamavmm.cli;

import dev.panamavmm.api.ApiServer;
import dev.panamavmm.control.Rehearsal;
import dev.panamavmm.host.VmHost;
import dev.panamavmm.kvm.Kvm;
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;

/**
 * {@code vmm host}: a daemon that runs many VMs, in its own JVM ({@code --isolation shared}) or
 * each in a warm standby worker process that outlives it ({@code --isolation process}).
 */
final class HostCommand implements Cli.Command {
    static final int MAX_STANDBY = 64;
    static final int DEFAULT_STANDBY = 2;

    Path apiSocket;
    Path stateDir;
    Path consoleDir;
    VmHost.Isolation isolation;
    int standby = DEFAULT_STANDBY;
    boolean standbyGiven;

    @Override
    public Cli.Spec spec() {
        return LogFileOption.declare(new Cli.Spec(
                        "host",
                        "Run many VMs: boot, restore and clone them over the control API, each with its own API socket and console.\n"
                                + "Commands: boot {...}, restore {\"path\"}, clone {\"template\"}, incoming {\"uri\"}, destroy {\"id\"},\n"
                                + "stop/cont {\"id\"}, snapshot {\"id\", \"path\"}, migrate {\"id\", \"uri\"}, handover {\"host\"}, query-vms,\n"
                                + "query-host, quit; "
                                + "events VM_STARTED, VM_STOPPED, VM_FAILED.\n"
                                + "With --isolation process each VM runs in a warm vmm standby process of its own, which keeps running\n"
                                + "when the host ends; a host started again on the same --state-dir re-attaches to it.")
                .required("--api-socket", "PATH", "the host's control API socket", v -> apiSocket = Path.of(v))
                .required(
                        "--state-dir",
                        "DIR",
                        "VM API sockets (vm-N.sock), worker records and stderr; created if missing, one host at a time",
                        v -> stateDir = Path.of(v))
                .option(
                        "--isolation",
                        "shared|process",
                        "shared",
                        "shared: VMs run in the host's JVM; process: each in a standby worker process",
                        v -> isolation = switch (v) {
                            case "shared" -> VmHost.Isolation.SHARED;
                            case "process" -> VmHost.Isolation.PROCESS;
                            default ->
                                throw new UsageException("--isolation must be shared or process, not '" + v + "'");
                        })
                .option(
                        "--standby",
                        "N",
                        null,
                        "process isolation: warm standby workers kept ready (refilled at nice 19), 1 to " + MAX_STANDBY
                                + " (default: " + DEFAULT_STANDBY + ")",
                        v -> {
                            standby = Cli.integer(v);
                            standbyGiven = true;
                        })
                .option(
                        "--console-dir",
                        "DIR",
                        null,
                        "each VM's console goes to DIR/vm-N.log (default: the state directory)",
                        v -> consoleDir = Path.of(v)));
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        if (standbyGiven && isolation == VmHost.Isolation.SHARED)
            throw new UsageException("--standby is for --isolation process (shared VMs need no worker processes)");
        if (standby < 1 || standby > MAX_STANDBY)
            throw new UsageException("--standby must be 1 to " + MAX_STANDBY + ", not " + standby);
        Cli.createDirectories("--state-dir", stateDir);
        if (consoleDir == null) consoleDir = stateDir;
        else Cli.createDirectories("--console-dir", consoleDir);
        var info = ProcessHandle.current().info();
        // Workers run one VM each: they get a one-VM process's options, not this host's (C2).
        var launch = JvmOptions.forOneVm(CloneCommand.sameJvm(
                info.command().orElse("java"),
                info.arguments().orElse(new String[0]),
                System.getProperty("java.class.path"),
                CloneCommand.ownJar()));
        var quit = new CountDownLatch(1);
        // Opened in both modes: without KVM the host says so now, not with every worker that fails.
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE);
                var host = VmHost.open(
                        isolation,
                        isolation == VmHost.Isolation.SHARED ? kvm : null,
                        stateDir.toAbsolutePath(),
                        consoleDir.toAbsolutePath(),
                        standby,
                        launch)) {
            var previous = Signals.onTermination(name -> quit.countDown());
            if (isolation == VmHost.Isolation.SHARED) Rehearsal.startInBackground(kvm); // its VMs then run warm code
            try (var server = ApiServer.start(apiSocket, host.handler(quit::countDown))) {
                host.attach(server);
                io.err()
                        .println("vmm: host (" + isolation.label() + " isolation) at " + apiSocket + ", state in "
                                + stateDir);
                io.err().flush();
                quit.await();
            } finally {
                Signals.restore(previous);
            }
        }
        return Main.OK;
    }
}
