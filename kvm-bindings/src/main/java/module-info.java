/**
 * FFM bindings to KVM and the libc calls of the VMM, and their typed layer ({@code Kvm}, {@code
 * VmFd}, {@code VcpuFd}). The only module of the VMM that calls restricted FFM methods (downcalls,
 * {@code reinterpret}): an application that embeds the VMM grants native access to this module
 * alone ({@code --enable-native-access=dev.panamavmm.kvm}). The generator package is a build tool
 * run by {@code kvm-bindings/regenerate}, not an API.
 */
module dev.panamavmm.kvm {
    exports dev.panamavmm.kvm;
    exports dev.panamavmm.kvm.bindings;
    exports dev.panamavmm.kvm.sys;
}
