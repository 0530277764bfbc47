/* Layouts shared with guests, and the few atomics/barriers the datapath needs.
 *
 * The split virtqueue layout is the virtio 1.x one (virtio spec, "Split
 * Virtqueues"). Every field lives in guest memory, which the guest may change
 * at any time: the datapath reads each field once into a local (no double
 * fetch) and validates the local. */
#ifndef VS_DEFS_H
#define VS_DEFS_H

#include <stdint.h>

#define VRING_DESC_F_NEXT      1
#define VRING_DESC_F_WRITE     2
#define VRING_DESC_F_INDIRECT  4
#define VRING_USED_F_NO_NOTIFY 1
#define VRING_AVAIL_F_NO_INTERRUPT 1

struct vs_vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vs_vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];    /* num entries, then u16 used_event (EVENT_IDX) */
};

struct vs_vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vs_vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vs_vring_used_elem ring[];  /* num entries, then u16 avail_event */
};

/* Atomics: GCC builtins. A guest publishes avail->idx with a release store
 * after writing descriptors; we load it with acquire before reading them, and
 * publish used->idx with release after writing used elements and buffers. */
static inline uint16_t vs_load_acquire_u16(const volatile uint16_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void vs_store_release_u16(volatile uint16_t *p, uint16_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline int vs_load_acquire_int(const volatile int *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void vs_store_release_int(volatile int *p, int v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline uint64_t vs_load_acquire_u64(const volatile uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint64_t vs_load_relaxed_u64(const volatile uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void vs_store_release_u64(volatile uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void vs_store_relaxed_u64(volatile uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
static inline int vs_cas_u64(volatile uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}
/* A pointer the control plane publishes whole (the dirty log's descriptor). */
static inline void *vs_load_acquire_ptr(void *const *p) {
    return __atomic_load_n((void *const volatile *)p, __ATOMIC_ACQUIRE);
}
/* Notifications (notify.pxi): who may write a ring's call fd. Sequentially
 * consistent, because the protocol is store(again) -> CAS(busy) on one side
 * and store(busy) -> load(again) on the other. */
static inline int vs_cas_int(volatile int *p, int expected, int desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline void vs_store_seq_int(volatile int *p, int v) {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}
static inline int vs_load_seq_int(const volatile int *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
/* One FDB slot (fdb.pxi explains the encoding): 16-byte aligned so that a
 * slot never straddles two cache lines. */
struct vs_fdb_slot {
    uint64_t key;
    uint64_t val;
} __attribute__((aligned(16)));

/* FDB (fdb.pxi): per-port counts and statistics that several workers
 * change, and the coarse clock the control plane advances. */
static inline int vs_load_relaxed_int(const volatile int *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline int vs_add_int(volatile int *p, int v) {      /* returns the new value */
    return __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
}
static inline uint64_t vs_add_u64(volatile uint64_t *p, uint64_t v) {
    return __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
}
static inline uint32_t vs_load_relaxed_u32(const volatile uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void vs_store_relaxed_u32(volatile uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
/* Full barrier: between publishing used->idx and reading the guest's
 * used_event / avail->flags (virtio spec 2.7.10: the device must not miss
 * a notification request), and in the control plane's quiescence handshake. */
static inline void vs_mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/* Live migration: mark a 4 KiB page of guest memory dirty. Atomic, because
 * several workers (and QEMU's reader) share the bitmap: DPDK reverted a
 * plain read-modify-write because migration then never converged. */
static inline void vs_log_page(uint8_t *log, uint64_t page) {
    __atomic_fetch_or(&log[page >> 3], (uint8_t)(1u << (page & 7)), __ATOMIC_RELAXED);
}

static inline void vs_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spinlock guarding a guest RX ring that several workers may fill. Held for
 * one burst at most, so spinning beats sleeping. */
static inline void vs_spin_lock(volatile int *l) {
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(l, __ATOMIC_RELAXED))
            vs_cpu_relax();
    }
}
static inline void vs_spin_unlock(volatile int *l) {
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

/* Copies of a frame's bytes (vring.pxi sg_read/sg_copy). Most frames of a
 * small-packet load are 60..128 bytes plus a 12-byte header: a call into
 * libc's memcpy for each (through the PLT, then its size dispatch) costs
 * about as much as the copy. Up to VS_INLINE_COPY bytes are copied here,
 * inline, by 16-byte unaligned moves (SSE2, in every x86-64), the last one
 * overlapping the one before instead of a byte loop (what DPDK's
 * rte_memcpy does); larger copies go to memcpy, which is faster there.
 * dst and src must not overlap (they never do: guest buffer to private
 * copy, or private copy / guest buffer to another guest's buffer). Reading
 * a few source bytes twice is harmless: each destination byte gets one of
 * the values the source had, and decisions read only the destination. */
#define VS_INLINE_COPY 256
static inline __attribute__((always_inline)) void vs_mov16(uint8_t *d, const uint8_t *s) { __builtin_memcpy(d, s, 16); }
static inline __attribute__((always_inline)) void vs_mov32(uint8_t *d, const uint8_t *s) { __builtin_memcpy(d, s, 32); }
static inline __attribute__((always_inline)) void vs_mov64(uint8_t *d, const uint8_t *s) { __builtin_memcpy(d, s, 64); }
static inline __attribute__((always_inline)) void vs_mov128(uint8_t *d, const uint8_t *s) { __builtin_memcpy(d, s, 128); }
/* Straight-line by size class: the head of the copy from the start, the
 * tail from the end (overlapping), no loop. */
static inline __attribute__((always_inline)) void vs_copy(void *dst, const void *src, uint32_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    if (n <= 16) {
        if (n >= 8) {
            __builtin_memcpy(d, s, 8);
            __builtin_memcpy(d + n - 8, s + n - 8, 8);
        } else if (n >= 4) {
            __builtin_memcpy(d, s, 4);
            __builtin_memcpy(d + n - 4, s + n - 4, 4);
        } else if (n >= 2) {
            __builtin_memcpy(d, s, 2);
            __builtin_memcpy(d + n - 2, s + n - 2, 2);
        } else if (n == 1) {
            *d = *s;
        }
    } else if (n <= 32) {
        vs_mov16(d, s);
        vs_mov16(d + n - 16, s + n - 16);
    } else if (n <= 64) {
        vs_mov32(d, s);
        vs_mov32(d + n - 32, s + n - 32);
    } else if (n <= 128) {
        vs_mov64(d, s);
        vs_mov64(d + n - 64, s + n - 64);
    } else if (n <= VS_INLINE_COPY) {
        vs_mov128(d, s);
        vs_mov128(d + n - 128, s + n - 128);
    } else {
        __builtin_memcpy(d, s, n);
    }
}

/* A MAC address (6 bytes, network order) as the integer p[0] p[1] ... p[5]
 * (fdb.pxi mac_load): one 4-byte and one 2-byte load and byte swaps, where
 * six byte loads and shifts cost three times as many instructions. Reads
 * exactly the 6 bytes. */
static inline __attribute__((always_inline)) uint64_t vs_mac_load(const uint8_t *p) {
    uint32_t hi;
    uint16_t lo;
    __builtin_memcpy(&hi, p, 4);
    __builtin_memcpy(&lo, p + 4, 2);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return ((uint64_t)__builtin_bswap32(hi) << 16) | __builtin_bswap16(lo);
#else
    return ((uint64_t)hi << 16) | lo;
#endif
}

/* Put a 12-byte virtio_net_hdr_v1 (its num_buffers set to nbuf) into a
 * guest's RX buffer, writing only the words that differ from what the
 * buffer already holds (DPDK's lib/vhost does the same, ASSIGN_UNLESS_EQUAL).
 * A driver recycles its RX buffers: the header left in one from the last
 * time is nearly always the one to write now (no offload, num_buffers 1),
 * and the driver's core has read that line since (num_buffers) or written
 * it (a DPDK front-end sends from the buffer it received in, its TX header
 * in the same place). Reading the line costs nothing more: a store needs it
 * too. Not writing it spares the store's request for ownership of a line
 * the other core holds: measured, each such store stalled the worker
 * until the line came (docs/performance.md, "The slow state"). The guest
 * may change its buffer at any time; that changes what it reads, as it
 * would after a write, never what the switch decides. */
static inline __attribute__((always_inline)) void vs_put_vnet_hdr12(uint8_t *dst, const uint8_t *hdr, uint16_t nbuf) {
    uint8_t tail[4] = {hdr[8], hdr[9], (uint8_t)(nbuf & 0xff), (uint8_t)(nbuf >> 8)};
    uint64_t want0, have0;
    uint32_t want1, have1;
    __builtin_memcpy(&want0, hdr, 8);
    __builtin_memcpy(&want1, tail, 4);
    __builtin_memcpy(&have0, dst, 8);
    __builtin_memcpy(&have1, dst + 8, 4);
    if (have0 != want0)
        __builtin_memcpy(dst, &want0, 8);
    if (have1 != want1)
        __builtin_memcpy(dst + 8, &want1, 4);
}

/* virtio spec 2.7.10 "vring_need_event": notify iff new_idx passed event_idx
 * since old_idx (all free-running u16). */
static inline int vs_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old_idx);
}

#endif
