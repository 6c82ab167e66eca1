/*
 * The C peer of the exit round-trip and boot benchmarks (bench/run-exit-bench,
 * bench/run-boot-bench; docs/benchmarks.md): a minimal VMM that boots an ELF64 kernel through
 * the same contract as Panama VMM (Vm.create, X86Boot, Cpuid) and handles its exits in a loop.
 *
 *   outloop_vmm [options] kernel.elf
 *     -m MIB        guest RAM in MiB (default 16)
 *     -c CMDLINE    kernel command line (default "")
 *     -u exit       run until the guest writes its exit code to port 0x500 (default)
 *     -u ready      run until the guest writes 1 to port 0x504 (ready), then stop the vCPU
 *     -w N          warm-up runs, not reported in RESULT (default 1)
 *     -r N          measured runs (default 5)
 *     -v            guest console (COM1) to stdout, no report lines: the process behaves like
 *                   `vmm run`, and exits with the guest's exit code
 *
 * Each run is a fresh VM. Like Panama VMM: guest RAM is a memfd mapped MAP_SHARED|MAP_NORESERVE,
 * TSS at 0xfffbd000, in-kernel irqchip and PIT (KVM_PIT_SPEAKER_DUMMY), one memslot, the ELF's
 * PT_LOAD segments at p_paddr (bss zeroed), GDT at 0x500 (code 0x10, data 0x18, TSS 0x20),
 * boot_params at 0x7000 with the e820 map and the command line at 0x20000, PML4 at 0x9000,
 * PDPT 0xa000, PDs 0xb000-0xefff (first 4 GiB, 2 MiB pages), CPUID from KVM_GET_SUPPORTED_CPUID
 * with the topology of vCPU 0 of 1, long mode at e_entry with RSI = 0x7000, RSP = 0x8ff0. One
 * vCPU, on a thread of its own (as in Panama VMM and every real VMM: it also makes the process
 * multi-threaded, which makes each KVM_RUN ioctl pay the kernel's fd refcount as the JVM does).
 *
 * Devices, in user space: COM1 at 0x3f8-0x3ff (THR bytes go to the console, LSR reads 0x60 =
 * THRE|TEMT, IIR reads 0x01, the other registers hold what was written: the scratch register
 * at 0x3ff is a plain store), the VMM port at 0x500 (outl = exit code, outb 1 to 0x504 = ready,
 * inl 0x508/0x50c = generation id 0), 0x64 outb 0xfe = reset (ends the run). Unknown ports read
 * as all ones; MMIO reads as all ones.
 *
 * Timing (CLOCK_MONOTONIC):
 *   -u exit:  from just before the vCPU thread is created (Vm.start() in Java) to the main thread
 *             returning from pthread_join after the exit (termination().get()); "inner" is first
 *             KVM_RUN to the exit, on the vCPU thread. VM creation is not timed.
 *   -u ready: from just before KVM_CREATE_VM (Vm.create in Java; /dev/kvm is already open and
 *             the ELF already read) to the ready write, seen on the vCPU thread (VmListener.ready).
 * Per run:   RUN <i> ns=<ns> inner_ns=<ns> io_exits=<n> exit_code=<c> user_us=<us> sys_us=<us>
 *            (user_us/sys_us: getrusage(RUSAGE_THREAD) of the vCPU thread when it stops; Linux
 *            splits CPU time into user and system by sampling at the timer tick, so it is coarse)
 * Last line: RESULT ns median=<ns> best=<ns> worst=<ns> runs=<n> io_exits=<n of the last run>
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
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GDT_ADDR 0x500UL
#define BOOT_PARAMS 0x7000UL
#define BOOT_STACK 0x8ff0UL
#define PML4_ADDR 0x9000UL
#define PDPT_ADDR 0xa000UL
#define PD_ADDR 0xb000UL
#define CMDLINE_ADDR 0x20000UL
#define KERNEL_MIN 0x100000UL
#define EBDA_START 0x9fc00UL
#define TSS_ADDRESS 0xfffbd000UL

#define COM1 0x3f8
#define VMM_PORT 0x500

static void die(const char *what) {
    fprintf(stderr, "outloop_vmm: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void fail(const char *msg) {
    fprintf(stderr, "outloop_vmm: %s\n", msg);
    exit(2);
}

static int xioctl(int fd, unsigned long req, unsigned long arg, const char *name) {
    int r = ioctl(fd, req, arg);
    if (r < 0) die(name);
    return r;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- options and the kernel image ---- */

enum until { UNTIL_EXIT, UNTIL_READY };

static struct {
    uint64_t mem;
    const char *cmdline;
    enum until until;
    int warmup, runs, verbose;
    const uint8_t *elf;
    size_t elf_size;
} opt = { 16UL << 20, "", UNTIL_EXIT, 1, 5, 0, NULL, 0 };

static int kvm_fd;
static int run_size;

/* ---- one VM ---- */

struct vm {
    int vm_fd, vcpu_fd, mem_fd;
    uint8_t *ram;
    struct kvm_run *run;
    /* results, written by the vCPU thread */
    uint64_t t_first_run, t_end, io_exits;
    uint64_t user_us, sys_us; /* getrusage(RUSAGE_THREAD) of the vCPU thread at the end */
    int exit_code, ended_by_ready;
    /* COM1 registers (offsets 0-7; THR/LSR/IIR behave as described above) */
    uint8_t com1[8];
    char *console;
    size_t console_len, console_cap;
};

static void console_byte(struct vm *vm, uint8_t b) {
    if (opt.verbose) {
        putchar(b);
        if (b == '\n') fflush(stdout);
        return;
    }
    if (vm->console_len == vm->console_cap) {
        vm->console_cap = vm->console_cap ? 2 * vm->console_cap : 4096;
        vm->console = realloc(vm->console, vm->console_cap);
        if (!vm->console) fail("out of memory");
    }
    vm->console[vm->console_len++] = (char)b;
}

static void load_elf(struct vm *vm) {
    const uint8_t *img = opt.elf;
    if (opt.elf_size < 64 || memcmp(img, "\177ELF", 4) || img[4] != 2 || img[5] != 1) fail("not an ELF64 little-endian file");
    uint64_t phoff;
    uint16_t phentsize, phnum;
    memcpy(&phoff, img + 32, 8);
    memcpy(&phentsize, img + 54, 2);
    memcpy(&phnum, img + 56, 2);
    if (phoff + (uint64_t)phnum * phentsize > opt.elf_size) fail("truncated program headers");
    for (int i = 0; i < phnum; i++) {
        const uint8_t *ph = img + phoff + (uint64_t)i * phentsize;
        uint32_t type;
        uint64_t off, paddr, filesz, memsz;
        memcpy(&type, ph, 4);
        memcpy(&off, ph + 8, 8);
        memcpy(&paddr, ph + 24, 8);
        memcpy(&filesz, ph + 32, 8);
        memcpy(&memsz, ph + 40, 8);
        if (type != 1 /* PT_LOAD */ || memsz == 0) continue;
        if (paddr < KERNEL_MIN || paddr + memsz > opt.mem || off + filesz > opt.elf_size || filesz > memsz)
            fail("ELF segment outside guest RAM or the file");
        memcpy(vm->ram + paddr, img + off, filesz);
        memset(vm->ram + paddr + filesz, 0, memsz - filesz);
    }
}

static void write_boot_data(struct vm *vm) {
    static const uint64_t gdt[] = {
        0, 0,
        0x00af9b000000ffffULL, /* 0x10 code, 64-bit */
        0x00cf93000000ffffULL, /* 0x18 data */
        0x00808b0000000fffULL, /* 0x20 TSS */
    };
    memcpy(vm->ram + GDT_ADDR, gdt, sizeof gdt);

    uint64_t *pml4 = (uint64_t *)(vm->ram + PML4_ADDR), *pdpt = (uint64_t *)(vm->ram + PDPT_ADDR);
    memset(pml4, 0, 4096);
    memset(pdpt, 0, 4096);
    pml4[0] = PDPT_ADDR | 3;
    for (uint64_t i = 0; i < 4; i++) {
        uint64_t *pd = (uint64_t *)(vm->ram + PD_ADDR + i * 4096);
        pdpt[i] = (PD_ADDR + i * 4096) | 3;
        for (uint64_t j = 0; j < 512; j++) pd[j] = (i << 30) | (j << 21) | 0x83;
    }

    size_t len = strlen(opt.cmdline);
    if (len > 2047) fail("command line too long");
    memcpy(vm->ram + CMDLINE_ADDR, opt.cmdline, len + 1);

    uint8_t *zp = vm->ram + BOOT_PARAMS;
    memset(zp, 0, 4096);
    uint16_t boot_flag = 0xaa55;
    uint32_t header = 0x53726448, cmd_ptr = CMDLINE_ADDR, cmd_size = (uint32_t)len;
    memcpy(zp + 0x1fe, &boot_flag, 2);
    memcpy(zp + 0x202, &header, 4);
    zp[0x210] = 0xff; /* type_of_loader */
    memcpy(zp + 0x228, &cmd_ptr, 4);
    memcpy(zp + 0x238, &cmd_size, 4);
    struct { uint64_t addr, size; uint32_t type; } __attribute__((packed)) e820[3] = {
        { 0, EBDA_START, 1 },
        { EBDA_START, KERNEL_MIN - EBDA_START, 2 },
        { KERNEL_MIN, opt.mem - KERNEL_MIN, 1 },
    };
    zp[0x1e8] = 3;
    memcpy(zp + 0x2d0, e820, sizeof e820);
}

/* KVM_GET_SUPPORTED_CPUID, adjusted as Cpuid.forVcpu(supported, 0, 1) does. */
static void set_cpuid(struct vm *vm) {
    struct kvm_cpuid2 *c = NULL;
    for (int n = 128;; n *= 2) {
        c = realloc(c, sizeof *c + (size_t)n * sizeof c->entries[0]);
        if (!c) fail("out of memory");
        memset(c, 0, sizeof *c + (size_t)n * sizeof c->entries[0]);
        c->nent = n;
        if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) break;
        if (errno != E2BIG || n >= 4096) die("KVM_GET_SUPPORTED_CPUID");
    }
    for (uint32_t i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        switch (e->function) {
        case 0x1:
            e->ebx = (e->ebx & 0xffff) | (0u << 24) | (1u << 16); /* APIC ID 0, 1 logical CPU */
            e->ecx |= 1u << 31;                                  /* hypervisor */
            e->edx &= ~(1u << 28);                               /* no HTT */
            break;
        case 0x4:
            e->eax &= 0x3fff;
            break;
        case 0xb:
        case 0x1f:
            if (e->index == 0) { e->eax = 0; e->ebx = 1; e->ecx = (1 << 8) | 0; e->edx = 0; }
            else if (e->index == 1) { e->eax = 0; e->ebx = 1; e->ecx = (2 << 8) | 1; e->edx = 0; }
            else { e->eax = 0; e->ebx = 0; e->ecx = e->index; e->edx = 0; }
            break;
        case 0x80000008:
            e->ecx &= ~0xffu;
            break;
        }
    }
    xioctl(vm->vcpu_fd, KVM_SET_CPUID2, (unsigned long)c, "KVM_SET_CPUID2");
    free(c);
}

static void set_segment(struct kvm_segment *s, uint16_t sel, uint8_t type, int code) {
    s->base = 0;
    s->limit = 0xffffffff;
    s->selector = sel;
    s->type = type;
    s->present = 1;
    s->dpl = 0;
    s->db = code ? 0 : 1;
    s->s = 1;
    s->l = code ? 1 : 0;
    s->g = 1;
    s->avl = 0;
    s->unusable = 0;
}

static uint64_t elf_entry(void) {
    uint64_t e;
    memcpy(&e, opt.elf + 24, 8);
    return e;
}

static void set_entry_state(struct vm *vm) {
    struct kvm_sregs sregs;
    xioctl(vm->vcpu_fd, KVM_GET_SREGS, (unsigned long)&sregs, "KVM_GET_SREGS");
    set_segment(&sregs.cs, 0x10, 11, 1);
    set_segment(&sregs.ds, 0x18, 3, 0);
    set_segment(&sregs.es, 0x18, 3, 0);
    set_segment(&sregs.fs, 0x18, 3, 0);
    set_segment(&sregs.gs, 0x18, 3, 0);
    set_segment(&sregs.ss, 0x18, 3, 0);
    sregs.tr.base = 0;
    sregs.tr.limit = 0xfff;
    sregs.tr.selector = 0x20;
    sregs.tr.type = 11;
    sregs.tr.present = 1;
    sregs.tr.s = 0;
    sregs.tr.g = 0;
    sregs.tr.dpl = 0;
    sregs.tr.l = 0;
    sregs.tr.db = 0;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 5 * 8 - 1;
    sregs.cr0 = 0x80050033; /* PE|MP|ET|NE|WP|PG */
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = 0x20;       /* PAE */
    sregs.efer = 0x500;     /* LME|LMA */
    xioctl(vm->vcpu_fd, KVM_SET_SREGS, (unsigned long)&sregs, "KVM_SET_SREGS");

    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = elf_entry();
    regs.rsi = BOOT_PARAMS;
    regs.rflags = 0x2;
    regs.rsp = BOOT_STACK;
    regs.rbp = BOOT_STACK;
    xioctl(vm->vcpu_fd, KVM_SET_REGS, (unsigned long)&regs, "KVM_SET_REGS");
}

/* Everything Vm.create does, in the same order. */
static void vm_create(struct vm *vm) {
    memset(vm, 0, sizeof *vm);
    vm->vm_fd = xioctl(kvm_fd, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
    vm->mem_fd = memfd_create("outloop-vmm-ram", MFD_CLOEXEC);
    if (vm->mem_fd < 0) die("memfd_create");
    if (ftruncate(vm->mem_fd, (off_t)opt.mem) < 0) die("ftruncate");
    vm->ram = mmap(NULL, opt.mem, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, vm->mem_fd, 0);
    if (vm->ram == MAP_FAILED) die("mmap guest RAM");
    xioctl(vm->vm_fd, KVM_SET_TSS_ADDR, TSS_ADDRESS, "KVM_SET_TSS_ADDR");
    xioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
    xioctl(vm->vm_fd, KVM_CREATE_PIT2, (unsigned long)&pit, "KVM_CREATE_PIT2");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = opt.mem, .userspace_addr = (uint64_t)vm->ram,
    };
    xioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region, "KVM_SET_USER_MEMORY_REGION");
    load_elf(vm);
    write_boot_data(vm);
    vm->vcpu_fd = xioctl(vm->vm_fd, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
    vm->run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd, 0);
    if (vm->run == MAP_FAILED) die("mmap kvm_run");
    set_cpuid(vm);
    set_entry_state(vm);
}

static void vm_destroy(struct vm *vm) {
    struct kvm_userspace_memory_region region = { .slot = 0, .memory_size = 0 };
    ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region);
    munmap(vm->run, (size_t)run_size);
    close(vm->vcpu_fd);
    close(vm->vm_fd);
    munmap(vm->ram, opt.mem);
    close(vm->mem_fd);
    free(vm->console);
}

/* ---- the vCPU loop ---- */

static uint32_t pio_read(struct vm *vm, uint16_t port, int size) {
    if (port >= COM1 && port < COM1 + 8 && size == 1) {
        switch (port - COM1) {
        case 5: return 0x60; /* LSR: THRE | TEMT */
        case 2: return 0x01; /* IIR: no interrupt */
        case 6: return 0xb0; /* MSR: DCD, DSR, CTS */
        default: return vm->com1[port - COM1];
        }
    }
    if ((port == VMM_PORT + 8 || port == VMM_PORT + 12) && size == 4) return 0; /* generation id */
    return size == 1 ? 0xff : size == 2 ? 0xffff : 0xffffffff;
}

/* Returns 1 when the run is over. */
static int pio_write(struct vm *vm, uint16_t port, int size, uint32_t value) {
    if (port >= COM1 && port < COM1 + 8 && size == 1) {
        if (port == COM1 && !(vm->com1[3] & 0x80)) console_byte(vm, (uint8_t)value);
        else vm->com1[port - COM1] = (uint8_t)value;
        return 0;
    }
    if (port == VMM_PORT && size == 4) {
        vm->exit_code = (int)value;
        return 1;
    }
    if (port == VMM_PORT + 4 && size == 1 && value == 1) {
        if (opt.until == UNTIL_READY) {
            vm->ended_by_ready = 1;
            return 1;
        }
        return 0;
    }
    if (port == 0x64 && size == 1 && (value & 0xff) == 0xfe) {
        vm->exit_code = -1;
        fprintf(stderr, "outloop_vmm: guest reset\n");
        return 1;
    }
    return 0;
}

static void *vcpu_thread(void *arg) {
    struct vm *vm = arg;
    struct kvm_run *run = vm->run;
    vm->t_first_run = now_ns();
    for (;;) {
        if (ioctl(vm->vcpu_fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            die("KVM_RUN");
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            vm->io_exits++;
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            int done = 0;
            for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
                if (run->io.direction == KVM_EXIT_IO_OUT) {
                    uint32_t v = 0;
                    memcpy(&v, data, run->io.size);
                    done |= pio_write(vm, run->io.port, run->io.size, v);
                } else {
                    uint32_t v = pio_read(vm, run->io.port, run->io.size);
                    memcpy(data, &v, run->io.size);
                }
            }
            if (done) {
                vm->t_end = now_ns();
                struct rusage ru;
                if (getrusage(RUSAGE_THREAD, &ru) == 0) {
                    vm->user_us = (uint64_t)ru.ru_utime.tv_sec * 1000000 + (uint64_t)ru.ru_utime.tv_usec;
                    vm->sys_us = (uint64_t)ru.ru_stime.tv_sec * 1000000 + (uint64_t)ru.ru_stime.tv_usec;
                }
                return NULL;
            }
            break;
        }
        case KVM_EXIT_MMIO:
            if (!run->mmio.is_write) memset(run->mmio.data, 0xff, sizeof run->mmio.data);
            break;
        case KVM_EXIT_INTR:
            break;
        case KVM_EXIT_INTERNAL_ERROR:
            fprintf(stderr, "outloop_vmm: KVM internal error, suberror %u\n", run->internal.suberror);
            exit(2);
        default:
            fprintf(stderr, "outloop_vmm: unhandled exit reason %u\n", run->exit_reason);
            exit(2);
        }
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void read_elf(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    struct stat st;
    if (fstat(fd, &st) < 0) die(path);
    uint8_t *buf = malloc((size_t)st.st_size);
    if (!buf) fail("out of memory");
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r <= 0) die(path);
        got += (size_t)r;
    }
    close(fd);
    opt.elf = buf;
    opt.elf_size = got;
}

int main(int argc, char **argv) {
    int c;
    while ((c = getopt(argc, argv, "m:c:u:w:r:v")) != -1) {
        switch (c) {
        case 'm': opt.mem = strtoull(optarg, NULL, 0) << 20; break;
        case 'c': opt.cmdline = optarg; break;
        case 'u':
            if (!strcmp(optarg, "exit")) opt.until = UNTIL_EXIT;
            else if (!strcmp(optarg, "ready")) opt.until = UNTIL_READY;
            else fail("-u takes exit or ready");
            break;
        case 'w': opt.warmup = atoi(optarg); break;
        case 'r': opt.runs = atoi(optarg); break;
        case 'v': opt.verbose = 1; break;
        default:
            fprintf(stderr, "usage: outloop_vmm [-m MiB] [-c cmdline] [-u exit|ready] [-w warmups] [-r runs] [-v] kernel.elf\n");
            return 2;
        }
    }
    if (optind != argc - 1) fail("one kernel ELF expected (see the source for usage)");
    if (opt.mem < (16UL << 20) || opt.mem > (3UL << 30)) fail("-m must be 16..3072 MiB");
    if (opt.runs < 1 || opt.warmup < 0) fail("-r must be >= 1, -w >= 0");
    if (opt.verbose) { opt.warmup = 0; opt.runs = 1; }
    read_elf(argv[optind]);

    kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0) die("/dev/kvm");
    run_size = xioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");

    int total = opt.warmup + opt.runs;
    uint64_t *ns = calloc((size_t)opt.runs, sizeof *ns);
    uint64_t last_exits = 0;
    int exit_code = 0;
    for (int i = 0; i < total; i++) {
        struct vm vm;
        uint64_t t0 = 0, t1;
        if (opt.until == UNTIL_READY) t0 = now_ns();
        vm_create(&vm);
        pthread_t thread;
        if (opt.until == UNTIL_EXIT) t0 = now_ns();
        if (pthread_create(&thread, NULL, vcpu_thread, &vm)) fail("pthread_create failed");
        pthread_join(thread, NULL);
        t1 = opt.until == UNTIL_READY ? vm.t_end : now_ns();
        if (opt.until == UNTIL_READY && !vm.ended_by_ready) fail("the guest exited before it was ready");
        exit_code = vm.exit_code;
        last_exits = vm.io_exits;
        if (!opt.verbose) {
            printf("%s %d ns=%llu inner_ns=%llu io_exits=%llu exit_code=%d user_us=%llu sys_us=%llu\n",
                   i < opt.warmup ? "WARMUP" : "RUN", i < opt.warmup ? i + 1 : i - opt.warmup + 1,
                   (unsigned long long)(t1 - t0), (unsigned long long)(vm.t_end - vm.t_first_run),
                   (unsigned long long)vm.io_exits, vm.exit_code, (unsigned long long)vm.user_us,
                   (unsigned long long)vm.sys_us);
            fflush(stdout);
        }
        if (i >= opt.warmup) ns[i - opt.warmup] = t1 - t0;
        vm_destroy(&vm);
    }
    if (opt.verbose) {
        fflush(stdout);
        return exit_code;
    }
    qsort(ns, (size_t)opt.runs, sizeof *ns, cmp_u64);
    double median = opt.runs % 2 ? (double)ns[opt.runs / 2] : (ns[opt.runs / 2 - 1] + ns[opt.runs / 2]) / 2.0;
    printf("RESULT ns median=%.0f best=%llu worst=%llu runs=%d io_exits=%llu\n", median, (unsigned long long)ns[0],
           (unsigned long long)ns[opt.runs - 1], opt.runs, (unsigned long long)last_exits);
    return 0;
}
