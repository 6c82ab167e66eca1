package dev.panamavmm.cli;

import sun.misc.Signal;
import sun.misc.SignalHandler;

import java.util.Map;
import java.util.function.Consumer;

/**
 * SIGINT and SIGTERM as requests to end the VM. {@code sun.misc.Signal} (module jdk.unsupported)
 * runs the handler on a Java thread, outside the signal context, so it may do ordinary work; the
 * JVM does not start its own shutdown, and the VMM exits through its normal path.
 */
final class Signals {
    private Signals() {}

    static Map<Signal, SignalHandler> onTermination(Consumer<String> handler) {
        var previous = new java.util.HashMap<Signal, SignalHandler>();
        for (var name : new String[] {"INT", "TERM"}) {
            var signal = new Signal(name);
            previous.put(signal, Signal.handle(signal, s -> handler.accept(s.getName())));
        }
        return previous;
    }

    static void restore(Map<Signal, SignalHandler> previous) {
        previous.forEach(Signal::handle);
    }
}
