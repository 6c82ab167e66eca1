package dev.panamavmm.examples;

// begin example
import dev.panamavmm.guest.TestGuest;
import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.migration.RamWriter;
import dev.panamavmm.vmm.MachineConfig;
import dev.panamavmm.vmm.Templates;
import dev.panamavmm.vmm.Vm;
import dev.panamavmm.vmm.VmBuilder;
import dev.panamavmm.vmm.VmListener;
import dev.panamavmm.vmm.VmSnapshots;
import dev.panamavmm.vmm.memory.Backing;
import dev.panamavmm.vmm.memory.GuestMemory;
import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;

/**
 * Boots the test guest, saves and restores it, makes a template of it and two clones: the library
 * calls behind {@code vmm run}, {@code vmm snapshot}, {@code vmm restore}, {@code vmm template
 * create} and {@code vmm clone}. Usage: {@code EmbeddingExample WORK_DIRECTORY}.
 */
public final class EmbeddingExample {
    public static void main(String[] args) throws Exception {
        Path work = Files.createDirectories(Path.of(args[0]));
        var config = new MachineConfig(
                64 * GuestMemory.MIB, // RAM
                1, // vCPUs
                new Backing.Memfd(), // RAM in a memfd: private to this process
                "test guest",
                TestGuest.elf(), // the kernel: an ELF image (or a bzImage, see BootProtocol)
                null, // no initrd
                "console=ttyS0 testguest.hb=100");
        try (var kvm = Kvm.open()) {
            // 1. Boot. The console is any OutputStream; this one lets us wait for the guest's lines.
            var console = new Console();
            try (Vm vm = VmBuilder.boot(kvm, config, console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 3");
                // 2. Save: pauses the guest, writes its state and RAM, and ends the VM (resume = false).
                var saved = VmSnapshots.save(vm, work.resolve("snapshot"), true, false, RamWriter.Progress.NONE);
                System.out.printf("saved %d bytes of RAM%n", saved.ramBytesWritten());
            }
            // 3. Restore: the guest goes on from where it was saved, with the next heartbeat.
            try (Vm vm = VmSnapshots.restore(kvm, work.resolve("snapshot"), console, new VmListener() {})) {
                vm.start();
                console.await("hb 0 6");
            }
            // 4. A template: booted until the guest says it is ready, saved with its RAM in a shared
            //    file (here in /dev/shm); clones map that file copy-on-write.
            var template = Templates.create(
                    kvm, work.resolve("template"), config, Path.of("/dev/shm"), console, new CompletableFuture<>(), 60);
            var loaded = Templates.open(template.dir());
            var first = new Console();
            var second = new Console();
            try (Vm a = Templates.clone(kvm, loaded, first, new VmListener() {});
                    Vm b = Templates.clone(kvm, loaded, second, new VmListener() {})) {
                a.start();
                b.start();
                first.await("hb 0 2");
                second.await("hb 0 2");
                System.out.println("two clones run");
            }
            Templates.remove(template.dir()); // its memory file too, once no clone maps it
        }
    }

    /** The guest's console, kept in memory, with a wait for a line. */
    static final class Console extends OutputStream {
        private final ByteArrayOutputStream bytes = new ByteArrayOutputStream();

        @Override
        public synchronized void write(int b) {
            bytes.write(b);
            notifyAll();
        }

        @Override
        public synchronized void write(byte[] b, int off, int len) {
            bytes.write(b, off, len);
            notifyAll();
        }

        synchronized void await(String line) throws InterruptedException {
            long deadline = System.nanoTime() + 60_000_000_000L;
            while (!bytes.toString().contains("\n" + line + "\n")) {
                long left = deadline - System.nanoTime();
                if (left <= 0) throw new IllegalStateException("the guest did not print " + line + ":\n" + bytes);
                wait(Math.max(1, left / 1_000_000));
            }
        }
    }
}
// end example
