/* SIGBUS guard for guest memory.
 *
 * Why: a front-end hands us its memory as file descriptors (memfd, a file on
 * /dev/shm or hugetlbfs) and we map them MAP_SHARED. If it later shrinks the
 * file (ftruncate), or a hugetlbfs file cannot get a page, the next access
 * to a page past the new end raises SIGBUS in whichever thread touches it -
 * a worker, so the whole switch would die of one guest (fstat at map time
 * cannot prevent it; DPDK lib/vhost has the same hole). QEMU's
 * memory-backend-memfd seals its file by default (F_SEAL_SHRINK), but
 * memory-backend-file and other front-ends do not.
 *
 * What: every guest mapping (memory regions and the dirty log) is registered
 * here with the port it belongs to. On SIGBUS inside a registered mapping the
 * handler maps anonymous zero pages over that whole mapping (MAP_FIXED; the
 * approach Wayland compositors take with clients' shm pools) and counts a
 * fault for the port; the faulting instruction then runs again on the zero
 * pages. The guest's memory is gone for us from then on: the control plane
 * sees the count and closes that port's connection; every other port never
 * notices. A SIGBUS anywhere else goes to the previous handler, or kills the
 * process as it would have without us.
 *
 * The table is written only by the control plane (one thread, holding the
 * GIL) and read by the handler in any thread without locks: a slot is
 * published by storing its start last (release) and retired by clearing its
 * start first; a mapping is unregistered before it is unmapped, and workers
 * have stopped using it by then (quiescence), so the handler never races the
 * retirement of the mapping it faulted in. */
#ifndef VS_MEMGUARD_H
#define VS_MEMGUARD_H

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define VS_GUARD_SLOTS 17408   /* 256 ports x (32 regions + log) x 2 (old and new table) + room */

struct vs_guard_slot {
    uintptr_t start;           /* 0: free */
    size_t len;
    uint64_t *faults;          /* the owning port's counter */
};

static struct vs_guard_slot vs_guard_slots[VS_GUARD_SLOTS];
static uint64_t vs_guard_faults_total;
static uint64_t vs_guard_unguarded;                /* registrations refused: table full */
static unsigned vs_guard_hint;                     /* where the next free-slot search starts */
static int vs_guard_installed;
static struct sigaction vs_guard_previous;

static void vs_guard_handler(int sig, siginfo_t *si, void *uctx)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    unsigned i;
    /* si_addr is the faulting address only for faults the kernel raised
     * (si_code > 0); a SIGBUS sent by kill(2) is never ours to absorb. */
    if (si->si_code > 0) {
        for (i = 0; i < VS_GUARD_SLOTS; i++) {
            uintptr_t s = __atomic_load_n(&vs_guard_slots[i].start, __ATOMIC_ACQUIRE);
            size_t len;
            uint64_t *faults;
            if (s == 0 || a < s)
                continue;
            len = __atomic_load_n(&vs_guard_slots[i].len, __ATOMIC_RELAXED);
            faults = __atomic_load_n(&vs_guard_slots[i].faults, __ATOMIC_RELAXED);
            /* a slot retired and reused while we read it: not this one */
            if (__atomic_load_n(&vs_guard_slots[i].start, __ATOMIC_ACQUIRE) != s)
                continue;
            if (a - s >= len)
                continue;
            {
                /* mmap is not on POSIX's async-signal-safe list, but on Linux
                 * it is a plain system call (no lock in libc): Wayland
                 * compositors rely on the same for clients' shm pools */
                int saved = errno;
                void *p = mmap((void *)s, len, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
                errno = saved;
                if (p == MAP_FAILED)
                    break;          /* cannot repair: die as we would have */
            }
            __atomic_add_fetch(faults, 1, __ATOMIC_RELAXED);
            __atomic_add_fetch(&vs_guard_faults_total, 1, __ATOMIC_RELAXED);
            return;                 /* the access runs again, on zero pages */
        }
    }
    if (vs_guard_previous.sa_flags & SA_SIGINFO) {
        if (vs_guard_previous.sa_sigaction) {
            vs_guard_previous.sa_sigaction(sig, si, uctx);
            return;
        }
    } else if (vs_guard_previous.sa_handler != SIG_DFL && vs_guard_previous.sa_handler != SIG_IGN) {
        vs_guard_previous.sa_handler(sig);
        return;
    }
    /* Default action: restore it; a fault repeats when we return and the
     * process ends with SIGBUS and its core at the faulting instruction, as
     * without the guard; a sent signal is raised again. */
    signal(SIGBUS, SIG_DFL);
    if (si->si_code <= 0)
        raise(SIGBUS);
}

/* Once per process. 0, or an errno. */
static inline int vs_guard_install(void)
{
    struct sigaction sa;
    if (vs_guard_installed)
        return 0;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = vs_guard_handler;
    /* SA_NODEFER: a fault inside a handler further down the chain is seen */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &vs_guard_previous) != 0)
        return errno;
    vs_guard_installed = 1;
    return 0;
}

/* Register [base, base+len) of a port's guest memory; a SIGBUS in it counts
 * in *faults, which must outlive the registration. Returns a token > 0 for
 * vs_guard_remove, or 0 when the table is full (the mapping is then
 * unguarded, as it was before this guard existed). 0 is also "no token", so
 * zeroed structs hold none. */
static inline int vs_guard_add(void *base, size_t len, uint64_t *faults)
{
    unsigned n, i;
    if (base == NULL || len == 0 || faults == NULL)
        return 0;
    for (n = 0; n < VS_GUARD_SLOTS; n++) {
        i = (vs_guard_hint + n) % VS_GUARD_SLOTS;
        if (__atomic_load_n(&vs_guard_slots[i].start, __ATOMIC_RELAXED) == 0) {
            vs_guard_slots[i].faults = faults;
            __atomic_store_n(&vs_guard_slots[i].len, len, __ATOMIC_RELAXED);
            __atomic_store_n(&vs_guard_slots[i].start, (uintptr_t)base, __ATOMIC_RELEASE);
            vs_guard_hint = i + 1;
            return (int)i + 1;
        }
    }
    vs_guard_unguarded++;
    return 0;
}

/* Before the mapping is unmapped. A token of 0 is a no-op. */
static inline void vs_guard_remove(int token)
{
    if (token <= 0 || token > VS_GUARD_SLOTS)
        return;
    __atomic_store_n(&vs_guard_slots[token - 1].start, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&vs_guard_slots[token - 1].len, 0, __ATOMIC_RELAXED);
}

static inline uint64_t vs_guard_total(void)
{
    return __atomic_load_n(&vs_guard_faults_total, __ATOMIC_RELAXED);
}

static inline uint64_t vs_guard_refused(void)
{
    return vs_guard_unguarded;
}

static inline int vs_guard_in_use(void)
{
    unsigned i;
    int n = 0;
    for (i = 0; i < VS_GUARD_SLOTS; i++)
        n += __atomic_load_n(&vs_guard_slots[i].start, __ATOMIC_RELAXED) != 0;
    return n;
}

#endif
