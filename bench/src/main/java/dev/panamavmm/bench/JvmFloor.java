package dev.panamavmm.bench;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.ServerSocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import tools.jackson.core.JsonParser;
import tools.jackson.core.JsonToken;
import tools.jackson.core.ObjectReadContext;
import tools.jackson.core.json.JsonFactory;

/**
 * The least a Java 25 process has to do before it could restore a VM, and nothing of Panama VMM:
 * start the JVM, link one FFM downcall and call it (every KVM ioctl needs one), read a snapshot's
 * metadata JSON with jackson-core (the snapshot format's metadata reader), listen on a Unix socket
 * (the control API), print {@code ready}. No KVM, no guest, no snapshot file.
 *
 * <p>{@code bench/run-snapshot-bench} times it from spawn to that line, with an AOT cache of its
 * own, beside QEMU's whole restore: a JVM-based restore cannot be faster than this on the same
 * machine. As the VMM does, the downcall is linked on a second thread while the main thread
 * reads the JSON (on two or more CPUs the two overlap).
 *
 * <pre>java -XX:+UseSerialGC --enable-native-access=ALL-UNNAMED -cp floor.jar:jackson-core.jar dev.panamavmm.bench.JvmFloor SOCKET</pre>
 */
public final class JvmFloor {
    private JvmFloor() {}

    /** The metadata of a 1-vCPU, 256 MiB bypass snapshot, as the VMM writes it. */
    static final String METADATA = """
            {"machine":{"memory":268435456,"cpus":1,"kernel":"testguest.elf",\
            "cmdline":"console=ttyS0 testguest.mem=16M testguest.hb=100","backing":"shared-file"},\
            "host":{"flavour":"PVM","xsaveSize":4096},"devices":["serial","i8042","vmm-port"],\
            "createdBy":"panama-vmm","ram":[{"id":"ram0","guestAddress":0,"size":268435456,\
            "kind":"shared-file","shared":true,"file":"/dev/shm/vm.ram","fileOffset":0,\
            "identity":{"device":25,"inode":1234,"size":268435456,"mtimeNanos":1764250000000000000,\
            "ctimeNanos":1764250000000000000}}]}""";

    public static void main(String[] args) throws Throwable {
        if (args.length != 1) {
            System.err.println("usage: JvmFloor SOCKET");
            System.exit(2);
        }
        var linked = new long[1];
        var linker = new Thread(
                () -> {
                    try {
                        linked[0] = getpid();
                    } catch (Throwable t) {
                        throw new IllegalStateException(t);
                    }
                },
                "link");
        linker.start();

        int tokens = countTokens(METADATA);
        Path socket = Path.of(args[0]);
        Files.deleteIfExists(socket);
        try (var server = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
            server.bind(UnixDomainSocketAddress.of(socket));
            linker.join();
            if (linked[0] <= 0 || tokens < 10)
                throw new IllegalStateException("getpid " + linked[0] + ", " + tokens + " tokens");
            System.out.println("ready");
            System.out.flush();
        } finally {
            Files.deleteIfExists(socket);
        }
    }

    /** syscall(SYS_getpid) through a variadic {@code syscall} downcall of the shape the VMM links. */
    @SuppressWarnings("restricted") // native access is enabled for the unnamed module (README, "Native access")
    private static long getpid() throws Throwable {
        var linker = Linker.nativeLinker();
        var l = ValueLayout.JAVA_LONG;
        MethodHandle syscall = linker.downcallHandle(
                linker.defaultLookup().find("syscall").orElseThrow(),
                FunctionDescriptor.of(l, l, l, l, l, l, l, l),
                Linker.Option.firstVariadicArg(1));
        return (long) syscall.invokeExact(39L, 0L, 0L, 0L, 0L, 0L, 0L);
    }

    private static int countTokens(String json) {
        int n = 0;
        try (JsonParser p = new JsonFactory().createParser(ObjectReadContext.empty(), json)) {
            for (JsonToken t = p.nextToken(); t != null; t = p.nextToken()) {
                if (t == JsonToken.VALUE_NUMBER_INT) p.getLongValue();
                n++;
            }
        }
        return n;
    }
}
