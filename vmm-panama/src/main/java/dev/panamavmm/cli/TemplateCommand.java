package dev.panamavmm.cli;

import dev.panamavmm.api.ApiServer;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.Json;
import dev.panamavmm.migration.SnapshotReader;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.memory.Backing;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;

/** {@code vmm template create|inspect}: VM templates for fast clones. */
@Command(name = "template", mixinStandardHelpOptions = true, description = "Create or inspect VM templates.",
        subcommands = {TemplateCommand.Create.class, TemplateCommand.Inspect.class})
final class TemplateCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Override
    public Integer call() {
        spec.commandLine().usage(spec.commandLine().getErr());
        return Main.USAGE;
    }

    @Command(name = "create", mixinStandardHelpOptions = true,
            description = "Boot a guest with its RAM in a shared file, wait for its ready point (or the API's stop), save it as a template.")
    static final class Create implements Callable<Integer> {
        @Parameters(index = "0", paramLabel = "DIR", description = "the template directory to create")
        Path dir;

        @Mixin
        GuestOptions guest;

        @Option(names = "--mem-dir", paramLabel = "DIR", defaultValue = "/dev/shm",
                description = "where the template's memory file goes (default: ${DEFAULT-VALUE})")
        Path memDir;

        @Option(names = "--console", paramLabel = "WHERE", defaultValue = "file:/dev/null",
                description = "the booting guest's console: stdout or file:PATH (default: ${DEFAULT-VALUE})")
        String console;

        @Option(names = "--api-socket", paramLabel = "PATH", description = "accept stop on this socket as the template point")
        Path apiSocket;

        @Option(names = "--timeout", paramLabel = "SECONDS", defaultValue = "300", description = "longest wait for the ready point")
        long timeout;

        @Spec
        CommandSpec spec;

        @Override
        public Integer call() throws Exception {
            ConsoleIo.checkSpec(console);
            if (console.startsWith("unix:")) throw new UsageException("template create: --console is stdout or file:PATH");
            if (!Files.isDirectory(memDir)) throw new UsageException("--mem-dir " + memDir + " is not a directory");
            var config = guest.config(new Backing.Memfd());
            var stop = new CompletableFuture<Void>();
            try (var kvm = InfoCommand.openKvm(Kvm.DEFAULT_DEVICE); var io = ConsoleIo.open(console);
                 var api = apiSocket == null ? null : ApiServer.start(apiSocket, (command, args) -> switch (command) {
                     case "stop" -> {
                         stop.complete(null);
                         yield Map.of();
                     }
                     default -> null;
                 })) {
                var cancel = new CompletableFuture<String>();
                var previous = Signals.onTermination(name -> cancel.complete("signal"));
                Templates.Created created;
                try {
                    created = Templates.create(kvm, dir, config, memDir, io.output(), stop, cancel, timeout);
                } finally {
                    Signals.restore(previous);
                }
                spec.commandLine().getOut().printf("template %s: memory file %s, booted to ready in %d ms, saved in %d ms%n",
                        created.dir(), created.memoryFile(), created.bootMillis(), created.saveMillis());
                return Main.OK;
            }
        }
    }

    @Command(name = "inspect", mixinStandardHelpOptions = true, description = "Show what a template holds.")
    static final class Inspect implements Callable<Integer> {
        @Parameters(index = "0", paramLabel = "DIR", description = "the template (or snapshot) directory")
        Path dir;

        @Option(names = "--json", description = "print JSON")
        boolean json;

        @Spec
        CommandSpec spec;

        @Override
        public Integer call() {
            var s = SnapshotReader.open(dir);
            var machine = Json.asObject(s.metadata().get("machine"), "machine");
            var ram = s.ram().stream().map(e -> Json.object("id", e.id(), "guestAddress", e.guestAddress(), "size", e.size(),
                    "kind", e.kind(), "shared", e.shared(), "storage", e.byReference() ? "reference" : "in snapshot",
                    "file", e.byReference() ? e.file().toString() : s.file().toString())).toList();
            var info = Json.object("directory", dir.toString(), "formatVersion", (long) s.version(), "hostFlavour", s.flavour(),
                    "createdAtMillis", s.createdAtMillis(), "bypassSharedMemory", s.bypass(), "template",
                    s.ram().stream().anyMatch(e -> e.byReference()), "cpus", machine.get("cpus"), "memory", machine.get("memory"),
                    "kernel", machine.get("kernel"), "cmdline", machine.get("cmdline"), "devices", s.metadata().get("devices"),
                    "ram", ram);
            var out = spec.commandLine().getOut();
            if (json) {
                out.println(Json.write(info));
                return Main.OK;
            }
            out.printf("%-14s%s%n", "directory", dir);
            out.printf("%-14s%d (%s host, %s)%n", "format", s.version(), s.flavour(),
                    java.time.Instant.ofEpochMilli(s.createdAtMillis()));
            out.printf("%-14s%s vCPU(s), %s%n", "machine", machine.get("cpus"), Sizes.format((Long) machine.get("memory")));
            out.printf("%-14s%s%n", "kernel", machine.get("kernel"));
            out.printf("%-14s%s%n", "cmdline", machine.get("cmdline"));
            out.printf("%-14s%s%n", "devices", String.join(", ", ((java.util.List<?>) s.metadata().get("devices")).stream().map(String::valueOf).toList()));
            for (var e : s.ram()) {
                out.printf("%-14s%s at 0x%x, %s, %s%n", "ram", e.id(), e.guestAddress(), Sizes.format(e.size()),
                        e.byReference() ? "by reference to " + e.file() : e.nonZeroPages() + " non-zero pages in the snapshot");
            }
            out.flush();
            return Main.OK;
        }
    }

}
