package dev.panamavmm.sandbox;

import static dev.panamavmm.kvm.bindings.Ioctls.*;

import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.LibcConstants;
import java.lang.reflect.Modifier;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;

/**
 * The kinds of VMM thread and the system calls each may make: the allow-lists of the sandbox's
 * seccomp filters (docs/operating.md, "Sandbox", has the measured table they come from). A new
 * kind of thread is one constant here and a {@code Sandbox.enter(KIND)} at the top of its work.
 */
public enum ThreadKind {
    /** A vCPU: KVM_RUN and the vCPU's state ioctls, the exit handlers' I/O (console, eventfds). */
    VCPU(
            "vcpu",
            // The exit handlers' console and eventfd I/O, and what the threads a device starts when the
            // guest activates it (on this vCPU) do: a network device's receiver reads its tap, a vsock
            // device's worker its Unix sockets.
            List.of(
                    "readv",
                    "writev",
                    "sendto",
                    "recvfrom",
                    "sendmsg",
                    "recvmsg",
                    "shutdown",
                    "socket",
                    "connect",
                    "accept4"),
            Stream.concat(
                            Stream.of(
                                    KVM_RUN,
                                    KVM_IRQ_LINE,
                                    KVM_IRQ_LINE_STATUS,
                                    KVM_SIGNAL_MSI,
                                    KVM_KVMCLOCK_CTRL,
                                    // a device is activated on the vCPU that writes DRIVER_OK: a tap gets its offloads
                                    TUNSETOFFLOAD,
                                    TUNSETVNETHDRSZ,
                                    (long) LibcConstants.TCGETS),
                            vcpuStateIoctls())
                    .toList(),
            false),
    /** A virtio device's queue and I/O threads: its backend's file, tap or socket I/O and interrupts. */
    DEVICE(
            "device",
            List.of(
                    "readv",
                    "writev",
                    "preadv",
                    "pwritev",
                    "pwrite64",
                    "fdatasync",
                    "fsync",
                    "fallocate",
                    "getrandom",
                    "sendto",
                    "recvfrom",
                    "sendmsg",
                    "recvmsg",
                    "shutdown",
                    "socket",
                    "connect",
                    "accept4",
                    "fstatfs",
                    // a tap's transmit ring, made by the thread that built the device; it can only
                    // readv and writev the tap (IoUring's restrictions)
                    "io_uring_enter"),
            List.of(KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS, KVM_SIGNAL_MSI, FIONREAD, TUNSETOFFLOAD, TUNSETVNETHDRSZ),
            false),
    /**
     * The control API's threads and the jobs they start (snapshots, migrations, and in a standby
     * or host the VMs it builds): files, sockets, memory files, every KVM ioctl; no new processes.
     */
    API("api", controlCalls(), allIoctls(), false),
    /** The main thread of a VMM command and the threads it starts without a kind of their own: also processes. */
    MAIN(
            "main",
            Stream.concat(controlCalls().stream(), Stream.of("execve", "wait4", "waitid", "kill", "setsid", "vfork"))
                    .toList(),
            allIoctls(),
            true);

    private final String label;
    private final Set<String> calls;
    private final Set<Long> ioctls;
    private final boolean processes;

    ThreadKind(String label, List<String> calls, List<Long> ioctls, boolean processes) {
        this.label = label;
        var all = new TreeSet<>(jvmCalls());
        all.addAll(calls);
        this.calls = all;
        this.ioctls = Set.copyOf(ioctls);
        this.processes = processes;
    }

    /** The name in messages and docs. */
    public String label() {
        return label;
    }

    /** Allowed system calls besides ioctl, clone and clone3, which the filter checks itself. */
    public Set<String> calls() {
        return calls;
    }

    /** Allowed ioctl request numbers. */
    public Set<Long> ioctls() {
        return ioctls;
    }

    /**
     * The address families it may open sockets of: Unix sockets for every kind; the API's threads
     * also TCP (IPv4 and IPv6), as they run the jobs of a migration between hosts ({@code migrate
     * tcp:}, {@code migrate-recover}) and the JDK probes IPv6 with a socket of its own.
     */
    public List<Integer> socketFamilies() {
        return this == API || this == MAIN
                ? List.of(LibcConstants.AF_UNIX, LibcConstants.AF_INET, LibcConstants.AF_INET6)
                : List.of(LibcConstants.AF_UNIX);
    }

    /** Whether it serves the guest and opens no file itself: Landlock limits it to reading the runtime's files. */
    public boolean landlocked() {
        return this == VCPU || this == DEVICE;
    }

    /** Whether it may start processes (clone without CLONE_THREAD, execve), not only threads. */
    public boolean processes() {
        return processes;
    }

    /**
     * What every Java thread does whatever its work: allocate (mmap, madvise), park (futex), reach
     * safepoints, handle the kick signal, load classes from the jars (open, read, pread64, fstat,
     * lseek, close), log to stderr (write) and add a filter of its own.
     */
    static List<String> jvmCalls() {
        return List.of(
                "read",
                "write",
                "pread64",
                "lseek",
                "open",
                "openat",
                "close",
                "stat",
                "fstat",
                "lstat",
                "newfstatat",
                "statx",
                "access",
                "faccessat2",
                "readlink",
                "fcntl",
                "mmap",
                "munmap",
                "mprotect",
                "madvise",
                "mremap",
                "brk",
                "futex",
                "sched_yield",
                "sched_getaffinity",
                "gettid",
                "getpid",
                "getppid",
                "rt_sigprocmask",
                "rt_sigreturn",
                "sigaltstack",
                "restart_syscall",
                "nanosleep",
                "clock_nanosleep",
                "clock_gettime",
                "clock_getres",
                "gettimeofday",
                "exit",
                "exit_group",
                "set_robust_list",
                "rseq",
                "prctl",
                "tgkill",
                "sysinfo",
                "getrusage",
                "getrlimit",
                "prlimit64",
                "uname",
                "poll",
                "ppoll",
                "getcwd",
                "getuid",
                "geteuid",
                "getgid",
                "getegid",
                "getrandom",
                "membarrier",
                // a thread started by a filtered one enters its own kind: filters only ever narrow
                "seccomp",
                "landlock_create_ruleset",
                "landlock_add_rule",
                "landlock_restrict_self");
    }

    private static List<String> controlCalls() {
        return List.of(
                "readv",
                "writev",
                "preadv",
                "pwritev",
                "pwrite64",
                "fdatasync",
                "fsync",
                "fallocate",
                "ftruncate",
                "truncate",
                "mincore",
                "sendfile",
                "copy_file_range",
                "dup",
                "dup2",
                "dup3",
                "pipe2",
                "eventfd2",
                "memfd_create",
                "userfaultfd",
                // a tap's transmit ring is made and restricted where its device is built; the
                // device's threads started here keep this filter under their own and submit to it
                "io_uring_setup",
                "io_uring_register",
                "io_uring_enter",
                "flock",
                "getdents64",
                "mkdir",
                "mkdirat",
                "rmdir",
                "rename",
                "renameat",
                "renameat2",
                "unlink",
                "unlinkat",
                "link",
                "symlink",
                "chmod",
                "fchmod",
                "fchdir",
                "statfs",
                "fstatfs",
                "fadvise64",
                "socket",
                "socketpair",
                "bind",
                "listen",
                "accept",
                "accept4",
                "connect",
                "shutdown",
                "sendto",
                "recvfrom",
                "sendmsg",
                "recvmsg",
                "getsockname",
                "getpeername",
                "setsockopt",
                "getsockopt",
                "epoll_create1",
                "epoll_ctl",
                "epoll_wait",
                "epoll_pwait",
                "rt_sigaction",
                "setpriority",
                "getpriority",
                "getpgrp",
                "getsid",
                "pidfd_open",
                "pidfd_send_signal",
                "sched_setaffinity",
                "kill",
                "close_range",
                "utimensat",
                "msync");
    }

    /** Every ioctl the bindings declare (the VMM uses no other) and the terminal's. */
    private static List<Long> allIoctls() {
        var out = new TreeSet<Long>();
        for (var f : Ioctls.class.getFields()) {
            if (Modifier.isStatic(f.getModifiers()) && f.getType() == long.class) {
                try {
                    out.add(f.getLong(null));
                } catch (IllegalAccessException e) {
                    throw new IllegalStateException(e);
                }
            }
        }
        out.add((long) LibcConstants.TCGETS);
        return List.copyOf(out);
    }

    private static Stream<Long> vcpuStateIoctls() {
        return Stream.of(
                KVM_GET_REGS,
                KVM_SET_REGS,
                KVM_GET_SREGS,
                KVM_SET_SREGS,
                KVM_GET_FPU,
                KVM_SET_FPU,
                KVM_GET_XSAVE,
                KVM_GET_XSAVE2,
                KVM_SET_XSAVE,
                KVM_GET_XCRS,
                KVM_SET_XCRS,
                KVM_GET_LAPIC,
                KVM_SET_LAPIC,
                KVM_GET_MSRS,
                KVM_SET_MSRS,
                KVM_GET_VCPU_EVENTS,
                KVM_SET_VCPU_EVENTS,
                KVM_GET_MP_STATE,
                KVM_SET_MP_STATE,
                KVM_GET_DEBUGREGS,
                KVM_SET_DEBUGREGS);
    }
}
