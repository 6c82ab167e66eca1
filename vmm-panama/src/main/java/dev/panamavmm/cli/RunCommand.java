package dev.panamavmm.cli;

import dev.panamavmm.control.Rehearsal;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.vmm.DeviceTable;
import dev.panamavmm.vmm.DiskConfig;
import dev.panamavmm.vmm.NetConfig;
import dev.panamavmm.vmm.VirtioConfig;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VsockConfig;
import dev.panamavmm.vmm.memory.Backing;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * {@code vmm run}: boots a guest (by default the embedded test guest) and shows its console until
 * the guest exits, the user quits (Ctrl-A x on a terminal, Ctrl-C, the API's quit) or the VM fails.
 */
final class RunCommand implements Cli.Command {
    boolean warmUp;
    final GuestOptions guest = new GuestOptions();
    Path memPath;
    boolean shared;
    final List<DiskConfig> disks = new ArrayList<>();
    boolean rng;
    final List<NetConfig> nets = new ArrayList<>();
    VirtioConfig.Balloon balloon;
    VsockConfig vsock;

    final VmIoOptions vmIo = new VmIoOptions();

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec("run", "Boot a guest and show its console.")
                .include(guest::declare)
                .option(
                        "--mem-path",
                        "FILE",
                        null,
                        "back guest RAM with this file (tmpfs or disk)",
                        v -> memPath = Path.of(v))
                .flag(
                        "--shared",
                        "map --mem-path shared: the file holds the guest's memory and outlives the VMM",
                        () -> shared = true)
                .option(
                        "--disk",
                        "PATH[,readonly][,id=ID][,cache=writeback|none]",
                        null,
                        "a virtio-blk disk over a raw file or block device (repeat for more; id: at most 20 characters;"
                                + " cache=none: O_DIRECT, around the host's page cache)",
                        v -> {
                            try {
                                disks.add(DiskConfig.parse(v));
                            } catch (IllegalArgumentException e) {
                                throw new UsageException("--disk " + v + ": " + e.getMessage());
                            }
                        })
                .flag("--rng", "a virtio-rng device fed by the host's getrandom", () -> rng = true)
                .option(
                        "--net",
                        "tap=NAME|fd=N[,mac=MAC][,id=ID]",
                        null,
                        "a virtio-net device on an existing tap (ip tuntap add dev NAME mode tap), or on an open tap"
                                + " descriptor; without mac= a random locally administered one (repeat for more)",
                        v -> nets.add(NetOption.parse(v)))
                .option(
                        "--balloon",
                        "[deflate-on-oom][,stats=SECONDS][,reporting]",
                        null,
                        "a virtio-balloon device: the guest gives pages back (inflate, free page reporting) and sends"
                                + " statistics every SECONDS; give \"\" for a plain balloon",
                        v -> balloon = balloon(v))
                .option(
                        "--vsock",
                        "cid=N,uds=PATH",
                        null,
                        "a virtio-vsock device: the guest's CID (3 or more); host programs connect to the Unix socket PATH"
                                + " and write CONNECT PORT, the guest's connections to port P go to PATH_P",
                        v -> vsock = VsockOption.parse("--vsock", v))
                .flag(
                        "--warm-up",
                        "rehearse save, restore and live update once in the background (nice 19) so that the first"
                                + " snapshot or migrate runs warm code (off by default: vmm standby is the warm VMM)",
                        () -> warmUp = true)
                .include(vmIo::declare);
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        if (shared && memPath == null) throw new UsageException("--shared needs --mem-path FILE");
        ConsoleIo.checkSpec(vmIo.console);
        Backing backing = new Backing.Memfd();
        if (memPath != null) {
            if (Files.isDirectory(memPath))
                throw new UsageException("--mem-path " + memPath + " is a directory; give a file");
            if (!shared && !Files.exists(memPath)) {
                throw new UsageException("--mem-path " + memPath
                        + " without --shared maps an existing file copy-on-write, and it does not exist");
            }
            backing = shared ? new Backing.SharedFile(memPath) : new Backing.PrivateFile(memPath);
        }
        if (disks.size() + (rng ? 1 : 0) + nets.size() + (vsock != null ? 1 : 0) + (balloon != null ? 1 : 0)
                > DeviceTable.VIRTIO_MAX_DEVICES)
            throw new UsageException("at most " + DeviceTable.VIRTIO_MAX_DEVICES
                    + " virtio devices (--disk, --rng, --net, --vsock and --balloon)");
        for (var d : disks) {
            if (!Files.exists(d.path())) throw new UsageException("--disk " + d.path() + " does not exist");
            if (Files.isDirectory(d.path())) throw new UsageException("--disk " + d.path() + " is a directory");
            if (Files.isRegularFile(d.path()) && Files.size(d.path()) < 512)
                throw new UsageException("--disk " + d.path() + " is smaller than one 512-byte sector");
        }
        if (vsock != null) VsockOption.check("--vsock", vsock);
        var config = guest.config(backing)
                .withVirtio(disks, rng)
                .withNets(nets)
                .withVsock(vsock)
                .withBalloon(balloon);
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            if (guest.cpus > kvm.maxVcpus()) {
                throw new UsageException(
                        "--cpus " + guest.cpus + " is more than this host's maximum of " + kvm.maxVcpus());
            }
            return VmSession.serve(
                    vmIo.console,
                    vmIo.apiSocket,
                    false,
                    io.err(),
                    Rehearsal.requested(warmUp) ? kvm : null,
                    (out, listener) -> VmBuilder.boot(kvm, config, out, listener));
        }
    }

    /** {@code --balloon}'s value as a device configuration, or a usage error. */
    static VirtioConfig.Balloon balloon(String value) {
        try {
            return VirtioConfig.Balloon.parse(value);
        } catch (IllegalArgumentException e) {
            throw new UsageException("--balloon " + value + ": " + e.getMessage());
        }
    }
}
