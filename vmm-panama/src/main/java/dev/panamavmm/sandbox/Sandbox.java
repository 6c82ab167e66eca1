package dev.panamavmm.sandbox;

import static dev.panamavmm.kvm.bindings.SandboxConstants.AUDIT_ARCH_X86_64;
import static dev.panamavmm.kvm.bindings.SandboxConstants.CLONE_THREAD;
import static dev.panamavmm.kvm.bindings.SandboxConstants.PR_SET_NO_NEW_PRIVS;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_DATA_ARCH;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_DATA_ARGS;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_DATA_NR;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_RET_ALLOW;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_RET_ERRNO;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_RET_KILL_PROCESS;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_RET_LOG;

import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.EnumMap;
import java.util.Locale;
import java.util.Map;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The VMM's seccomp sandbox: each VMM thread installs the filter of its {@link ThreadKind} on
 * itself ({@link #enter}) before it does its work. A filter is an allow-list of system calls (and of
 * ioctl requests, and thread-only clones); any other call ends the whole process (SIGSYS), or in
 * {@code log} mode is allowed and logged by the kernel. Filters apply to the calling thread and are
 * inherited by the threads it creates (a thread that enters a second kind gets both: the
 * intersection). On by default; {@code --sandbox off|log} or the system property {@value #PROPERTY}
 * changes that.
 */
public final class Sandbox {
    private Sandbox() {}

    private static final Logger log = LoggerFactory.getLogger(Sandbox.class);

    /** The system property that selects the mode: {@code on} (the default), {@code off} or {@code log}. */
    public static final String PROPERTY = "panama.vmm.sandbox";

    /** The environment variable read when the property is unset (processes a VMM starts inherit it). */
    public static final String ENVIRONMENT = "PANAMA_VMM_SANDBOX";

    public enum Mode {
        /** A forbidden call ends the process. */
        ON,
        /** No filters. */
        OFF,
        /** A forbidden call is allowed and logged by the kernel (dmesg: "audit: type=1326 ... syscall=N"). */
        LOG;

        /** The mode named {@code text} ({@code on}, {@code off}, {@code log}); throws with a one-line message otherwise. */
        public static Mode parse(String text) {
            return switch (text.toLowerCase(Locale.ROOT)) {
                case "on" -> ON;
                case "off" -> OFF;
                case "log" -> LOG;
                default -> throw new IllegalArgumentException("sandbox mode must be on, off or log, not " + text);
            };
        }
    }

    /** The mode of this process, read from {@value #PROPERTY}, else {@value #ENVIRONMENT} (on when neither is set). */
    public static Mode mode() {
        String value = System.getProperty(PROPERTY);
        if (value == null || value.isBlank()) value = System.getenv(ENVIRONMENT);
        if (value == null || value.isBlank()) return Mode.ON;
        try {
            return Mode.parse(value.strip());
        } catch (IllegalArgumentException e) {
            throw new IllegalStateException(PROPERTY + ": " + e.getMessage());
        }
    }

    /** The kind each thread entered, so that entering the same kind again costs nothing. */
    private static final ThreadLocal<ThreadKind> ENTERED = new ThreadLocal<>();

    private static final Map<ThreadKind, MemorySegment> PROGRAMS = new EnumMap<>(ThreadKind.class);
    private static Mode programsMode;

    /**
     * Installs {@code kind}'s filter on the calling thread (nothing in mode off, or when this thread
     * already entered {@code kind}). Call it first thing in the thread's work.
     */
    public static void enter(ThreadKind kind) {
        if (ENTERED.get() == kind) return;
        Mode mode = mode();
        if (mode == Mode.OFF) return;
        var prog = program(kind, mode);
        LibC.prctl("PR_SET_NO_NEW_PRIVS", PR_SET_NO_NEW_PRIVS, 1);
        // Landlock has no log-only mode: in mode log only seccomp reports.
        if (mode == Mode.ON && kind.landlocked()) Landlock.restrictToRuntime();
        LibC.seccompFilter(0, prog);
        ENTERED.set(kind);
    }

    /** {@code work} run under {@code kind}'s filter: for thread builders' {@code start}/{@code unstarted}. */
    public static Runnable confined(ThreadKind kind, Runnable work) {
        return () -> {
            enter(kind);
            work.run();
        };
    }

    private static synchronized MemorySegment program(ThreadKind kind, Mode mode) {
        if (programsMode != mode) {
            PROGRAMS.clear();
            programsMode = mode;
        }
        var prog = PROGRAMS.get(kind);
        if (prog == null) {
            // The first filter of the process: start the watcher while no filter forbids starting it.
            Watcher.start();
            // Global arena: the kernel copies the program, but threads of this kind keep coming.
            prog = build(kind, mode == Mode.LOG ? SECCOMP_RET_LOG : SECCOMP_RET_KILL_PROCESS)
                    .assemble(Arena.global());
            PROGRAMS.put(kind, prog);
            log.debug(
                    "sandbox: {} filter, {} system calls, {} ioctls",
                    kind.label(),
                    kind.calls().size(),
                    kind.ioctls().size());
        }
        return prog;
    }

    /**
     * {@code kind}'s filter: the architecture first (a 32-bit call's numbers mean other calls),
     * then ioctl by request, clone by flags (threads only, unless the kind starts processes),
     * clone3 answered ENOSYS (its flags are in memory a filter cannot read; glibc then uses clone),
     * socket by family ({@link ThreadKind#socketFamilies}), then the allowed calls; anything else gets {@code violation}.
     */
    static Bpf build(ThreadKind kind, long violation) {
        var bpf = new Bpf();
        bpf.load(SECCOMP_DATA_ARCH)
                .jumpIfEqual(AUDIT_ARCH_X86_64, "arch", null)
                .ret(SECCOMP_RET_KILL_PROCESS)
                .label("arch")
                .load(SECCOMP_DATA_NR);
        int next = 0;
        bpf.jumpIfEqual(SyscallNames.number("ioctl"), null, "n" + next)
                .jump("ioctl")
                .label("n" + next++);
        bpf.jumpIfEqual(SyscallNames.number("clone"), null, "n" + next)
                .jump("clone")
                .label("n" + next++);
        bpf.jumpIfEqual(SyscallNames.number("clone3"), null, "n" + next)
                .ret(SECCOMP_RET_ERRNO | LibcConstants.ENOSYS)
                .label("n" + next++);
        if (kind.calls().contains("socket") && !kind.processes()) {
            bpf.jumpIfEqual(SyscallNames.number("socket"), null, "n" + next)
                    .jump("socket")
                    .label("n" + next++);
        }
        for (String call : kind.calls()) {
            bpf.jumpIfEqual(SyscallNames.number(call), null, "n" + next)
                    .ret(SECCOMP_RET_ALLOW)
                    .label("n" + next++);
        }
        bpf.ret(violation);

        bpf.label("ioctl").load(SECCOMP_DATA_ARGS + 8); // the request's low 32 bits (the kernel reads no more)
        // KVM_RUN first: a vCPU's hot path passes the fewest instructions.
        var requests = new ArrayList<Long>();
        if (kind.ioctls().contains(Ioctls.KVM_RUN)) requests.add(Ioctls.KVM_RUN);
        kind.ioctls().stream().filter(r -> r != Ioctls.KVM_RUN).sorted().forEach(requests::add);
        for (long request : requests) {
            bpf.jumpIfEqual(request, null, "n" + next).ret(SECCOMP_RET_ALLOW).label("n" + next++);
        }
        bpf.ret(violation);

        bpf.label("clone").load(SECCOMP_DATA_ARGS);
        if (kind.processes()) bpf.ret(SECCOMP_RET_ALLOW);
        else bpf.jumpIfAnySet(CLONE_THREAD, "allow", null).ret(violation);

        bpf.label("socket").load(SECCOMP_DATA_ARGS);
        for (int family : kind.socketFamilies()) bpf.jumpIfEqual(family, "allow", null);
        bpf.ret(violation);
        bpf.label("allow").ret(SECCOMP_RET_ALLOW);
        return bpf;
    }

    /**
     * A process that outlives the VMM by a moment to say why it ended: it holds the read end of a
     * pipe whose write end only this JVM has. An orderly exit writes "x" into it first (a shutdown
     * hook) and the watcher ends; end of file without it (the JVM was killed) makes it look in the
     * kernel's log, for up to 5 s (the audit line is printed asynchronously), for a seccomp kill
     * of this pid and, if there is one, print which thread made which call. Started before the first filter (starting a process is
     * not allowed under most of them); the kernel's log needs root or {@code kernel.dmesg_restrict=0}.
     */
    static final class Watcher {
        private static OutputStream keepOpen;

        static synchronized void start() {
            if (keepOpen != null || Boolean.getBoolean("panama.vmm.sandbox.nowatcher")) return;
            String script = """
                    [ "$(cat)" = x ] && exit 0
                    i=0; while [ $i -lt 50 ]; do i=$((i + 1))
                      line=$(dmesg 2>/dev/null | grep 'type=1326' | grep " pid=$1 " | grep -v ' code=0x7ffc0000' | tail -n 1)
                      [ -n "$line" ] && break
                      sleep 0.1
                    done
                    [ -n "$line" ] || exit 0
                    comm=$(printf '%s' "$line" | sed -n 's/.* comm="\\([^"]*\\)".*/\\1/p')
                    nr=$(printf '%s' "$line" | sed -n 's/.* syscall=\\([0-9]*\\).*/\\1/p')
                    name=$(printf '%s\\n' "$PANAMA_SYSCALLS" | awk -v n="$nr" '$1 == n { print $2 }')
                    echo "vmm: the sandbox stopped thread $comm at system call ${name:-#$nr} ($nr)" >&2
                    """;
            var pb = new ProcessBuilder(
                            "sh",
                            "-c",
                            script,
                            "sh",
                            Long.toString(ProcessHandle.current().pid()))
                    .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                    .redirectError(ProcessBuilder.Redirect.INHERIT);
            pb.environment().put("PANAMA_SYSCALLS", SyscallNames.table());
            try {
                var pipe = pb.start().getOutputStream();
                keepOpen = pipe;
                // An orderly exit says so, and the watcher ends at once; a kill (no hooks run) leaves it to look.
                Runnable orderly = () -> {
                    try {
                        pipe.write('x');
                        pipe.close();
                    } catch (IOException e) {
                        // the watcher is gone already
                    }
                };
                try {
                    Runtime.getRuntime().addShutdownHook(new Thread(orderly));
                } catch (IllegalStateException e) {
                    // The JVM is exiting already (a SIGTERM while a thread entered its first filter): an
                    // orderly exit all the same. Else the watcher would look for a kill for seconds.
                    orderly.run();
                }
            } catch (IOException e) {
                log.warn("sandbox: no watcher ({}); a thread stopped by it will not be named", e.getMessage());
                keepOpen = OutputStream.nullOutputStream();
            }
        }
    }

    /** One line for a child VMM process that ended with {@code exitValue}, or null when it was not a sandbox kill. */
    public static String describeExit(int exitValue) {
        if (exitValue != 128 + 31) return null;
        return "killed by SIGSYS: a system call the sandbox does not allow (rerun with --sandbox log and see"
                + " dmesg for \"type=1326\" to find it)";
    }
}
