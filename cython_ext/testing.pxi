# Test hooks: entry points that exist for the tests only, compiled in but
# refused until enabled. A Datapath's hooks (debug_stall_worker, debug_fdb_*)
# are reached through Datapath.__getattr__ once Datapath.enable_test_hooks()
# was called (the daemon calls it with `debug: true` in its configuration);
# the module's (_offload_*) once enable_test_hooks() was, by either. Called
# before, a hook raises DatapathError saying so.
#
# The one hook inside the worker loop, the stall of debug_stall_worker, is a
# test of w.stall_ms at the end of a round, hinted unlikely (vs_unlikely): it
# stays 0 unless a hook set it.

cdef bint _module_hooks = False    # the module's hooks (_offload_*) may be called


def enable_test_hooks():
    """Make the module's test hooks (_offload_*) callable."""
    global _module_hooks
    _module_hooks = True


cdef int _require_test_hooks(str name) except -1:
    if not _module_hooks:
        raise DatapathError(f"{name} is a test hook: call enable_test_hooks() first")
    return 0


cdef void stall(vs_worker *w) noexcept nogil:
    """Test hook (debug stall-worker): stop making progress for a while, as a
    worker stuck in a bug would, so the watchdog tests can see it noticed."""
    cdef timespec ts
    ts.tv_sec = w.stall_ms // 1000
    ts.tv_nsec = (w.stall_ms % 1000) * 1000000
    nanosleep(&ts, NULL)
    w.stall_ms = 0


cdef class _TestHooks:
    """The hooks of one Datapath (Datapath.__getattr__ hands out its bound
    methods once the Datapath's hooks are enabled)."""

    cdef Datapath dp

    def __cinit__(self, Datapath dp):
        self.dp = dp

    def debug_stall_worker(self, int i, double seconds):
        """Test hook: worker i sleeps `seconds` at the end of its round, as a
        stuck worker would (the watchdog must notice)."""
        if not 0 <= i < self.dp.nworkers:
            raise DatapathError(f"no worker {i}")
        if not 0 < seconds <= 600:
            raise DatapathError("seconds must be in (0, 600]")
        self.dp.workers[i].stall_ms = <int>(seconds * 1000)
        self.dp._wake()

    def debug_fdb_learn(self, int vlan, str mac, int p):
        """Test hook: learn (vlan, mac) on port p as a worker would."""
        cdef uint64_t m = int(mac.replace(":", ""), 16)
        cdef uint16_t vid = self.dp._vlan(vlan)
        self.dp._port(p)
        fdb_learn(self.dp.sw, vid, m, p)

    def debug_fdb_learn_many(self, int vlan, uint64_t first, int count, int p, int rounds=1):
        """Test hook: learn MACs first .. first+count-1 on port p, `rounds`
        times, without the GIL (threads calling it run in parallel, as
        workers do)."""
        cdef uint16_t vid = self.dp._vlan(vlan)
        cdef vs_switch *sw = self.dp.sw
        cdef int r, i
        self.dp._port(p)
        with nogil:
            for r in range(rounds):
                for i in range(count):
                    fdb_learn(sw, vid, (first + i) & <uint64_t>0xffffffffffff, p)

    def debug_fdb_lookup(self, int vlan, str mac):
        """Test hook: the port index a frame to (vlan, mac) goes to, or None (flood)."""
        cdef uint64_t m = int(mac.replace(":", ""), 16)
        cdef int d = fdb_lookup(self.dp.sw, self.dp._vlan(vlan), m)
        return None if d < 0 else d


    def debug_packed_take(self, int p, int idx, bint device_writes):
        """Test hook: take the chain at the packed ring's avail position as a
        worker would (pk_walk_chain) and write its used element (length 0)
        without publishing it; None if no descriptor is available. The ring
        must be started and no worker may run (a Datapath never started)."""
        cdef vs_port *port = self.dp._port(p)
        cdef vs_vring *vq = self.dp._vring(p, idx)
        cdef vs_seg segs[VS_MAX_SEGS]
        cdef int nseg = 0, rc
        cdef uint64_t total = 0
        cdef int64_t budget = VS_PORT_WORK
        cdef uint16_t flags, buf_id = 0, ndesc = 0
        if not vq.started or not vq.packed:
            raise DatapathError("not a started packed ring")
        flags = pk_head_flags(vq)
        if not pk_is_avail(flags, vq.avail_wrap):
            return None
        rc = pk_walk_chain(port, vq, flags, device_writes, segs, VS_MAX_SEGS, &nseg, &total,
                           &budget, &buf_id, &ndesc)
        if rc != DROP_RING_BROKEN:
            pk_put_used(vq, buf_id, 0, ndesc, device_writes)
        return {"drop": DROP_REASONS[rc], "id": buf_id, "ndesc": ndesc, "bytes": total,
                "pieces": [segs[i].len for i in range(nseg)], "work": VS_PORT_WORK - budget}

    def debug_packed_publish(self, int p, int idx):
        """Test hook: publish the used elements written since the last publish."""
        cdef vs_vring *vq = self.dp._vring(p, idx)
        if not vq.started or not vq.packed:
            raise DatapathError("not a started packed ring")
        pk_publish(self.dp._port(p), vq)


# Public methods of _TestHooks: the names Datapath.__getattr__ answers.
TEST_HOOKS = frozenset(n for n in dir(_TestHooks) if not n.startswith("_"))


# --- the workers' io_uring rings (vs_uring.h) ---

def _uring_try(int opcode, int fd, bint tap_ring=True):
    """Make a ring as a worker does (its TAP ring, or with tap_ring False its
    notification ring), submit one request `opcode` on fd (no arguments: a
    write of 0 bytes, a NOP...) and return (restricted, result: bytes or
    -errno). For tests/unit/test_uring_restrictions.py."""
    _require_test_hooks("_uring_try")
    cdef vs_uring r
    cdef int32_t res = 0
    cdef int err = vs_uring_init(&r) if tap_ring else vs_uring_init_ring(&r, 8, 0)
    if err:
        raise OSError(err, os.strerror(err))
    try:
        vs_uring_queue_op(&r, <uint8_t>opcode, fd, 0)
        err = vs_uring_flush(&r, &res)
        if err:
            raise OSError(err, os.strerror(err))
        return bool(r.restricted), res
    finally:
        vs_uring_exit(&r)


# --- the software offload fallback (offload.pxi) ---
# Thin wrappers for tests/unit/test_offload.py: they copy the Python bytes into
# a malloc'ed buffer (so the C code sees exactly len bytes) and call the C
# functions.

def _offload_csum_add(const unsigned char[::1] data, uint32_t sum=0, int repeat=1):
    """csum_fold(csum_add(data, sum)), `repeat` times (for timing)."""
    _require_test_hooks("_offload_csum_add")
    cdef uint32_t r = sum
    cdef size_t n = data.shape[0]
    cdef const uint8_t *p = &data[0] if n else NULL
    cdef int i
    with nogil:
        for i in range(repeat):
            r = csum_add(p, n, sum)
    return csum_fold(r)

def _offload_finish_csum(bytes frame, int csum_start, int csum_offset):
    """The frame with its checksum finished, or None on OFFLOAD_BAD."""
    _require_test_hooks("_offload_finish_csum")
    cdef Py_ssize_t n = len(frame)
    if csum_start < 0 or csum_offset < 0 or n > 0xFFFFFFFF:
        return None
    cdef uint8_t *buf = <uint8_t *>malloc(n if n > 0 else 1)
    if buf == NULL:
        raise MemoryError()
    try:
        memcpy(buf, <const char *>frame, n)
        if finish_csum(buf, <uint32_t>n, <uint32_t>csum_start, <uint32_t>csum_offset) != 0:
            return None
        return (<char *>buf)[:n]
    finally:
        free(buf)

def _offload_tso_plan(bytes frame, int gso_type, int gso_size):
    """The vs_tso plan as a dict, or None on OFFLOAD_BAD."""
    _require_test_hooks("_offload_tso_plan")
    cdef vs_tso plan
    cdef Py_ssize_t n = len(frame)
    if gso_type < 0 or gso_type > 255 or gso_size < 0 or n > 0xFFFFFFFF:
        return None
    cdef uint8_t *buf = <uint8_t *>malloc(n if n > 0 else 1)
    if buf == NULL:
        raise MemoryError()
    try:
        memcpy(buf, <const char *>frame, n)
        if tso_plan(buf, <uint32_t>n, <uint8_t>gso_type, <uint32_t>gso_size, &plan) != 0:
            return None
        return {"l3_off": plan.l3_off, "l4_off": plan.l4_off,
                "payload_off": plan.payload_off, "payload_len": plan.payload_len,
                "nsegs": plan.nsegs, "is_v6": bool(plan.is_v6), "ecn": bool(plan.ecn)}
    finally:
        free(buf)

def _offload_tso(bytes frame, int gso_type, int gso_size):
    """The segments of a TCP GSO super-frame as a list of frames, or None on
    OFFLOAD_BAD."""
    _require_test_hooks("_offload_tso")
    cdef vs_tso plan
    cdef Py_ssize_t n = len(frame)
    cdef uint32_t i, m
    cdef uint8_t *out = NULL
    if gso_type < 0 or gso_type > 255 or gso_size < 0 or n > 0xFFFFFFFF:
        return None
    cdef uint8_t *buf = <uint8_t *>malloc(n if n > 0 else 1)
    if buf == NULL:
        raise MemoryError()
    try:
        memcpy(buf, <const char *>frame, n)
        if tso_plan(buf, <uint32_t>n, <uint8_t>gso_type, <uint32_t>gso_size, &plan) != 0:
            return None
        out = <uint8_t *>malloc(plan.payload_off + <size_t>gso_size)
        if out == NULL:
            raise MemoryError()
        segs = []
        for i in range(plan.nsegs):
            m = tso_segment(buf, &plan, <uint32_t>gso_size, i, out)
            segs.append((<char *>out)[:m])
        return segs
    finally:
        free(out)
        free(buf)
