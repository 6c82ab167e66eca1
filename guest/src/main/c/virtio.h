/*
 * What the test guest's virtio-mmio drivers share (virtio.c has the transport helpers and the
 * entropy and block drivers; each further driver is a file of its own that fills a struct vdriver
 * and is listed in virtio.c's `drivers`).
 */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "guest.h"

#define VIRTIO_MAGIC    0x74726976      /* "virt" */
#define MAX_DEVICES     16

/* virtio-mmio registers */
#define R_MAGIC         0x000
#define R_VERSION       0x004
#define R_DEVICE_ID     0x008
#define R_DEV_FEAT      0x010
#define R_DEV_FEAT_SEL  0x014
#define R_DRV_FEAT      0x020
#define R_DRV_FEAT_SEL  0x024
#define R_QUEUE_SEL     0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM     0x038
#define R_QUEUE_READY   0x044
#define R_QUEUE_NOTIFY  0x050
#define R_STATUS        0x070
#define R_QUEUE_DESC    0x080
#define R_QUEUE_DRIVER  0x090
#define R_QUEUE_DEVICE  0x0a0
#define R_CONFIG_GEN    0x0fc
#define R_CONFIG        0x100

#define S_ACKNOWLEDGE   1
#define S_DRIVER        2
#define S_DRIVER_OK     4
#define S_FEATURES_OK   8

#define F_VERSION_1     32              /* feature bit numbers */


#define DESC_F_NEXT     1
#define DESC_F_WRITE    2
#define AVAIL_F_NO_INTERRUPT 1
#define USED_F_NO_NOTIFY 1

#define QUEUE_MAX       256
#define QUEUE_BYTES     0x3000          /* descriptors, avail ring, used ring: a page each */

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };

struct vq {
    uint64_t mmio;
    uint16_t index;                     /* the queue's number: what a notify writes */
    uint16_t size;
    uint16_t avail_idx;                 /* next avail index to publish */
    uint16_t last_used;                 /* next used entry to reap */
    volatile struct desc *desc;
    volatile uint16_t *avail;           /* flags, idx, ring[size], used_event */
    volatile uint32_t *used;            /* flags|idx, then {id, len} pairs */
};

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mfence(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return lo | (uint64_t)hi << 32; }
static inline uint32_t rd(uint64_t base, uint32_t reg) { return *(volatile uint32_t *)(base + reg); }
static inline void wr(uint64_t base, uint32_t reg, uint32_t val) { *(volatile uint32_t *)(base + reg) = val; }

/* Reset, negotiate (VERSION_1 plus what `want` lists that the device offers), FEATURES_OK.
 * Returns the features, or 0 when the device refused them. */
uint64_t vio_negotiate(uint64_t mmio, uint64_t want);
/* Queue `index` of the device, in the QUEUE_BYTES at `mem` (page-aligned); 0 if the device has none. */
int vio_setup_queue(struct vq *q, uint64_t mmio, uint32_t index, uint64_t mem);
/* Put the chain at `head` in the avail ring (not yet published). */
static inline void vq_add(struct vq *q, uint16_t head)
{
    q->avail[2 + q->avail_idx % q->size] = head;
    q->avail_idx++;
}
/* Publish the added chains and notify, unless the device said it does not need it. */
void vq_kick(struct vq *q);
/* The next used entry's id, or -1 if none; *len gets its length. */
static inline int64_t vq_used(struct vq *q, uint32_t *len)
{
    uint16_t idx = (uint16_t)(q->used[0] >> 16);
    if (idx == q->last_used)
        return -1;
    barrier();
    volatile uint32_t *e = q->used + 1 + 2 * (q->last_used % q->size);
    q->last_used++;
    *len = e[1];
    return e[0];
}
static inline uint64_t vio_config32(uint64_t mmio, uint32_t off) { return rd(mmio, R_CONFIG + off); }
uint64_t vio_config64(uint64_t mmio, uint32_t off);
/* Marks the device at `mmio` unusable; virtio_start prints `virtio ADDR irq=N id=N error WHY`. */
void vio_set_error(uint64_t mmio, const char *error);
/* Starts a line with `what` and the device's address. */
void vio_line_dev(struct line *l, const char *what, uint64_t mmio);

/*
 * One driver of a device type. Each hook may be 0. The first device of `device_id` announced on
 * the command line is given to it; the hooks run on CPU 0 at CPL3, polled (no interrupts).
 */
struct vdriver {
    const char *name;
    uint32_t device_id;
    int (*parse_token)(const char *t);          /* 1 if the command-line token was this driver's option */
    uint64_t (*probe)(uint64_t mmio);           /* negotiate; the bytes of RAM it needs (0: it does not use the device) */
    void (*start)(uint64_t area);               /* set the device up in that RAM (page-aligned, zeroed) */
    void (*poll)(void);                         /* between memory chunks */
    void (*heartbeat)(uint64_t seq, uint64_t hb_ms); /* before CPU 0's hb line */
};

#endif
