/*
 * CPL0 part of the test guest: boot (page tables, GDT/IDT/TSS, LAPIC timer, COM1), and the
 * handful of requests the CPL3 workload makes through sys_call (entry.S). On PVM hosts every CPL0
 * instruction is emulated (~1.5M instructions/s), so this file does as little as possible:
 * no memory workload, no formatting, no parsing beyond the e820 map.
 */
#include "guest.h"

uint64_t percpu_base;
uint32_t ncpus;
uint64_t boot_params;
uint64_t kernel_end;
uint64_t tsc_per_ms;

/* Filled in by kfatal (for a VMM that wants to look at guest memory after a crash). */
struct {
    uint64_t vector, error, rip, cs, rflags, rsp, ss, cr2, cpu;
} fatal_info;

static uint64_t gdt[6 + 2 * MAX_CPUS] __attribute__((aligned(16))) = {
    0,
    0,
    0x00AF9A000000FFFFULL,      /* 0x10 kernel code, 64-bit */
    0x00CF92000000FFFFULL,      /* 0x18 kernel data */
    0x00CFF2000000FFFFULL,      /* 0x20 user data, DPL 3 */
    0x00AFFA000000FFFFULL,      /* 0x28 user code, 64-bit, DPL 3 */
};

static struct idt_gate {
    uint16_t off0, sel;
    uint8_t ist, type;
    uint16_t off1;
    uint32_t off2, reserved;
} idt[256] __attribute__((aligned(16)));

static uint64_t pml4_addr;
static volatile uint64_t *hole_pd;     /* the page directory of [3 GiB, 4 GiB) */
static volatile uint32_t console_lock;

extern char exc_stubs[], ud_isr[], timer_isr[], spurious_isr[];
void enter_user(uint64_t rip, uint64_t rsp, uint64_t arg) __attribute__((noreturn));

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void lapic_write(uint32_t reg, uint32_t v) { *(volatile uint32_t *)(LAPIC_BASE + reg) = v; }
static inline uint32_t lapic_read(uint32_t reg) { return *(volatile uint32_t *)(LAPIC_BASE + reg); }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return lo | (uint64_t)hi << 32; }

static void __attribute__((noreturn)) halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void __attribute__((noreturn)) vm_exit(uint32_t code)
{
    outl(0x500, code);
    halt_forever();
}

void __attribute__((noreturn)) kfatal(uint64_t *frame)
{
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    fatal_info.vector = frame[0];
    fatal_info.error = frame[1];
    fatal_info.rip = frame[2];
    fatal_info.cs = frame[3];
    fatal_info.rflags = frame[4];
    fatal_info.rsp = frame[5];
    fatal_info.ss = frame[6];
    fatal_info.cr2 = cr2;
    vm_exit(EXIT_EXCEPTION + (uint32_t)frame[0]);
}

static void set_gate(int vec, void *handler, int dpl)
{
    uint64_t h = (uint64_t)handler;
    idt[vec].off0 = (uint16_t)h;
    idt[vec].sel = SEL_KCODE;
    idt[vec].ist = 0;
    idt[vec].type = (uint8_t)(0x8E | (dpl << 5));  /* present, 64-bit interrupt gate */
    idt[vec].off1 = (uint16_t)(h >> 16);
    idt[vec].off2 = (uint32_t)(h >> 32);
}

/* COM1, initialised the usual way; output is polled. */
static void serial_init(void)
{
    outb(0x3F9, 0x00);          /* IER: no interrupts */
    outb(0x3FB, 0x80);          /* LCR: DLAB */
    outb(0x3F8, 0x01);          /* divisor 1 (115200) */
    outb(0x3F9, 0x00);
    outb(0x3FB, 0x03);          /* 8N1 */
    outb(0x3FA, 0x07);          /* FIFO on, cleared */
    outb(0x3FC, 0x03);          /* DTR, RTS */
}

/*
 * BSP, still on the VMM's page tables and GDT. Builds everything the CPUs share, then
 * publishes percpu_base, which releases the APs spinning in _start.
 */
void bsp_init(uint64_t bp, uint32_t n)
{
    if (n == 0)
        n = 1;
    if (n > MAX_CPUS)
        n = MAX_CPUS;
    ncpus = n;
    boot_params = bp;

    /* e820: highest RAM address (what we map) and the RAM range holding the image. */
    uint32_t entries = *(volatile uint8_t *)(bp + BP_E820_ENTRIES);
    if (entries > E820_MAX)
        entries = E820_MAX;
    struct e820_entry *e = (struct e820_entry *)(bp + BP_E820_TABLE);
    uint64_t img_start = (uint64_t)__image_start, img_end = (uint64_t)__image_end;
    uint64_t max_end = 0, region_end = 0;
    for (uint32_t i = 0; i < entries; i++) {
        if (e[i].type != E820_RAM)
            continue;
        uint64_t end = e[i].addr + e[i].size;
        if (end > max_end)
            max_end = end;
        if (e[i].addr <= img_start && img_end <= end)
            region_end = end;
    }
    if (region_end == 0)
        vm_exit(EXIT_BADBOOT);

    /* Page tables right after the image: PML4, one PDPT (512 GiB), one PD per GiB, 2 MiB pages.
     * [0, 3 GiB) and everything from 4 GiB: RAM, user-accessible, write-back.
     * [3 GiB, 4 GiB): the MMIO hole (LAPIC, IOAPIC, devices), supervisor-only, uncached. */
    uint64_t npd = (max_end + (1ULL << 30) - 1) >> 30;
    if (npd < 4)
        npd = 4;
    if (npd > 512)
        npd = 512;
    uint64_t alloc = (img_end + 4095) & ~4095ULL;
    uint64_t *pml4 = (uint64_t *)alloc;
    uint64_t *pdpt = (uint64_t *)(alloc + 4096);
    uint64_t pds = alloc + 8192;
    alloc = pds + npd * 4096;
    for (int i = 0; i < 512; i++) {
        pml4[i] = 0;
        pdpt[i] = 0;
    }
    pml4[0] = (uint64_t)pdpt | 0x7;                 /* P | RW | US */
    for (uint64_t g = 0; g < npd; g++) {
        uint64_t *pd = (uint64_t *)(pds + g * 4096);
        uint64_t flags = g == 3 ? 0x9B : 0x87;      /* P|RW|PWT|PCD|PS : P|RW|US|PS */
        uint64_t phys = (g << 30) | flags;
        pdpt[g] = (uint64_t)pd | 0x7;
        for (int i = 0; i < 512; i++, phys += 1ULL << 21)
            pd[i] = phys;
    }
    pml4_addr = (uint64_t)pml4;
    hole_pd = (volatile uint64_t *)(pds + 3 * 4096);

    /* Per-CPU areas (tick counter, TSS, CPL0 and CPL3 stacks). */
    alloc = (alloc + PCPU_SIZE - 1) & ~(uint64_t)(PCPU_SIZE - 1);
    uint64_t base = alloc;
    alloc += (uint64_t)n * PCPU_SIZE;
    if (alloc > region_end)
        vm_exit(EXIT_BADBOOT);
    kernel_end = alloc;

    for (int v = 0; v < 32; v++)
        set_gate(v, exc_stubs + 16 * v, 0);
    set_gate(VEC_TIMER, timer_isr, 0);
    set_gate(6, ud_isr, 0);                     /* #UD: also the CPL3 -> CPL0 request */
    set_gate(VEC_SPURIOUS, spurious_isr, 0);

    outb(0x21, 0xFF);           /* mask both PICs: only the LAPIC timer interrupts us */
    outb(0xA1, 0xFF);
    serial_init();

    __atomic_store_n(&percpu_base, base, __ATOMIC_RELEASE);
}

/*
 * PVH entry (entry.S pvh_start, already in long mode on the boot CPU's stack): copy what the
 * hvm_start_info at `si` says (command line, memory map) into a zero page of our own, so that
 * the rest of the guest reads one format. Exit 0x200 if it is not a start info with a map.
 */
static uint8_t pvh_zero_page[4096] __attribute__((aligned(4096)));
static char pvh_cmdline[4096];

uint64_t pvh_boot_params(uint64_t si)
{
    const volatile uint8_t *s = (const volatile uint8_t *)si;
    uint64_t cmdline = *(const volatile uint64_t *)(s + 24);
    uint64_t memmap = *(const volatile uint64_t *)(s + 40);
    uint32_t entries = *(const volatile uint32_t *)(s + 48);
    if (*(const volatile uint32_t *)s != 0x336ec578 || *(const volatile uint32_t *)(s + 4) < 1 || !memmap)
        vm_exit(EXIT_BADBOOT);
    if (entries > E820_MAX)
        entries = E820_MAX;
    struct e820_entry *e = (struct e820_entry *)(pvh_zero_page + BP_E820_TABLE);
    const volatile uint64_t *m = (const volatile uint64_t *)memmap;
    for (uint32_t i = 0; i < entries; i++, m += 3) {    /* {addr, size, type | reserved << 32} */
        e[i].addr = m[0];
        e[i].size = m[1];
        e[i].type = (uint32_t)m[2];
    }
    pvh_zero_page[BP_E820_ENTRIES] = (uint8_t)entries;
    if (cmdline) {
        const volatile char *c = (const volatile char *)cmdline;
        for (int i = 0; i < (int)sizeof pvh_cmdline - 1 && c[i]; i++)
            pvh_cmdline[i] = c[i];
        *(uint32_t *)(pvh_zero_page + BP_CMD_LINE_PTR) = (uint32_t)(uint64_t)pvh_cmdline;
    }
    return (uint64_t)pvh_zero_page;
}

/* One (TSC, LAPIC current count) pair; of a few tries, the one read closest together. */
static void tsc_ccr(uint64_t *tsc, uint32_t *ccr)
{
    uint64_t best = ~0ULL;
    for (int i = 0; i < 4; i++) {
        uint64_t a = rdtsc();
        uint32_t c = lapic_read(0x390);
        uint64_t b = rdtsc();
        if (b - a < best) {
            best = b - a;
            *tsc = a + (b - a) / 2;
            *ccr = c;
        }
    }
}

/*
 * TSC ticks per millisecond, measured against the LAPIC timer (1 GHz at divide-by-1: one
 * count a nanosecond) over 20 ms. Heartbeats are timed with the TSC: timer interrupts get lost
 * whenever the host does not run a vCPU thread for a whole tick, the TSC keeps time.
 * 0 if the measurement makes no sense (then user.c times heartbeats with the tick count).
 */
static void calibrate_tsc(void)
{
    uint64_t t0, t1;
    uint32_t c0, c1;
    lapic_write(0x320, 0x10000 | VEC_TIMER);    /* one-shot, masked */
    lapic_write(0x3E0, 0xB);                    /* divide by 1 */
    lapic_write(0x380, 0xFFFFFFFF);
    tsc_ccr(&t0, &c0);
    while (c0 - lapic_read(0x390) < 20000000 && rdtsc() - t0 < (1ULL << 33))
        ;
    tsc_ccr(&t1, &c1);
    lapic_write(0x380, 0);
    uint64_t per_ms = c0 > c1 + 1000000 ? (t1 - t0) * 1000000 / (c0 - c1) : 0;
    tsc_per_ms = per_ms >= 100000 && per_ms <= 100000000 ? per_ms : 0;   /* 100 MHz .. 100 GHz */
}

/* Every CPU, on its own CPL0 stack: own tables, TSS, LAPIC timer, then CPL3 for good. */
void __attribute__((noreturn)) cpu_init(uint32_t id)
{
    struct percpu *pc = percpu_of(id);
    uint64_t area = (uint64_t)pc;
    pc->ticks = 0;
    pc->id = id;
    memset(&pc->tss, 0, sizeof pc->tss);
    pc->tss.rsp0 = area + KSTACK_TOP;
    pc->tss.iomap_base = sizeof(struct tss);    /* no I/O bitmap */

    uint64_t tss = (uint64_t)&pc->tss, limit = sizeof(struct tss) - 1;
    gdt[6 + 2 * id] = (limit & 0xFFFF) | ((tss & 0xFFFFFF) << 16) | (0x89ULL << 40)
                      | (((limit >> 16) & 0xF) << 48) | (((tss >> 24) & 0xFF) << 56);
    gdt[7 + 2 * id] = tss >> 32;

    struct { uint16_t limit; uint64_t base; } __attribute__((packed))
        gdtr = { sizeof gdt - 1, (uint64_t)gdt },
        idtr = { sizeof idt - 1, (uint64_t)idt };

    __asm__ volatile("mov %0, %%cr3" :: "r"(pml4_addr) : "memory");
    __asm__ volatile(
        "lgdt %0\n\t"
        "pushq %1\n\t"
        "leaq 1f(%%rip), %%rax\n\t"
        "pushq %%rax\n\t"
        "lretq\n"
        "1:\tmov %2, %%ax\n\t"
        "mov %%ax, %%ds\n\t"
        "mov %%ax, %%es\n\t"
        "mov %%ax, %%ss\n\t"
        "xor %%eax, %%eax\n\t"
        "mov %%ax, %%fs\n\t"
        "mov %%ax, %%gs\n\t"
        "ltr %w3\n\t"
        "lidt %4"
        :: "m"(gdtr), "i"(SEL_KCODE), "i"(SEL_KDATA), "r"(SEL_TSS0 + 16 * id), "m"(idtr)
        : "rax", "memory");

    lapic_write(0x80, 0);                       /* TPR: accept everything */
    lapic_write(0xF0, 0x100 | VEC_SPURIOUS);    /* SVR: software enable */
    lapic_write(0x350, 0x10000);                /* LINT0 masked (no ExtINT from the PIC) */
    lapic_write(0x360, 0x10000);                /* LINT1 masked */
    lapic_write(0x370, 0x10000);                /* error masked */

    if (id == 0)
        calibrate_tsc();
    lapic_write(0x3E0, LAPIC_TIMER_DIV);
    lapic_write(0x320, 0x20000 | VEC_TIMER);    /* periodic */
    lapic_write(0x380, LAPIC_TIMER_INIT);

    enter_user((uint64_t)user_main, area + USTACK_TOP - 8, id);
}

uint64_t ksyscall(uint64_t req, uint64_t a, uint64_t b)
{
    switch (req) {
    case SYS_PRINT: {
        const char *s = (const char *)a;
        while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE))
            while (console_lock)
                __asm__ volatile("pause");
        for (uint64_t i = 0; i < b; i++) {
            while (!(inb(0x3FD) & 0x20))
                ;
            outb(0x3F8, (uint8_t)s[i]);
        }
        __atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
        return 0;
    }
    case SYS_READY:
        outb(0x504, 1);
        return 0;
    case SYS_EXIT:
        vm_exit((uint32_t)a);
    case SYS_RESET:
        outb(0x64, 0xFE);
        return 0;
    case SYS_GENID: {
        /* The VM may be cloned between two reads (a template saved in the middle of this
         * request): low, high, low again, and again if the low halves differ. */
        uint32_t lo, hi;
        do {
            lo = inl(0x508);
            hi = inl(0x50C);
        } while (inl(0x508) != lo);
        return lo | (uint64_t)hi << 32;
    }
    case SYS_FAULT_MMIO:
        return *(volatile uint32_t *)0xD0000000UL;
    case SYS_FAULT_PORT:
        outb(0x2F0, inb(0x2F0));
        return 0;
    case SYS_MAP_USER: {
        /* Only device pages of the hole; the LAPIC/IOAPIC pages stay supervisor-only. The page
         * was supervisor-only before, so no CPU holds a user TLB entry to flush elsewhere. */
        if (a < 0xC0000000UL || a >= 0xFEC00000UL)
            return (uint64_t)-1;
        hole_pd[(a >> 21) & 511] |= 0x4;
        __asm__ volatile("invlpg (%0)" :: "r"(a & ~0x1FFFFFUL) : "memory");
        return 0;
    }
    case SYS_IDLE:
        __asm__ volatile("sti; hlt; cli" ::: "memory");
        return 0;
    }
    return (uint64_t)-1;
}

void *memset(void *d, int c, size_t n)
{
    unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}
