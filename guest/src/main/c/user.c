/*
 * CPL3 part of the test guest: command line, memory plan, the memory workload and the
 * heartbeat. On PVM hosts this code runs natively; it enters CPL0 (sys_call) only to print
 * a line or to touch a port.
 */
#include "guest.h"

#define CHUNK           (64 * 1024)     /* unit of verification and of the generation table */
#define CHUNK_WORDS     (CHUNK / 8)
#define MAX_RANGES      16
#define MAX_CORRUPT     16              /* CORRUPT lines per CPU, then only keep checking */
#define DEFAULT_MEM     (64ULL << 20)
#define DEFAULT_HB_MS   1000
#define DEFAULT_REWRITE 100             /* percent of each CPU's chunks rewritten every pass */

struct range {
    uint64_t start;             /* guest-physical, CHUNK aligned */
    uint64_t chunks;
    uint64_t first;             /* global index of its first chunk */
};

/* Written by CPU 0 before plan_ready, read-only afterwards. */
static struct {
    uint64_t mem_req, mem;
    uint64_t hb_ms;
    uint64_t hb_period;         /* in hb_clock() units */
    uint64_t exit_after, reset_after;
    uint64_t exit_code;
    uint64_t rewrite;           /* 0..100: of every 100 chunks of a CPU's share, the first
                                   `rewrite` are rewritten each pass, the rest only verified */
    int fault_mmio, fault_port;
    uint64_t nchunks;
    uint64_t virtio_chunks;     /* RAM for the virtio drivers, taken before the exercised chunks */
    uint64_t virtio_area;
    volatile uint64_t *gen;     /* generation last written to each chunk (in guest RAM) */
    int nranges;
    struct range r[MAX_RANGES];
} plan;

static volatile uint32_t plan_ready, filled, ready;

#define sys sys_call

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return lo | (uint64_t)hi << 32; }

/* The heartbeat clock: the TSC, or this CPU's tick count if the TSC could not be calibrated. */
static inline uint64_t hb_clock(volatile uint64_t *ticks)
{
    return tsc_per_ms ? rdtsc() : *ticks;
}

/* ---- output: lines are built here (natively) and written whole by CPL0 ---- */

void put_s(struct line *l, const char *s)
{
    while (*s && l->n < (int)sizeof l->b - 1)
        l->b[l->n++] = *s++;
}

void put_u(struct line *l, uint64_t v)
{
    char t[20];
    int i = 0;
    do {
        t[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i && l->n < (int)sizeof l->b - 1)
        l->b[l->n++] = t[--i];
}

/* 0x + lowercase hex; digits = 0: as few as needed, else exactly that many. */
void put_x(struct line *l, uint64_t v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    if (!digits) {
        digits = 1;
        while (digits < 16 && (v >> (4 * digits)))
            digits++;
    }
    put_s(l, "0x");
    while (digits-- && l->n < (int)sizeof l->b - 1)
        l->b[l->n++] = hex[(v >> (4 * digits)) & 0xF];
}

void emit(struct line *l)
{
    l->b[l->n++] = '\n';
    sys(SYS_PRINT, (uint64_t)l->b, (uint64_t)l->n);
    l->n = 0;
}

/* ---- command line ---- */

int prefix(const char *s, const char *p, const char **rest)
{
    while (*p)
        if (*s++ != *p++)
            return 0;
    *rest = s;
    return 1;
}

/* decimal or 0x hex; *end points after the digits */
uint64_t parse_u(const char *s, const char **end)
{
    uint64_t v = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        for (;; s++) {
            int d = *s >= '0' && *s <= '9' ? *s - '0'
                  : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10
                  : *s >= 'A' && *s <= 'F' ? *s - 'A' + 10 : -1;
            if (d < 0)
                break;
            v = v * 16 + (uint64_t)d;
        }
    } else {
        for (; *s >= '0' && *s <= '9'; s++)
            v = v * 10 + (uint64_t)(*s - '0');
    }
    *end = s;
    return v;
}

static void parse_token(const char *t)
{
    const char *v, *end;
    if (prefix(t, "testguest.mem=", &v)) {
        uint64_t n = parse_u(v, &end);
        switch (*end) {
        case 'k': case 'K': n <<= 10; break;
        case 'm': case 'M': n <<= 20; break;
        case 'g': case 'G': n <<= 30; break;
        }
        plan.mem_req = n;
    } else if (prefix(t, "testguest.hb=", &v)) {
        uint64_t n = parse_u(v, &end);
        if (n)
            plan.hb_ms = n;
    } else if (prefix(t, "testguest.exit_after=", &v)) {
        plan.exit_after = parse_u(v, &end);
    } else if (prefix(t, "testguest.exit_code=", &v)) {
        plan.exit_code = parse_u(v, &end);
    } else if (prefix(t, "testguest.rewrite=", &v)) {
        uint64_t n = parse_u(v, &end);
        if (end != v)                   /* at least one digit */
            plan.rewrite = n > 100 ? 100 : n;
    } else if (prefix(t, "testguest.reset_after=", &v)) {
        plan.reset_after = parse_u(v, &end);
    } else if (prefix(t, "testguest.fault=", &v)) {
        if (prefix(v, "unmapped", &end) && (*end == 0))
            plan.fault_mmio = 1;
        else if (prefix(v, "port", &end) && (*end == 0))
            plan.fault_port = 1;
    } else {
        virtio_parse_token(t);
    }
}

static void parse_cmdline(void)
{
    const uint8_t *bp = (const uint8_t *)boot_params;
    uint64_t ptr = *(const uint32_t *)(bp + BP_CMD_LINE_PTR);
    uint64_t size = *(const uint32_t *)(bp + BP_CMDLINE_SIZE);
    if (!ptr)
        return;
    if (!size || size > 4096)
        size = 4096;
    const char *s = (const char *)ptr;
    char tok[256];
    uint64_t i = 0;
    while (i < size && s[i]) {
        while (i < size && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n'))
            i++;
        int n = 0;
        while (i < size && s[i] && s[i] != ' ' && s[i] != '\t' && s[i] != '\n') {
            if (n < (int)sizeof tok - 1)
                tok[n++] = s[i];
            i++;
        }
        tok[n] = 0;
        if (n)
            parse_token(tok);
    }
}

/* ---- memory plan ---- */

static void add_range(uint64_t start, uint64_t end)
{
    start = (start + CHUNK - 1) & ~(uint64_t)(CHUNK - 1);
    end &= ~(uint64_t)(CHUNK - 1);
    if (end <= start || plan.nranges == MAX_RANGES)
        return;
    int i = plan.nranges++;
    while (i > 0 && plan.r[i - 1].start > start) {   /* keep them sorted */
        plan.r[i] = plan.r[i - 1];
        i--;
    }
    plan.r[i].start = start;
    plan.r[i].chunks = (end - start) / CHUNK;
}

/* usable = e820 RAM above 1 MiB, minus [image start, kernel_end) */
static void make_plan(void)
{
    const uint8_t *bp = (const uint8_t *)boot_params;
    uint32_t entries = bp[BP_E820_ENTRIES];
    if (entries > E820_MAX)
        entries = E820_MAX;
    const struct e820_entry *e = (const struct e820_entry *)(bp + BP_E820_TABLE);
    uint64_t ks = (uint64_t)__image_start, ke = kernel_end;
    for (uint32_t i = 0; i < entries; i++) {
        if (e[i].type != E820_RAM)
            continue;
        uint64_t s = e[i].addr, end = e[i].addr + e[i].size;
        if (s < 0x100000)
            s = 0x100000;
        if (end <= s)
            continue;
        if (ke <= s || end <= ks) {
            add_range(s, end);
        } else {
            if (s < ks)
                add_range(s, ks);
            if (ke < end)
                add_range(ke, end);
        }
    }

    uint64_t total = 0;
    for (int i = 0; i < plan.nranges; i++)
        total += plan.r[i].chunks;

    /* chunks to exercise, and the generation table (8 bytes a chunk, whole chunks) */
    uint64_t want = plan.mem_req / CHUNK, table = 0;
    uint64_t vchunks = (virtio_area_size() + CHUNK - 1) / CHUNK;
    if (vchunks) {
        int i = 0;
        while (i < plan.nranges && plan.r[i].chunks < vchunks)
            i++;
        if (i < plan.nranges) {
            plan.virtio_area = plan.r[i].start;
            plan.virtio_chunks = vchunks;
            plan.r[i].start += vchunks * CHUNK;
            plan.r[i].chunks -= vchunks;
            total -= vchunks;
        }
    }
    for (int round = 0; round < 2; round++) {
        table = (want * 8 + CHUNK - 1) / CHUNK;
        if (want + table > total)
            want = total > table ? total - table : 0;
    }
    table = (want * 8 + CHUNK - 1) / CHUNK;
    if (table) {
        int i = 0;
        while (i < plan.nranges && plan.r[i].chunks < table)
            i++;
        if (i == plan.nranges) {
            want = table = 0;
        } else {
            plan.gen = (volatile uint64_t *)plan.r[i].start;
            plan.r[i].start += table * CHUNK;
            plan.r[i].chunks -= table;
        }
    }
    /* take the first `want` chunks of the ranges */
    uint64_t first = 0;
    int n = 0;
    for (int i = 0; i < plan.nranges && first < want; i++) {
        if (!plan.r[i].chunks)
            continue;
        uint64_t c = plan.r[i].chunks;
        if (c > want - first)
            c = want - first;
        plan.r[n].start = plan.r[i].start;
        plan.r[n].chunks = c;
        plan.r[n].first = first;
        first += c;
        n++;
    }
    plan.nranges = n;
    plan.nchunks = first;
    plan.mem = first * CHUNK;
}

static uint64_t chunk_addr(uint64_t c)
{
    int i = 0;
    while (i + 1 < plan.nranges && c >= plan.r[i + 1].first)
        i++;
    return plan.r[i].start + (c - plan.r[i].first) * CHUNK;
}

/* ---- the memory pattern ---- */

/* The word at guest-physical address a, written in generation g: every word of guest memory
 * differs from every other word and from itself in every other generation (splitmix64). */
static inline uint64_t pattern(uint64_t a, uint64_t g)
{
    uint64_t z = a ^ (g * 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void fill_chunk(uint64_t c, uint64_t g)
{
    uint64_t a = chunk_addr(c);
    volatile uint64_t *p = (volatile uint64_t *)a;
    for (uint64_t i = 0; i < CHUNK_WORDS; i++, a += 8)
        p[i] = pattern(a, g);
    plan.gen[c] = g;
}

struct cpu_state {
    uint32_t cpu;
    uint32_t corrupt_lines;
    int ready_seen;
    uint64_t seq;
    uint64_t next_hb;           /* hb_clock() value the next heartbeat is due at */
    uint64_t last_clock;
    uint64_t hb_ticks;          /* timer interrupts seen at the last heartbeat */
    uint64_t genid;
    volatile uint64_t *ticks;
};

/* Verify chunk c against the generation the table says it holds; if `rewrite`, rewrite it
 * with the next generation. A chunk only verified is rewritten anyway when it was found bad,
 * so that each corruption is reported once, as for rewritten chunks. */
static void check_chunk(struct cpu_state *st, uint64_t c, int rewrite)
{
    uint64_t g = plan.gen[c];
    uint64_t a = chunk_addr(c);
    volatile uint64_t *p = (volatile uint64_t *)a;
    uint64_t bad = 0, bad_addr = 0, bad_exp = 0, bad_got = 0;
    if (rewrite) {
        for (uint64_t i = 0; i < CHUNK_WORDS; i++, a += 8) {
            uint64_t got = p[i], exp = pattern(a, g);
            if (__builtin_expect(got != exp, 0)) {
                if (!bad++) {
                    bad_addr = a;
                    bad_exp = exp;
                    bad_got = got;
                }
            }
            p[i] = pattern(a, g + 1);
        }
        plan.gen[c] = g + 1;
    } else {
        for (uint64_t i = 0; i < CHUNK_WORDS; i++, a += 8) {
            uint64_t got = p[i], exp = pattern(a, g);
            if (__builtin_expect(got != exp, 0)) {
                if (!bad++) {
                    bad_addr = a;
                    bad_exp = exp;
                    bad_got = got;
                }
            }
        }
        if (bad)
            fill_chunk(c, g + 1);
    }
    if (bad && st->corrupt_lines < MAX_CORRUPT) {
        st->corrupt_lines++;
        struct line l;
        l.n = 0;
        put_s(&l, "CORRUPT ");
        put_u(&l, st->cpu);
        put_s(&l, " addr=");
        put_x(&l, bad_addr, 0);
        put_s(&l, " expected=");
        put_x(&l, bad_exp, 16);
        put_s(&l, " got=");
        put_x(&l, bad_got, 16);
        emit(&l);
    }
}

static void print_genid(uint64_t id)
{
    struct line l;
    l.n = 0;
    put_s(&l, "genid ");
    put_x(&l, id, 16);
    emit(&l);
}

static void became_ready(void)
{
    struct line l;
    l.n = 0;
    put_s(&l, "ready");
    emit(&l);
    sys(SYS_READY, 0, 0);
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    if (plan.fault_mmio)
        sys(SYS_FAULT_MMIO, 0, 0);
    if (plan.fault_port)
        sys(SYS_FAULT_PORT, 0, 0);
    virtio_after_ready();
}

static void heartbeat(struct cpu_state *st)
{
    st->seq++;
    if (st->cpu == 0) {
        virtio_heartbeat(st->seq, plan.hb_ms);
        uint64_t id = sys(SYS_GENID, 0, 0);
        if (id != st->genid) {
            st->genid = id;
            print_genid(id);
        }
    }
    struct line l;
    l.n = 0;
    put_s(&l, "hb ");
    put_u(&l, st->cpu);
    put_s(&l, " ");
    put_u(&l, st->seq);
    emit(&l);
    if (st->cpu == 0) {
        if (plan.exit_after && st->seq == plan.exit_after)
            sys(SYS_EXIT, plan.exit_code, 0);
        if (plan.reset_after && st->seq == plan.reset_after)
            sys(SYS_RESET, 0, 0);
    }
}

/*
 * Between two chunks: "ready" (CPU 0), heartbeats (every CPU). A heartbeat is due when the TSC
 * says a period has passed AND this CPU took at least one timer interrupt since the previous
 * one (so heartbeats also prove that interrupts are delivered). The TSC, not the tick count,
 * keeps time: ticks are lost while the host does not run the vCPU.
 */
static void poll(struct cpu_state *st)
{
    if (st->cpu == 0)
        virtio_poll();
    uint64_t now = hb_clock(st->ticks);
    if (!st->ready_seen) {
        if (st->cpu == 0 && !ready && __atomic_load_n(&filled, __ATOMIC_ACQUIRE) == ncpus)
            became_ready();
        if (__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
            st->ready_seen = 1;
            st->next_hb = now + plan.hb_period;
            st->hb_ticks = *st->ticks;
            st->last_clock = now;
        }
        return;
    }
    if (now < st->last_clock)           /* TSC went back (restored without it): start over */
        st->next_hb = now + plan.hb_period;
    st->last_clock = now;
    if (now >= st->next_hb && *st->ticks != st->hb_ticks) {
        heartbeat(st);
        st->hb_ticks = *st->ticks;
        st->next_hb += plan.hb_period;
        if (st->next_hb <= now)         /* fell behind (VM paused?): no burst of heartbeats */
            st->next_hb = now + plan.hb_period;
    }
}

void user_main(uint32_t cpu)
{
    struct cpu_state st = { .cpu = cpu, .ticks = &percpu_of(cpu)->ticks };

    if (cpu == 0) {
        plan.mem_req = DEFAULT_MEM;
        plan.hb_ms = DEFAULT_HB_MS;
        plan.rewrite = DEFAULT_REWRITE;
        parse_cmdline();
        virtio_probe();
        plan.hb_period = tsc_per_ms ? plan.hb_ms * tsc_per_ms : (plan.hb_ms + TICK_MS - 1) / TICK_MS;
        make_plan();
        struct line l;
        l.n = 0;
        put_s(&l, "testguest " TESTGUEST_VERSION " cpus=");
        put_u(&l, ncpus);
        put_s(&l, " mem=");
        put_u(&l, plan.mem);
        emit(&l);
        st.genid = sys(SYS_GENID, 0, 0);
        print_genid(st.genid);
        virtio_start(plan.virtio_chunks ? plan.virtio_area : 0);
        __atomic_store_n(&plan_ready, 1, __ATOMIC_RELEASE);
    } else {
        while (!__atomic_load_n(&plan_ready, __ATOMIC_ACQUIRE))
            cpu_relax();
    }

    /* this CPU's share: chunks [c0, c1) */
    uint64_t c0 = plan.nchunks * cpu / ncpus, c1 = plan.nchunks * (cpu + 1) / ncpus;
    for (uint64_t c = c0; c < c1; c++)
        fill_chunk(c, 1);
    __atomic_fetch_add(&filled, 1, __ATOMIC_RELEASE);

    for (;;) {
        if (c0 == c1) {                 /* nothing to check: sleep until the next tick */
            poll(&st);
            sys(SYS_IDLE, 0, 0);
            continue;
        }
        /* the same chunks every pass: those whose index in this CPU's share, mod 100, is
         * below plan.rewrite */
        uint64_t k = 0;
        for (uint64_t c = c0; c < c1; c++) {
            check_chunk(&st, c, k < plan.rewrite);
            if (++k == 100)
                k = 0;
            poll(&st);
        }
    }
}
