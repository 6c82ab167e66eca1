package dev.panamavmm.cli;

import dev.panamavmm.control.Rehearsal;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.RamVerifier;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmSnapshots;
import dev.panamavmm.vmm.memory.MemoryLoad;
import java.nio.file.Path;

/** {@code vmm restore DIR}: a new VMM process continues the guest saved in a snapshot directory. */
final class RestoreCommand implements Cli.Command {
    boolean warmUp;
    Path dir;

    boolean paused, verify;
    MemoryLoad memoryLoad = MemoryLoad.MAPPED;

    final VmIoOptions vmIo = new VmIoOptions();

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec(
                        "restore",
                        "Restore a VM from a snapshot directory and run it (its console and API as with run)."
                                + " A template is refused, never run in place: start it with vmm clone.")
                .parameter(
                        "DIR",
                        "the snapshot directory (not a template: vmm clone DIR runs a copy-on-write clone of one)",
                        v -> dir = Path.of(v))
                .flag("--paused", "restore but do not run the guest until the API's cont", () -> paused = true)
                .option(
                        "--memory-load",
                        "MODE",
                        "mapped",
                        "how RAM stored in the snapshot file comes in: mapped (private mapping of the file, pages"
                                + " fault in 4 KiB at a time), lazy (userfaultfd: faults served in 64 KiB chunks, the"
                                + " rest loaded in the background; the first restore records a working set beside the"
                                + " snapshot, later ones load it before the guest runs) or eager (all read before the"
                                + " guest runs)",
                        v -> memoryLoad = MemoryLoad.parse(v))
                .flag(
                        "--warm-up",
                        "rehearse save, restore and live update once in the background (nice 19) so that the first"
                                + " snapshot or migrate runs warm code (off by default: vmm standby is the warm VMM)",
                        () -> warmUp = true)
                .flag(
                        "--verify",
                        "first check every RAM checksum (as snapshot verify) and refuse a damaged snapshot;"
                                + " a format 1 snapshot, which has none, is restored with a warning",
                        () -> verify = true)
                .include(vmIo::declare);
    }

    @Override
    public int call(Cli.Io io) throws Exception {
        ConsoleIo.checkSpec(vmIo.console);
        if (paused && vmIo.apiSocket == null) throw new UsageException("--paused needs --api-socket (to send cont)");
        // The snapshot first: reading it needs no KVM, and meanwhile EarlyWarmup links the downcall KVM needs.
        var loaded = VmSnapshots.load(dir);
        Templates.refuseTemplate(loaded); // before the console or API socket is opened
        if (verify) {
            var verified = RamVerifier.verify(loaded.snapshot());
            io.err()
                    .println("vmm: " + SnapshotCommand.Verify.summary(loaded.snapshot(), verified)
                            + (verified.checksums() ? "" : "; restoring it unverified"));
            io.err().flush();
        }
        try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE)) {
            return VmSession.serve(
                    vmIo.console,
                    vmIo.apiSocket,
                    paused,
                    io.err(),
                    Rehearsal.requested(warmUp) ? kvm : null,
                    (out, listener) ->
                            VmBuilder.fromSnapshot(kvm, loaded, VmBuilder.Mode.CONTINUE, memoryLoad, out, listener));
        }
    }
}
