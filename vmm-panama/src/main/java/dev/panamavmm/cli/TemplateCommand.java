package dev.panamavmm.cli;

import dev.panamavmm.api.ApiCommands;
import dev.panamavmm.api.ApiServer;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.vmm.NetConfig;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.VirtioConfig;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.Sizes;
import java.nio.file.Path;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;

/** {@code vmm template create|inspect|list|rm}: VM templates for fast clones. */
final class TemplateCommand implements Cli.Command {

    @Override
    public Cli.Spec spec() {
        return new Cli.Spec("template", "Create, inspect, list or remove VM templates.")
                .subcommand("create", Create::new)
                .subcommand("inspect", Inspect::new)
                .subcommand("list", Listing::new)
                .subcommand("rm", Remove::new);
    }

    @Override
    public int call(Cli.Io io) {
        io.err().print(Cli.usage(this, "vmm template"));
        io.err().flush();
        return Main.USAGE;
    }

    static final class Create implements Cli.Command {
        static final String DESCRIPTION =
                "Boot a guest with its RAM in a shared file, wait for its ready point (or the API's stop), save it as a template.";
        Path dir;
        final GuestOptions guest = new GuestOptions();
        Path memDir;
        String console;
        Path apiSocket;
        long timeout;
        final List<NetConfig> nets = new ArrayList<>();
        VirtioConfig.Balloon balloon;

        @Override
        public Cli.Spec spec() {
            return new Cli.Spec("create", DESCRIPTION)
                    .parameter("DIR", "the template directory to create", v -> dir = Path.of(v))
                    .include(guest::declare)
                    .option(
                            "--net",
                            "tap=NAME[,mac=MAC][,id=ID]",
                            null,
                            "a virtio-net device while the template boots (each clone then needs its own: vmm clone"
                                    + " --net); repeat for more",
                            v -> {
                                try {
                                    nets.add(NetConfig.parse(v));
                                } catch (IllegalArgumentException e) {
                                    throw new UsageException("--net " + v + ": " + e.getMessage());
                                }
                            })
                    .option(
                            "--mem-dir",
                            "DIR",
                            "/dev/shm",
                            "where the template's memory file goes (created if missing)",
                            v -> memDir = Path.of(v))
                    .option(
                            "--console",
                            "WHERE",
                            "file:/dev/null",
                            "the booting guest's console: stdout or file:PATH",
                            v -> console = v)
                    .option(
                            "--api-socket",
                            "PATH",
                            null,
                            "accept stop on this socket as the template point",
                            v -> apiSocket = Path.of(v))
                    .option(
                            "--timeout",
                            "SECONDS",
                            "300",
                            "longest wait for the ready point",
                            v -> timeout = Cli.longInteger(v))
                    .option(
                            "--balloon",
                            "[deflate-on-oom][,stats=SECONDS][,reporting]",
                            null,
                            "a virtio-balloon device, as run's; every clone has it",
                            v -> balloon = RunCommand.balloon(v));
        }

        @Override
        public int call(Cli.Io io) throws Exception {
            ConsoleIo.checkSpec(console);
            if (console.startsWith("unix:"))
                throw new UsageException("template create: --console is stdout or file:PATH");
            Cli.createDirectories("--mem-dir", memDir);
            var config = guest.config(new Backing.Memfd()).withNets(nets).withBalloon(balloon);
            var stop = new CompletableFuture<Void>();
            try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE);
                    var consoleIo = ConsoleIo.open(console);
                    var _ = apiSocket == null
                            ? null
                            : ApiServer.start(apiSocket, new ApiCommands().add("stop", args -> {
                                        stop.complete(null);
                                        return Map.of();
                                    }))) {
                var cancel = new CompletableFuture<String>();
                var previous = Signals.onTermination(name -> cancel.complete("signal"));
                Templates.Created created;
                try {
                    created = Templates.create(kvm, dir, config, memDir, consoleIo.output(), stop, cancel, timeout);
                } finally {
                    Signals.restore(previous);
                }
                io.out()
                        .printf(
                                "template %s: memory file %s, booted to ready in %d ms, saved in %d ms%n",
                                created.dir(), created.memoryFile(), created.bootMillis(), created.saveMillis());
                return Main.OK;
            }
        }
    }

    static final class Inspect implements Cli.Command {
        static final String DESCRIPTION = "Show what a template holds.";
        Path dir;
        boolean json;

        @Override
        public Cli.Spec spec() {
            return new Cli.Spec("inspect", DESCRIPTION)
                    .parameter("DIR", "the template (or snapshot) directory", v -> dir = Path.of(v))
                    .flag("--json", "print JSON", () -> json = true);
        }

        @Override
        public int call(Cli.Io io) {
            var s = SnapshotReader.open(dir);
            var machine = Json.asObject(s.metadata().get("machine"), "machine");
            var ram = s.ram().stream()
                    .map(e -> Json.object(
                            "id",
                            e.id(),
                            "guestAddress",
                            e.guestAddress(),
                            "size",
                            e.size(),
                            "kind",
                            e.kind(),
                            "shared",
                            e.shared(),
                            "storage",
                            e.byReference() ? "reference" : "in snapshot",
                            "file",
                            e.byReference() ? e.file().toString() : s.file().toString()))
                    .toList();
            var info = Json.object(
                    "directory",
                    dir.toString(),
                    "formatVersion",
                    (long) s.version(),
                    "hostFlavour",
                    s.flavour(),
                    "createdAtMillis",
                    s.createdAtMillis(),
                    "bypassSharedMemory",
                    s.bypass(),
                    "template",
                    s.ram().stream().anyMatch(e -> e.byReference()),
                    "cpus",
                    machine.get("cpus"),
                    "memory",
                    machine.get("memory"),
                    "kernel",
                    machine.get("kernel"),
                    "cmdline",
                    machine.get("cmdline"),
                    "devices",
                    s.metadata().get("devices"),
                    "ram",
                    ram);
            var out = io.out();
            if (json) {
                out.println(Json.write(info));
                return Main.OK;
            }
            out.printf("%-14s%s%n", "directory", dir);
            out.printf(
                    "%-14s%d (%s host, %s)%n",
                    "format", s.version(), s.flavour(), Instant.ofEpochMilli(s.createdAtMillis()));
            out.printf(
                    "%-14s%s vCPU(s), %s%n",
                    "machine", machine.get("cpus"), Sizes.format((Long) machine.get("memory")));
            out.printf("%-14s%s%n", "kernel", machine.get("kernel"));
            out.printf("%-14s%s%n", "cmdline", machine.get("cmdline"));
            out.printf(
                    "%-14s%s%n",
                    "devices",
                    String.join(
                            ", ",
                            ((List<?>) s.metadata().get("devices"))
                                    .stream().map(String::valueOf).toList()));
            for (var e : s.ram()) {
                out.printf(
                        "%-14s%s at 0x%x, %s, %s%n",
                        "ram",
                        e.id(),
                        e.guestAddress(),
                        Sizes.format(e.size()),
                        e.byReference()
                                ? "by reference to " + e.file()
                                : e.nonZeroPages() + " non-zero pages in the snapshot");
            }
            out.flush();
            return Main.OK;
        }
    }

    static final class Listing implements Cli.Command {
        static final String DESCRIPTION =
                "List the templates in a directory (it, or its subdirectories): guest RAM, creation time, clones.";
        Path dir;
        boolean json;

        @Override
        public Cli.Spec spec() {
            // Templates are created where their DIR says (only their memory files have a default place, /dev/shm).
            return new Cli.Spec("list", DESCRIPTION)
                    .parameter("DIR", "a template directory or a directory of templates", v -> dir = Path.of(v))
                    .flag("--json", "print JSON", () -> json = true);
        }

        @Override
        public int call(Cli.Io io) throws Exception {
            var templates = Templates.list(dir);
            var out = io.out();
            if (json) {
                out.println(Json.write(templates.stream()
                        .map(t -> (Object) Json.object(
                                "directory",
                                t.dir().toString(),
                                "memoryFile",
                                t.memoryFile().toString(),
                                "memory",
                                t.memoryBytes(),
                                "cpus",
                                (long) t.cpus(),
                                "createdAtMillis",
                                t.createdAtMillis(),
                                "clones",
                                (long) t.users()))
                        .toList()));
            } else {
                if (!templates.isEmpty())
                    out.printf(
                            "%-40s %8s %5s  %-24s %6s  %s%n",
                            "DIRECTORY", "MEMORY", "CPUS", "CREATED", "CLONES", "MEMORY FILE");
                for (var t : templates) {
                    out.printf(
                            "%-40s %8s %5d  %-24s %6d  %s%n",
                            t.dir(),
                            Sizes.format(t.memoryBytes()),
                            t.cpus(),
                            Instant.ofEpochMilli(t.createdAtMillis()).truncatedTo(ChronoUnit.SECONDS),
                            t.users(),
                            t.memoryFile());
                }
            }
            out.flush();
            return Main.OK;
        }
    }

    static final class Remove implements Cli.Command {
        static final String DESCRIPTION =
                "Remove a template: its memory file, its snapshot and its directory. Clones that still run"
                        + " keep their copy-on-write mapping (the memory is freed when the last one ends); new clones are refused.";
        Path dir;

        @Override
        public Cli.Spec spec() {
            return new Cli.Spec("rm", DESCRIPTION)
                    .parameter(
                            "DIR",
                            "the template directory (anything else is refused and left as it is)",
                            v -> dir = Path.of(v));
        }

        @Override
        public int call(Cli.Io io) throws Exception {
            var removed = Templates.remove(dir);
            io.out()
                    .printf(
                            "removed template %s%s%s%s%n",
                            removed.dir(),
                            removed.memoryFile() == null
                                    ? " (its memory file was already gone)"
                                    : " and its memory file " + removed.memoryFile(),
                            removed.runningClones() == 0
                                    ? ""
                                    : "; " + removed.runningClones()
                                            + " running clone(s) keep their copy until they end",
                            removed.otherFilesKept() ? "; the directory holds other files and was kept" : "");
            io.out().flush();
            return Main.OK;
        }
    }
}
