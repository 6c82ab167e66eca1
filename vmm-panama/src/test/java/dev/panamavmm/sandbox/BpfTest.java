package dev.panamavmm.sandbox;

import static dev.panamavmm.kvm.bindings.SandboxConstants.PR_SET_NO_NEW_PRIVS;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_DATA_ARCH;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_DATA_ARGS;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_DATA_NR;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_RET_ALLOW;
import static dev.panamavmm.kvm.bindings.SandboxConstants.SECCOMP_RET_ERRNO;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.panamavmm.kvm.bindings.Ioctls;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.bindings.SandboxConstants;
import dev.panamavmm.kvm.sys.LibC;
import java.lang.foreign.Arena;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;

/**
 * The assembler's programs and the sandbox's filters run by the kernel on real threads: each test
 * installs a filter on a thread of its own (a filter cannot be removed, and the thread ends after)
 * whose violations fail with an errno instead of ending this JVM.
 */
class BpfTest {
    private static final long EPERM = SECCOMP_RET_ERRNO | LibcConstants.EPERM;

    /** Runs {@code probe} on a new thread after installing {@code bpf} there; returns what it returned. */
    private static <T> T onFilteredThread(Bpf bpf, java.util.function.Supplier<T> probe) throws Exception {
        var result = new AtomicReference<T>();
        var failure = new AtomicReference<Throwable>();
        var t = Thread.ofPlatform().start(() -> {
            try (var arena = Arena.ofConfined()) {
                LibC.prctl("PR_SET_NO_NEW_PRIVS", PR_SET_NO_NEW_PRIVS, 1);
                LibC.seccompFilter(0, bpf.assemble(arena));
                result.set(probe.get());
            } catch (Throwable e) {
                failure.set(e);
            }
        });
        t.join();
        if (failure.get() != null) throw new AssertionError(failure.get());
        return result.get();
    }

    /** ioctl(-1, request, 0): -EBADF when the filter lets it through, the filter's errno otherwise. */
    private static int ioctl(long request) {
        return LibC.ioctlOrErrno(-1, request, 0);
    }

    @Test
    void ioctlRequestsAreFilteredOnTheThreadThatInstalledTheFilterOnly() throws Exception {
        var bpf = new Bpf()
                .load(SECCOMP_DATA_NR)
                .jumpIfEqual(SyscallNames.number("ioctl"), "ioctl", null)
                .ret(SECCOMP_RET_ALLOW)
                .label("ioctl")
                .load(SECCOMP_DATA_ARGS + 8)
                .jumpIfEqual(Ioctls.KVM_CREATE_VM, null, "allow")
                .ret(SECCOMP_RET_ERRNO | LibcConstants.EACCES)
                .label("allow")
                .ret(SECCOMP_RET_ALLOW);
        int[] seen = onFilteredThread(bpf, () -> new int[] {ioctl(Ioctls.KVM_CREATE_VM), ioctl(Ioctls.KVM_RUN)});
        assertEquals(-LibcConstants.EACCES, seen[0]);
        assertEquals(-LibcConstants.EBADF, seen[1]);
        assertEquals(-LibcConstants.EBADF, ioctl(Ioctls.KVM_CREATE_VM), "this thread has no filter");
    }

    @Test
    void aFarJumpGoesThroughJa() throws Exception {
        var bpf = new Bpf().load(SECCOMP_DATA_ARCH).jumpIfEqual(SandboxConstants.AUDIT_ARCH_X86_64, null, "deny");
        bpf.jump("allow").label("deny");
        for (int i = 0; i < 300; i++) bpf.ret(EPERM); // never reached: more than a conditional jump spans
        bpf.label("allow").ret(SECCOMP_RET_ALLOW);
        assertEquals(-LibcConstants.EBADF, (int) onFilteredThread(bpf, () -> ioctl(Ioctls.KVM_RUN)));
    }

    @Test
    void badProgramsAreRefused() {
        var far = new Bpf().load(SECCOMP_DATA_NR).jumpIfEqual(1, "end", null);
        for (int i = 0; i < 256; i++) far.ret(EPERM);
        far.label("end").ret(SECCOMP_RET_ALLOW);
        try (var arena = Arena.ofConfined()) {
            assertThrows(IllegalStateException.class, () -> far.assemble(arena));
            assertThrows(
                    IllegalStateException.class, () -> new Bpf().jump("nowhere").assemble(arena));
            assertThrows(
                    IllegalArgumentException.class, () -> new Bpf().label("a").label("a"));
        }
    }

    @Test
    void eachKindAllowsItsIoctlsAndRefusesOthers() throws Exception {
        for (var kind : ThreadKind.values()) {
            int[] seen = onFilteredThread(Sandbox.build(kind, EPERM), () ->
                    new int[] {ioctl(Ioctls.KVM_RUN), ioctl(Ioctls.KVM_CREATE_VM), ioctl(0xdead)});
            boolean control = kind == ThreadKind.API || kind == ThreadKind.MAIN;
            assertEquals(
                    kind == ThreadKind.DEVICE ? -LibcConstants.EPERM : -LibcConstants.EBADF,
                    seen[0],
                    kind + " KVM_RUN");
            assertEquals(control ? -LibcConstants.EBADF : -LibcConstants.EPERM, seen[1], kind + " KVM_CREATE_VM");
            assertEquals(-LibcConstants.EPERM, seen[2], kind + " an ioctl the VMM does not use");
        }
    }

    @Test
    void threadsOfAFilteredThreadInheritItsFilter() throws Exception {
        // (That a process cannot be started is SandboxKillTest's: the JDK's failed spawn leaves this
        // JVM's descriptors in a state the test runner's channel did not survive.)
        int seen = onFilteredThread(Sandbox.build(ThreadKind.VCPU, EPERM), () -> {
            var child = new int[1];
            // Thread creation works (clone3 answered ENOSYS, glibc falls back to clone with CLONE_THREAD).
            var t = Thread.ofPlatform().start(() -> child[0] = ioctl(Ioctls.KVM_CREATE_VM));
            try {
                t.join();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
            return child[0];
        });
        assertEquals(-LibcConstants.EPERM, seen, "the child thread inherited the vCPU filter");
    }
}
