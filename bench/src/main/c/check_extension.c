/*
 * The C peer of dev.panamavmm.bench.IoctlBench: KVM_CHECK_EXTENSION(KVM_CAP_IRQCHIP) on /dev/kvm
 * in a tight loop, through glibc's ioctl() -- the same libc entry point the FFM downcall binds.
 *
 *   check_extension [-t idle-threads] [calls-per-round [rounds]]
 *                                        (defaults: 0 idle threads, 5000000 calls, 5 rounds)
 *
 * -t starts that many threads that only sleep, so the process is multi-threaded as every JVM is.
 * That alone makes an fd-based syscall dearer: with a shared file table the kernel's fdget()/fdput()
 * take a reference on the struct file for each call, which a single-threaded process skips.
 *
 * After a warm-up round that is not counted, each round times `calls` ioctls with
 * clock_gettime(CLOCK_MONOTONIC) and prints its ns/call. The last line is the one scripts parse:
 *
 *   RESULT ns_per_call median=<ns> best=<ns> worst=<ns> rounds=<n> calls=<n> idle_threads=<n>
 *
 * Built by bench/run-ioctl-bench with gcc -O2; see docs/benchmarks.md.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* One round: `calls` ioctls; returns ns per call, exits on the first failure. */
static double round_ns(int fd, long calls, long *sink) {
    long sum = 0;
    double t0 = now_ns();
    for (long i = 0; i < calls; i++) {
        int r = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP);
        if (r < 0) {
            fprintf(stderr, "check_extension: KVM_CHECK_EXTENSION: %s\n", strerror(errno));
            exit(1);
        }
        sum += r;
    }
    double t1 = now_ns();
    *sink += sum; /* the result is used, like JMH's returned value */
    return (t1 - t0) / (double)calls;
}

static void *sleep_forever(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static long parse_positive(const char *s, const char *what) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0) {
        fprintf(stderr, "check_extension: %s must be a positive integer, got '%s'\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    long idle_threads = 0;
    int opt;
    while ((opt = getopt(argc, argv, "t:")) != -1) {
        if (opt != 't') goto usage;
        idle_threads = strcmp(optarg, "0") == 0 ? 0 : parse_positive(optarg, "idle-threads");
    }
    int nargs = argc - optind;
    if (nargs > 2) goto usage;
    long calls = nargs > 0 ? parse_positive(argv[optind], "calls-per-round") : 5000000;
    long rounds = nargs > 1 ? parse_positive(argv[optind + 1], "rounds") : 5;

    for (long i = 0; i < idle_threads; i++) {
        pthread_t t;
        int err = pthread_create(&t, NULL, sleep_forever, NULL);
        if (err) {
            fprintf(stderr, "check_extension: pthread_create: %s\n", strerror(err));
            return 1;
        }
    }

    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "check_extension: open /dev/kvm: %s\n", strerror(errno));
        return 1;
    }
    int version = ioctl(fd, KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION) {
        fprintf(stderr, "check_extension: KVM_GET_API_VERSION returned %d, expected %d\n", version, KVM_API_VERSION);
        return 1;
    }

    long sink = 0;
    double warm = round_ns(fd, calls, &sink);
    printf("warm-up  %ld calls: %.1f ns/call (not counted)\n", calls, warm);

    double *ns = calloc((size_t)rounds, sizeof *ns);
    if (!ns) return 1;
    for (long r = 0; r < rounds; r++) {
        ns[r] = round_ns(fd, calls, &sink);
        printf("round %-2ld %ld calls: %.1f ns/call\n", r + 1, calls, ns[r]);
    }
    qsort(ns, (size_t)rounds, sizeof *ns, cmp_double);
    double median = rounds % 2 ? ns[rounds / 2] : (ns[rounds / 2 - 1] + ns[rounds / 2]) / 2;
    /* sink != 0 unless the host lacks KVM_CAP_IRQCHIP: print it so the loop cannot be dropped. */
    printf("KVM_CAP_IRQCHIP=%d\n", (int)(sink / (calls * (rounds + 1))));
    printf("RESULT ns_per_call median=%.1f best=%.1f worst=%.1f rounds=%ld calls=%ld idle_threads=%ld\n",
           median, ns[0], ns[rounds - 1], rounds, calls, idle_threads);
    close(fd);
    free(ns);
    return 0; /* returning from main ends the idle threads too */

usage:
    fprintf(stderr, "usage: %s [-t idle-threads] [calls-per-round [rounds]]\n", argv[0]);
    return 2;
}
