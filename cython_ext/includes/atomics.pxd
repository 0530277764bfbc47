# Atomics, barriers and the RX-ring spinlock (vs_defs.h: GCC __atomic
# builtins), and the compiler hints the hot loop uses.

from libc.stdint cimport uint16_t, uint32_t, uint64_t

cdef extern from "vs_defs.h" nogil:
    uint16_t vs_load_acquire_u16(const uint16_t *p)
    void vs_store_release_u16(uint16_t *p, uint16_t v)
    int vs_load_acquire_int(const int *p)
    void vs_store_release_int(int *p, int v)
    uint64_t vs_load_acquire_u64(const uint64_t *p)
    uint64_t vs_load_relaxed_u64(const uint64_t *p)
    void vs_store_release_u64(uint64_t *p, uint64_t v)
    void vs_store_relaxed_u64(uint64_t *p, uint64_t v)
    int vs_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired)
    int vs_cas_int(int *p, int expected, int desired)
    void *vs_load_acquire_ptr(void **p)
    void vs_store_seq_int(int *p, int v)
    int vs_load_seq_int(const int *p)
    int vs_load_relaxed_int(const int *p)
    int vs_add_int(int *p, int v)
    uint64_t vs_add_u64(uint64_t *p, uint64_t v)
    uint32_t vs_load_relaxed_u32(const uint32_t *p)
    void vs_store_relaxed_u32(uint32_t *p, uint32_t v)
    void vs_mb()
    void vs_cpu_relax()
    void vs_spin_lock(int *l)
    void vs_spin_unlock(int *l)
    # one FDB slot (fdb.pxi explains the encoding): 16-byte aligned, so a
    # slot never straddles two cache lines and its words are CAS'd alone
    struct vs_fdb_slot:
        uint64_t key
        uint64_t val

cdef extern from * nogil:
    """
    #define vs_unlikely(x) __builtin_expect(!!(x), 0)
    """
    void __builtin_prefetch(const void *p, int rw, int locality)
    # a branch the compiler lays out of line (test hooks checked every round)
    bint vs_unlikely(bint x)
