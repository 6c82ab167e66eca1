package dev.panamavmm.cli;

import java.util.HashMap;
import java.util.Map;
import java.util.function.Consumer;
import sun.misc.Signal;
import sun.misc.SignalHandler;

/**
 * SIGINT and SIGTERM as requests to end the VM. {@code sun.misc.Signal} (module jdk.unsupported)
 * runs the handler on a Java thread, outside the signal context, so it may do ordinary work; the
 * JVM does not start its own shutdown, and the VMM exits through its normal path.
 *
 * <p>javac warns about every use of {@code sun.misc} and no lint key turns that off, so this class
 * is compiled on its own without {@code -Werror} (vmm-panama/pom.xml), and no {@code sun.misc}
 * type appears in what it shows its callers.
 */
final class Signals {
    private Signals() {}

    /** The handlers that were in place before {@link #onTermination}. */
    static final class Previous {
        private final Map<Signal, SignalHandler> handlers = new HashMap<>();

        private Previous() {}
    }

    static Previous onTermination(Consumer<String> handler) {
        var previous = new Previous();
        for (var name : new String[] {"INT", "TERM"}) {
            var signal = new Signal(name);
            previous.handlers.put(signal, Signal.handle(signal, s -> handler.accept(s.getName())));
        }
        return previous;
    }

    static void restore(Previous previous) {
        previous.handlers.forEach(Signal::handle);
    }
}
