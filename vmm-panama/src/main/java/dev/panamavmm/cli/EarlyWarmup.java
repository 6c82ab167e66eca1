package dev.panamavmm.cli;

import dev.panamavmm.kvm.sys.LibC;
import java.net.StandardProtocolFamily;
import java.nio.channels.ServerSocketChannel;
import java.util.Set;

/**
 * First-use costs that a VMM command pays anyway, paid on a second thread while the main thread
 * parses the command line and reads its input. A new JVM runs everything cold: its first system
 * call links the FFM downcall (~50 ms here, even with the AOT cache), its first Unix socket loads
 * NIO. With two or more CPUs this overlaps with the main thread's own work instead of adding to
 * it; the main thread simply finds the work done (or waits for the class initialisation in
 * progress, never does it twice).
 */
final class EarlyWarmup {
    private EarlyWarmup() {}

    /** The commands that open /dev/kvm and serve a control socket. */
    private static final Set<String> VM_COMMANDS = Set.of("run", "restore", "clone", "incoming", "serve", "template");

    static void startFor(String[] args) {
        if (args.length == 0 || !VM_COMMANDS.contains(args[0])) return;
        if (Runtime.getRuntime().availableProcessors() < 2) return; // nothing to overlap with
        Thread.ofPlatform().daemon().name("early-warmup").start(EarlyWarmup::run);
    }

    private static void run() {
        try {
            LibC.gettid(); // links the one system-call downcall
            ServerSocketChannel.open(StandardProtocolFamily.UNIX).close(); // loads NIO and its Unix sockets
        } catch (Throwable t) {
            // Only a warm-up: the command's own calls report any real problem.
        }
    }
}
