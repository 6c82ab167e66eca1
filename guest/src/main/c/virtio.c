/*
 * virtio-mmio drivers of the test guest (CPL3, CPU 0 only): entropy (device id 4) and block
 * (device id 2), virtio 1.2, MMIO version 2, split virtqueues, VIRTIO_F_VERSION_1, polled.
 * Devices are found only through the kernel command line's virtio_mmio.device=SIZE@ADDR:IRQ
 * tokens (Panama VMM and QEMU's microvm put them at different addresses). Interrupts stay masked
 * at the IOAPIC, and every avail ring says VRING_AVAIL_F_NO_INTERRUPT: the guest polls the used
 * rings between memory chunks, natively; only register accesses (notify, setup) exit.
 *
 * The block oracle: the first `size` bytes of the disk are cut into 4 KiB blocks of 8 sectors.
 * Every sector written holds its sector number, its generation and 62 words that depend on both;
 * the generation last written to each sector lives in guest RAM (saved, migrated and cloned with
 * the VM). Random reads and writes, never two at once on one block, keep up to `qd` requests in
 * flight; every read is checked against the generations, so a lost, stale or torn write, or a
 * misplaced one, is reported as CORRUPT blk. See ../../../README.md.
 */
#include "virtio.h"

#define BLK_F_SIZE_MAX  1
#define BLK_F_SEG_MAX   2
#define BLK_F_RO        5
#define BLK_F_FLUSH     9
#define BLK_T_IN        0
#define BLK_T_OUT       1
#define BLK_T_FLUSH     4
#define BLK_T_GET_ID    8
#define BLK_S_OK        0
#define BLOCK           4096
#define SECTORS_PER_BLOCK 8
#define MAX_QD          32
#define BENCH_BIG       (1 << 20)       /* sequential rows: 1 MiB requests */
#define BENCH_SEQ_QD    4
#define DEFAULT_BLK_SIZE (64ULL << 20)
#define DEFAULT_QD      8
#define DEFAULT_WRITE_PCT 50
#define FLUSH_EVERY     64              /* writes completed between two flushes */
#define MAX_BLK_CORRUPT 16
#define RNG_BYTES       64
#define RNG_EVERY       4               /* heartbeats between two rng reads */
#define STALL_HBS       5               /* heartbeats with requests in flight and none completed, */
#define STALL_MS        2000            /* and at least this many ms of them (a busy host can delay a device) */

struct blk_hdr { uint32_t type, reserved; uint64_t sector; };

/* One request slot: fixed descriptors [stride * k, stride * (k + 1)): header, data segments, status. */
struct slot {
    int busy;
    uint32_t type;
    uint64_t block;                     /* first 4 KiB block (oracle), or sector (bench) */
    uint32_t bytes;
    uint64_t data;                      /* guest-physical buffer */
};

static struct {
    int ndev;
    struct {
        uint64_t addr, size, irq;
        uint32_t id, magic, version;
        const char *error;              /* why the device is unusable, or 0 */
    } dev[MAX_DEVICES];

    /* options */
    int blk_off, rng_off;
    uint64_t blk_index, blk_size_req, qd, write_pct;
    uint64_t bench_ms;

    /* block device */
    uint64_t blk_mmio;
    uint64_t capacity;                  /* sectors */
    uint64_t features;
    uint32_t size_max, seg_max;
    int ro, flush;
    uint64_t nblocks;                   /* blocks the oracle uses */
    volatile uint32_t *gen;             /* generation per sector, in guest RAM */
    struct vq q;
    uint32_t stride;                    /* descriptors per slot */
    volatile struct blk_hdr *hdr;       /* per slot */
    volatile uint8_t *status;           /* per slot, 16 bytes apart */
    uint64_t data;                      /* MAX_QD * BLOCK of oracle buffers */
    uint64_t bench_data;                /* BENCH_SEQ_QD * BENCH_BIG, when benchmarking */
    struct slot slot[MAX_QD];
    uint64_t reads, writes, flushes, writes_since_flush;
    int flush_busy, corrupt_lines, active;
    uint64_t completed_at_hb, stalled_hbs;
    uint64_t rnd;

    /* entropy device */
    uint64_t rng_mmio;
    struct vq rq;
    volatile uint8_t *rng_buf;
    uint8_t rng_last[RNG_BYTES];
    uint64_t rng_reads;
    int rng_active;

    uint64_t area_size;
    uint64_t own_size;                  /* of area_size, what blk and rng use (the drivers' areas follow) */
} v = { .qd = DEFAULT_QD, .write_pct = DEFAULT_WRITE_PCT };

/* The drivers in files of their own (each a struct vdriver; see virtio.h), and what each was given. */
extern const struct vdriver net_driver;
extern const struct vdriver balloon_driver;
extern const struct vdriver vsock_driver;
static const struct vdriver *const drivers[] = {
    &net_driver,
    &balloon_driver,
    &vsock_driver,
    0
};
#define NDRIVERS (sizeof(drivers) / sizeof(drivers[0]) - 1)
static struct {
    uint64_t mmio, area_bytes;
} bound[NDRIVERS + 1];


static uint64_t next_rnd(void)
{
    uint64_t x = v.rnd;                 /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return v.rnd = x;
}

void vio_line_dev(struct line *l, const char *what, uint64_t mmio)
{
    l->n = 0;
    put_s(l, what);
    put_x(l, mmio, 0);
}

/* ---- command line ---- */

static uint64_t parse_size(const char *s, const char **end)
{
    uint64_t n = parse_u(s, end);
    switch (**end) {
    case 'k': case 'K': n <<= 10; (*end)++; break;
    case 'm': case 'M': n <<= 20; (*end)++; break;
    case 'g': case 'G': n <<= 30; (*end)++; break;
    }
    return n;
}

/* testguest.blk=OPT[,OPT...]: off, dev=<k>, size=<n>[KMG], qd=<n>, write=<percent> */
static void parse_blk(const char *s)
{
    const char *v0, *end;
    while (*s) {
        if (prefix(s, "off", &end)) {
            v.blk_off = 1;
        } else if (prefix(s, "dev=", &v0)) {
            v.blk_index = parse_u(v0, &end);
        } else if (prefix(s, "size=", &v0)) {
            v.blk_size_req = parse_size(v0, &end);
        } else if (prefix(s, "qd=", &v0)) {
            uint64_t n = parse_u(v0, &end);
            v.qd = n < 1 ? 1 : n > MAX_QD ? MAX_QD : n;
        } else if (prefix(s, "write=", &v0)) {
            uint64_t n = parse_u(v0, &end);
            v.write_pct = n > 100 ? 100 : n;
        } else {
            end = s;
        }
        while (*end && *end != ',')
            end++;
        s = *end ? end + 1 : end;
    }
}

int virtio_parse_token(const char *t)
{
    const char *s, *end;
    for (unsigned d = 0; drivers[d]; d++)
        if (drivers[d]->parse_token && drivers[d]->parse_token(t))
            return 1;
    if (prefix(t, "virtio_mmio.device=", &s)) {
        /* SIZE@ADDR:IRQ[:ID], Linux's syntax */
        uint64_t size = parse_size(s, &end);
        if (*end != '@' || v.ndev == MAX_DEVICES)
            return 1;
        s = end + 1;
        uint64_t addr = parse_u(s, &end);
        if (*end != ':')
            return 1;
        s = end + 1;
        uint64_t irq = parse_u(s, &end);
        v.dev[v.ndev].addr = addr;
        v.dev[v.ndev].size = size;
        v.dev[v.ndev].irq = irq;
        v.ndev++;
        return 1;
    }
    if (prefix(t, "testguest.blk=", &s)) {
        parse_blk(s);
        return 1;
    }
    if (prefix(t, "testguest.rng=off", &end) && !*end) {
        v.rng_off = 1;
        return 1;
    }
    if (prefix(t, "testguest.blkbench=", &s)) {
        v.bench_ms = parse_u(s, &end);
        return 1;
    }
    return 0;
}

/* ---- device setup ---- */

uint64_t vio_negotiate(uint64_t mmio, uint64_t want)
{
    wr(mmio, R_STATUS, 0);
    wr(mmio, R_STATUS, S_ACKNOWLEDGE);
    wr(mmio, R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(mmio, R_DEV_FEAT_SEL, 0);
    uint64_t offered = rd(mmio, R_DEV_FEAT);
    wr(mmio, R_DEV_FEAT_SEL, 1);
    offered |= (uint64_t)rd(mmio, R_DEV_FEAT) << 32;
    if (!(offered & (1ULL << F_VERSION_1)))
        return 0;
    uint64_t f = offered & (want | 1ULL << F_VERSION_1);
    wr(mmio, R_DRV_FEAT_SEL, 0);
    wr(mmio, R_DRV_FEAT, (uint32_t)f);
    wr(mmio, R_DRV_FEAT_SEL, 1);
    wr(mmio, R_DRV_FEAT, (uint32_t)(f >> 32));
    wr(mmio, R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(rd(mmio, R_STATUS) & S_FEATURES_OK))
        return 0;
    return f;
}

int vio_setup_queue(struct vq *q, uint64_t mmio, uint32_t index, uint64_t mem)
{
    wr(mmio, R_QUEUE_SEL, index);
    uint32_t max = rd(mmio, R_QUEUE_NUM_MAX);
    if (max == 0)
        return 0;
    uint16_t size = QUEUE_MAX;
    while (size > max)
        size >>= 1;
    q->mmio = mmio;
    q->index = (uint16_t)index;
    q->size = size;
    q->avail_idx = q->last_used = 0;
    q->desc = (volatile struct desc *)mem;
    q->avail = (volatile uint16_t *)(mem + 0x1000);
    q->used = (volatile uint32_t *)(mem + 0x2000);
    memset((void *)mem, 0, QUEUE_BYTES);
    q->avail[0] = AVAIL_F_NO_INTERRUPT;
    wr(mmio, R_QUEUE_NUM, size);
    wr(mmio, R_QUEUE_DESC, (uint32_t)mem);
    wr(mmio, R_QUEUE_DESC + 4, (uint32_t)(mem >> 32));
    wr(mmio, R_QUEUE_DRIVER, (uint32_t)(mem + 0x1000));
    wr(mmio, R_QUEUE_DRIVER + 4, (uint32_t)((mem + 0x1000) >> 32));
    wr(mmio, R_QUEUE_DEVICE, (uint32_t)(mem + 0x2000));
    wr(mmio, R_QUEUE_DEVICE + 4, (uint32_t)((mem + 0x2000) >> 32));
    wr(mmio, R_QUEUE_READY, 1);
    return 1;
}


void vq_kick(struct vq *q)
{
    barrier();
    q->avail[1] = q->avail_idx;
    mfence();                           /* the idx store before the flags load */
    if (!(q->used[0] & USED_F_NO_NOTIFY))
        wr(q->mmio, R_QUEUE_NOTIFY, q->index);
}



uint64_t vio_config64(uint64_t mmio, uint32_t off)
{
    uint32_t g, lo, hi;
    do {
        g = rd(mmio, R_CONFIG_GEN);
        lo = rd(mmio, R_CONFIG + off);
        hi = rd(mmio, R_CONFIG + off + 4);
    } while (rd(mmio, R_CONFIG_GEN) != g);
    return lo | (uint64_t)hi << 32;
}

void vio_set_error(uint64_t mmio, const char *error)
{
    for (int i = 0; i < v.ndev; i++)
        if (v.dev[i].addr == mmio)
            v.dev[i].error = error;
}

/* Silent (the banner comes first): virtio_start prints what was found. */
void virtio_probe(void)
{
    uint64_t blk_seen = 0;
    for (int i = 0; i < v.ndev; i++) {
        uint64_t a = v.dev[i].addr;
        if (sys_call(SYS_MAP_USER, a, 0) != 0) {
            v.dev[i].error = "address";
            continue;
        }
        v.dev[i].magic = rd(a, R_MAGIC);
        v.dev[i].version = rd(a, R_VERSION);
        if (v.dev[i].magic != VIRTIO_MAGIC || v.dev[i].version != 2) {
            v.dev[i].error = "magic";
            continue;
        }
        uint32_t id = rd(a, R_DEVICE_ID);
        v.dev[i].id = id;
        if (id == 2 && !v.blk_off && blk_seen++ == v.blk_index)
            v.blk_mmio = a;
        if (id == 4 && !v.rng_off && !v.rng_mmio)
            v.rng_mmio = a;
        for (unsigned d = 0; drivers[d]; d++)
            if (id == drivers[d]->device_id && !bound[d].mmio)
                bound[d].mmio = a;
    }

    v.area_size = 2 * QUEUE_BYTES + 0x1000 + MAX_QD * BLOCK;   /* rings, headers/status/rng, buffers */
    if (v.blk_mmio) {
        uint64_t f = vio_negotiate(v.blk_mmio,
                               1ULL << BLK_F_SIZE_MAX | 1ULL << BLK_F_SEG_MAX | 1ULL << BLK_F_RO | 1ULL << BLK_F_FLUSH);
        if (!f) {
            vio_set_error(v.blk_mmio, "features");
            v.blk_mmio = 0;
        } else {
            v.features = f;
            v.capacity = vio_config64(v.blk_mmio, 0);
            v.size_max = f & (1ULL << BLK_F_SIZE_MAX) ? (uint32_t)vio_config32(v.blk_mmio, 8) : 0;
            v.seg_max = f & (1ULL << BLK_F_SEG_MAX) ? (uint32_t)vio_config32(v.blk_mmio, 12) : 0;
            v.ro = !!(f & (1ULL << BLK_F_RO));
            v.flush = !!(f & (1ULL << BLK_F_FLUSH));
            uint64_t size = v.blk_size_req ? v.blk_size_req : DEFAULT_BLK_SIZE;
            if (size > v.capacity * 512)
                size = v.capacity * 512;
            v.nblocks = size / BLOCK;
            v.area_size += v.nblocks * SECTORS_PER_BLOCK * 4;
            if (v.bench_ms)
                v.area_size += (uint64_t)BENCH_SEQ_QD * BENCH_BIG;
        }
    }
    if (v.rng_mmio && !vio_negotiate(v.rng_mmio, 0)) {
        vio_set_error(v.rng_mmio, "features");
        v.rng_mmio = 0;
    }
    if (!v.blk_mmio && !v.rng_mmio)
        v.area_size = 0;
    v.area_size = v.own_size = (v.area_size + 0xFFF) & ~0xFFFULL;
    for (unsigned d = 0; drivers[d]; d++) {
        if (!bound[d].mmio)
            continue;
        bound[d].area_bytes = drivers[d]->probe ? (drivers[d]->probe(bound[d].mmio) + 0xFFF) & ~0xFFFULL : 0;
        if (!bound[d].area_bytes)
            bound[d].mmio = 0;
        v.area_size += bound[d].area_bytes;
    }
}

uint64_t virtio_area_size(void)
{
    return v.area_size;
}

/* ---- entropy ---- */

/* Fill rng_buf with RNG_BYTES from the device (it may return fewer per request); 0 on timeout. */
static int rng_read(void)
{
    uint32_t got = 0;
    uint64_t limit = tsc_per_ms ? tsc_per_ms * 2000 : 1ULL << 34;
    uint64_t t0 = rdtsc();
    while (got < RNG_BYTES) {
        v.rq.desc[0].addr = (uint64_t)(v.rng_buf + got);
        v.rq.desc[0].len = RNG_BYTES - got;
        v.rq.desc[0].flags = DESC_F_WRITE;
        vq_add(&v.rq, 0);
        vq_kick(&v.rq);
        uint32_t len;
        while (vq_used(&v.rq, &len) < 0)
            if (rdtsc() - t0 > limit)
                return 0;
        got += len > RNG_BYTES - got ? RNG_BYTES - got : len;
    }
    return 1;
}

static void rng_check(void)
{
    struct line l;
    l.n = 0;
    if (!rng_read()) {
        put_s(&l, "CORRUPT rng timeout");
        emit(&l);
        v.rng_active = 0;               /* the request may still complete: never reuse it */
        return;
    }
    v.rng_reads++;
    int same_bytes = 1, same_as_last = v.rng_reads > 1;
    for (int i = 0; i < RNG_BYTES; i++) {
        same_bytes &= v.rng_buf[i] == v.rng_buf[0];
        same_as_last &= v.rng_buf[i] == v.rng_last[i];
        v.rng_last[i] = v.rng_buf[i];
    }
    uint64_t first = 0;
    for (int i = 7; i >= 0; i--)
        first = first << 8 | v.rng_buf[i];
    if (same_bytes) {
        put_s(&l, "CORRUPT rng constant byte=");
        put_x(&l, v.rng_buf[0], 2);
    } else if (same_as_last) {
        put_s(&l, "CORRUPT rng repeated");
    } else {
        put_s(&l, "rng ");
        put_u(&l, v.rng_reads);
        put_s(&l, " ");
        put_x(&l, first, 16);
    }
    emit(&l);
}

/* ---- block: requests ---- */

/* Build slot k's chain for `type` on `sector`, `bytes` at `data` (0 bytes: no data descriptor). */
static void blk_prepare(int k, uint32_t type, uint64_t sector, uint64_t data, uint32_t bytes)
{
    uint16_t d = (uint16_t)(k * v.stride), head = d;
    volatile struct blk_hdr *h = &v.hdr[k];
    h->type = type;
    h->reserved = 0;
    h->sector = sector;
    v.q.desc[d].addr = (uint64_t)h;
    v.q.desc[d].len = sizeof *h;
    v.q.desc[d].flags = DESC_F_NEXT;
    v.q.desc[d].next = (uint16_t)(d + 1);
    uint32_t seg = v.size_max >= 4096 ? v.size_max : bytes;
    for (uint32_t off = 0; off < bytes; off += seg) {
        d++;
        v.q.desc[d].addr = data + off;
        v.q.desc[d].len = bytes - off < seg ? bytes - off : seg;
        v.q.desc[d].flags = DESC_F_NEXT | (type == BLK_T_IN || type == BLK_T_GET_ID ? DESC_F_WRITE : 0);
        v.q.desc[d].next = (uint16_t)(d + 1);
    }
    d++;
    v.status[16 * k] = 0xFF;
    v.q.desc[d].addr = (uint64_t)&v.status[16 * k];
    v.q.desc[d].len = 1;
    v.q.desc[d].flags = DESC_F_WRITE;
    v.slot[k].busy = 1;
    v.slot[k].type = type;
    v.slot[k].bytes = bytes;
    v.slot[k].data = data;
    vq_add(&v.q, head);
}

/* Wait for slot k alone (setup requests); its status, or -1 after 5 s. */
static int blk_wait_one(int k)
{
    uint64_t limit = tsc_per_ms ? tsc_per_ms * 5000 : 1ULL << 35, t0 = rdtsc();
    uint32_t len;
    int64_t id;
    while ((id = vq_used(&v.q, &len)) < 0)
        if (rdtsc() - t0 > limit)
            return -1;
    v.slot[k].busy = 0;
    return v.status[16 * k];
}

/* ---- block: the oracle ---- */

/* The word i (2..63) of a sector written in generation g; words 0 and 1 are the sector and g. */
static inline uint64_t sector_word(uint64_t sector, uint64_t i, uint64_t g)
{
    uint64_t z = ((sector << 9) + 8 * i) ^ 0x8000000000000000ULL ^ (g * 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void fill_sector(volatile uint64_t *w, uint64_t sector, uint64_t g)
{
    w[0] = sector;
    w[1] = g;
    for (uint64_t i = 2; i < 64; i++)
        w[i] = sector_word(sector, i, g);
}

static int sector_is(const volatile uint64_t *w, uint64_t sector, uint64_t g)
{
    if (w[0] != sector || w[1] != g)
        return 0;
    for (uint64_t i = 2; i < 64; i++)
        if (w[i] != sector_word(sector, i, g))
            return 0;
    return 1;
}

static void blk_corrupt_begin(struct line *l, uint64_t sector, uint64_t g)
{
    l->n = 0;
    put_s(l, "CORRUPT blk sector=");
    put_u(l, sector);
    put_s(l, " expected-gen=");
    put_u(l, g);
    put_s(l, " got=");
}

/* A read of slot k completed: check each sector we have written against its generation. */
static void blk_verify(int k)
{
    for (int i = 0; i < SECTORS_PER_BLOCK; i++) {
        uint64_t sector = v.slot[k].block * SECTORS_PER_BLOCK + i;
        uint64_t g = v.gen[sector];
        const volatile uint64_t *w = (const volatile uint64_t *)(v.slot[k].data + 512 * i);
        if (g == 0 || sector_is(w, sector, g))
            continue;
        if (v.corrupt_lines++ >= MAX_BLK_CORRUPT)
            continue;
        struct line l;
        blk_corrupt_begin(&l, sector, g);
        if (w[0] == sector && sector_is(w, sector, w[1])) {
            put_s(&l, "gen:");          /* a whole sector of another generation: lost or stale */
            put_u(&l, w[1]);
        } else if (w[0] == sector) {
            put_s(&l, "torn:");         /* this sector's header, a body of something else */
            put_u(&l, w[1]);
        } else {
            put_x(&l, w[0], 16);        /* not this sector's data at all (zeros, another sector) */
        }
        emit(&l);
    }
}

static int block_in_flight(uint64_t b)
{
    for (uint64_t k = 0; k < v.qd; k++)
        if (v.slot[k].busy && v.slot[k].type != BLK_T_FLUSH && v.slot[k].block == b)
            return 1;
    return 0;
}

/* Fill free slots with random reads and writes (a flush every FLUSH_EVERY writes). */
static void blk_submit(void)
{
    int added = 0;
    for (uint64_t k = 0; k < v.qd; k++) {
        if (v.slot[k].busy)
            continue;
        if (v.flush && !v.flush_busy && v.writes_since_flush >= FLUSH_EVERY) {
            blk_prepare((int)k, BLK_T_FLUSH, 0, 0, 0);
            v.flush_busy = 1;
            v.writes_since_flush = 0;
            added++;
            continue;
        }
        uint64_t r = next_rnd(), b;
        do
            b = (r >> 8) % v.nblocks, r = next_rnd();
        while (block_in_flight(b));
        uint64_t first = b * SECTORS_PER_BLOCK;
        /* a read of a block never written checks nothing: write it instead */
        int write = !v.ro && ((r & 0xFF) * 100 < v.write_pct * 256 || v.gen[first] == 0);
        uint64_t data = v.data + k * BLOCK;
        if (write) {
            for (int i = 0; i < SECTORS_PER_BLOCK; i++) {
                uint64_t g = v.gen[first + i] + 1;
                v.gen[first + i] = (uint32_t)g;   /* expected from now on: the block is busy until done */
                fill_sector((volatile uint64_t *)(data + 512 * i), first + i, g);
            }
        }
        blk_prepare((int)k, write ? BLK_T_OUT : BLK_T_IN, first, data, BLOCK);
        v.slot[k].block = b;
        added++;
    }
    if (added)
        vq_kick(&v.q);
}

static void blk_reap(void)
{
    uint32_t len;
    int64_t id;
    while ((id = vq_used(&v.q, &len)) >= 0) {
        uint64_t k = (uint64_t)id / v.stride;
        struct line l;
        l.n = 0;
        if ((uint64_t)id % v.stride || k >= v.qd || !v.slot[k].busy) {
            if (v.corrupt_lines++ < MAX_BLK_CORRUPT) {
                put_s(&l, "CORRUPT blk used id=");
                put_u(&l, (uint64_t)id);
                put_s(&l, " not in flight");
                emit(&l);
            }
            continue;
        }
        uint8_t st = v.status[16 * k];
        uint64_t first = v.slot[k].block * SECTORS_PER_BLOCK;
        if (st != BLK_S_OK && v.corrupt_lines++ < MAX_BLK_CORRUPT) {
            blk_corrupt_begin(&l, first, v.slot[k].type == BLK_T_FLUSH ? 0 : v.gen[first]);
            put_s(&l, "status:");
            put_u(&l, st);
            put_s(&l, v.slot[k].type == BLK_T_FLUSH ? "-flush" : v.slot[k].type == BLK_T_OUT ? "-write" : "-read");
            emit(&l);
        }
        switch (v.slot[k].type) {
        case BLK_T_IN:
            v.reads++;
            if (st == BLK_S_OK)
                blk_verify((int)k);
            break;
        case BLK_T_OUT:
            v.writes++;
            v.writes_since_flush++;
            break;
        case BLK_T_FLUSH:
            v.flushes++;
            v.flush_busy = 0;
            break;
        }
        v.slot[k].busy = 0;
    }
}

void virtio_poll(void)
{
    for (unsigned d = 0; drivers[d]; d++)
        if (bound[d].mmio && drivers[d]->poll)
            drivers[d]->poll();
    if (!v.active)
        return;
    blk_reap();
    blk_submit();
}

/* ---- start ---- */

static void blk_start(uint64_t mem, uint64_t data, uint64_t bench, uint64_t gen)
{
    struct line l;
    if (!vio_setup_queue(&v.q, v.blk_mmio, 0, mem)) {
        vio_line_dev(&l, "virtio ", v.blk_mmio);
        put_s(&l, " error queue");
        emit(&l);
        return;
    }
    /* per slot: header, enough data segments for the largest request, status */
    uint32_t largest = v.bench_ms ? BENCH_BIG : BLOCK;
    uint32_t seg = v.size_max >= 4096 ? v.size_max : largest;
    v.stride = 2 + (largest + seg - 1) / seg;
    if (v.qd * v.stride > v.q.size)
        v.qd = v.q.size / v.stride;
    if (v.qd > MAX_QD)
        v.qd = MAX_QD;
    if (v.qd > v.nblocks)               /* a free block for every slot: one request per block */
        v.qd = v.nblocks ? v.nblocks : 1;
    v.data = data;
    v.bench_data = bench;
    v.gen = (volatile uint32_t *)gen;
    v.rnd = rdtsc() | 1;
    wr(v.blk_mmio, R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);

    l.n = 0;
    put_s(&l, "blk capacity=");
    put_u(&l, v.capacity);
    put_s(&l, " size=");
    put_u(&l, v.nblocks * BLOCK);
    put_s(&l, " qd=");
    put_u(&l, v.qd);
    put_s(&l, v.ro ? " ro" : " rw");
    put_s(&l, v.flush ? " flush" : " noflush");
    put_s(&l, " table=");               /* where the generations are: a host can check the disk */
    put_x(&l, (uint64_t)v.gen, 0);
    emit(&l);

    /* GET_ID: up to 20 bytes, NUL-padded when shorter */
    volatile char *id = (volatile char *)data;
    for (int i = 0; i < 20; i++)
        id[i] = 0;
    blk_prepare(0, BLK_T_GET_ID, 0, data, 20);
    vq_kick(&v.q);
    int st = blk_wait_one(0);
    l.n = 0;
    if (st == BLK_S_OK) {
        put_s(&l, "blk id ");
        for (int i = 0; i < 20 && id[i]; i++) {
            char c[2] = { id[i] > ' ' && id[i] < 0x7F ? id[i] : '?', 0 };
            put_s(&l, c);
        }
    } else {
        put_s(&l, "blk id-status ");
        put_u(&l, st < 0 ? 999 : (uint64_t)st);
    }
    emit(&l);
    if (st < 0)
        return;                         /* no answer: the slot is lost, drive nothing */

    if (v.ro) {
        /* the spec: a write to a read-only device gets VIRTIO_BLK_S_IOERR (1) and writes nothing */
        blk_prepare(0, BLK_T_OUT, 0, data, BLOCK);
        vq_kick(&v.q);
        st = blk_wait_one(0);
        l.n = 0;
        put_s(&l, "blk readonly write-status=");
        put_u(&l, st < 0 ? 999 : (uint64_t)st);
        emit(&l);
        if (st < 0)
            return;
    }
    v.active = v.nblocks > 0 && !v.bench_ms;
}

void virtio_start(uint64_t area)
{
    struct line l;
    for (int i = 0; i < v.ndev; i++) {
        vio_line_dev(&l, "virtio ", v.dev[i].addr);
        put_s(&l, " irq=");
        put_u(&l, v.dev[i].irq);
        if (v.dev[i].error && v.dev[i].error[0] == 'm') {
            put_s(&l, " unusable magic=");
            put_x(&l, v.dev[i].magic, 8);
            put_s(&l, " version=");
            put_u(&l, v.dev[i].version);
        } else if (v.dev[i].error && v.dev[i].error[0] == 'a') {
            put_s(&l, " unusable address");
        } else {
            put_s(&l, " id=");
            put_u(&l, v.dev[i].id);
            if (v.dev[i].error) {
                put_s(&l, " error ");
                put_s(&l, v.dev[i].error);
            }
        }
        emit(&l);
    }
    if (!v.area_size || !area)
        return;
    uint64_t driver_area = area + v.own_size;
    for (unsigned d = 0; drivers[d]; d++) {
        if (!bound[d].mmio)
            continue;
        memset((void *)driver_area, 0, bound[d].area_bytes);
        if (drivers[d]->start)
            drivers[d]->start(driver_area);
        driver_area += bound[d].area_bytes;
    }
    if (!v.own_size)
        return;
    uint64_t blk_q = area, rng_q = area + QUEUE_BYTES, misc = area + 2 * QUEUE_BYTES;
    uint64_t data = misc + 0x1000, next = data + MAX_QD * BLOCK;
    v.hdr = (volatile struct blk_hdr *)misc;                           /* 32 x 16 bytes */
    v.status = (volatile uint8_t *)(misc + 0x200);                     /* 32 x 16 bytes */
    v.rng_buf = (volatile uint8_t *)(misc + 0x400);
    if (v.rng_mmio) {
        if (vio_setup_queue(&v.rq, v.rng_mmio, 0, rng_q)) {
            wr(v.rng_mmio, R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
            v.rng_active = 1;
            rng_check();
        } else {
            vio_line_dev(&l, "virtio ", v.rng_mmio);
            put_s(&l, " error queue");
            emit(&l);
        }
    }
    if (v.blk_mmio) {
        uint64_t bench = 0;
        if (v.bench_ms) {
            bench = next;
            next += (uint64_t)BENCH_SEQ_QD * BENCH_BIG;
        }
        /* nothing this boot wrote is on the disk yet (after a reset the RAM holds old tables) */
        for (uint64_t i = 0; i < v.nblocks * SECTORS_PER_BLOCK; i++)
            ((volatile uint32_t *)next)[i] = 0;
        blk_start(blk_q, data, bench, next);
    }
}

void virtio_heartbeat(uint64_t seq, uint64_t hb_ms)
{
    for (unsigned d = 0; drivers[d]; d++)
        if (bound[d].mmio && drivers[d]->heartbeat)
            drivers[d]->heartbeat(seq, hb_ms);
    if (v.rng_active && seq % RNG_EVERY == 0)
        rng_check();
    if (v.active) {
        struct line l;
        /* Heartbeats, not the TSC, measure a stall: they do not count time the VM was paused. */
        uint64_t done = v.reads + v.writes + v.flushes, inflight = 0;
        for (uint64_t k = 0; k < v.qd; k++)
            inflight += (uint64_t)v.slot[k].busy;
        if (done != v.completed_at_hb || !inflight)
            v.stalled_hbs = 0;
        else if (++v.stalled_hbs == STALL_HBS + (hb_ms && STALL_MS / hb_ms > STALL_HBS ? STALL_MS / hb_ms - STALL_HBS : 0)) {
            l.n = 0;
            put_s(&l, "CORRUPT blk stalled inflight=");
            put_u(&l, inflight);
            emit(&l);
        }
        v.completed_at_hb = done;
        l.n = 0;
        put_s(&l, "blk ");
        put_u(&l, v.reads + v.writes + v.flushes);
        put_s(&l, " reads=");
        put_u(&l, v.reads);
        put_s(&l, " writes=");
        put_u(&l, v.writes);
        put_s(&l, " flushes=");
        put_u(&l, v.flushes);
        emit(&l);
    }
}

/* ---- the benchmark ---- */

/* One row: `bs`-byte requests at queue depth qd for bench_ms; random offsets over the region,
 * or sequential (wrapping) when `seq`. Prints its result line. */
static void bench_row(const char *name, uint32_t type, uint32_t bs, uint64_t qd, int seq)
{
    struct line l;
    uint64_t region_sectors = v.nblocks * SECTORS_PER_BLOCK, per = bs / 512;
    if (qd * v.stride > v.q.size || region_sectors < per) {
        l.n = 0;
        put_s(&l, "blkbench ");
        put_s(&l, name);
        put_s(&l, " skipped");
        emit(&l);
        return;
    }
    uint64_t ios = 0, next_seq = 0, inflight = 0;
    uint64_t t0 = rdtsc(), stop = t0 + v.bench_ms * tsc_per_ms, now = t0;
    int more = 1;
    for (uint64_t k = 0; k < qd; k++)
        v.slot[k].busy = 0;
    for (;;) {
        if (more) {
            int added = 0;
            for (uint64_t k = 0; k < qd; k++) {
                if (v.slot[k].busy)
                    continue;
                uint64_t sector;
                if (seq) {
                    if (next_seq + per > region_sectors)
                        next_seq = 0;
                    sector = next_seq;
                    next_seq += per;
                } else {
                    sector = (next_rnd() >> 8) % (region_sectors / per) * per;
                }
                uint64_t data = bs > BLOCK ? v.bench_data + k * BENCH_BIG : v.data + k * BLOCK;
                blk_prepare((int)k, type, sector, data, bs);
                inflight++;
                added++;
            }
            if (added)
                vq_kick(&v.q);
        }
        uint32_t len;
        int64_t id;
        while ((id = vq_used(&v.q, &len)) >= 0) {
            v.slot[(uint64_t)id / v.stride].busy = 0;
            inflight--;
            ios++;
        }
        now = rdtsc();
        if (now >= stop)
            more = 0;
        if (!more && !inflight)
            break;
    }
    uint64_t us = (now - t0) * 1000 / tsc_per_ms;
    if (!us)
        us = 1;
    uint64_t iops = ios * 1000000 / us, kbps10 = ios * bs * 10 / us;  /* MB/s * 10 (1 MB = 10^6 B) */
    l.n = 0;
    put_s(&l, "blkbench ");
    put_s(&l, name);
    put_s(&l, " bs=");
    put_u(&l, bs);
    put_s(&l, " qd=");
    put_u(&l, qd);
    put_s(&l, " ios=");
    put_u(&l, ios);
    put_s(&l, " us=");
    put_u(&l, us);
    put_s(&l, " iops=");
    put_u(&l, iops);
    put_s(&l, " mbps=");
    put_u(&l, kbps10 / 10);
    put_s(&l, ".");
    put_u(&l, kbps10 % 10);
    emit(&l);
}

void virtio_after_ready(void)
{
    if (!v.bench_ms)
        return;
    struct line l;
    l.n = 0;
    if (!v.blk_mmio || !v.nblocks || !tsc_per_ms || !v.stride) {
        put_s(&l, "blkbench unavailable");
        put_s(&l, !v.blk_mmio || !v.stride ? " (no block device)" : !v.nblocks ? " (size 0)" : " (no TSC rate)");
        emit(&l);
        return;
    }
    bench_row("randread", BLK_T_IN, BLOCK, 1, 0);
    bench_row("randread", BLK_T_IN, BLOCK, 32, 0);
    if (!v.ro) {
        bench_row("randwrite", BLK_T_OUT, BLOCK, 1, 0);
        bench_row("randwrite", BLK_T_OUT, BLOCK, 32, 0);
    }
    bench_row("seqread", BLK_T_IN, BENCH_BIG, BENCH_SEQ_QD, 1);
    if (!v.ro)
        bench_row("seqwrite", BLK_T_OUT, BENCH_BIG, BENCH_SEQ_QD, 1);
    l.n = 0;
    put_s(&l, "blkbench done");
    emit(&l);
}
