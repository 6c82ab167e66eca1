package dev.panamavmm.cli;

import dev.panamavmm.api.ApiClient;
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
                "Boot a guest with its RAM in a shared file, wait for its ready point (or the API's stop), save it as a template;"
                        + " or, with --from-clone, make a chained template of a running clone.";
        Path dir;
        Path fromClone;
        String cloneId;
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
                            v -> nets.add(NetOption.parse(v)))
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
                            v -> balloon = RunCommand.balloon(v))
                    .option(
                            "--from-clone",
                            "API_SOCKET",
                            null,
                            "no boot: the clone at this API socket (vmm clone, host) becomes a chained template"
                                    + " (its written pages in a layer, the rest its template's; it runs on)",
                            v -> fromClone = Path.of(v))
                    .option(
                            "--id",
                            "ID",
                            null,
                            "with --from-clone at a vmm serve socket: which of its clones (clone-N)",
                            v -> cloneId = v);
        }

        @Override
        public int call(Cli.Io io) throws Exception {
            if (fromClone != null) {
                boolean bootOptions = guest.anyGiven()
                        || apiSocket != null
                        || !"file:/dev/null".equals(console)
                        || timeout != 300
                        || !memDir.equals(Path.of("/dev/shm"))
                        || !nets.isEmpty()
                        || balloon != null;
                if (bootOptions)
                    throw new UsageException(
                            "template create: --from-clone boots nothing, so it takes no guest, --mem-dir, --console,"
                                    + " --api-socket, --timeout, --net or --balloon options (the clone's template decided them)");
                return fromClone(io);
            }
            if (cloneId != null) throw new UsageException("template create: --id goes with --from-clone");
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

        private int fromClone(Cli.Io io) {
            try (var client =
                    ApiClient.connect(fromClone, ApiWait.millis(ApiWait.DEFAULT_SECONDS), ApiClient.GREETING_MILLIS)) {
                var arguments = Json.object("path", dir.toAbsolutePath().toString());
                if (cloneId != null) arguments.put("id", cloneId);
                var reply = client.execute("template-create", arguments);
                if (reply.containsKey("error")) {
                    var error = Json.asObject(reply.get("error"), "error");
                    io.err().println("vmm: template create failed: " + error.get("desc"));
                    return Main.FAILED;
                }
                var r = Json.asObject(reply.get("return"), "return");
                io.out()
                        .printf(
                                "template %s at depth %s over %s: layer of %s in %s run(s), the clone paused %s ms%n",
                                r.get("path"),
                                r.get("depth"),
                                r.get("parent"),
                                Sizes.format((Long) r.get("layer-bytes")),
                                r.get("layer-runs"),
                                r.get("paused-ms"));
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
        public int call(Cli.Io io) throws Exception {
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
            var chain = Templates.isTemplate(dir) ? Templates.chain(dir) : null;
            List<Path> children = chain == null ? List.of() : Templates.children(dir);
            if (chain != null) {
                info.put(
                        "chain",
                        Json.object(
                                "depth",
                                (long) chain.depth(),
                                "parent",
                                chain.parent() == null ? null : chain.parent().toString(),
                                "layers",
                                chain.layers().stream()
                                        .map(l -> (Object) Json.object(
                                                "file", l.file().toString(), "bytes", l.dataBytes(), "runs", l.runs()))
                                        .toList(),
                                "children",
                                children.stream()
                                        .map(c -> (Object) c.toString())
                                        .toList()));
            }
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
            if (chain != null) {
                out.printf(
                        "%-14s%s%n",
                        "chain",
                        chain.depth() == 1
                                ? "depth 1 (a root template)"
                                : "depth " + chain.depth() + ", parent " + chain.parent());
                for (var l : chain.layers())
                    out.printf("%-14s%s, %s in %d run(s)%n", "layer", l.file(), Sizes.format(l.dataBytes()), l.runs());
                for (var c : children) out.printf("%-14s%s%n", "child", c);
            }
            out.flush();
            return Main.OK;
        }
    }

    static final class Listing implements Cli.Command {
        static final String DESCRIPTION =
                "List the templates in a directory (it, or its subdirectories): guest RAM, creation time, clones, chain depth.";
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
                                (long) t.users(),
                                "depth",
                                (long) t.depth()))
                        .toList()));
            } else {
                if (!templates.isEmpty())
                    out.printf(
                            "%-40s %8s %5s  %-24s %6s %5s  %s%n",
                            "DIRECTORY", "MEMORY", "CPUS", "CREATED", "CLONES", "DEPTH", "MEMORY FILE");
                for (var t : templates) {
                    out.printf(
                            "%-40s %8s %5d  %-24s %6d %5d  %s%n",
                            t.dir(),
                            Sizes.format(t.memoryBytes()),
                            t.cpus(),
                            Instant.ofEpochMilli(t.createdAtMillis()).truncatedTo(ChronoUnit.SECONDS),
                            t.users(),
                            t.depth(),
                            t.memoryFile());
                }
            }
            out.flush();
            return Main.OK;
        }
    }

    static final class Remove implements Cli.Command {
        static final String DESCRIPTION =
                "Remove a template: its memory file (a chained one's layer file), its snapshot and its directory. Clones"
                        + " that still run keep their copy-on-write mapping (the memory is freed when the last one ends);"
                        + " new clones are refused. A template with chained templates made from its clones is kept.";
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
                                    ? " (its " + (removed.chained() ? "layer" : "memory") + " file was already gone)"
                                    : " and its " + (removed.chained() ? "layer" : "memory") + " file "
                                            + removed.memoryFile(),
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
