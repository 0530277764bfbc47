# Notifications to the front-end: writes into a ring's call (and err) eventfd
# that never block a worker.
#
# The front-end owns the eventfd as much as we do: it can clear O_NONBLOCK on
# the open file description we share, or leave the counter at its maximum
# (0xfffffffffffffffe), and a write(2) then blocks until it reads - forever,
# if it never does. Reads can be made non-blocking per call (preadv2 with
# RWF_NOWAIT, see worker_sleep), writes cannot: eventfd has no write_iter,
# so pwritev2(RWF_NOWAIT) is refused. So each worker writes through an
# io_uring of its own that it never waits on, every write marked IOSQE_ASYNC:
# io_uring's io-wq kernel threads run it, never the worker. (Without that
# flag a write is first tried inline, and a front-end that toggles
# O_NONBLOCK can make eventfd_write() sleep in the worker between io_uring's
# check of the flag and eventfd's own.)
#
# At most one write per fd is in flight: the worker that wants to notify sets
# `notify_again`, then claims `notify_busy` with a CAS; whoever holds the
# claim writes. A notification asked for while a write is in flight is merged
# into one more write when that one completes (the worker that reaps the
# completion sees `notify_again`), so a blocked fd costs its own ring's
# interrupts and a counter, nothing else. Nothing here runs under a ring lock
# except queueing (memory writes); the submit happens after the burst.
#
# A completion carries its ring and the ring's generation: when the control
# plane changes a ring's fds or resets the port it bumps the generation,
# clears the claim and posts a cancel of the old write to every worker's
# mailbox (IORING_OP_ASYNC_CANCEL interrupts an io-wq thread blocked in it).
#
# Without io_uring (sysctl kernel.io_uring_disabled, a seccomp filter that
# forbids it) workers fall back to write(2): a front-end that blocks its call
# fd can then stall a worker. docs/security.md says so; the daemon warns.

cdef enum:
    NOTIFY_CALL = 0
    NOTIFY_ERR = 1
    NOTIFY_CANCEL = 2              # a tag's low bits: the cancel request's own completion
    VS_NRING_ENTRIES = 256         # notification SQEs a worker queues between two submits

cdef uint64_t NOTIFY_ONE = 1       # what every notification write writes (lives forever)
cdef uint64_t NOTIFY_PTR_MASK = 0x0000fffffffffffcULL


cdef inline uint64_t notify_tag(vs_vring *vq, int which) noexcept nogil:
    """The completion's tag: the ring (8-byte aligned, user-space pointers fit
    in 48 bits), which fd, and the ring's generation when it was queued."""
    return ((<uint64_t>(vs_load_relaxed_u32(&vq.notify_gen) & 0xffff)) << 48) | \
        <uint64_t><uintptr_t>vq | <uint64_t>which


cdef inline void notify_queue(vs_worker *w, vs_vring *vq, int which) noexcept nogil:
    """Queue the write for which this worker holds the claim."""
    cdef int fd = vq.call_fd if which == NOTIFY_CALL else vq.err_fd
    if fd >= 0 and vs_uring_space(&w.nring) == 0:
        vs_uring_submit(&w.nring)
    if fd < 0 or not w.nring.enabled or vs_uring_space(&w.nring) == 0:
        if fd >= 0:
            vs_add_u64(&vq.c.notify_failed, 1)     # the kernel took no request: lost
        vs_store_seq_int(&vq.notify_busy[which], 0)
        return
    vs_uring_queue_write_async(&w.nring, fd, &NOTIFY_ONE, 8, notify_tag(vq, which))


cdef inline void notify_request(vs_worker *w, vs_vring *vq, int which) noexcept nogil:
    """Have the front-end notified through vq's call (or err) fd: queued on
    this worker's ring (submitted by notify_flush), merged into the write in
    flight, or - without io_uring - written at once."""
    cdef int fd
    if not w.nring.enabled:
        # No io_uring: write(2), which a hostile front-end can block - never
        # on the control plane's own thread (w.id < 0: injected frames).
        fd = vq.call_fd if which == NOTIFY_CALL else vq.err_fd
        if fd >= 0 and w.id >= 0:
            write(fd, &NOTIFY_ONE, 8)
        return
    vs_store_seq_int(&vq.notify_again[which], 1)
    if vs_cas_int(&vq.notify_busy[which], 0, 1):
        # ours: this write, made after everything published so far, covers
        # every request made before the claim
        vs_store_seq_int(&vq.notify_again[which], 0)
        notify_queue(w, vq, which)
    elif which == NOTIFY_CALL:
        vs_add_u64(&vq.c.notify_merged, 1)


cdef void notify_reap(vs_worker *w) noexcept nogil:
    """Account the completed writes; a ring asked for meanwhile gets one more."""
    cdef int rounds
    if not w.nring.enabled:
        return                  # no ring (write(2) fallback), or it failed: nothing to pop
    notify_pop_all(w)
    for rounds in range(3):
        # more completions than the CQ holds (many rings' writes finishing at
        # once): the kernel keeps them, and every later one too, until asked -
        # ask, or the rings they belong to stay claimed for good
        if not vs_uring_flush_overflow(&w.nring):
            return
        notify_pop_all(w)


cdef void notify_pop_all(vs_worker *w) noexcept nogil:
    cdef uint64_t tag
    cdef int32_t res
    cdef int which
    cdef vs_vring *vq
    while vs_uring_pop(&w.nring, &tag, &res):
        which = <int>(tag & 3)
        if which == NOTIFY_CANCEL:
            continue
        vq = <vs_vring *><uintptr_t>(tag & NOTIFY_PTR_MASK)
        if (tag >> 48) != (vs_load_relaxed_u32(&vq.notify_gen) & 0xffff):
            continue            # the fd was replaced: its state was reset with it
        if res < 0:
            # EAGAIN (a non-blocking eventfd at its maximum), ECANCELED, EBADF
            vs_add_u64(&vq.c.notify_failed, 1)
        vs_store_seq_int(&vq.notify_busy[which], 0)
        if vs_load_seq_int(&vq.notify_again[which]) and vs_cas_int(&vq.notify_busy[which], 0, 1):
            vs_store_seq_int(&vq.notify_again[which], 0)
            notify_queue(w, vq, which)


cdef void notify_flush(vs_worker *w) noexcept nogil:
    """Reap what completed and submit what is queued (no waiting), until
    nothing is left queued: a write queued in a round is in the kernel's
    hands before the round ends (its fd number is only valid until then)."""
    cdef int i
    if not w.nring.enabled:
        return
    notify_reap(w)
    for i in range(16):
        if w.nring.pending == 0:
            return
        if vs_uring_submit(&w.nring):
            return              # the ring failed: write(2) from now on (enabled == 0)
        notify_reap(w)


cdef void notify_cancels(vs_worker *w) noexcept nogil:
    """Cancel the writes the control plane gave up on (their fd was replaced
    or their port reset): an io-wq thread blocked in one is interrupted."""
    cdef uint64_t tags[VS_NOTIFY_CANCELS]
    cdef int i, n
    vs_spin_lock(&w.cancel_lock)
    n = w.ncancel
    for i in range(n):
        tags[i] = w.cancel_tags[i]
    vs_store_release_int(&w.ncancel, 0)
    vs_spin_unlock(&w.cancel_lock)
    if not w.nring.enabled:
        return
    for i in range(n):
        if vs_uring_space(&w.nring) == 0:
            vs_uring_submit(&w.nring)
        if vs_uring_space(&w.nring) == 0:
            break
        vs_uring_queue_cancel(&w.nring, tags[i], (tags[i] & ~(<uint64_t>3)) | NOTIFY_CANCEL)
    notify_flush(w)


cdef inline bint kick_drain(vs_vring *vq) noexcept nogil:
    """Read a kick eventfd without ever blocking, whatever the front-end set
    O_NONBLOCK to: eventfd honours RWF_NOWAIT on reads (Linux 5.12+)."""
    cdef uint64_t value
    cdef iovec iov
    iov.iov_base = &value
    iov.iov_len = 8
    return preadv2(vq.kick_fd, &iov, 1, -1, RWF_NOWAIT) == 8
