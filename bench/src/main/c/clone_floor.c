/*
 * The kernel's floor for one clone in `vmm serve`: the KVM work every clone needs, in C, timed
 * step by step, with nothing else in between. The peer of the "clone latency in serve" part of
 * bench/run-clone-bench.
 *
 *   clone_floor [-n iterations] [-c] [-m] [-p] [-t threads] [-s sleep_ms] FILE SIZE_MIB
 *
 * Each iteration builds a VM the way the VMM builds a clone, minus the state restore:
 *   mmap FILE MAP_PRIVATE|MAP_NORESERVE (SIZE_MIB), KVM_CREATE_VM, KVM_SET_TSS_ADDR,
 *   KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2 (dummy speaker), KVM_SET_USER_MEMORY_REGION (slot 0 at 0),
 *   KVM_GET_SUPPORTED_CPUID (every iteration, as the VMM does; -c: once, cached), KVM_CREATE_VCPU +
 *   mmap of kvm_run, KVM_SET_CPUID2, guest code written at 0x1000 (one copy-on-write page:
 *   mov al, 0x42; out 0x10, al; hlt), KVM_SET_SREGS/KVM_SET_REGS (real mode, rip 0x1000), then the
 *   first KVM_RUN up to the OUT exit = "guest ran its first instruction". Then it tears the VM down
 *   (munmap kvm_run, close vCPU and VM fds, munmap memory), timed separately.
 * -m registers the memslot right after KVM_CREATE_VM, before the irqchip and the PIT (on this
 * project's PVM host that order saves ~5 ms: see docs/benchmarks.md); -p creates no PIT.
 * -t starts that many threads that only sleep (a JVM is a multi-threaded process; some
 * fd-based calls cost more then). -s sleeps that long between iterations (lets the kernel finish
 * whatever it defers from the previous VM's teardown).
 *
 * Per step it prints the median and the 99th percentile in microseconds; the last line is the one
 * scripts parse:
 *   RESULT clone_us p50=<us> p99=<us> run_us p50=<us> teardown_us p50=<us> p99=<us> n=<n>
 * where clone_us is from before the mmap to the return of the first KVM_RUN, run_us the first
 * KVM_RUN alone, teardown_us the teardown.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { S_MMAP, S_CREATE_VM, S_TSS, S_IRQCHIP, S_PIT, S_MEMSLOT, S_CPUID, S_VCPU, S_SET_CPUID, S_CODE,
       S_REGS, S_RUN, S_TOTAL, S_TEARDOWN, S_COUNT };
static const char *names[S_COUNT] = {
    "mmap private", "KVM_CREATE_VM", "KVM_SET_TSS_ADDR", "KVM_CREATE_IRQCHIP", "KVM_CREATE_PIT2",
    "KVM_SET_USER_MEMORY_REGION", "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU + mmap", "KVM_SET_CPUID2",
    "code (CoW fault)", "KVM_SET_SREGS/REGS", "first KVM_RUN", "clone total", "teardown"};

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void die(const char *what) {
    fprintf(stderr, "clone_floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

static void *idle(void *arg) {
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static struct kvm_cpuid2 *get_cpuid(int kvm) {
    int n = 256;
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + (size_t)n * sizeof(struct kvm_cpuid_entry2));
    c->nent = (uint32_t)n;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) < 0)
        die("KVM_GET_SUPPORTED_CPUID");
    return c;
}

int main(int argc, char **argv) {
    int iters = 100, cache = 0, threads = 0, sleep_ms = 0, memslot_first = 0, no_pit = 0, opt;
    while ((opt = getopt(argc, argv, "n:ct:s:mp")) != -1) {
        if (opt == 'n') iters = atoi(optarg);
        else if (opt == 'm') memslot_first = 1;
        else if (opt == 'p') no_pit = 1;
        else if (opt == 's') sleep_ms = atoi(optarg);
        else if (opt == 'c') cache = 1;
        else if (opt == 't') threads = atoi(optarg);
        else {
            fprintf(stderr, "usage: clone_floor [-n iterations] [-c] [-m] [-p] [-t threads] [-s sleep_ms] FILE SIZE_MIB\n");
            return 2;
        }
    }
    if (argc - optind != 2 || iters < 1) {
        fprintf(stderr, "usage: clone_floor [-n iterations] [-c] [-m] [-p] [-t threads] [-s sleep_ms] FILE SIZE_MIB\n");
        return 2;
    }
    const char *file = argv[optind];
    size_t size = (size_t)atol(argv[optind + 1]) << 20;
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, idle, NULL);
    }
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(file);
    long run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size <= 0) die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_cpuid2 *cached = cache ? get_cpuid(kvm) : NULL;

    double *t[S_COUNT];
    for (int s = 0; s < S_COUNT; s++) t[s] = calloc((size_t)iters + 1, sizeof(double));

    for (int it = -1; it < iters; it++) {     /* iteration -1: warm-up, not counted */
        if (sleep_ms)
            usleep((useconds_t)sleep_ms * 1000);
        double m[S_COUNT];                       /* each step's duration, us */
        double start = now_us(), last = start, x;
#define STEP(s) (x = now_us(), m[s] = x - last, last = x)
        uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
        if (mem == MAP_FAILED) die("mmap");
        STEP(S_MMAP);
        int vm = ioctl(kvm, KVM_CREATE_VM, 0);
        if (vm < 0) die("KVM_CREATE_VM");
        STEP(S_CREATE_VM);
        struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = size,
                                                .userspace_addr = (uint64_t)(uintptr_t)mem};
        if (memslot_first) {
            if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
            STEP(S_MEMSLOT);
        }
        if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0) die("KVM_SET_TSS_ADDR");
        STEP(S_TSS);
        if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
        STEP(S_IRQCHIP);
        struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
        if (!no_pit && ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");
        STEP(S_PIT);
        if (!memslot_first) {
            if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
            STEP(S_MEMSLOT);
        }
        struct kvm_cpuid2 *cpuid = cached ? cached : get_cpuid(kvm);
        STEP(S_CPUID);
        int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
        if (vcpu < 0) die("KVM_CREATE_VCPU");
        struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
        if (run == MAP_FAILED) die("mmap kvm_run");
        STEP(S_VCPU);
        if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
        STEP(S_SET_CPUID);
        static const uint8_t code[] = {0xb0, 0x42, 0xe6, 0x10, 0xf4};   /* mov al,0x42; out 0x10,al; hlt */
        memcpy(mem + 0x1000, code, sizeof code);
        STEP(S_CODE);
        struct kvm_sregs sregs;
        if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
        struct kvm_regs regs = {.rip = 0x1000, .rflags = 2};
        if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
        STEP(S_REGS);
        int rc;
        do {
            rc = ioctl(vcpu, KVM_RUN, 0);
        } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
        if (rc < 0) die("KVM_RUN");
        STEP(S_RUN);
        m[S_TOTAL] = last - start;
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != 0x10) {
            fprintf(stderr, "clone_floor: unexpected exit %u (port 0x%x)\n", run->exit_reason,
                    run->exit_reason == KVM_EXIT_IO ? run->io.port : 0);
            return 1;
        }
        munmap(run, (size_t)run_size);
        close(vcpu);
        close(vm);
        munmap(mem, size);
        if (!cached) free(cpuid);
        STEP(S_TEARDOWN);
#undef STEP
        if (it < 0)
            continue;
        for (int s = 0; s < S_COUNT; s++)
            t[s][it] = m[s];
    }
    printf("%-28s %10s %10s   (%d iterations, %s, %s, %s, %d idle threads, %d ms between)\n", "step, us",
           "p50", "p99", iters, cache ? "CPUID cached" : "CPUID every time",
           memslot_first ? "memslot first" : "memslot after irqchip+PIT", no_pit ? "no PIT" : "PIT",
           threads, sleep_ms);
    double res[S_COUNT][2];
    for (int s = 0; s < S_COUNT; s++) {
        res[s][0] = pct(t[s], iters, 0.5);
        res[s][1] = pct(t[s], iters, 0.99);
        printf("%-28s %10.1f %10.1f\n", names[s], res[s][0], res[s][1]);
    }
    printf("RESULT clone_us p50=%.1f p99=%.1f run_us p50=%.1f teardown_us p50=%.1f p99=%.1f n=%d\n",
           res[S_TOTAL][0], res[S_TOTAL][1], res[S_RUN][0], res[S_TEARDOWN][0], res[S_TEARDOWN][1], iters);
    return 0;
}
