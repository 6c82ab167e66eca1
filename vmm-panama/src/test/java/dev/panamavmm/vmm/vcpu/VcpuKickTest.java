package dev.panamavmm.vmm.vcpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;

import dev.panamavmm.kvm.Kvm;
import dev.panamavmm.kvm.bindings.LibcConstants;
import dev.panamavmm.kvm.sys.LibC;
import dev.panamavmm.kvm.testing.KvmTest;
import dev.panamavmm.kvm.testing.RealModeGuest;
import java.lang.foreign.Arena;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/** A vCPU spinning in guest code comes out of KVM_RUN when kicked, and so does one about to enter. */
class VcpuKickTest {

    @KvmTest
    void aRunningVcpuIsKickedOut() throws Exception {
        try (var kvm = Kvm.open();
                var arena = Arena.ofShared();
                var vm = kvm.createVm(arena);
                var vcpu = RealModeGuest.load(vm, arena, new byte[] {(byte) 0xeb, (byte) 0xfe})) {
            var tid = new CompletableFuture<Integer>();
            var result = new CompletableFuture<VcpuExit>();
            var thread = Thread.ofPlatform().name("vcpu-0").start(() -> {
                tid.complete(LibC.gettid());
                int r = vcpu.run();
                result.complete(
                        r == -LibcConstants.EINTR ? new VcpuExit.Interrupted() : VcpuExit.decode(vcpu.runPage()));
            });
            int self = tid.get(5, TimeUnit.SECONDS);
            Thread.sleep(200); // let it spin inside KVM_RUN
            VcpuKick.kick(vcpu.runPage(), self);
            assertInstanceOf(VcpuExit.Interrupted.class, result.get(5, TimeUnit.SECONDS));
            thread.join(5000);

            // immediate_exit is still set: the next entry returns at once, without a signal.
            assertEquals(-LibcConstants.EINTR, vcpu.run());
            VcpuKick.clear(vcpu.runPage());
        }
    }
}
