/*
 * What many VMs in one process cost each copy-on-write fault: the probe behind the `vmm serve`
 * density note in docs/benchmarks.md.
 *
 *   cow_notifier FILE SIZE_MIB K...
 *
 * For each K: creates K VMs in this process, each with a memslot on its own private mapping of
 * FILE (as `vmm serve` does for K clones), then writes one byte in every 4 KiB page of one more
 * private mapping of FILE (SIZE_MIB of it, in no VM): every write is a copy-on-write fault in this
 * process's mm, and the kernel calls every MMU notifier registered on the mm, one per KVM VM. The
 * VMs are then destroyed. Prints, per K, the microseconds per faulting write, and the time to
 * munmap the written mapping; the last line is the one scripts parse:
 *   RESULT k=<K>:<us per fault>:<munmap ms> ...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void die(const char *what) {
    fprintf(stderr, "cow_notifier: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: cow_notifier FILE SIZE_MIB K...\n");
        return 2;
    }
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(argv[1]);
    size_t size = (size_t)atol(argv[2]) << 20;
    char result[4096] = "RESULT";
    for (int a = 3; a < argc; a++) {
        int k = atoi(argv[a]);
        int *vms = calloc((size_t)k + 1, sizeof(int));
        void **maps = calloc((size_t)k + 1, sizeof(void *));
        for (int i = 0; i < k; i++) {
            maps[i] = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
            if (maps[i] == MAP_FAILED) die("mmap");
            vms[i] = ioctl(kvm, KVM_CREATE_VM, 0);
            if (vms[i] < 0) die("KVM_CREATE_VM");
            struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = size,
                                                    .userspace_addr = (uint64_t)(uintptr_t)maps[i]};
            if (ioctl(vms[i], KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
        }
        volatile uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
        if (m == MAP_FAILED) die("mmap");
        for (size_t off = 0; off < size; off += 4096)   /* read first: the file pages are mapped, */
            (void)m[off];                               /* so each write below is a CoW copy      */
        double t0 = now_us();
        for (size_t off = 0; off < size; off += 4096)
            m[off] = 1;
        double t1 = now_us();
        munmap((void *)m, size);
        double t2 = now_us();
        double per = (t1 - t0) / (double)(size / 4096);
        printf("K=%4d VMs in the process: %8.2f us per copy-on-write fault, munmap of %zu MiB %8.2f ms\n", k, per,
               size >> 20, (t2 - t1) / 1e3);
        fflush(stdout);
        snprintf(result + strlen(result), sizeof result - strlen(result), " k=%d:%.2f:%.2f", k, per, (t2 - t1) / 1e3);
        for (int i = 0; i < k; i++) {
            close(vms[i]);
            munmap(maps[i], size);
        }
        free(vms);
        free(maps);
    }
    printf("%s\n", result);
    return 0;
}
