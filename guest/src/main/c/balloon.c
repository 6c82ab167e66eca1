/*
 * The test guest's virtio-balloon driver (device id 5; CPL3, CPU 0, polled). It owns a region of
 * RAM outside what the memory checker exercises (its part of the virtio area) and
 *  - dirties the whole region at heartbeat `dirty`, writing a pattern of the page address and a
 *    generation into every word, checks it, and `hold` heartbeats later reports the region free
 *    (VIRTIO_BALLOON_F_REPORTING: ranges of up to 4 MiB, one descriptor each);
 *  - `reuse` heartbeats after a report has been used (0: never) writes the pages again with a new
 *    generation, then reports them again after `hold`, and so on;
 *  - checks every page it wrote (and has not given away since) at each heartbeat: only what it
 *    wrote after the last reuse is checked, never a page the host may have dropped;
 *  - follows the host's target (`num_pages`) with inflate and deflate requests of up to 256 frame
 *    numbers from the region, and writes `actual`;
 *  - keeps one statistics buffer on the statistics queue, refilled each time the device uses it.
 * Output: `balloon ...` per heartbeat, `CORRUPT balloon ...` when a page it wrote reads back wrong.
 * Options: testguest.balloon=off|size=N[KMG]|dirty=HB|hold=N|reuse=N|bad (see ../../../README.md).
 */
#include "virtio.h"

#define BAL_ID              5
#define BAL_F_STATS_VQ      1
#define BAL_F_DEFLATE_ON_OOM 2
#define BAL_F_REPORTING     5
#define PAGE                4096ULL
#define PFNS_MAX            256
#define REPORT_RANGE        (4ULL << 20)    /* bytes per reported range at most */
#define REPORT_DESCS        64              /* ranges per report request */
#define STATS_TAGS          6
#define MAX_BAL_CORRUPT     16

/* Page states: 0 free (contents undefined, not checked), a generation (written, checked), or one of these. */
#define PG_INFLATED         0xFFFFFFFFu
#define PG_INFLATING        0xFFFFFFFEu
#define PG_REPORTING        0xFFFFFFFDu
#define PG_DEFLATING        0xFFFFFFFCu
#define PG_GEN_MAX          0xFFFFFF00u

enum { OP_NONE, OP_REPORT, OP_INFLATE, OP_DEFLATE, OP_BAD };

static struct {
    int off, bad;
    uint64_t size_req, dirty_hb, hold, reuse;
    uint64_t mmio, features;
    struct vq iq, dq, sq, rq;
    int has_stats, has_report, active;
    volatile uint32_t *pfns;
    volatile uint8_t *stats;
    volatile uint32_t *page;            /* state per page */
    uint64_t region, pages;
    uint32_t gen;
    int op;                             /* the one request in flight */
    uint32_t op_pages;                  /* inflate/deflate: frame numbers in it */
    uint64_t report_cursor;             /* next page a report looks at */
    uint64_t next_report_hb, next_reuse_hb;
    uint64_t hb;
    uint64_t reported, reused, dirtied, inflated, stats_sent, corrupt_lines;
    uint32_t actual;
} b = { .size_req = 64ULL << 20, .dirty_hb = 3, .hold = 1 };

static int bal_parse(const char *t)
{
    const char *s, *v, *end;
    if (!prefix(t, "testguest.balloon=", &s))
        return 0;
    while (*s) {
        if (prefix(s, "off", &end)) {
            b.off = 1;
        } else if (prefix(s, "bad", &end)) {
            b.bad = 1;
        } else if (prefix(s, "size=", &v)) {
            uint64_t n = parse_u(v, &end);
            switch (*end) {
            case 'k': case 'K': n <<= 10; end++; break;
            case 'm': case 'M': n <<= 20; end++; break;
            case 'g': case 'G': n <<= 30; end++; break;
            }
            b.size_req = n;
        } else if (prefix(s, "dirty=", &v)) {
            b.dirty_hb = parse_u(v, &end);
        } else if (prefix(s, "hold=", &v)) {
            b.hold = parse_u(v, &end);
        } else if (prefix(s, "reuse=", &v)) {
            b.reuse = parse_u(v, &end);
        } else {
            end = s;
        }
        while (*end && *end != ',')
            end++;
        s = *end ? end + 1 : end;
    }
    return 1;
}

/* rings (4 queues), a page for frame numbers and statistics, the page states, the region */
static uint64_t state_bytes(void)
{
    return (b.pages * 4 + PAGE - 1) & ~(PAGE - 1);
}

static uint64_t bal_probe(uint64_t mmio)
{
    if (b.off)
        return 0;
    uint64_t f = vio_negotiate(mmio, 1ULL << BAL_F_STATS_VQ | 1ULL << BAL_F_DEFLATE_ON_OOM | 1ULL << BAL_F_REPORTING);
    if (!f) {
        vio_set_error(mmio, "features");
        return 0;
    }
    b.mmio = mmio;
    b.features = f;
    /* at most half the RAM above 1 MiB (the largest e820 range), so the rest of the guest still fits */
    const uint8_t *bp = (const uint8_t *)boot_params;
    const struct e820_entry *e = (const struct e820_entry *)(bp + BP_E820_TABLE);
    uint64_t largest = 0;
    for (uint32_t i = 0; i < bp[BP_E820_ENTRIES] && i < E820_MAX; i++)
        if (e[i].type == E820_RAM && e[i].size > largest)
            largest = e[i].size;
    uint64_t size = b.size_req < largest / 2 ? b.size_req : largest / 2;
    b.pages = size / PAGE;
    return 4 * QUEUE_BYTES + PAGE + state_bytes() + b.pages * PAGE;
}

static inline uint64_t pattern(uint64_t addr, uint32_t gen)
{
    return addr * 0x9E3779B97F4A7C15ULL ^ (uint64_t)gen << 40 ^ 0xba11005eedULL;
}

static void write_page(uint64_t p, uint32_t gen)
{
    uint64_t a = b.region + p * PAGE;
    volatile uint64_t *w = (volatile uint64_t *)a;
    for (uint64_t i = 0; i < PAGE / 8; i++)
        w[i] = pattern(a + i * 8, gen);
    b.page[p] = gen;
}

static void check_pages(void)
{
    for (uint64_t p = 0; p < b.pages; p++) {
        uint32_t g = b.page[p];
        if (g == 0 || g > PG_GEN_MAX)
            continue;
        uint64_t a = b.region + p * PAGE;
        volatile uint64_t *w = (volatile uint64_t *)a;
        for (uint64_t i = 0; i < PAGE / 8; i++) {
            uint64_t want = pattern(a + i * 8, g);
            if (w[i] == want)
                continue;
            if (b.corrupt_lines < MAX_BAL_CORRUPT) {
                struct line l;
                l.n = 0;
                put_s(&l, "CORRUPT balloon addr=");
                put_x(&l, a + i * 8, 0);
                put_s(&l, " expected=");
                put_x(&l, want, 16);
                put_s(&l, " got=");
                put_x(&l, w[i], 16);
                emit(&l);
            }
            b.corrupt_lines++;
            break;
        }
    }
}

static void fill_stats(void)
{
    uint64_t free = 0;
    for (uint64_t p = 0; p < b.pages; p++)
        free += b.page[p] == 0;
    /* tags: minor faults (here: statistics sent, so the host sees them change), free, total, available */
    static const uint16_t tags[STATS_TAGS] = { 0, 1, 3, 4, 5, 6 };
    uint64_t vals[STATS_TAGS] = { 0, 0, b.stats_sent, free * PAGE, b.pages * PAGE, free * PAGE };
    for (int i = 0; i < STATS_TAGS; i++) {
        volatile uint8_t *e = b.stats + 10 * i;
        e[0] = (uint8_t)tags[i];
        e[1] = (uint8_t)(tags[i] >> 8);
        for (int k = 0; k < 8; k++)
            e[2 + k] = (uint8_t)(vals[i] >> (8 * k));
    }
}

static void send_stats(void)
{
    fill_stats();
    b.sq.desc[0].addr = (uint64_t)b.stats;
    b.sq.desc[0].len = 10 * STATS_TAGS;
    b.sq.desc[0].flags = 0;
    vq_add(&b.sq, 0);
    vq_kick(&b.sq);
}

static void bal_start(uint64_t area)
{
    struct line l;
    uint64_t q = area;
    int ok = vio_setup_queue(&b.iq, b.mmio, 0, q) && vio_setup_queue(&b.dq, b.mmio, 1, q + QUEUE_BYTES);
    uint32_t next = 2;
    if (ok && b.features & 1ULL << BAL_F_STATS_VQ)
        ok = b.has_stats = vio_setup_queue(&b.sq, b.mmio, next++, q + 2 * QUEUE_BYTES);
    if (ok && b.features & 1ULL << BAL_F_REPORTING)
        ok = b.has_report = vio_setup_queue(&b.rq, b.mmio, next, q + 3 * QUEUE_BYTES);
    vio_line_dev(&l, "balloon ", b.mmio);
    if (!ok) {
        put_s(&l, " error queue");
        emit(&l);
        return;
    }
    uint64_t misc = q + 4 * QUEUE_BYTES;
    b.pfns = (volatile uint32_t *)misc;
    b.stats = (volatile uint8_t *)(misc + 0x800);
    b.page = (volatile uint32_t *)(misc + PAGE);
    b.region = misc + PAGE + state_bytes();
    wr(b.mmio, R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    b.active = 1;
    put_s(&l, " region=");
    put_x(&l, b.region, 0);
    put_s(&l, " pages=");
    put_u(&l, b.pages);
    put_s(&l, " features=");
    put_x(&l, b.features & 0xFFFFFFFF, 0);
    emit(&l);
    if (b.has_stats)
        send_stats();
}

/* One report request: the next up to REPORT_DESCS runs of written or free pages (up to 4 MiB each). */
static void report_some(void)
{
    uint32_t n = 0;
    while (b.report_cursor < b.pages && n < REPORT_DESCS) {
        uint64_t p = b.report_cursor;
        if (b.page[p] > PG_GEN_MAX) {
            b.report_cursor++;
            continue;
        }
        uint64_t run = 0;
        while (p + run < b.pages && b.page[p + run] <= PG_GEN_MAX && run * PAGE < REPORT_RANGE) {
            b.page[p + run] = PG_REPORTING;
            run++;
        }
        b.rq.desc[n].addr = b.region + p * PAGE;
        b.rq.desc[n].len = (uint32_t)(run * PAGE);
        b.rq.desc[n].flags = DESC_F_WRITE | DESC_F_NEXT;
        b.rq.desc[n].next = (uint16_t)(n + 1);
        n++;
        b.report_cursor = p + run;
    }
    if (!n)
        return;
    b.rq.desc[n - 1].flags = DESC_F_WRITE;
    vq_add(&b.rq, 0);
    vq_kick(&b.rq);
    b.op = OP_REPORT;
}

/* Inflate (up to `count` pages the guest holds) or deflate (pages in the balloon) on queue `q`. */
static void send_frames(struct vq *q, uint32_t count, int from_inflated)
{
    uint32_t n = 0;
    for (uint64_t p = b.pages; p-- > 0 && n < count;) {
        uint32_t s = b.page[p];
        int eligible = from_inflated ? s == PG_INFLATED : s <= PG_GEN_MAX;
        if (!eligible)
            continue;
        b.page[p] = from_inflated ? PG_DEFLATING : PG_INFLATING;
        b.pfns[n++] = (uint32_t)((b.region + p * PAGE) / PAGE);
    }
    if (!n)
        return;
    q->desc[0].addr = (uint64_t)b.pfns;
    q->desc[0].len = 4 * n;
    q->desc[0].flags = 0;
    vq_add(q, 0);
    vq_kick(q);
    b.op = from_inflated ? OP_DEFLATE : OP_INFLATE;
    b.op_pages = n;
}

/* Frame numbers that are not the guest's to give: the VMM's page 1, the 32-bit hole, far beyond RAM. */
static void send_bad(void)
{
    b.pfns[0] = 1;
    b.pfns[1] = 0xC0000;
    b.pfns[2] = 0xFFFFFFFF;
    b.iq.desc[0].addr = (uint64_t)b.pfns;
    b.iq.desc[0].len = 12;
    b.iq.desc[0].flags = 0;
    vq_add(&b.iq, 0);
    vq_kick(&b.iq);
    b.op = OP_BAD;
}

static void finish_op(void)
{
    uint32_t len;
    struct vq *q = b.op == OP_REPORT ? &b.rq : b.op == OP_DEFLATE ? &b.dq : &b.iq;
    if (vq_used(q, &len) < 0)
        return;
    if (b.op == OP_REPORT) {
        for (uint64_t p = 0; p < b.pages; p++)
            if (b.page[p] == PG_REPORTING) {
                b.page[p] = 0;
                b.reported++;
            }
        if (b.report_cursor < b.pages) {
            report_some();              /* the rest of the region */
            if (b.op == OP_REPORT)
                return;
        }
        if (b.reuse)
            b.next_reuse_hb = b.hb + b.reuse;
    } else if (b.op == OP_INFLATE) {
        uint32_t n = 0;
        for (uint64_t p = 0; p < b.pages; p++)
            if (b.page[p] == PG_INFLATING) {
                b.page[p] = PG_INFLATED;
                n++;
            }
        b.actual += n;
        b.inflated += n;
        wr(b.mmio, R_CONFIG + 4, b.actual);
    } else if (b.op == OP_DEFLATE) {
        /* deflated pages are free again: their contents are whatever the host gives back */
        uint32_t n = 0;
        for (uint64_t p = 0; p < b.pages; p++)
            if (b.page[p] == PG_DEFLATING) {
                b.page[p] = 0;
                n++;
            }
        b.actual -= n;
        wr(b.mmio, R_CONFIG + 4, b.actual);
    }
    b.op = OP_NONE;
}

static void bal_poll(void)
{
    if (!b.active)
        return;
    if (b.has_stats) {
        uint32_t len;
        if (vq_used(&b.sq, &len) >= 0) {
            b.stats_sent++;
            send_stats();
        }
    }
    if (b.op != OP_NONE) {
        finish_op();
        if (b.op != OP_NONE)
            return;
    }
    uint32_t target = (uint32_t)vio_config32(b.mmio, 0);
    if (target > b.actual)
        send_frames(&b.iq, target - b.actual < PFNS_MAX ? target - b.actual : PFNS_MAX, 0);
    else if (target < b.actual)
        send_frames(&b.dq, b.actual - target < PFNS_MAX ? b.actual - target : PFNS_MAX, 1);
}

static void bal_heartbeat(uint64_t seq, uint64_t hb_ms)
{
    (void)hb_ms;
    if (!b.active)
        return;
    b.hb = seq;
    check_pages();
    if (b.op == OP_NONE && b.bad) {
        b.bad = 0;
        send_bad();
    }
    if (seq == b.dirty_hb) {
        /* dirty every page the balloon does not hold */
        if (++b.gen > PG_GEN_MAX)
            b.gen = 1;
        for (uint64_t p = 0; p < b.pages; p++)
            if (b.page[p] <= PG_GEN_MAX) {
                write_page(p, b.gen);
                b.dirtied++;
            }
        check_pages();
        b.next_report_hb = seq + b.hold;
    }
    if (b.next_reuse_hb && seq >= b.next_reuse_hb) {
        b.next_reuse_hb = 0;
        if (++b.gen > PG_GEN_MAX)
            b.gen = 1;
        for (uint64_t p = 0; p < b.pages; p++)
            if (b.page[p] == 0) {
                write_page(p, b.gen);
                b.reused++;
            }
        check_pages();
        b.next_report_hb = seq + b.hold;
    }
    if (b.next_report_hb && seq >= b.next_report_hb && b.op == OP_NONE && b.has_report) {
        b.next_report_hb = 0;
        b.report_cursor = 0;
        report_some();
    }
    struct line l;
    l.n = 0;
    put_s(&l, "balloon reported=");
    put_u(&l, b.reported);
    put_s(&l, " reused=");
    put_u(&l, b.reused);
    put_s(&l, " dirtied=");
    put_u(&l, b.dirtied);
    put_s(&l, " inflated=");
    put_u(&l, b.inflated);
    put_s(&l, " actual=");
    put_u(&l, b.actual);
    put_s(&l, " target=");
    put_u(&l, (uint32_t)vio_config32(b.mmio, 0));
    put_s(&l, " stats=");
    put_u(&l, b.stats_sent);
    emit(&l);
}

const struct vdriver balloon_driver = {
    .name = "balloon",
    .device_id = BAL_ID,
    .parse_token = bal_parse,
    .probe = bal_probe,
    .start = bal_start,
    .poll = bal_poll,
    .heartbeat = bal_heartbeat,
};
