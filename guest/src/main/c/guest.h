/*
 * Panama VMM test guest: constants shared by the assembly entry code, the CPL0 kernel
 * (kernel.c) and the CPL3 workload (user.c). See ../../../README.md for the contract.
 */
#ifndef TESTGUEST_H
#define TESTGUEST_H

#define TESTGUEST_VERSION "0.1"

#define MAX_CPUS        255             /* xAPIC IDs are 8 bits, 0xFF is the broadcast ID */

/* Per-CPU area, allocated by the BSP right after the image (PCPU_SIZE aligned):
 *   [0, sizeof(struct percpu))   struct percpu (tick counter first, TSS)
 *   [.., KSTACK_TOP)             CPL0 stack, grows down (the TSS's RSP0 = KSTACK_TOP)
 *   [KSTACK_TOP, USTACK_TOP)     CPL3 stack, grows down
 * CPL0 code finds its area from RSP: rsp & ~(PCPU_SIZE - 1). */
#define PCPU_SHIFT      14
#define PCPU_SIZE       (1 << PCPU_SHIFT)
#define KSTACK_TOP      0x2000
#define USTACK_TOP      0x4000
#define PCPU_TICKS      0               /* offset of percpu.ticks (the timer ISR increments it) */

/* Our GDT. 0x10/0x18 match the boot GDT the VMM hands over. */
#define SEL_KCODE       0x10
#define SEL_KDATA       0x18
#define SEL_UDATA       0x23            /* 0x20 | RPL 3 */
#define SEL_UCODE       0x2B            /* 0x28 | RPL 3 */
#define SEL_TSS0        0x30            /* CPU i: SEL_TSS0 + 16 * i */

/* Interrupt vectors. */
#define VEC_TIMER       0x20
#define VEC_SPURIOUS    0xFF

#define LAPIC_BASE      0xFEE00000UL
#define TICK_MS         10              /* LAPIC timer period */
#define LAPIC_TIMER_DIV 0x3             /* divide by 16: 1 GHz / 16 = 62.5 MHz */
#define LAPIC_TIMER_INIT (62500 * TICK_MS)

/* Requests from CPL3 to CPL0: sys_call(request, a, b) executes the ud2 at sys_trap; the #UD
 * handler recognises that address, serves the request (rdi = request, rsi/rdx = arguments,
 * result in rax, every other register preserved) and returns after the ud2. On PVM hosts
 * "int $n" at CPL3 raises #UD and "syscall" does not leave CPL3, while exceptions from CPL3
 * are delivered through the IDT as usual. */
#define SYS_PRINT       1   /* rsi = buffer, rdx = length: write to COM1 under the console lock */
#define SYS_READY       2   /* outb 1, 0x504 */
#define SYS_EXIT        3   /* outl rsi, 0x500 */
#define SYS_RESET       4   /* outb 0xFE, 0x64 */
#define SYS_GENID       5   /* returns inl 0x508 | inl 0x50C << 32 */
#define SYS_FAULT_MMIO  6   /* read guest-physical 0xD0000000 (unbacked: an MMIO exit) */
#define SYS_FAULT_PORT  7   /* inb 0x2F0; outb 0x2F0 */
#define SYS_IDLE        8   /* sti; hlt; cli: wait for the next interrupt */
#define SYS_MAP_USER    9   /* rsi = address in [3 GiB, 4 GiB): make its 2 MiB page user-accessible
                               (a virtio-mmio device's); not the IOAPIC's or LAPIC's page */

/* Exit codes the guest itself chooses (port 0x500) when something is badly wrong. */
#define EXIT_EXCEPTION  0x100           /* + vector: unexpected CPU exception */
#define EXIT_BADBOOT    0x200           /* boot contract violated (no RAM for the image, ...) */

#ifndef __ASSEMBLER__
#include <stdint.h>
#include <stddef.h>

struct tss {
    uint32_t reserved0;
    uint64_t rsp0, rsp1, rsp2;
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
} __attribute__((packed));

struct percpu {
    volatile uint64_t ticks;    /* PCPU_TICKS: timer interrupts on this CPU */
    uint32_t id;                /* APIC ID */
    uint32_t pad;
    struct tss tss;
};

/* Shared between kernel.c (writes them at boot) and user.c (reads them). */
extern uint64_t percpu_base;    /* per-CPU areas: percpu_base + id * PCPU_SIZE */
extern uint32_t ncpus;
extern uint64_t boot_params;    /* guest-physical address of the zero page (RSI at entry) */
extern uint64_t kernel_end;     /* end of what the kernel allocated after the image */
extern uint64_t tsc_per_ms;     /* measured by the BSP before it enters CPL3 */
extern char __image_start[], __image_end[];

/* boot_params ("zero page") offsets, Linux layout */
#define BP_E820_ENTRIES 0x1e8
#define BP_CMD_LINE_PTR 0x228
#define BP_CMDLINE_SIZE 0x238
#define BP_E820_TABLE   0x2d0
#define E820_MAX        128
#define E820_RAM        1

struct e820_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
} __attribute__((packed));

static inline struct percpu *percpu_of(uint32_t id)
{
    return (struct percpu *)(percpu_base + (uint64_t)id * PCPU_SIZE);
}

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

/* entry.S: the CPL3 -> CPL0 request */
uint64_t sys_call(uint64_t req, uint64_t a, uint64_t b);

/* user.c */
void user_main(uint32_t cpu) __attribute__((noreturn));

/* user.c: an output line, built natively at CPL3 and written whole by CPL0 (emit) */
struct line { char b[128]; int n; };
void put_s(struct line *l, const char *s);
void put_u(struct line *l, uint64_t v);
void put_x(struct line *l, uint64_t v, int digits);   /* 0x + hex; digits 0: as few as needed */
void emit(struct line *l);
int prefix(const char *s, const char *p, const char **rest);
uint64_t parse_u(const char *s, const char **end);

/* virtio.c (CPL3, CPU 0 only): virtio-mmio drivers for entropy and block devices */
int virtio_parse_token(const char *t);   /* 1 if the token was virtio_mmio.device= or a virtio option */
void virtio_probe(void);                 /* map, probe and size the announced devices */
uint64_t virtio_area_size(void);         /* bytes of RAM the drivers need (rings, buffers, tables) */
void virtio_start(uint64_t area);        /* set the devices up in that RAM, first rng read, blk id */
void virtio_poll(void);                  /* between chunks: reap and submit blk requests */
void virtio_heartbeat(uint64_t seq, uint64_t hb_ms); /* before CPU 0's hb line: blk counters, rng check */
void virtio_after_ready(void);           /* the block benchmark, if asked for */
#endif
#endif
