/* The timed part of bench/latency.py: a virtio-net driver loop over two split
 * rings (port A's TX ring, port B's RX ring) in memory the Python front-end
 * (tests/harness/frontend/vhost_frontend.py) set up and handed to the switch.
 * Python negotiates and builds the rings; this loop moves the frames, so no
 * Python runs per frame. Built on first use by bench/latency.py (cc -O2
 * -shared) and called through ctypes (which releases the GIL).
 *
 * Each frame: a zero virtio-net header (hdr_len bytes), then 64 bytes of
 * Ethernet: dst, src, ethertype 0x88b5 (local experimental), magic, a
 * sequence number and the CLOCK_MONOTONIC time at which it was posted.
 * The latency of a frame is the clock when the loop finds it in B's RX used
 * ring minus the time it carries: the whole trip through the switch plus the
 * loop's own polling delay (the same core does both ends; there is no third
 * core on the benchmark machine).
 *
 * Notifications (virtio 1.x 2.7.7, 2.7.10): after publishing avail->idx the
 * loop kicks the ring's eventfd when the device asks for it (EVENT_IDX:
 * vring_need_event on used->avail_event; otherwise used->flags without
 * NO_NOTIFY), with a full fence between the idx store and that read. It never
 * waits for interrupts: RX is found by polling the used ring, and the loop
 * asks the device not to interrupt (avail->flags NO_INTERRUPT; with EVENT_IDX
 * a used_event half the index space away).
 *
 * x86-64 only in practice (TSO): release/acquire atomics are plain moves
 * there, the one seq_cst fence is the store->load barrier virtio needs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define VRING_DESC_F_WRITE 2
#define VRING_USED_F_NO_NOTIFY 1
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define MAGIC 0x6c617431u /* "lat1" */
#define MAX_NUM 32768
#define BURST 32

struct vdesc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct vused_elem { uint32_t id; uint32_t len; };

/* One driver-side split ring. The Python side fills the addresses; the rest
 * is this loop's state. Field order is mirrored by ctypes in bench/latency.py. */
struct lat_ring {
    uint64_t desc;      /* user addresses (our mapping) of the three parts */
    uint64_t avail;
    uint64_t used;
    uint64_t buf_uaddr; /* num buffers of buf_size bytes, buffer i for descriptor i */
    uint64_t buf_gpa;
    uint32_t num;
    uint32_t buf_size;
    int32_t kick_fd;
    int32_t event_idx;
    /* state */
    uint16_t avail_idx;
    uint16_t last_used;
    uint32_t nfree;
    uint64_t kicks;
    uint16_t free_ids[MAX_NUM];
};

struct lat_stats {
    uint64_t tx;        /* frames posted on A's TX ring */
    uint64_t rx;        /* frames found on B's RX ring (ours, intact) */
    uint64_t bad;       /* RX entries that were not our frame (short, wrong magic) */
    uint64_t late;      /* probe mode: an earlier probe that arrived after its timeout */
    uint64_t lost;      /* probe mode: probes not back within the timeout */
    uint64_t tx_full;   /* loop turns that found A's TX ring without a free descriptor */
    uint64_t samples;   /* latencies written to the output array */
    uint64_t elapsed_ns;
    uint64_t tx_kicks;
    uint64_t rx_kicks;
};

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline volatile uint16_t *avail_flags(struct lat_ring *r) { return (volatile uint16_t *)(uintptr_t)r->avail; }
static inline volatile uint16_t *avail_idx_p(struct lat_ring *r) { return (volatile uint16_t *)(uintptr_t)(r->avail + 2); }
static inline volatile uint16_t *avail_ring(struct lat_ring *r) { return (volatile uint16_t *)(uintptr_t)(r->avail + 4); }
static inline volatile uint16_t *used_event_p(struct lat_ring *r) { return avail_ring(r) + r->num; }
static inline volatile uint16_t *used_flags(struct lat_ring *r) { return (volatile uint16_t *)(uintptr_t)r->used; }
static inline uint16_t used_idx(struct lat_ring *r) {
    return __atomic_load_n((uint16_t *)(uintptr_t)(r->used + 2), __ATOMIC_ACQUIRE);
}
static inline volatile struct vused_elem *used_ring(struct lat_ring *r) {
    return (volatile struct vused_elem *)(uintptr_t)(r->used + 4);
}
static inline volatile uint16_t *avail_event_p(struct lat_ring *r) {
    return (volatile uint16_t *)(uintptr_t)(r->used + 4 + 8 * (uint64_t)r->num);
}
static inline uint8_t *buf_of(struct lat_ring *r, uint32_t id) {
    return (uint8_t *)(uintptr_t)(r->buf_uaddr + (uint64_t)id * r->buf_size);
}

/* virtio spec 2.7.10.1: notify iff new_idx passed event_idx since old_idx */
static inline int need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old_idx);
}

/* Publish avail->idx (entries first: release), then kick if the device wants it. */
static void publish(struct lat_ring *r, uint16_t old_idx) {
    uint16_t new_idx = r->avail_idx;
    if (new_idx == old_idx)
        return;
    __atomic_store_n((uint16_t *)(uintptr_t)(r->avail + 2), new_idx, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* idx store before the flag/event load */
    int kick;
    if (r->event_idx)
        kick = need_event(*avail_event_p(r), new_idx, old_idx);
    else
        kick = !(*used_flags(r) & VRING_USED_F_NO_NOTIFY);
    if (kick) {
        uint64_t one = 1;
        ssize_t w = write(r->kick_fd, &one, sizeof one);
        (void)w; /* a full eventfd counter still wakes the device */
        r->kicks++;
    }
}

/* TX ring: every descriptor gets its own fixed buffer; descriptors are handed
 * out from a free stack and come back when the device uses them. */
int lat_tx_init(struct lat_ring *r) {
    if (r->num == 0 || r->num > MAX_NUM || (r->num & (r->num - 1)))
        return -EINVAL;
    volatile struct vdesc *d = (volatile struct vdesc *)(uintptr_t)r->desc;
    for (uint32_t i = 0; i < r->num; i++) {
        d[i].addr = r->buf_gpa + (uint64_t)i * r->buf_size;
        d[i].len = 0;
        d[i].flags = 0;
        d[i].next = 0;
        r->free_ids[i] = (uint16_t)(r->num - 1 - i);
    }
    r->nfree = r->num;
    r->avail_idx = *avail_idx_p(r);
    r->last_used = used_idx(r);
    r->kicks = 0;
    *avail_flags(r) = VRING_AVAIL_F_NO_INTERRUPT; /* completions are reaped by polling */
    *used_event_p(r) = (uint16_t)(r->last_used + 0x8000);
    return 0;
}

/* RX ring: all descriptors device-writable and made available at once;
 * no interrupts wanted (we poll). */
int lat_rx_init(struct lat_ring *r) {
    if (r->num == 0 || r->num > MAX_NUM || (r->num & (r->num - 1)))
        return -EINVAL;
    volatile struct vdesc *d = (volatile struct vdesc *)(uintptr_t)r->desc;
    uint16_t old = *avail_idx_p(r);
    r->avail_idx = old;
    r->last_used = used_idx(r);
    r->kicks = 0;
    r->nfree = 0;
    for (uint32_t i = 0; i < r->num; i++) {
        d[i].addr = r->buf_gpa + (uint64_t)i * r->buf_size;
        d[i].len = r->buf_size;
        d[i].flags = VRING_DESC_F_WRITE;
        d[i].next = 0;
        avail_ring(r)[r->avail_idx % r->num] = (uint16_t)i;
        r->avail_idx++;
    }
    *avail_flags(r) = VRING_AVAIL_F_NO_INTERRUPT;
    *used_event_p(r) = (uint16_t)(r->last_used + 0x8000);
    publish(r, old);
    return 0;
}

static inline void tx_reap(struct lat_ring *r) {
    uint16_t u = used_idx(r);
    while (r->last_used != u) {
        uint32_t id = used_ring(r)[r->last_used % r->num].id;
        r->last_used++;
        if (id < r->num && r->nfree < r->num)
            r->free_ids[r->nfree++] = (uint16_t)id;
    }
    *used_event_p(r) = (uint16_t)(r->last_used + 0x8000);
}

/* Put one frame on the TX ring (no publish). The caller checked nfree. */
static inline void tx_put(struct lat_ring *r, const uint8_t *frame, uint32_t len, uint32_t hdr_len,
                          uint64_t seq, uint64_t ts) {
    uint16_t id = r->free_ids[--r->nfree];
    uint8_t *b = buf_of(r, id);
    memset(b, 0, hdr_len);
    memcpy(b + hdr_len, frame, len);
    uint32_t magic = MAGIC;
    memcpy(b + hdr_len + 14, &magic, 4);
    memcpy(b + hdr_len + 18, &seq, 8);
    memcpy(b + hdr_len + 26, &ts, 8);
    volatile struct vdesc *d = (volatile struct vdesc *)(uintptr_t)r->desc;
    d[id].len = hdr_len + len;
    d[id].flags = 0;
    avail_ring(r)[r->avail_idx % r->num] = id;
    r->avail_idx++;
}

/* Consume B's RX used entries, give the buffers back, publish. For each frame
 * of ours calls back into the mode's logic through (seq, latency). */
typedef struct {
    uint32_t *out;
    uint64_t cap;
    uint64_t sample_every;  /* stream: record frames with seq % sample_every == 0 */
    uint64_t want_seq;      /* probe: the probe in flight (UINT64_MAX: none) */
    int got_probe;
} rx_ctx;

static inline uint32_t rx_poll(struct lat_ring *r, uint32_t hdr_len, struct lat_stats *st, rx_ctx *c,
                               int probe_mode) {
    uint16_t u = used_idx(r);
    if (u == r->last_used)
        return 0;
    uint64_t t = now_ns();
    uint16_t old = r->avail_idx;
    uint32_t n = 0;
    while (r->last_used != u) {
        volatile struct vused_elem *e = &used_ring(r)[r->last_used % r->num];
        uint32_t id = e->id, len = e->len;
        r->last_used++;
        n++;
        if (id >= r->num) {
            st->bad++;
            continue; /* not ours: cannot give back a descriptor we never posted */
        }
        uint8_t *b = buf_of(r, id);
        uint32_t magic;
        uint64_t seq, ts;
        if (len < hdr_len + 34) {
            st->bad++;
        } else {
            memcpy(&magic, b + hdr_len + 14, 4);
            memcpy(&seq, b + hdr_len + 18, 8);
            memcpy(&ts, b + hdr_len + 26, 8);
            if (magic != MAGIC) {
                st->bad++;
            } else {
                st->rx++;
                uint64_t lat = t - ts;
                if (lat > UINT32_MAX)
                    lat = UINT32_MAX;
                if (probe_mode) {
                    if (seq == c->want_seq) {
                        c->got_probe = 1;
                        if (st->samples < c->cap)
                            c->out[st->samples++] = (uint32_t)lat;
                    } else {
                        st->late++;
                    }
                } else if (seq % c->sample_every == 0 && st->samples < c->cap) {
                    c->out[st->samples++] = (uint32_t)lat;
                }
            }
        }
        avail_ring(r)[r->avail_idx % r->num] = (uint16_t)id;
        r->avail_idx++;
    }
    *used_event_p(r) = (uint16_t)(r->last_used + 0x8000);
    publish(r, old);
    return n;
}

/* No load: n probes, one in flight at a time, gap_ns of idle spinning between
 * the arrival of one and the sending of the next (so the switch sees an
 * isolated frame each time). A probe not back within timeout_ns is lost. */
int lat_probe(struct lat_ring *tx, struct lat_ring *rx, const uint8_t *frame, uint32_t len, uint32_t hdr_len,
              uint64_t n, uint64_t gap_ns, uint64_t timeout_ns, uint64_t seq0, uint32_t *out,
              struct lat_stats *st) {
    if (len < 34 + 8 || tx->buf_size < hdr_len + len)
        return -EINVAL;
    rx_ctx c = {out, n, 1, UINT64_MAX, 0};
    uint64_t tx_kicks0 = tx->kicks, rx_kicks0 = rx->kicks;
    uint64_t start = now_ns();
    uint64_t seq = seq0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t until = now_ns() + gap_ns;
        while (now_ns() < until) {
            tx_reap(tx);
            rx_poll(rx, hdr_len, st, &c, 1);
        }
        tx_reap(tx);
        if (tx->nfree == 0) {
            st->tx_full++;
            uint64_t give_up = now_ns() + timeout_ns;
            while (tx->nfree == 0 && now_ns() < give_up)
                tx_reap(tx);
            if (tx->nfree == 0)
                return -EAGAIN; /* the device stopped using TX descriptors */
        }
        c.want_seq = seq;
        c.got_probe = 0;
        uint16_t old = tx->avail_idx;
        uint64_t t0 = now_ns();
        tx_put(tx, frame, len, hdr_len, seq, t0);
        publish(tx, old);
        st->tx++;
        seq++;
        uint64_t deadline = t0 + timeout_ns;
        while (!c.got_probe) {
            rx_poll(rx, hdr_len, st, &c, 1);
            if (!c.got_probe && now_ns() > deadline) {
                st->lost++;
                break;
            }
        }
    }
    tx_reap(tx);
    st->elapsed_ns = now_ns() - start;
    st->tx_kicks = tx->kicks - tx_kicks0;
    st->rx_kicks = rx->kicks - rx_kicks0;
    return 0;
}

/* A stream for duration_ns: rate_fps 0 sends as fast as A's TX ring takes
 * frames (the maximum rate; up to BURST a publish), otherwise paced to
 * rate_fps (what is due by now, up to BURST a publish). Every frame carries
 * its time; those with seq % sample_every == 0 are recorded. */
int lat_stream(struct lat_ring *tx, struct lat_ring *rx, const uint8_t *frame, uint32_t len, uint32_t hdr_len,
               double rate_fps, uint64_t duration_ns, uint64_t seq0, uint64_t sample_every, uint32_t *out,
               uint64_t cap, struct lat_stats *st) {
    if (len < 34 + 8 || tx->buf_size < hdr_len + len || sample_every == 0)
        return -EINVAL;
    rx_ctx c = {out, cap, sample_every, UINT64_MAX, 0};
    uint64_t tx_kicks0 = tx->kicks, rx_kicks0 = rx->kicks;
    uint64_t start = now_ns();
    uint64_t end = start + duration_ns;
    uint64_t seq = seq0;
    uint64_t sent = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end)
            break;
        tx_reap(tx);
        uint64_t want = BURST;
        if (rate_fps > 0) {
            double due = (double)(t - start) * rate_fps / 1e9 - (double)sent;
            want = due < 1.0 ? 0 : (due > BURST ? BURST : (uint64_t)due);
        }
        if (want > 0 && tx->nfree == 0)
            st->tx_full++;
        if (want > tx->nfree)
            want = tx->nfree;
        if (want > 0) {
            uint16_t old = tx->avail_idx;
            for (uint64_t k = 0; k < want; k++)
                tx_put(tx, frame, len, hdr_len, seq++, t);
            publish(tx, old);
            sent += want;
            st->tx += want;
        }
        rx_poll(rx, hdr_len, st, &c, 0);
    }
    /* let the frames in flight arrive (not counted in the rate: elapsed stops at end) */
    st->elapsed_ns = now_ns() - start;
    uint64_t drain_until = now_ns() + 2000000;
    uint64_t rx_at_end = st->rx;
    while (now_ns() < drain_until) {
        tx_reap(tx);
        rx_poll(rx, hdr_len, st, &c, 0);
    }
    st->late = st->rx - rx_at_end; /* arrived after the end of the window */
    st->tx_kicks = tx->kicks - tx_kicks0;
    st->rx_kicks = rx->kicks - rx_kicks0;
    return 0;
}
