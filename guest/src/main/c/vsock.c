/*
 * The virtio-vsock driver (virtio 1.2, 5.10): stream connections with a deterministic byte
 * pattern both ways (the guest checks every byte it receives; the host checks what it sends),
 * or an echo for the benchmark. Options (repeatable, at most VS_CONNS):
 *   testguest.vsock=listen:PORT   accept the host's connections on PORT (one at a time)
 *   testguest.vsock=connect:PORT  connect to the host's PORT (and again after it ends)
 *   testguest.vsock=echo:PORT     as listen, sending back every byte received
 * Polled on CPU 0 at CPL3, as every driver here.
 */
#include "virtio.h"

#define VSOCK_ID        19
#define VS_CONNS        4
#define VS_HDR          44
#define VS_BUF          16384           /* one RX or TX buffer: header and payload */
#define VS_NRX          16
#define VS_NTX          16
#define VS_NEV          4
#define VS_BUF_ALLOC    65536           /* the credit the guest gives: its echo ring */
#define VS_STALL_HBS    20
#define HOST_CID        2
#define VS_RSTS         8

enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };
enum { M_LISTEN = 1, M_CONNECT, M_ECHO };
enum { C_IDLE, C_CONNECTING, C_OPEN };

struct hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

struct conn {
    int mode, state;
    uint32_t cfg_port;                  /* the port of the option: listened on, or connected to */
    uint32_t port;                      /* the guest's end */
    uint32_t peer_port;                 /* the host's port */
    uint64_t rx, tx;                    /* payload bytes received and sent on this connection */
    uint32_t peer_buf_alloc, peer_fwd_cnt, fwd_cnt, fwd_sent;
    uint64_t rx_at_hb, tx_at_hb, stalled_hbs, retry_hb, connects;
    int need_response;                  /* accepted, RESPONSE not sent yet (no TX buffer was free) */
    uint8_t *ring;                      /* echo: bytes received, not yet sent back (VS_BUF_ALLOC) */
    uint32_t ring_head, ring_size;
};

static struct {
    uint64_t mmio, cid;
    struct vq rxq, txq, evq;
    uint8_t *rxbuf, *txbuf, *evbuf;
    uint16_t tx_free[VS_NTX];
    int ntx_free;
    int active, nconns;
    uint32_t next_port;
    struct conn c[VS_CONNS];
    struct { uint32_t port, peer_port; } rst[VS_RSTS];   /* RSTs owed while no TX buffer was free */
    int nrst;
} vs;

/* The byte at offset i of either direction's stream. */
static inline uint8_t pattern(uint64_t i)
{
    uint32_t x = (uint32_t)i;
    return (uint8_t)(((x * 2654435761u) >> 24) ^ x);
}

static int parse(const char *t)
{
    const char *s, *end;
    int mode = 0;
    if (!prefix(t, "testguest.vsock=", &s))
        return 0;
    if (prefix(s, "listen:", &s))
        mode = M_LISTEN;
    else if (prefix(s, "connect:", &s))
        mode = M_CONNECT;
    else if (prefix(s, "echo:", &s))
        mode = M_ECHO;
    uint32_t port = (uint32_t)parse_u(s, &end);
    if (mode && !*end && vs.nconns < VS_CONNS) {
        vs.c[vs.nconns].mode = mode;
        vs.c[vs.nconns].cfg_port = port;
        vs.c[vs.nconns].port = port;
        vs.nconns++;
    }
    return 1;
}

static uint64_t probe(uint64_t mmio)
{
    if (!vs.nconns)
        return 0;                       /* not asked to use it */
    if (!vio_negotiate(mmio, 1)) {      /* bit 0: stream sockets */
        vio_set_error(mmio, "features");
        return 0;
    }
    vs.mmio = mmio;
    return 3 * QUEUE_BYTES + (VS_NRX + VS_NTX) * VS_BUF + 0x1000 + (uint64_t)VS_CONNS * VS_BUF_ALLOC;
}

static void line_conn(struct line *l, const char *what, struct conn *c)
{
    l->n = 0;
    put_s(l, what);
    put_u(l, c->cfg_port);
    put_s(l, " rx=");
    put_u(l, c->rx);
    put_s(l, " tx=");
    put_u(l, c->tx);
}

/* Sends one packet (payload from the conn's stream); 0 when no TX buffer is free. */
static int send(struct conn *c, uint16_t op, uint32_t flags, uint32_t len)
{
    if (!vs.ntx_free)
        return 0;
    uint16_t d = vs.tx_free[--vs.ntx_free];
    uint8_t *b = vs.txbuf + (uint64_t)d * VS_BUF;
    struct hdr *h = (struct hdr *)b;
    h->src_cid = vs.cid;
    h->dst_cid = HOST_CID;
    h->src_port = c->port;
    h->dst_port = c->peer_port;
    h->len = len;
    h->type = 1;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = VS_BUF_ALLOC;
    h->fwd_cnt = c->fwd_cnt;
    c->fwd_sent = c->fwd_cnt;
    for (uint32_t i = 0; i < len; i++) {
        if (c->mode == M_ECHO) {
            b[VS_HDR + i] = c->ring[c->ring_head];
            c->ring_head = (c->ring_head + 1) % VS_BUF_ALLOC;
        } else {
            b[VS_HDR + i] = pattern(c->tx + i);
        }
    }
    if (c->mode == M_ECHO) {
        c->ring_size -= len;
        c->fwd_cnt += len;              /* the ring has room again */
    }
    c->tx += len;
    vs.txq.desc[d].addr = (uint64_t)b;
    vs.txq.desc[d].len = VS_HDR + len;
    vs.txq.desc[d].flags = 0;
    vq_add(&vs.txq, d);
    return 1;
}

/* A packet to a port with no connection (header only); 0 when no TX buffer is free. */
static int send_raw(uint32_t port, uint32_t peer_port, uint16_t op)
{
    struct conn t;
    t.mode = M_LISTEN;
    t.port = port;
    t.peer_port = peer_port;
    t.fwd_cnt = 0;
    t.tx = 0;
    return send(&t, op, 0, 0);
}

/* An RST, sent now or as soon as a TX buffer is free (a lost one would leave the host waiting). */
static void send_rst(uint32_t port, uint32_t peer_port)
{
    if (!vs.nrst && send_raw(port, peer_port, OP_RST))
        return;
    if (vs.nrst < VS_RSTS) {
        vs.rst[vs.nrst].port = port;
        vs.rst[vs.nrst].peer_port = peer_port;
        vs.nrst++;
    }
}

/* Control packets owed (RSTs, RESPONSEs) go before any payload; 0 while some still wait. */
static int send_owed(void)
{
    int i = 0;
    while (i < vs.nrst && send_raw(vs.rst[i].port, vs.rst[i].peer_port, OP_RST))
        i++;
    for (int j = i; j < vs.nrst; j++)
        vs.rst[j - i] = vs.rst[j];
    vs.nrst -= i;
    if (vs.nrst)
        return 0;
    for (int k = 0; k < vs.nconns; k++) {
        struct conn *c = &vs.c[k];
        if (c->state == C_OPEN && c->need_response) {
            if (!send(c, OP_RESPONSE, 0, 0))
                return 0;
            c->need_response = 0;
        }
    }
    return 1;
}

static void reset_conn(struct conn *c)
{
    c->state = C_IDLE;
    c->rx = c->tx = 0;
    c->peer_buf_alloc = c->peer_fwd_cnt = c->fwd_cnt = c->fwd_sent = 0;
    c->rx_at_hb = c->tx_at_hb = c->stalled_hbs = 0;
    c->ring_head = c->ring_size = 0;
    c->need_response = 0;
}

static void connect(struct conn *c)
{
    reset_conn(c);
    c->peer_port = c->cfg_port;         /* the host's port; ours is a fresh one */
    c->port = vs.next_port++;
    c->state = C_CONNECTING;
    c->connects++;
    if (!send(c, OP_REQUEST, 0, 0)) {
        c->state = C_IDLE;
        return;
    }
}

static struct conn *find(struct hdr *h)
{
    for (int i = 0; i < vs.nconns; i++) {
        struct conn *c = &vs.c[i];
        if (c->state != C_IDLE && c->port == h->dst_port && c->peer_port == h->src_port)
            return c;
    }
    return 0;
}

static void corrupt(struct conn *c, const char *why)
{
    struct line l;
    line_conn(&l, "CORRUPT vsock ", c);
    put_s(&l, " ");
    put_s(&l, why);
    emit(&l);
}

/* One packet from the device. */
static void receive(struct hdr *h, uint32_t used_len)
{
    struct line l;
    if (used_len < VS_HDR || h->len > used_len - VS_HDR || h->dst_cid != vs.cid || h->src_cid != HOST_CID)
        return;                         /* not for us: dropped */
    struct conn *c = find(h);
    uint8_t *payload = (uint8_t *)h + VS_HDR;
    if (h->op == OP_REQUEST) {
        if (c) {
            send_rst(h->dst_port, h->src_port);
            return;
        }
        for (int i = 0; i < vs.nconns; i++) {
            struct conn *k = &vs.c[i];
            if ((k->mode == M_LISTEN || k->mode == M_ECHO) && k->state == C_IDLE && k->cfg_port == h->dst_port) {
                reset_conn(k);
                k->port = k->cfg_port;
                k->peer_port = h->src_port;
                k->peer_buf_alloc = h->buf_alloc;
                k->peer_fwd_cnt = h->fwd_cnt;
                k->state = C_OPEN;
                k->connects++;
                /* Without a free TX buffer (a stream fills them all) it goes later, before any payload. */
                k->need_response = !send(k, OP_RESPONSE, 0, 0);
                line_conn(&l, "vsock accepted ", k);
                emit(&l);
                return;
            }
        }
        send_rst(h->dst_port, h->src_port);
        return;
    }
    if (!c) {
        if (h->op != OP_RST)
            send_rst(h->dst_port, h->src_port);
        return;
    }
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case OP_RESPONSE:
        if (c->state == C_CONNECTING) {
            c->state = C_OPEN;
            line_conn(&l, "vsock connected ", c);
            emit(&l);
        }
        break;
    case OP_RST:
        if (c->state == C_CONNECTING) {
            line_conn(&l, "vsock refused ", c);
            emit(&l);
        } else {
            corrupt(c, "reset");
        }
        c->state = C_IDLE;
        break;
    case OP_SHUTDOWN:                   /* the host closed: a clean end, the guest closes too */
        line_conn(&l, "vsock closed ", c);
        emit(&l);
        send_rst(c->port, c->peer_port);
        c->state = C_IDLE;
        break;
    case OP_RW:
        if (c->state != C_OPEN)
            break;
        if (c->mode == M_ECHO) {
            if (h->len > VS_BUF_ALLOC - c->ring_size) {
                corrupt(c, "overrun");
                break;
            }
            for (uint32_t i = 0; i < h->len; i++)
                c->ring[(c->ring_head + c->ring_size + i) % VS_BUF_ALLOC] = payload[i];
            c->ring_size += h->len;
            c->rx += h->len;
            break;
        }
        for (uint32_t i = 0; i < h->len; i++) {
            if (payload[i] != pattern(c->rx + i)) {
                line_conn(&l, "CORRUPT vsock ", c);
                put_s(&l, " byte at ");
                put_u(&l, c->rx + i);
                put_s(&l, " is ");
                put_x(&l, payload[i], 2);
                put_s(&l, " not ");
                put_x(&l, pattern(c->rx + i), 2);
                emit(&l);
                c->rx += h->len;
                c->fwd_cnt += h->len;
                return;
            }
        }
        c->rx += h->len;
        c->fwd_cnt += h->len;           /* consumed at once */
        break;
    case OP_CREDIT_REQUEST:
        send(c, OP_CREDIT_UPDATE, 0, 0);
        break;
    default:
        break;
    }
}

static void transport_reset(void)
{
    struct line l;
    vs.cid = vio_config64(vs.mmio, 0);
    l.n = 0;
    put_s(&l, "vsock transport reset cid=");
    put_u(&l, vs.cid);
    emit(&l);
    for (int i = 0; i < vs.nconns; i++) {
        struct conn *c = &vs.c[i];
        c->state = C_IDLE;              /* listeners listen again, connectors connect again */
        c->retry_hb = 0;
    }
    vs.nrst = 0;                        /* the device forgot those connections too */
}

static void poll(void)
{
    uint32_t len;
    int64_t id;
    int rx_added = 0;
    if (!vs.active)
        return;
    while ((id = vq_used(&vs.txq, &len)) >= 0)
        vs.tx_free[vs.ntx_free++] = (uint16_t)id;
    while ((id = vq_used(&vs.evq, &len)) >= 0) {
        if (len >= 4 && *(volatile uint32_t *)(vs.evbuf + id * 8) == 0)
            transport_reset();
        vq_add(&vs.evq, (uint16_t)id);
        vq_kick(&vs.evq);
    }
    while ((id = vq_used(&vs.rxq, &len)) >= 0) {
        receive((struct hdr *)(vs.rxbuf + (uint64_t)id * VS_BUF), len);
        vq_add(&vs.rxq, (uint16_t)id);
        rx_added = 1;
    }
    if (rx_added)
        vq_kick(&vs.rxq);
    if (!send_owed()) {
        vq_kick(&vs.txq);
        return;
    }
    for (int i = 0; i < vs.nconns; i++) {
        struct conn *c = &vs.c[i];
        if (c->state != C_OPEN)
            continue;
        for (;;) {
            int64_t credit = (int64_t)c->peer_buf_alloc - (int64_t)(uint32_t)((uint32_t)c->tx - c->peer_fwd_cnt);
            int64_t n = c->mode == M_ECHO ? c->ring_size : VS_BUF - VS_HDR;
            if (n > VS_BUF - VS_HDR)
                n = VS_BUF - VS_HDR;
            if (n > credit)
                n = credit;
            if (n <= 0 || !send(c, OP_RW, 0, (uint32_t)n))
                break;
        }
        if (c->fwd_cnt - c->fwd_sent >= VS_BUF_ALLOC / 2)
            send(c, OP_CREDIT_UPDATE, 0, 0);
    }
    vq_kick(&vs.txq);
}

static void start(uint64_t area)
{
    struct line l;
    uint64_t q = area, bufs = area + 3 * QUEUE_BYTES;
    vs.rxbuf = (uint8_t *)bufs;
    vs.txbuf = (uint8_t *)(bufs + VS_NRX * VS_BUF);
    vs.evbuf = (uint8_t *)(bufs + (VS_NRX + VS_NTX) * VS_BUF);
    for (int i = 0; i < VS_CONNS; i++)
        vs.c[i].ring = (uint8_t *)(bufs + (VS_NRX + VS_NTX) * VS_BUF + 0x1000 + (uint64_t)i * VS_BUF_ALLOC);
    if (!vio_setup_queue(&vs.rxq, vs.mmio, 0, q) || !vio_setup_queue(&vs.txq, vs.mmio, 1, q + QUEUE_BYTES)
        || !vio_setup_queue(&vs.evq, vs.mmio, 2, q + 2 * QUEUE_BYTES)) {
        vio_line_dev(&l, "virtio ", vs.mmio);
        put_s(&l, " error queue");
        emit(&l);
        return;
    }
    for (uint16_t i = 0; i < VS_NRX; i++) {
        vs.rxq.desc[i].addr = (uint64_t)(vs.rxbuf + (uint64_t)i * VS_BUF);
        vs.rxq.desc[i].len = VS_BUF;
        vs.rxq.desc[i].flags = DESC_F_WRITE;
        vq_add(&vs.rxq, i);
    }
    for (uint16_t i = 0; i < VS_NEV; i++) {
        vs.evq.desc[i].addr = (uint64_t)(vs.evbuf + i * 8);
        vs.evq.desc[i].len = 8;
        vs.evq.desc[i].flags = DESC_F_WRITE;
        vq_add(&vs.evq, i);
    }
    for (uint16_t i = 0; i < VS_NTX; i++)
        vs.tx_free[vs.ntx_free++] = i;
    vs.cid = vio_config64(vs.mmio, 0);
    vs.next_port = 49152;
    wr(vs.mmio, R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    vq_kick(&vs.rxq);
    vq_kick(&vs.evq);
    vs.active = 1;
    l.n = 0;
    put_s(&l, "vsock cid=");
    put_u(&l, vs.cid);
    emit(&l);
    for (int i = 0; i < vs.nconns; i++)
        if (vs.c[i].mode == M_CONNECT)
            connect(&vs.c[i]);
    vq_kick(&vs.txq);
}

static void heartbeat(uint64_t seq, uint64_t hb_ms)
{
    struct line l;
    (void)hb_ms;
    if (!vs.active)
        return;
    for (int i = 0; i < vs.nconns; i++) {
        struct conn *c = &vs.c[i];
        if (c->mode == M_CONNECT && c->state == C_IDLE && seq >= c->retry_hb) {
            connect(c);
            c->retry_hb = seq + 2;
        }
        if (c->state != C_OPEN)
            continue;
        line_conn(&l, "vsock ", c);
        emit(&l);
        /* Heartbeats, not the TSC, measure a stall: they do not count time the VM was paused. */
        if (c->rx != c->rx_at_hb || c->tx != c->tx_at_hb)
            c->stalled_hbs = 0;
        else if (++c->stalled_hbs == VS_STALL_HBS && c->mode != M_ECHO)
            corrupt(c, "stalled");
        c->rx_at_hb = c->rx;
        c->tx_at_hb = c->tx;
    }
    vq_kick(&vs.txq);
}

const struct vdriver vsock_driver = {
    .name = "vsock",
    .device_id = VSOCK_ID,
    .parse_token = parse,
    .probe = probe,
    .start = start,
    .poll = poll,
    .heartbeat = heartbeat,
};
