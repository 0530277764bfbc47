# The SIGBUS guard of guest memory (vs_memguard.h): a fault in a mapping of a
# guest's memory costs its port only.

from libc.stdint cimport uint64_t

cdef extern from "vs_memguard.h" nogil:
    int vs_guard_install()
    int vs_guard_add(void *base, size_t length, uint64_t *faults)
    void vs_guard_remove(int token)
    uint64_t vs_guard_total()
    uint64_t vs_guard_refused()
    int vs_guard_in_use()
    struct vs_guard_slot:
        size_t start
        size_t len
    vs_guard_slot vs_guard_slots[]
    enum:
        VS_GUARD_SLOTS
