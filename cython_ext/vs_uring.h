/* A minimal io_uring submission path for the workers' writes into TAP queues.
 *
 * Why: writing a frame into the kernel's tun driver is one write(2) per frame
 * (tun has no batched write for user space), and on this kind of machine the
 * syscall entry/exit, fd lookup and VFS checks cost a fifth of the kernel's
 * work per small frame. io_uring takes a burst of writes in one
 * io_uring_enter(2). tun marks its files FMODE_NOWAIT ("tun groks IOCB_NOWAIT
 * just fine", drivers/net/tun.c), so each write completes inline during the
 * submit, in order, on the submitting CPU, exactly like a write(2) would.
 *
 * Semantics kept from write(2): vs_uring_flush() returns only when every
 * queued write has completed (a write the kernel punts to its io-wq thread is
 * waited for), so buffers - ours or a guest's - are free again on return and
 * the caller accounts each frame from its result. Only raw syscalls: no
 * liburing dependency. One ring per worker thread, never shared. */
#ifndef VS_URING_H
#define VS_URING_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/io_uring.h>

#define VS_URING_ENTRIES 64   /* >= VS_BURST: a burst never waits for SQ space */
/* Registered-file slots (IORING_REGISTER_FILES): a request on a registered
 * file skips the fd-table lookup and the reference taken and dropped per
 * request (fget/fput: ~4 % of the CPU per 64-byte frame, measured with perf).
 * The datapath gives each TAP queue one slot index, the same in every
 * worker's ring; queues beyond these slots use their plain fd. */
#define VS_URING_FILES 256

struct vs_uring {
    int enabled;              /* 0: not set up (calloc'd struct) or given up */
    int fixed;                /* 1: VS_URING_FILES slots registered (all -1 at first) */
    int restricted;           /* 1: the kernel runs only the requests of vs_uring_restrict() */
    int fd;
    unsigned sq_entries;
    unsigned sq_tail_local;   /* our copy of the SQ tail (we are its only writer) */
    unsigned pending;         /* SQEs queued since the last flush */
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *sq_flags;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_ring, *cq_ring;
    size_t sq_ring_sz, cq_ring_sz, sqes_sz;
    uint64_t enters;          /* io_uring_enter calls (metrics: writes per call) */
    uint64_t submitted;
};

static inline void vs_uring_exit(struct vs_uring *r)
{
    if (r->sqes && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_sz);
    if (r->cq_ring && r->cq_ring != MAP_FAILED && r->cq_ring != r->sq_ring)
        munmap(r->cq_ring, r->cq_ring_sz);
    if (r->sq_ring && r->sq_ring != MAP_FAILED)
        munmap(r->sq_ring, r->sq_ring_sz);
    if (r->enabled || r->fd > 0)
        close(r->fd);
    memset(r, 0, sizeof(*r));
}

/* What a worker's ring may ask of the kernel, and nothing more: requests
 * submitted through io_uring do not pass through the daemon's seccomp filter
 * (docs/service.md), so a ring that could open, connect or read files would
 * be a way around it. The kernel checks these on every SQE
 * (IORING_REGISTER_RESTRICTIONS, 5.10+) and fails any other with -EACCES:
 * writes (TAP frames, eventfd notifications), the cancel of a stuck
 * notification, on plain or registered files, inline or in io-wq; and of the
 * register operations only the update of registered-file slots (a TAP queue
 * added or removed). Then the rings are enabled. A kernel without
 * restrictions (EINVAL) gets the ring unrestricted (r->restricted stays 0,
 * reported in `vswitchctl show`). 0, or an errno. */
static inline int vs_uring_restrict(struct vs_uring *r)
{
    struct io_uring_restriction res[5];
    memset(res, 0, sizeof(res));
    res[0].opcode = IORING_RESTRICTION_SQE_OP;
    res[0].sqe_op = IORING_OP_WRITE;
    res[1].opcode = IORING_RESTRICTION_SQE_OP;
    res[1].sqe_op = IORING_OP_WRITEV;
    res[2].opcode = IORING_RESTRICTION_SQE_OP;
    res[2].sqe_op = IORING_OP_ASYNC_CANCEL;
    res[3].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
    res[3].sqe_flags = IOSQE_FIXED_FILE | IOSQE_ASYNC;
    res[4].opcode = IORING_RESTRICTION_REGISTER_OP;
    res[4].register_op = IORING_REGISTER_FILES_UPDATE;
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_RESTRICTIONS, res, 5) == 0)
        r->restricted = 1;
    else if (errno != EINVAL)
        return errno;
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) != 0)
        return errno;
    return 0;
}

/* A ring of `entries` SQEs; with `files`, VS_URING_FILES empty registered-file
 * slots. 0, or an errno (ENOSYS: no io_uring; EPERM: disabled by sysctl or
 * seccomp). */
static inline int vs_uring_init_ring(struct vs_uring *r, unsigned entries, int files)
{
    struct io_uring_params p;
    unsigned i;
    int fd;
    memset(r, 0, sizeof(*r));
    memset(&p, 0, sizeof(p));
    /* SUBMIT_ALL: one bad SQE does not stop the rest of the burst (5.18+).
     * R_DISABLED: the ring takes no request until vs_uring_restrict() has
     * told the kernel which ones it may run (5.10+). */
    p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_R_DISABLED;
    fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (fd < 0 && errno == EINVAL) {
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_R_DISABLED;
        fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    }
    if (fd < 0 && errno == EINVAL) {
        memset(&p, 0, sizeof(p));
        fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    }
    if (fd < 0)
        return errno;
    r->fd = fd;
    if (!(p.features & IORING_FEAT_NODROP)) {
        /* before 5.5 an overflowing CQ drops completions; we never overflow,
         * but also rely on other 5.x semantics: refuse old kernels */
        close(fd);
        memset(r, 0, sizeof(*r));
        return ENOTSUP;
    }
    r->sq_entries = p.sq_entries;
    r->sq_ring_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_ring_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_ring_sz > r->sq_ring_sz)
            r->sq_ring_sz = r->cq_ring_sz;
        r->cq_ring_sz = r->sq_ring_sz;
    }
    r->sq_ring = mmap(NULL, r->sq_ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      fd, IORING_OFF_SQ_RING);
    if (r->sq_ring == MAP_FAILED)
        goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        r->cq_ring = r->sq_ring;
    } else {
        r->cq_ring = mmap(NULL, r->cq_ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                          fd, IORING_OFF_CQ_RING);
        if (r->cq_ring == MAP_FAILED)
            goto fail;
    }
    r->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        goto fail;
    r->sq_head = (unsigned *)((char *)r->sq_ring + p.sq_off.head);
    r->sq_tail = (unsigned *)((char *)r->sq_ring + p.sq_off.tail);
    r->sq_mask = (unsigned *)((char *)r->sq_ring + p.sq_off.ring_mask);
    r->sq_flags = (unsigned *)((char *)r->sq_ring + p.sq_off.flags);
    r->sq_array = (unsigned *)((char *)r->sq_ring + p.sq_off.array);
    r->cq_head = (unsigned *)((char *)r->cq_ring + p.cq_off.head);
    r->cq_tail = (unsigned *)((char *)r->cq_ring + p.cq_off.tail);
    r->cq_mask = (unsigned *)((char *)r->cq_ring + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)((char *)r->cq_ring + p.cq_off.cqes);
    /* the SQ index array maps slot i to SQE i once and for all */
    for (i = 0; i < p.sq_entries; i++)
        r->sq_array[i] = i;
    r->sq_tail_local = *r->sq_tail;
    r->enabled = 1;
    if (files) {
        /* an empty table: -1 entries are slots to fill later (5.5+); a
         * kernel or RLIMIT_NOFILE that refuses it leaves plain fds in use */
        int empty[VS_URING_FILES];
        for (i = 0; i < VS_URING_FILES; i++)
            empty[i] = -1;
        r->fixed = syscall(__NR_io_uring_register, fd, IORING_REGISTER_FILES, empty,
                           VS_URING_FILES) == 0;
    }
    if ((p.flags & IORING_SETUP_R_DISABLED) && vs_uring_restrict(r) != 0)
        goto fail;
    return 0;
fail:
    {
        int err = errno;
        r->enabled = 0;
        vs_uring_exit(r);
        return err;
    }
}

/* The workers' TAP write ring: a burst per submit, registered TAP queues. */
static inline int vs_uring_init(struct vs_uring *r)
{
    return vs_uring_init_ring(r, VS_URING_ENTRIES, 1);
}

/* Put fd in registered-file slot `index` (-1: empty it). The control plane
 * calls it while the worker may be submitting: the kernel serializes both
 * on the ring's lock. A slot must be emptied before its fd is closed, or the
 * ring keeps the file (and a TAP device) alive. 0, or an errno. */
static inline int vs_uring_set_file(struct vs_uring *r, unsigned index, int fd)
{
    struct io_uring_files_update up;
    int32_t one = fd;
    /* not `enabled`: a ring given up on still holds the files it was given */
    if (!r->fixed || index >= VS_URING_FILES)
        return EINVAL;
    memset(&up, 0, sizeof(up));
    up.offset = index;
    up.fds = (uint64_t)(uintptr_t)&one;
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_FILES_UPDATE, &up, 1) != 1)
        return errno ? errno : EIO;
    return 0;
}

/* Queue one read/write-family request on fd, or on registered-file slot
 * `fixed` when >= 0; tag comes back with its result. The caller flushes
 * before more than VS_URING_ENTRIES are queued (a burst is <= 32). */
static inline void vs_uring_queue_rw(struct vs_uring *r, uint8_t opcode, int fd, int fixed,
                                     const void *addr, uint32_t len, uint64_t tag)
{
    unsigned slot = r->sq_tail_local & *r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[slot];
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = opcode;
    if (fixed >= 0) {
        sqe->fd = fixed;
        sqe->flags = IOSQE_FIXED_FILE;
    } else {
        sqe->fd = fd;
    }
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->off = (uint64_t)-1;      /* the file's position: a character device has none */
    sqe->user_data = tag;
    r->sq_tail_local++;
    r->pending++;
}

/* write(fd, buf, len) */
static inline void vs_uring_queue_write(struct vs_uring *r, int fd, int fixed, const void *buf,
                                        uint32_t len, uint64_t tag)
{
    vs_uring_queue_rw(r, IORING_OP_WRITE, fd, fixed, buf, len, tag);
}

/* write(fd, buf, len), always run by an io-wq kernel thread (IOSQE_ASYNC),
 * never inline in the submitting thread. For a file whose flags another
 * process controls (an eventfd a front-end shares): an inline attempt checks
 * O_NONBLOCK once, eventfd_write() checks it again, and a flag cleared in
 * between puts the submitter to sleep; a write parked on io_uring's poll is
 * retried as task_work in the submitter too. Only io-wq may block on it. */
static inline void vs_uring_queue_write_async(struct vs_uring *r, int fd, const void *buf,
                                              uint32_t len, uint64_t tag)
{
    vs_uring_queue_rw(r, IORING_OP_WRITE, fd, -1, buf, len, tag);
    r->sqes[(r->sq_tail_local - 1) & *r->sq_mask].flags |= IOSQE_ASYNC;
}

/* writev(fd, iov, cnt): the kernel reads the iovec array (and the buffers)
 * during vs_uring_flush(), so both stay untouched until then. */
static inline void vs_uring_queue_writev(struct vs_uring *r, int fd, int fixed,
                                         const struct iovec *iov, uint32_t cnt, uint64_t tag)
{
    vs_uring_queue_rw(r, IORING_OP_WRITEV, fd, fixed, iov, cnt, tag);
}

/* Submit what is queued and wait until all of it has completed; res[tag] gets
 * each write's result (bytes or -errno; tags are < the number queued).
 * Returns 0, or an errno when the ring itself failed: then it is disabled,
 * the writes it did not report are left at -EIO, and the caller falls back to
 * write(2) from now on. */
static inline int vs_uring_flush(struct vs_uring *r, int32_t *res)
{
    unsigned n = r->pending, done = 0, to_submit = n, head, tail;
    unsigned i;
    int rc;
    struct io_uring_cqe *cqe;
    if (n == 0)
        return 0;
    for (i = 0; i < n; i++)
        res[i] = -EIO;
    r->pending = 0;
    __atomic_store_n(r->sq_tail, r->sq_tail_local, __ATOMIC_RELEASE);
    while (done < n) {
        rc = (int)syscall(__NR_io_uring_enter, r->fd, to_submit, n - done,
                          IORING_ENTER_GETEVENTS, NULL, 0);
        r->enters++;
        if (rc < 0) {
            if (errno != EINTR && errno != EAGAIN && errno != EBUSY) {
                rc = errno;
                r->enabled = 0;
                return rc;
            }
        } else {
            to_submit -= (unsigned)rc <= to_submit ? (unsigned)rc : to_submit;
        }
        head = *r->cq_head;
        tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        while (head != tail) {
            cqe = &r->cqes[head & *r->cq_mask];
            if (cqe->user_data < n)
                res[cqe->user_data] = cqe->res;
            head++;
            done++;
        }
        __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    }
    r->submitted += n;
    return 0;
}

/* --- requests that may not complete at once (notification writes) ---------
 * The flush above waits for every request; these do not: a request the
 * kernel cannot finish inline (an eventfd write that would block, handed to
 * io_uring's io-wq thread) stays in flight while the worker goes on, and its
 * completion is popped in a later round. */

/* Free SQEs (the caller submits when there are none left). */
static inline unsigned vs_uring_space(const struct vs_uring *r)
{
    return r->sq_entries - (r->sq_tail_local - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE));
}

/* Any request without arguments on fd (tests: what a restricted ring refuses). */
static inline void vs_uring_queue_op(struct vs_uring *r, uint8_t opcode, int fd, uint64_t tag)
{
    unsigned slot = r->sq_tail_local & *r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[slot];
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = opcode;
    sqe->fd = fd;
    sqe->user_data = tag;
    r->sq_tail_local++;
    r->pending++;
}

/* ASYNC_CANCEL of the in-flight request whose tag is `target` (5.5+): an
 * io-wq thread blocked in it is interrupted. Its own completion has `tag`. */
static inline void vs_uring_queue_cancel(struct vs_uring *r, uint64_t target, uint64_t tag)
{
    unsigned slot = r->sq_tail_local & *r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[slot];
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->user_data = tag;
    r->sq_tail_local++;
    r->pending++;
}

/* Hand what is queued to the kernel without waiting for any completion.
 * 0, or an errno when the ring itself failed (then it is disabled). */
static inline int vs_uring_submit(struct vs_uring *r)
{
    unsigned to_submit = r->pending;
    int rc, tries = 0;
    if (to_submit == 0)
        return 0;
    __atomic_store_n(r->sq_tail, r->sq_tail_local, __ATOMIC_RELEASE);
    while (to_submit > 0) {
        rc = (int)syscall(__NR_io_uring_enter, r->fd, to_submit, 0, 0, NULL, 0);
        r->enters++;
        if (rc < 0) {
            /* EAGAIN/EBUSY: the kernel is short of memory for requests or the
             * completion queue overflowed; EINTR: a signal. Bounded retries:
             * what is not submitted now goes with the next submit. */
            if ((errno == EINTR || errno == EAGAIN || errno == EBUSY) && ++tries < 4)
                continue;
            if (errno == EINTR || errno == EAGAIN || errno == EBUSY)
                break;
            rc = errno;
            r->enabled = 0;
            r->pending = 0;
            return rc;
        }
        if (rc == 0)
            break;
        to_submit -= (unsigned)rc <= to_submit ? (unsigned)rc : to_submit;
        r->submitted += (unsigned)rc;
    }
    r->pending = to_submit;
    return 0;
}

/* Completions that did not fit the CQ wait in the kernel (IORING_FEAT_NODROP)
 * and, since Linux 6.1, so does every later one until a GETEVENTS enter
 * flushes them into the CQ: do that when the kernel says it has some. */
static inline int vs_uring_flush_overflow(struct vs_uring *r)
{
    if (!(__atomic_load_n(r->sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_CQ_OVERFLOW))
        return 0;
    syscall(__NR_io_uring_enter, r->fd, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0);
    r->enters++;
    return 1;
}

/* The next completion, if there is one: 1 and its tag and result, or 0. */
static inline int vs_uring_pop(struct vs_uring *r, uint64_t *tag, int32_t *res)
{
    unsigned head = *r->cq_head;
    struct io_uring_cqe *cqe;
    if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
        return 0;
    cqe = &r->cqes[head & *r->cq_mask];
    *tag = cqe->user_data;
    *res = cqe->res;
    __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
    return 1;
}

#endif
