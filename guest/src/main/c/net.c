/*
 * The test guest's virtio-net driver (device id 1): test frames to an echo peer on the host, each
 * with a sequence number and a checksummed payload; every echo is checked (wrong MAC, bad data,
 * a duplicate or a frame lost: CORRUPT net ...). It answers probes addressed to its own MAC, and
 * with testguest.netbench=MS measures frames per second both ways. Polled, CPU 0, CPL3.
 *
 * Frames: Ethernet type 0x88b5 (local experimental), then struct tframe and `len` payload bytes.
 */
#include "virtio.h"

#define NET_ID          1
#define NF_MAC          5
#define NF_STATUS       16
#define HDR             12              /* virtio_net_hdr_v1 */
#define ETHERTYPE       0x88b5
#define TMAGIC          0x4e4d5650      /* "PVMN" */
#define BUF             2048            /* per buffer: header + 1514-byte frame fits */
#define NBUF            128             /* receive buffers; as many transmit buffers */
#define MAX_WINDOW      64
#define MAX_DATA        1450
#define LOST_HBS        5               /* an echo this many heartbeats late is lost */
#define LOST_MS         3000            /* and at least this many ms late */

enum { K_ECHO = 1, K_REPLY = 2, K_PROBE = 3, K_ANSWER = 4, K_BENCH_TX = 5, K_BENCH_RX = 6, K_BLAST = 7, K_BLAST_END = 8 };

struct tframe {
    uint8_t dst[6], src[6];
    uint8_t type[2];                    /* big-endian */
    uint32_t magic;
    uint8_t kind, pad[3];
    uint32_t seq;
    uint16_t len, pad2;
    uint32_t sum;                       /* of the payload */
} __attribute__((packed));

static struct {
    uint64_t mmio, features;
    int off, active, echo, lossok;
    uint64_t window, size, bench_ms;
    uint8_t mac[6], old_mac[6];
    uint32_t mac_changed_seq;           /* frames before it were sent from old_mac */
    struct vq rx, tx;
    uint64_t rxbuf, txbuf;
    uint16_t tx_free[NBUF];
    int ntx_free;
    uint32_t next_seq, oldest;          /* echoes outstanding: [oldest, next_seq) */
    uint64_t sent, echoed, lost, probes, other, corrupt_lines;
    uint64_t echoed_at_hb, late_hbs;
    int benched, tx_pending;
} n = { .window = 8, .size = 256 };

static int net_parse(const char *t)
{
    const char *s, *end;
    if (prefix(t, "testguest.netbench=", &s)) {
        n.bench_ms = parse_u(s, &end);
        return 1;
    }
    if (!prefix(t, "testguest.net=", &s))
        return 0;
    /* off | echo[,window=N][,size=N][,lossok] */
    if (prefix(s, "off", &end) && !*end) {
        n.off = 1;
        return 1;
    }
    while (*s) {
        if (prefix(s, "echo", &end)) {
            n.echo = 1;
        } else if (prefix(s, "window=", &end)) {
            n.window = parse_u(end, &end);
        } else if (prefix(s, "size=", &end)) {
            n.size = parse_u(end, &end);
        } else if (prefix(s, "lossok", &end)) {
            n.lossok = 1;
        } else {
            while (*end && *end != ',')
                end++;
        }
        s = *end == ',' ? end + 1 : end;
    }
    if (n.window < 1)
        n.window = 1;
    if (n.window > MAX_WINDOW)
        n.window = MAX_WINDOW;
    if (n.size > MAX_DATA)
        n.size = MAX_DATA;
    return 1;
}

static uint64_t net_probe(uint64_t mmio)
{
    if (n.off)
        return 0;
    n.features = vio_negotiate(mmio, 1ULL << NF_MAC | 1ULL << NF_STATUS);
    if (!n.features || !(n.features & (1ULL << NF_MAC))) {
        vio_set_error(mmio, "features");
        return 0;
    }
    n.mmio = mmio;
    for (int i = 0; i < 6; i++)
        n.mac[i] = *(volatile uint8_t *)(mmio + R_CONFIG + (uint64_t)i);
    return 2 * QUEUE_BYTES + 2 * NBUF * BUF;
}

static uint8_t data_byte(uint32_t seq, uint32_t i)
{
    return (uint8_t)(seq * 31 + i * 7 + (seq >> 8));
}

static uint32_t checksum(const volatile uint8_t *p, uint32_t len)
{
    uint32_t a = 1, b = 0;              /* Adler-32 without the modulo's cost mattering here */
    for (uint32_t i = 0; i < len; i++) {
        a = (a + p[i]) % 65521;
        b = (b + a) % 65521;
    }
    return b << 16 | a;
}

static void post_rx(uint16_t i)
{
    n.rx.desc[i].addr = n.rxbuf + (uint64_t)i * BUF;
    n.rx.desc[i].len = BUF;
    n.rx.desc[i].flags = DESC_F_WRITE;
    vq_add(&n.rx, i);
}

static void reap_tx(void)
{
    uint32_t len;
    int64_t id;
    while ((id = vq_used(&n.tx, &len)) >= 0)
        if (id < NBUF)
            n.tx_free[n.ntx_free++] = (uint16_t)id;
}

/* A transmit buffer with the virtio header zeroed; its frame starts HDR bytes in. 0: none free. */
static volatile uint8_t *tx_get(uint16_t *slot)
{
    if (!n.ntx_free)
        reap_tx();
    if (!n.ntx_free)
        return 0;
    *slot = n.tx_free[--n.ntx_free];
    volatile uint8_t *b = (volatile uint8_t *)(n.txbuf + (uint64_t)*slot * BUF);
    for (int i = 0; i < HDR; i++)
        b[i] = 0;
    return b;
}

static void tx_put(uint16_t slot, uint32_t frame_len)
{
    n.tx.desc[slot].addr = n.txbuf + (uint64_t)slot * BUF;
    n.tx.desc[slot].len = HDR + frame_len;
    n.tx.desc[slot].flags = 0;
    vq_add(&n.tx, slot);
    n.tx_pending = 1;
}

static void fill_head(volatile struct tframe *f, const uint8_t *dst, uint8_t kind, uint32_t seq, uint16_t len)
{
    for (int i = 0; i < 6; i++) {
        f->dst[i] = dst[i];
        f->src[i] = n.mac[i];
    }
    f->type[0] = ETHERTYPE >> 8;
    f->type[1] = ETHERTYPE & 0xff;
    f->magic = TMAGIC;
    f->kind = kind;
    f->seq = seq;
    f->len = len;
}

static const uint8_t broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/* One echo request; 0 when no transmit buffer is free. */
static int send_echo(void)
{
    uint16_t slot;
    volatile uint8_t *b = tx_get(&slot);
    if (!b)
        return 0;
    volatile struct tframe *f = (volatile struct tframe *)(b + HDR);
    uint32_t seq = n.next_seq++;
    fill_head(f, broadcast, K_ECHO, seq, (uint16_t)n.size);
    volatile uint8_t *d = (volatile uint8_t *)(f + 1);
    for (uint32_t i = 0; i < n.size; i++)
        d[i] = data_byte(seq, i);
    f->sum = checksum(d, (uint32_t)n.size);
    tx_put(slot, sizeof(struct tframe) + (uint32_t)n.size);
    n.sent++;
    return 1;
}

static void corrupt(const char *what, uint64_t seq)
{
    struct line l;
    n.corrupt_lines++;
    if (n.corrupt_lines > 20)
        return;
    l.n = 0;
    put_s(&l, "CORRUPT net ");
    put_s(&l, what);
    put_s(&l, " seq=");
    put_u(&l, seq);
    emit(&l);
}

static int is_mine(const volatile uint8_t *dst)
{
    for (int i = 0; i < 6; i++)
        if (dst[i] != n.mac[i])
            return 0;
    return 1;
}

/* Echoes of frames sent before the MAC changed (a clone's override) come to the old one. */
static int was_mine(const volatile uint8_t *dst)
{
    for (int i = 0; i < 6; i++)
        if (dst[i] != n.old_mac[i])
            return 0;
    return 1;
}

static void on_reply(volatile struct tframe *f, uint32_t frame_len)
{
    uint32_t seq = f->seq, len = f->len;
    volatile uint8_t *d = (volatile uint8_t *)(f + 1);
    if (!is_mine(f->dst) && !(was_mine(f->dst) && (int32_t)(seq - n.mac_changed_seq) < 0)) {
        corrupt("mac", seq);
        return;
    }
    if (len != n.size || sizeof(struct tframe) + len > frame_len || checksum(d, len) != f->sum) {
        corrupt("data", seq);
        return;
    }
    for (uint32_t i = 0; i < len; i++)
        if (d[i] != data_byte(seq, i)) {
            corrupt("data", seq);
            return;
        }
    if ((int32_t)(seq - n.oldest) < 0) {
        if (!n.lossok)
            corrupt("duplicate", seq);
        return;                         /* with lossok: a late echo of one counted lost */
    }
    if ((int32_t)(seq - n.next_seq) >= 0) {
        corrupt("unknown", seq);
        return;
    }
    /* The tap keeps order: echoes of older frames still outstanding will not come. */
    if (seq != n.oldest) {
        n.lost += seq - n.oldest;
        if (!n.lossok)
            corrupt("lost", n.oldest);
    }
    n.oldest = seq + 1;
    n.echoed++;
}

static void on_probe(volatile struct tframe *f, uint32_t frame_len)
{
    if (!is_mine(f->dst) || f->len > MAX_DATA || sizeof(struct tframe) + f->len > frame_len)
        return;
    uint16_t slot;
    volatile uint8_t *b = tx_get(&slot);
    if (!b)
        return;
    volatile struct tframe *a = (volatile struct tframe *)(b + HDR);
    uint8_t dst[6];
    for (int i = 0; i < 6; i++)
        dst[i] = f->src[i];
    fill_head(a, dst, K_ANSWER, f->seq, f->len);
    a->sum = f->sum;
    volatile uint8_t *from = (volatile uint8_t *)(f + 1), *to = (volatile uint8_t *)(a + 1);
    for (uint32_t i = 0; i < f->len; i++)
        to[i] = from[i];
    tx_put(slot, sizeof(struct tframe) + f->len);
    n.probes++;
}

/* Handles one received buffer; returns the frame's kind (0 for a frame not ours). */
static int on_frame(uint16_t id, uint32_t len)
{
    if (len < HDR + sizeof(struct tframe))
        return 0;
    volatile struct tframe *f = (volatile struct tframe *)(n.rxbuf + (uint64_t)id * BUF + HDR);
    if (f->type[0] != (ETHERTYPE >> 8) || f->type[1] != (ETHERTYPE & 0xff) || f->magic != TMAGIC)
        return 0;
    uint32_t frame_len = len - HDR;
    switch (f->kind) {
    case K_REPLY:
        on_reply(f, frame_len);
        break;
    case K_PROBE:
        on_probe(f, frame_len);
        break;
    }
    return f->kind;
}

static void put_mac(struct line *l)
{
    static const char hex[] = "0123456789abcdef";
    put_s(l, "net mac=");
    for (int i = 0; i < 6; i++) {
        char c[4] = { ':', hex[n.mac[i] >> 4], hex[n.mac[i] & 15], 0 };
        put_s(l, i ? c : c + 1);
    }
}

/* A clone may have been given another MAC: take the one in the configuration space now. */
static void reread_mac(void)
{
    struct line l;
    int changed = 0;
    uint8_t now[6];
    for (int i = 0; i < 6; i++) {
        now[i] = *(volatile uint8_t *)(n.mmio + R_CONFIG + (uint64_t)i);
        changed |= now[i] != n.mac[i];
    }
    if (changed) {
        for (int i = 0; i < 6; i++) {
            n.old_mac[i] = n.mac[i];
            n.mac[i] = now[i];
        }
        n.mac_changed_seq = n.next_seq;
        l.n = 0;
        put_mac(&l);
        emit(&l);
    }
}

static void net_start(uint64_t area)
{
    struct line l;
    uint64_t rxq = area, txq = area + QUEUE_BYTES;
    n.rxbuf = area + 2 * QUEUE_BYTES;
    n.txbuf = n.rxbuf + NBUF * BUF;
    if (!vio_setup_queue(&n.rx, n.mmio, 0, rxq) || !vio_setup_queue(&n.tx, n.mmio, 1, txq)
        || n.rx.size < NBUF || n.tx.size < NBUF) {
        vio_line_dev(&l, "virtio ", n.mmio);
        put_s(&l, " error queue");
        emit(&l);
        return;
    }
    wr(n.mmio, R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    for (uint16_t i = 0; i < NBUF; i++) {
        post_rx(i);
        n.tx_free[i] = (uint16_t)(NBUF - 1 - i);
    }
    n.ntx_free = NBUF;
    vq_kick(&n.rx);
    n.active = 1;
    l.n = 0;
    put_mac(&l);
    put_s(&l, " link=");
    put_u(&l, n.features & (1ULL << NF_STATUS) ? *(volatile uint16_t *)(n.mmio + R_CONFIG + 6) : 1);
    put_s(&l, n.echo ? " echo window=" : " answer window=");
    put_u(&l, n.window);
    put_s(&l, " size=");
    put_u(&l, n.size);
    emit(&l);
}

/* Takes every received frame (re-posting its buffer); returns how many. */
static uint64_t reap_rx(uint64_t *kinds)
{
    uint32_t len;
    int64_t id;
    uint64_t got = 0;
    while ((id = vq_used(&n.rx, &len)) >= 0) {
        if (id >= NBUF)
            continue;
        int k = on_frame((uint16_t)id, len);
        if (kinds && k >= 0 && k < 16)
            kinds[k]++;
        else if (!k)
            n.other++;
        post_rx((uint16_t)id);
        got++;
    }
    if (got)
        vq_kick(&n.rx);
    return got;
}

static void net_poll(void)
{
    if (!n.active || n.benched < 0)
        return;
    reap_rx(0);
    reap_tx();
    while (n.echo && n.next_seq - n.oldest < n.window && send_echo())
        ;
    if (n.tx_pending) {
        n.tx_pending = 0;
        vq_kick(&n.tx);
    }
}

/* ---- benchmark (testguest.netbench=MS) ---- */

static void bench_line(const char *dir, uint64_t size, uint64_t frames, uint64_t us, uint64_t peer)
{
    struct line l;
    if (!us)
        us = 1;
    uint64_t fps = frames * 1000000 / us, kbps10 = frames * size * 10 / us;
    l.n = 0;
    put_s(&l, "netbench ");
    put_s(&l, dir);
    put_s(&l, " size=");
    put_u(&l, size);
    put_s(&l, " frames=");
    put_u(&l, frames);
    put_s(&l, " us=");
    put_u(&l, us);
    put_s(&l, " fps=");
    put_u(&l, fps);
    put_s(&l, " mbps=");
    put_u(&l, kbps10 / 10);
    put_s(&l, ".");
    put_u(&l, kbps10 % 10);
    put_s(&l, " peer=");
    put_u(&l, peer);
    emit(&l);
}

/* Guest to host: frames of `size` bytes (Ethernet header included) for bench_ms. */
static void bench_tx(uint32_t size)
{
    uint64_t frames = 0;
    uint64_t t0 = rdtsc(), stop = t0 + n.bench_ms * tsc_per_ms, now = t0;
    while ((now = rdtsc()) < stop) {
        int added = 0;
        uint16_t slot;
        volatile uint8_t *b;
        while ((b = tx_get(&slot))) {
            volatile struct tframe *f = (volatile struct tframe *)(b + HDR);
            fill_head(f, broadcast, K_BENCH_TX, (uint32_t)frames, (uint16_t)(size - sizeof(struct tframe)));
            tx_put(slot, size);
            frames++;
            if (++added == 32)
                break;
        }
        if (added)
            vq_kick(&n.tx);
        reap_rx(0);
    }
    /* Let the device finish the last ones before the next row. */
    while (n.ntx_free < NBUF && rdtsc() < now + 1000 * tsc_per_ms)
        reap_tx();
    bench_line("tx", size, frames, (now - t0) * 1000 / tsc_per_ms, 0);
}

/* Asks the peer to send `size`-byte frames for bench_ms; 0 when no transmit buffer came free. */
static int ask_blast(uint32_t size)
{
    uint16_t slot;
    volatile uint8_t *b;
    uint64_t wait = rdtsc() + 1000 * tsc_per_ms;
    while (!(b = tx_get(&slot)))
        if (rdtsc() > wait)
            return 0;
    volatile struct tframe *f = (volatile struct tframe *)(b + HDR);
    fill_head(f, broadcast, K_BLAST, (uint32_t)n.bench_ms, (uint16_t)size);
    tx_put(slot, sizeof(struct tframe));
    vq_kick(&n.tx);
    return 1;
}

/* Host to guest: asks the peer for `size`-byte frames for bench_ms (again if none come within
 * 500 ms: a request sent while the peer's socket is still full of the tx rows' frames is lost),
 * counts what arrives until the peer's end frame. */
static void bench_rx(uint32_t size)
{
    if (!ask_blast(size))
        return;
    uint64_t count = 0, first = 0, last = 0, peer = 0, asks = 1;
    uint64_t asked = rdtsc(), deadline = asked + (3 * n.bench_ms + 3000) * tsc_per_ms;
    uint16_t data_len = (uint16_t)(size - sizeof(struct tframe));
    for (uint64_t now; (now = rdtsc()) < deadline;) {
        uint64_t before = count;
        uint32_t len;
        int64_t id;
        int got = 0, end = 0;
        while ((id = vq_used(&n.rx, &len)) >= 0) {
            if (id >= NBUF)
                continue;
            volatile struct tframe *r = (volatile struct tframe *)(n.rxbuf + (uint64_t)id * BUF + HDR);
            if (len >= HDR + sizeof(struct tframe) && r->magic == TMAGIC) {
                if (r->kind == K_BENCH_RX && r->len == data_len)
                    count++;
                else if (r->kind == K_BLAST_END && r->len == size) {   /* not a late one of the row before */
                    end = 1;
                    peer = r->seq;
                }
            }
            post_rx((uint16_t)id);
            got = 1;
        }
        if (got)
            vq_kick(&n.rx);
        if (count != before) {
            last = rdtsc();
            if (!first)
                first = last;
        }
        reap_tx();
        if (end)
            break;
        if (!first && asks < 5 && now - asked > 500 * tsc_per_ms) {
            asks += ask_blast(size);
            asked = now;
        }
    }
    bench_line("rx", size, count, first ? (last - first) * 1000 / tsc_per_ms : 0, peer);
}

static void net_heartbeat(uint64_t seq, uint64_t hb_ms)
{
    struct line l;
    if (!n.active)
        return;
    if (n.bench_ms && !n.benched) {
        n.benched = -1;                 /* poll stays out of the rows' way */
        if (!tsc_per_ms) {
            l.n = 0;
            put_s(&l, "netbench unavailable (no TSC rate)");
            emit(&l);
        } else {
            bench_tx(64);
            bench_tx(1514);
            bench_rx(64);
            bench_rx(1514);
            l.n = 0;
            put_s(&l, "netbench done");
            emit(&l);
        }
        n.benched = 1;
    }
    (void)seq;
    reread_mac();
    if (n.echo) {
        /* An echo that does not come within a few heartbeats (not TSC time: a paused VM does not count) is lost. */
        if (n.echoed != n.echoed_at_hb || n.next_seq == n.oldest) {
            n.late_hbs = 0;
        } else if (++n.late_hbs >= LOST_HBS && n.late_hbs * hb_ms >= LOST_MS) {
            n.lost += n.next_seq - n.oldest;
            if (!n.lossok)
                corrupt("lost", n.oldest);
            n.oldest = n.next_seq;
            n.late_hbs = 0;
        }
        n.echoed_at_hb = n.echoed;
    }
    l.n = 0;
    put_s(&l, "net ");
    put_u(&l, n.echoed);
    put_s(&l, " sent=");
    put_u(&l, n.sent);
    put_s(&l, " echoed=");
    put_u(&l, n.echoed);
    put_s(&l, " lost=");
    put_u(&l, n.lost);
    put_s(&l, " probes=");
    put_u(&l, n.probes);
    emit(&l);
}

const struct vdriver net_driver = {
    .name = "net",
    .device_id = NET_ID,
    .parse_token = net_parse,
    .probe = net_probe,
    .start = net_start,
    .poll = net_poll,
    .heartbeat = net_heartbeat,
};
