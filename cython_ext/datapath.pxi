# The Datapath class: the control plane's handle on the datapath. Its methods
# are grouped by concern, in the order of the table in _datapath.pyx's
# docstring; each group's C-level half is in the .pxi named in its header.
#
# Protocol (docs/architecture.md, "Epochs and quiescence"): the control
# plane changes what a worker may see by flipping a flag, waits for every
# worker to finish the round it was in (`_quiesce`), and only then touches
# the ring, the memory map or the fds it used.

# The longest the control plane waits for every worker to finish a round.
cdef uint64_t QUIESCE_TIMEOUT_NS = 5000000000ULL

# Feature bits the control plane interprets (virtio spec 5.1.3, vhost-user).
cdef enum:
    F_MRG_RXBUF = 15
    F_LOG_ALL = 26
    F_INDIRECT_DESC = 28
    F_EVENT_IDX = 29
    F_VERSION_1 = 32
    F_ACCESS_PLATFORM = 33


cdef class Datapath:
    """Owns the switch tables and the worker threads."""

    cdef vs_switch *sw
    cdef vs_worker **workers
    cdef int nworkers
    cdef object threads
    cdef bint running
    cdef vs_worker *ctlw          # scratch for frames the control plane injects (RARP)
    cdef vs_vring *ctl_vq         # counters of those frames' ingress side
    cdef readonly tuple cpus
    cdef uint32_t aging_s         # fdb.aging_time (0: never)
    cdef double t0                # time.monotonic() at creation: the FDB clock's zero
    cdef uint8_t fixed_used[VS_URING_FILES]   # registered-file slots given to TAP queues
    cdef uint64_t mem_cap_port    # limits.guest_memory_per_port (0: the default)
    cdef uint64_t mem_cap_total   # limits.guest_memory_total (0: the default)
    cdef unsigned long control_thread   # the one thread allowed to change us (0: any)
    cdef bint test_hooks          # enable_test_hooks() was called (testing.pxi)

    def __cinit__(self, int workers=1, str mode="adaptive", cpus=None, str tap_io="io_uring"):
        cdef epoll_event ev
        if not 1 <= workers <= 64:
            raise ValueError("workers must be 1..64")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if tap_io not in ("io_uring", "write"):
            raise ValueError("tap_io must be io_uring or write")
        # A guest that shrinks its memory file under us costs its port only.
        err = vs_guard_install()
        if err:
            raise OSError(err, "cannot install the SIGBUS handler for guest memory")
        self.sw = <vs_switch *>calloc(1, sizeof(vs_switch))
        self.workers = <vs_worker **>calloc(workers, sizeof(vs_worker *))
        if self.sw == NULL or self.workers == NULL:
            raise MemoryError()
        self.nworkers = workers
        self.sw.nworkers = workers
        self.sw.mode = MODES[mode]
        for i in range(workers):
            self.workers[i] = <vs_worker *>calloc(1, sizeof(vs_worker))
            if self.workers[i] == NULL:
                raise MemoryError()
            self.workers[i].id = i
            self.workers[i].tapbuf = <uint8_t *>calloc(VS_BURST, VS_TAP_BUF)
            if self.workers[i].tapbuf == NULL:
                raise MemoryError()
            self.workers[i].tapout = <uint8_t *>calloc(VS_BURST, TAP_OUT_SLOT)
            self.workers[i].tapiov = <iovec *>calloc(VS_BURST * TAP_IOV_MAX, sizeof(iovec))
            if self.workers[i].tapout == NULL or self.workers[i].tapiov == NULL:
                raise MemoryError()
            if tap_io == "io_uring":
                # no io_uring (old kernel, sysctl kernel.io_uring_disabled,
                # a seccomp filter): one write(2) per frame, as before
                self.workers[i].uring_errno = vs_uring_init(&self.workers[i].uring)
            # notifications never block a worker (notify.pxi)
            self.workers[i].nring_errno = vs_uring_init_ring(&self.workers[i].nring,
                                                             VS_NRING_ENTRIES, 0)
            self.workers[i].wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            self.workers[i].epfd = epoll_create1(EPOLL_CLOEXEC)
            if self.workers[i].wake_fd < 0 or self.workers[i].epfd < 0:
                raise OSError(errno, "eventfd/epoll_create1 failed")
            ev.events = EPOLLIN
            ev.data.ptr = NULL
            epoll_ctl(self.workers[i].epfd, EPOLL_CTL_ADD, self.workers[i].wake_fd, &ev)
            if self.workers[i].nring.enabled:
                # a sleeping worker wakes when a late notification write completes
                ev.data.ptr = &self.workers[i].nring
                epoll_ctl(self.workers[i].epfd, EPOLL_CTL_ADD, self.workers[i].nring.fd, &ev)
        self.ctlw = <vs_worker *>calloc(1, sizeof(vs_worker))
        self.ctl_vq = <vs_vring *>calloc(1, sizeof(vs_vring))
        if self.ctlw == NULL or self.ctl_vq == NULL:
            raise MemoryError()
        # frames the control plane injects notify their destinations too
        self.ctlw.id = -1               # not a worker: never write(2) a guest's fd from here
        self.ctlw.nring_errno = vs_uring_init_ring(&self.ctlw.nring, VS_NRING_ENTRIES, 0)
        self.threads = []
        self.running = False
        # worker i runs on cpus[i % len(cpus)] (datapath.cpus in the config)
        self.cpus = tuple(cpus) if cpus else ()
        self.aging_s = 300
        self.sw.fdb_default_max = 1024
        self.t0 = time.monotonic()

    def __dealloc__(self):
        cdef int i, p, q
        cdef vs_port *port
        if self.running:
            self.stop()
        if self.sw != NULL:
            for p in range(VS_MAX_PORTS):
                port = self.sw.ports[p]
                if port != NULL:
                    self._release_port_resources(port)
                    free(port.vx)
                    capture_free(port.capture)      # workers are stopped
                    free(port)
            free(self.sw)
        if self.ctlw != NULL:
            vs_uring_exit(&self.ctlw.nring)
        free(self.ctlw)
        free(self.ctl_vq)
        if self.workers != NULL:
            for i in range(self.nworkers):
                if self.workers[i] != NULL:
                    close(self.workers[i].wake_fd)
                    close(self.workers[i].epfd)
                    free(self.workers[i].tapbuf)
                    free(self.workers[i].tapout)
                    free(self.workers[i].tapiov)
                    vs_uring_exit(&self.workers[i].uring)
                    vs_uring_exit(&self.workers[i].nring)    # cancels what is in flight
                    free(self.workers[i])
            free(self.workers)


    # --- workers: threads, modes, quiescence (worker.pxi) -----------------------------
    # Every change a worker must not see half-done is made between two of its
    # rounds: flip a flag, _quiesce(), then touch what the workers used.

    @property
    def workers(self):
        return self.nworkers

    def start(self):
        """Start the worker threads (each enters the nogil loop once)."""
        if self.running:
            return
        self.running = True
        for i in range(self.nworkers):
            self.workers[i].quit = 0
            t = threading.Thread(target=self._run_worker, args=(i,),
                                 name=f"vswitch-worker-{i}", daemon=True)
            self.threads.append(t)
            t.start()

    def _run_worker(self, int i):
        cdef vs_worker *w = self.workers[i]
        # the thread's name in ps -L, top -H, perf and /proc/PID/task/*/comm
        # (15 bytes at most); vswitch/cpus.py places the other threads by it
        cdef bytes name = f"vsw-worker-{i}".encode()[:15]
        prctl(PR_SET_NAME, <unsigned long><char *>name, 0, 0, 0)
        if self.cpus:
            # pid 0 is the calling thread: pins this worker only
            os.sched_setaffinity(0, {self.cpus[i % len(self.cpus)]})
        with nogil:
            worker_loop(self.sw, w)

    def stop(self):
        if not self.running:
            return
        for i in range(self.nworkers):
            vs_store_release_int(&self.workers[i].quit, 1)
        self._wake()
        for t in self.threads:
            t.join()
        self.threads = []
        self.running = False

    cdef void _wake(self) noexcept:
        cdef uint64_t one = 1
        cdef int i
        for i in range(self.nworkers):
            write(self.workers[i].wake_fd, &one, 8)

    def bind_control_thread(self, unsigned long ident):
        """From now on only thread `ident` may make changes that wait for the
        workers or use the control plane's notification ring: the daemon's
        control thread (vswitch/dpcontrol.py), so that the event loop never
        waits. Unbound (tests driving a Datapath directly), any thread may."""
        self.control_thread = ident

    cdef int _check_control_thread(self) except -1:
        if self.control_thread != 0 and <unsigned long>threading.get_ident() != self.control_thread:
            raise DatapathError("datapath change outside its control thread "
                                "(it would wait for the workers on the caller's thread)")
        return 0

    cdef int _quiesce(self, uint64_t timeout_ns=QUIESCE_TIMEOUT_NS) except -1:
        """Wait until every worker has finished the round it was in: after
        this, no worker holds a pointer it read before the call."""
        cdef uint64_t snap[64]
        cdef int i
        cdef bint done
        cdef timespec ts
        cdef uint64_t deadline
        self._check_control_thread()
        if not self.running:
            return 0
        vs_mb()
        for i in range(self.nworkers):
            snap[i] = vs_load_acquire_u64(&self.workers[i].epoch)
        self._wake()
        ts.tv_sec = 0
        ts.tv_nsec = 20000
        # On the clock, not in counted naps: a nap on a loaded machine lasts
        # far longer than asked. A round is bounded (no worker waits on a
        # front-end's fd), so this only fails on a bug or a starved CPU.
        deadline = now_ns() + timeout_ns
        with nogil:
            while True:
                done = True
                for i in range(self.nworkers):
                    if vs_load_acquire_u64(&self.workers[i].epoch) == snap[i]:
                        done = False
                if done or now_ns() > deadline:
                    break
                nanosleep(&ts, NULL)
        if not done:
            stuck = [i for i in range(self.nworkers)
                     if vs_load_acquire_u64(&self.workers[i].epoch) == snap[i]]
            raise DatapathError(f"worker(s) {stuck} did not finish their round in "
                                f"{timeout_ns / 1e9:g} s")
        return 0

    def set_mode(self, str mode):
        """poll / event / adaptive, live: workers read it every round."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        vs_store_release_int(&self.sw.mode, MODES[mode])
        self._wake()

    @property
    def mode(self):
        return {v: k for k, v in MODES.items()}[self.sw.mode]

    def set_cpus(self, cpus, allowed=None):
        """Re-pin the running workers (datapath.cpus changed by a reload);
        without cpus they get `allowed` (the daemon's mask, vswitch/cpus.py:
        the calling thread's own may be narrower), default the caller's."""
        self.cpus = tuple(cpus) if cpus else ()
        if allowed is None:
            allowed = os.sched_getaffinity(0)
        for i, t in enumerate(self.threads):
            if t.native_id is not None:
                os.sched_setaffinity(t.native_id, {self.cpus[i % len(self.cpus)]} if self.cpus else allowed)

    def pause(self):
        """Hold every worker between rounds (frames wait in their rings) until
        resume(): a set of changes to several ports then takes effect at once."""
        vs_store_release_int(&self.sw.paused, 1)
        if self.running:
            self._quiesce()

    def resume(self):
        vs_store_release_int(&self.sw.paused, 0)
        self._wake()


    # --- ports: slots, reset, features, control-plane frames --------------------------

    cdef vs_port *_port(self, int p) except NULL:
        if not 0 <= p < VS_MAX_PORTS or self.sw.ports[p] == NULL or not self.sw.ports[p].in_use:
            raise DatapathError(f"no port {p}")
        return self.sw.ports[p]

    cdef vs_vring *_vring(self, int p, int idx) except NULL:
        cdef vs_port *port = self._port(p)
        if not 0 <= idx < 2 * port.nqp:
            raise DatapathError(f"vring index {idx} out of range (port has {port.nqp} queue pairs)")
        return &port.vq[idx]

    def port_add(self, int queue_pairs, str kind="vhost-user"):
        """Allocate a port slot. Slots are never freed while the datapath
        lives (workers may hold a pointer), only reused."""
        cdef int p, i
        cdef vs_port *port
        cdef vs_vxlan *vx
        cdef uint32_t gens[VS_MAX_VRINGS]
        if not 1 <= queue_pairs <= VS_MAX_QP:
            raise DatapathError(f"queue pairs must be 1..{VS_MAX_QP}")
        for p in range(VS_MAX_PORTS):
            if self.sw.ports[p] == NULL:
                self.sw.ports[p] = <vs_port *>calloc(1, sizeof(vs_port))
                if self.sw.ports[p] == NULL:
                    raise MemoryError()
            port = self.sw.ports[p]
            if port.in_use:
                continue
            vx = port.vx               # kept with the slot (freed with the datapath)
            for i in range(VS_MAX_VRINGS):
                gens[i] = port.vq[i].notify_gen
            memset(port, 0, sizeof(vs_port))
            port.vx = vx
            for i in range(VS_MAX_VRINGS):
                # A completion of the slot's last owner's write may still come
                # (tagged with this ring's address and generation): a newer
                # generation keeps it from clearing the new owner's claim.
                port.vq[i].notify_gen = gens[i] + 1
                port.vq[i].kick_fd = -1
                port.vq[i].kick_epfd = -1
                port.vq[i].call_fd = -1
                port.vq[i].err_fd = -1
            port.nqp = queue_pairs
            memset(port.vlan_carry, 0xff, sizeof(port.vlan_carry))   # VLAN_ALL
            port.hdr_len = 12
            port.fdb_max_set = -1
            port.miss_efd = -1
            port.fdb_max = self.sw.fdb_default_max
            port.kind = PORT_TAP if kind == "tap" else PORT_VXLAN if kind == "vxlan" else PORT_VHOST
            for i in range(VS_MAX_QP):
                port.tap_fd[i] = -1
                port.tap_fixed[i] = -1
            port.in_use = 1
            if p + 1 > self.sw.nports_hi:
                vs_store_release_int(&self.sw.nports_hi, p + 1)
            return p
        raise DatapathError(f"all {VS_MAX_PORTS} port slots in use")

    def port_remove(self, int p):
        cdef vs_port *port = self._port(p)
        cdef vs_capture *cap = port.capture
        self.port_reset(p)
        # Entries pinned to the slot go too: a later port may reuse the slot.
        fdb_forget(self.sw, p, FDB_ANY, True)
        if cap != NULL:         # a capture ends with its port (port_reset quiesced)
            port.capture = NULL
            self._quiesce()
            capture_free(cap)
        port.in_use = 0

    cdef void _release_port_resources(self, vs_port *port) noexcept:
        cdef int i
        for i in range(VS_MAX_QP):
            if port.tap_fd[i] >= 0:
                self._unwatch_fd(port.vq[2 * i + 1].kick_epfd, port.tap_fd[i])
                port.vq[2 * i + 1].kick_epfd = -1
                self._fixed_file_remove(port.tap_fixed[i])   # else the rings keep the device
                port.tap_fixed[i] = -1
                close(port.tap_fd[i])
                port.tap_fd[i] = -1
        port.tap_errno = 0
        if port.vx != NULL and port.vx.fd >= 0:
            self._unwatch_fd(port.vq[1].kick_epfd, port.vx.fd)
            port.vq[1].kick_epfd = -1
            close(port.vx.fd)
            port.vx.fd = -1
        for i in range(VS_MAX_VRINGS):
            self._unwatch_kick(&port.vq[i])
            for fd in (port.vq[i].kick_fd, port.vq[i].call_fd, port.vq[i].err_fd):
                if fd >= 0:
                    close(fd)
            port.vq[i].kick_fd = -1
            port.vq[i].call_fd = -1
            port.vq[i].err_fd = -1
        _unmap_all(&port.mem)
        iotlb_free(port)
        port.log = NULL
        port.log_all = 0
        if port.log_map_base != NULL:
            vs_guard_remove(port.log_guard)
            port.log_guard = 0
            munmap(port.log_map_base, port.log_map_len)
            port.log_map_base = NULL
            port.log_map_len = 0
            port.log_size = 0
        # nothing of the guest's is mapped any more: a new connection starts whole
        port.mem_faults_ok = vs_load_relaxed_u64(&port.mem_faults)

    def port_reset(self, int p, double timeout_s=QUIESCE_TIMEOUT_NS / 1e9):
        """Disconnect or RESET_DEVICE: stop every ring, forget the FDB entries,
        unmap memory, close fds, clear counters of nothing (they live on).
        DatapathError, and nothing released, if the workers do not finish
        their round within timeout_s: call again later."""
        cdef vs_port *port = self._port(p)
        cdef int i
        cdef vs_counters saved[VS_MAX_VRINGS]
        cdef uint32_t gen
        vs_store_release_int(&port.active, 0)
        for i in range(VS_MAX_VRINGS):
            vs_store_release_int(&port.vq[i].started, 0)
        self._quiesce(<uint64_t>(timeout_s * 1e9))
        fdb_forget(self.sw, p, FDB_ANY, False)
        for i in range(VS_MAX_VRINGS):
            self._notify_forget(&port.vq[i])
        self._quiesce()         # a write re-queued meanwhile has been submitted
        self._release_port_resources(port)
        for i in range(VS_MAX_VRINGS):
            saved[i] = port.vq[i].c
            gen = port.vq[i].notify_gen     # kept: completions of older writes stay stale
            memset(&port.vq[i], 0, sizeof(vs_vring))
            port.vq[i].c = saved[i]
            port.vq[i].notify_gen = gen
            port.vq[i].kick_fd = -1
            port.vq[i].kick_epfd = -1
            port.vq[i].call_fd = -1
            port.vq[i].err_fd = -1
        port.n_rx_enabled = 0
        # The ring kind is the connection's: until SET_FEATURES acks
        # RING_PACKED again, rings are split (as the session checks them).
        port.features &= ~(<uint64_t>1 << F_RING_PACKED)

    def port_set_features(self, int p, uint64_t features):
        """Apply negotiated virtio features (SET_FEATURES, possibly repeated)."""
        cdef vs_port *port = self._port(p)
        cdef bint version_1 = (features >> F_VERSION_1) & 1
        cdef bint mrg = (features >> F_MRG_RXBUF) & 1
        # virtio spec 5.1.6: the header is 12 bytes with VERSION_1 or
        # MRG_RXBUF, 10 bytes for a legacy device without MRG_RXBUF.
        cdef uint32_t hdr_len = 12 if (version_1 or mrg) else 10
        cdef int evi = (features >> F_EVENT_IDX) & 1
        cdef int ind = (features >> F_INDIRECT_DESC) & 1
        if features == port.features and hdr_len == port.hdr_len \
                and port.iotlb_on == <int>((features >> F_ACCESS_PLATFORM) & 1):
            return
        was = port.active
        vs_store_release_int(&port.active, 0)
        self._quiesce()
        port.hdr_len = hdr_len
        port.features = features
        port.mrg_rxbuf = mrg
        port.event_idx = evi
        port.indirect = ind
        port.log_all = (features >> F_LOG_ALL) & 1
        port.iotlb_on = (features >> F_ACCESS_PLATFORM) & 1
        self._update_log(port)
        vs_store_release_int(&port.active, was)

    def port_set_mtu(self, int p, unsigned int mtu):
        self._port(p).mtu = mtu

    # frames the control plane sends itself

    def inject_rarp(self, int p, bytes mac):
        """SEND_RARP: broadcast a RARP from port p's guest MAC, as if the guest
        had sent it (DPDK broadcast_rarp): the switch re-learns the MAC on
        this port and every other port (and the network behind the TAP)
        hears where the guest is now. Returns the drop reason if the frame
        was dropped (as a frame the guest sent would have been), else None."""
        cdef vs_port *port = self._port(p)
        cdef vs_worker *w = self.ctlw
        cdef vs_frame *f = &w.frames[0]
        cdef uint8_t frame[60]
        cdef uint64_t before[DROP_MAX]
        cdef int i
        self._check_control_thread()        # the control plane's ring has one user
        if len(mac) != 6:
            raise DatapathError("a MAC is 6 bytes")
        memset(frame, 0, 60)
        for i in range(6):
            frame[i] = 0xff                 # broadcast
            frame[6 + i] = mac[i]           # source: the guest
            frame[22 + i] = mac[i]          # sender hardware address
            frame[32 + i] = mac[i]          # target hardware address
        frame[12] = 0x80; frame[13] = 0x35  # ETH_P_RARP
        frame[15] = 1                       # hardware type Ethernet
        frame[16] = 0x08                    # protocol IPv4
        frame[18] = 6; frame[19] = 4        # address lengths
        frame[21] = 3                       # reverse request
        w.segs[0].p = frame
        w.segs[0].len = 60
        f.seg0 = 0
        f.nseg = 1
        f.len = 60
        f.hdr_len = 0
        f.dst = FRAME_DROPPED
        f.vflags = 0
        f.gso_type = VS_GSO_NONE
        f.vhdr_len = 0
        f.gso_size = 0
        f.csum_start = 0
        f.csum_offset = 0
        # Delivery takes each destination ring's lock, as a worker does.
        w.budget = VS_PORT_WORK
        memcpy(before, self.ctl_vq.c.drops, sizeof(before))
        with nogil:
            switch_burst(self.sw, w, p, 0, self.ctl_vq, 1)
            notify_flush(w)
        # The frame is judged as the guest's own (port security, storm
        # control...): a drop is counted on the control ring, which belongs
        # to no port, so its reason goes back to the port to count.
        for i in range(1, DROP_MAX):
            if self.ctl_vq.c.drops[i] != before[i]:
                return DROP_REASONS[i]
        return None


    # --- memory: guest memory tables, caps, faults, dirty log (mem.pxi) ---------------

    def set_mem_table(self, int p, list regions):
        """Map the front-end's memory. regions: [(gpa, size, uaddr, mmap_offset, fd)].
        Replaces a previous table while rings run: the port is paused for one
        worker round, rings are re-pointed, the old mappings are unmapped.
        A region maps the pages of its file it covers, nothing before its
        offset; the table is refused before anything is mapped if the port,
        or the daemon, would map more than its cap (set_memory_limits).
        The caller keeps ownership of the fds (mappings outlive them)."""
        cdef vs_port *port = self._port(p)
        cdef vs_memtable newm
        cdef vs_memtable oldm
        cdef vs_region *r
        cdef stat st
        cdef uint64_t gpa, size, uaddr, off, map_off, lead, map_len, total
        cdef size_t page
        cdef int fd, i
        cdef void *base
        # An empty table is the last REM_MEM_REG: running rings stop (they
        # keep their configuration and start again when memory returns).
        if not 0 <= len(regions) <= VS_MAX_REGIONS:
            raise DatapathError(f"{len(regions)} memory regions (0..{VS_MAX_REGIONS})")
        # Every check first, then the caps on the table as a whole, then the mappings.
        spans = []
        total = port.log_map_len           # the dirty log stays
        for (gpa, size, uaddr, off, fd) in regions:
            if size == 0 or gpa + size < gpa or uaddr + size < uaddr or off + size < off:
                raise DatapathError(f"region gpa={gpa:#x} size={size:#x} overflows")
            if fstat(fd, &st) != 0:
                raise DatapathError(f"region fd {fd}: {os.strerror(errno)}")
            if not S_ISREG(st.st_mode):
                raise DatapathError(f"region gpa={gpa:#x}: its fd is not a regular file")
            # Touching a page past the end of the file would raise SIGBUS
            # in a worker: refuse a region the file does not back.
            if <uint64_t>st.st_size < off + size:
                raise DatapathError(
                    f"region gpa={gpa:#x} needs {off + size} bytes of its file, which has {st.st_size}")
            for other_gpa, other_size, *_ in spans:
                if gpa < other_gpa + other_size and other_gpa < gpa + size:
                    raise DatapathError(f"region gpa={gpa:#x} overlaps another region")
            page = _map_page(fd, st.st_blksize)
            _map_span(off, size, page, &map_off, &lead, &map_len)
            total += map_len
            spans.append((gpa, size, uaddr, fd, map_off, lead, map_len))
        self._check_memory_caps(port, total, "the memory table")
        memset(&newm, 0, sizeof(vs_memtable))
        try:
            for (gpa, size, uaddr, fd, map_off, lead, map_len) in spans:
                base = _map_guest(fd, map_off, map_len, f"region gpa={gpa:#x} size={size:#x}")
                r = &newm.r[newm.n]
                r.gpa = gpa
                r.size = size
                r.uaddr = uaddr
                r.map_base = base
                r.map_len = map_len
                r.host = <uint8_t *>base + lead
                r.guard = vs_guard_add(base, map_len, &port.mem_faults)
                newm.n += 1
        except BaseException:
            _unmap_all(&newm)
            raise
        was = port.active
        vs_store_release_int(&port.active, 0)
        self._quiesce()
        oldm = port.mem
        port.mem = newm
        broken = []
        for i in range(2 * port.nqp):
            if port.vq[i].started and _translate_ring_port(port, &port.vq[i]) != 0:
                vs_store_release_int(&port.vq[i].started, 0)
                broken.append(i)
        # A fault stays until the connection ends (_release_port_resources),
        # even with a new table: the dirty log, or a region this front-end
        # sends again, may be what vanished.
        vs_store_release_int(&port.active, 1)
        _unmap_all(&oldm)
        return broken

    def set_memory_limits(self, uint64_t per_port, uint64_t total):
        """Caps on the guest memory mapped (regions and dirty logs), bytes: by
        one port, and by all ports together. Checked when a port maps more;
        what is mapped already stays."""
        if per_port == 0 or total == 0:
            raise DatapathError("memory caps must be positive")
        self.mem_cap_port = per_port
        self.mem_cap_total = total

    def memory_limits(self):
        return {"per_port": self.mem_cap_port or DEFAULT_GUEST_MEMORY_PER_PORT,
                "total": self.mem_cap_total or DEFAULT_GUEST_MEMORY_TOTAL}

    def mapped_bytes(self, p=None):
        """Guest memory mapped by port p (regions and dirty log), or by all ports."""
        if p is not None:
            return _port_mapped(self._port(p))
        return self._mapped_total()

    cdef uint64_t _mapped_total(self):
        cdef uint64_t total = 0
        cdef int q
        for q in range(self.sw.nports_hi):
            if self.sw.ports[q] != NULL and self.sw.ports[q].in_use:
                total += _port_mapped(self.sw.ports[q])
        return total

    cdef int _check_memory_caps(self, vs_port *port, uint64_t port_total, str what) except -1:
        """Refuse a mapping that would leave the port with port_total bytes
        mapped, if that is over its cap or takes the daemon over its own.
        A front-end names any range of any file (sparse ones cost it
        nothing): without the caps six 128 TiB regions fill the address
        space, and the next guest's memory cannot be mapped at all."""
        limits = self.memory_limits()
        others = self._mapped_total() - _port_mapped(port)
        if port_total > limits["per_port"]:
            raise DatapathError(
                f"{what} would map {_human_size(port_total)} of guest memory for this port, over its "
                f"cap of {_human_size(limits['per_port'])} (limits.guest_memory_per_port)")
        if others + port_total > limits["total"]:
            raise DatapathError(
                f"{what} ({_human_size(port_total)}) would take the guest memory mapped by the daemon "
                f"to {_human_size(others + port_total)}, over its cap of "
                f"{_human_size(limits['total'])} (limits.guest_memory_total)")
        return 0

    def memory_faults(self, int p):
        """SIGBUS faults taken in port p's guest memory (a monotonic count).
        Each replaced the mapping it hit with zero pages (vs_memguard.h):
        workers leave the port alone until a new memory table is set, and the
        control plane ends its connection."""
        return vs_load_relaxed_u64(&self._port(p).mem_faults)

    def memory_regions(self, int p):
        cdef vs_port *port = self._port(p)
        return [(port.mem.r[i].gpa, port.mem.r[i].size, port.mem.r[i].uaddr)
                for i in range(port.mem.n)]

    # dirty logging (live migration): the bitmap the front-end maps with SET_LOG_BASE

    cdef void _update_log(self, vs_port *port) noexcept:
        """Logging is on while VHOST_F_LOG_ALL is negotiated and a log is
        mapped: publish the bitmap and its size as one pointer. The caller
        has quiesced since the last publish (the slot written here may have
        been in use until then); workers see the new log next round."""
        cdef int i = 1 - port.log_cur
        if not (port.log_all and port.log_map_base != NULL):
            port.log = NULL
            vs_mb()
            return
        port.logs[i].bits = <uint8_t *>port.log_map_base + port.log_lead
        port.logs[i].size = port.log_size
        vs_mb()
        port.log = &port.logs[i]
        port.log_cur = i
        vs_mb()

    def set_log_base(self, int p, int fd, uint64_t size, uint64_t offset):
        """SET_LOG_BASE: map the dirty bitmap (size bytes at offset of fd), and
        only those pages of the file. Sizes are checked without overflow
        against the file (CVE-2020-10722), and against the memory caps."""
        cdef vs_port *port = self._port(p)
        cdef stat st
        cdef void *base
        cdef void *old_base
        cdef size_t old_len, page
        cdef int old_guard
        cdef uint64_t map_off, lead, map_len
        if size == 0 or size > (1 << 40) or offset > 0xFFFFFFFFFFFFFFFF - size:
            raise DatapathError(f"log size {size:#x} at offset {offset:#x} is not valid")
        if fstat(fd, &st) != 0:
            raise DatapathError(f"log fd {fd}: {os.strerror(errno)}")
        if not S_ISREG(st.st_mode):
            raise DatapathError("the log fd is not a regular file")
        if <uint64_t>st.st_size < offset + size:
            raise DatapathError(f"log needs {offset + size} bytes of its file, which has {st.st_size}")
        page = _map_page(fd, st.st_blksize)
        _map_span(offset, size, page, &map_off, &lead, &map_len)
        # the new log replaces the old one
        self._check_memory_caps(port, _port_mapped(port) - port.log_map_len + map_len, "the dirty log")
        base = _map_guest(fd, map_off, map_len, "the dirty log")
        # QEMU resizes the log while migrating: it reads the old one after our
        # reply, so workers keep logging into it until they all see the new
        # one. The bitmap and its size are published together (_update_log).
        old_base, old_len, old_guard = port.log_map_base, port.log_map_len, port.log_guard
        port.log_guard = vs_guard_add(base, map_len, &port.mem_faults)
        try:
            self._quiesce()    # the log slot _update_log writes is free
        except BaseException:
            vs_guard_remove(port.log_guard)
            port.log_guard = old_guard
            munmap(base, map_len)
            raise
        port.log_map_base = base
        port.log_map_len = map_len
        port.log_lead = lead
        port.log_size = size
        self._update_log(port)
        self._quiesce()        # every worker now logs into the new bitmap
        if old_base != NULL:
            vs_guard_remove(old_guard)
            munmap(old_base, old_len)

    def log_info(self, int p):
        cdef vs_port *port = self._port(p)
        return {"active": port.log != NULL, "log_all": bool(port.log_all), "size": port.log_size,
                "marks": port.log_marks}


    # --- vrings: ring configuration, start and stop (vring.pxi, vhost.pxi) ------------

    def vring_set_num(self, int p, int idx, unsigned int num):
        cdef vs_vring *vq = self._vring(p, idx)
        cdef bint packed = (self._port(p).features >> F_RING_PACKED) & 1
        if num == 0 or num > 32768 or (not packed and (num & (num - 1)) != 0):
            # a packed ring may have any size (virtio spec "Packed Virtqueues");
            # vring_start checks again with the features it starts with
            raise DatapathError(f"ring size {num} is not a power of 2 in 1..32768")
        if vq.started:
            raise DatapathError("SET_VRING_NUM on a started ring")
        vq.num = num

    def vring_set_addr(self, int p, int idx, uint64_t desc, uint64_t used, uint64_t avail,
                       log_gpa=None):
        """log_gpa: the used ring's guest address when VHOST_VRING_F_LOG is set."""
        cdef vs_vring *vq = self._vring(p, idx)
        cdef vs_port *port = self._port(p)
        was = vq.started
        if was:
            # Re-pointing a running ring (QEMU does it to toggle dirty logging).
            vs_store_release_int(&vq.started, 0)
            self._quiesce()
        vq.desc_ua = desc
        vq.used_ua = used
        vq.avail_ua = avail
        vq.log_used = log_gpa is not None
        vq.log_used_gpa = log_gpa if log_gpa is not None else 0
        if was:
            if _translate_ring_port(port, vq) != 0:
                raise DatapathError("ring addresses are not inside guest memory")
            vs_store_release_int(&vq.started, 1)

    def vring_set_base(self, int p, int idx, unsigned int base):
        cdef vs_vring *vq = self._vring(p, idx)
        if vq.started:
            raise DatapathError("SET_VRING_BASE on a started ring")
        vq.last_avail = <uint16_t>base
        # a packed ring's 32-bit state (pk_base) is decoded when it starts
        vq.base = base
        vq.base_set = 1

    def vring_start(self, int p, int idx):
        """Start a configured ring: translate its addresses and let workers
        poll it. The used index is re-read from guest memory (after a guest
        reboot or a back-end restart it is the guest's, not ours)."""
        cdef vs_port *port = self._port(p)
        cdef vs_vring *vq = self._vring(p, idx)
        cdef int base_given
        if vq.started:
            return
        if vq.num == 0:
            raise DatapathError("ring size not set")
        if port.mem.n == 0:
            raise DatapathError("no memory table")
        vq.packed = (port.features >> F_RING_PACKED) & 1
        if not vq.packed and (vq.num & (vq.num - 1)) != 0:
            raise DatapathError(f"ring size {vq.num} is not a power of 2 (split ring)")
        if vq.packed and vq.base_set and \
                ((vq.base & 0x7fff) >= vq.num or ((vq.base >> 16) & 0x7fff) >= vq.num):
            raise DatapathError(f"vring base {vq.base:#x} has an index beyond the ring size {vq.num}")
        if _translate_ring_port(port, vq) != 0:
            if port.iotlb_on:
                # IOVAs the IOTLB does not map yet: asked for (iotlb_note_miss);
                # the ring starts when they arrive (False: it waits)
                return False
            raise DatapathError(
                f"ring addresses desc={vq.desc_ua:#x} avail={vq.avail_ua:#x} used={vq.used_ua:#x}"
                f" (size {vq.num}) are not inside guest memory")
        if vq.packed:
            self._start_packed(vq)
            self._watch_kick(p, idx, vq)
            vs_store_release_int(&vq.started, 1)
            return
        vq.pk_valid = 0         # a split start: packed state (if any) is gone
        base_given = vq.base_set
        vq.base_set = 0
        vq.used_idx = vs_load_acquire_u16(&vq.used.idx)
        if base_given and vq.used_idx != vq.last_avail:
            # Every chain the switch took went back to the used ring before
            # the ring stopped (GET_VRING_BASE), so the used index is where
            # the avail side resumes. A front-end that kept its rings across
            # a reconnection but sends base 0 (DPDK's virtio-user) would
            # otherwise be a ring or more ahead of us and be stopped as
            # broken; DPDK's vhost resynchronises the same way. The guest
            # could have sent this value as the base itself: nothing is
            # trusted that was not before. Only a base the front-end gave
            # (SET_VRING_BASE since the last start): a ring the switch itself
            # stopped and restarts (IOTLB changes) resumes where it was.
            vq.last_avail = vq.used_idx
            vq.base_resyncs += 1
        vq.start_avail = vs_load_acquire_u16(&vq.avail.idx)
        vq.avail_moved = 0
        vq.broken = 0
        vq.iotlb_wait = 0
        # While a worker polls it, ask the guest not to kick (virtio spec
        # 2.7.7 VRING_USED_F_NO_NOTIFY); a worker re-enables kicks before it sleeps.
        vq.used.flags = VRING_USED_F_NO_NOTIFY
        self._watch_kick(p, idx, vq)
        vs_store_release_int(&vq.started, 1)
        if port.iotlb_on and idx % 2 == 0:
            iotlb_prefetch_rx(port)     # its buffers' entries, before frames come
        return True

    def vring_stop(self, int p, int idx):
        """GET_VRING_BASE: stop the ring and return the next avail index to
        process. Nothing is reset (vhost-user.rst, "Ring states": GET_VRING_BASE
        stops the ring; a back-end that reset it returned 0 and broke
        suspend/resume, https://github.com/rust-vmm/vhost/pull/154 and /pull/161)."""
        cdef vs_vring *vq = self._vring(p, idx)
        if vq.started:
            vs_store_release_int(&vq.started, 0)
            self._unwatch_kick(vq)
            self._quiesce()
        vq.desc = NULL
        vq.avail = NULL
        vq.used = NULL
        if (self._port(p).features >> F_RING_PACKED) & 1:
            if vq.base_set:
                return vq.base          # set but never started: as it was given
            if vq.pk_valid and vq.packed:
                return pk_base(vq)
            return 0x80008000           # a fresh packed ring: positions 0, wrap counters 1
        return vq.last_avail

    cdef void _start_packed(self, vs_vring *vq) noexcept:
        """vring_start for a packed ring (packed.pxi): positions from the last
        SET_VRING_BASE, else where the ring stopped, else those of a fresh ring.
        A back-end returns every chain it takes before its ring stops, so the
        used position equals the avail one unless the front-end says otherwise:
        a base with bits 16-31 zero (DPDK's front-end sends only bits 0-15)
        means "used = avail"."""
        if vq.base_set:
            vq.last_avail = vq.base & 0x7fff
            vq.avail_wrap = (vq.base >> 15) & 1
            if vq.base >> 16:
                vq.used_idx = (vq.base >> 16) & 0x7fff
                vq.used_wrap = vq.base >> 31
            else:
                vq.used_idx = vq.last_avail
                vq.used_wrap = vq.avail_wrap
        elif not vq.pk_valid:
            vq.last_avail = 0
            vq.used_idx = 0
            vq.avail_wrap = 1
            vq.used_wrap = 1
        vq.base_set = 0
        vq.pk_valid = 1
        vq.pk_pending = 0
        vq.pk_ndescs = 0
        vq.start_avail = 0
        vq.avail_moved = 0
        vq.broken = 0
        # While a worker polls it, ask the driver not to kick (device event
        # suppression area); a worker re-enables kicks before it sleeps.
        pk_notify_disable(vq)

    def vring_set_enabled(self, int p, int idx, bint enabled):
        cdef vs_port *port = self._port(p)
        cdef vs_vring *vq = self._vring(p, idx)
        cdef int q, n = 0
        vs_store_release_int(&vq.enabled, 1 if enabled else 0)
        # The list of enabled RX queues that frames are spread over.
        for q in range(port.nqp):
            if port.vq[2 * q].enabled:
                port.rx_enabled[n] = q
                n += 1
        vs_store_release_int(&port.n_rx_enabled, n)

    def vring_info(self, int p, int idx):
        cdef vs_vring *vq = self._vring(p, idx)
        info = {
            "started": bool(vq.started), "enabled": bool(vq.enabled),
            "broken": bool(vq.broken), "num": vq.num,
            "last_avail": vq.last_avail, "used_idx": vq.used_idx, "base_resyncs": vq.base_resyncs,
            "avail_moved": bool(vq.avail_moved), "start_avail": vq.start_avail,
            "kick_fd": vq.kick_fd, "call_fd": vq.call_fd,
            "notify_busy": bool(vs_load_seq_int(&vq.notify_busy[NOTIFY_CALL])),
            "notify_generation": vq.notify_gen & 0xffff,   # the tag's 16 bits
            "log_used_gpa": vq.log_used_gpa if vq.log_used else None,
        }
        cdef uint64_t gpa
        if vq.packed:
            info["packed"] = True
            info["avail_wrap"] = vq.avail_wrap
            info["used_wrap"] = vq.used_wrap
        cdef vs_pdesc *first
        if vq.started and vq.avail != NULL and vq.packed:
            if mem_host_to_gpa(&self._port(p).mem, <uint8_t *>vq.desc, &gpa):
                info["desc_gpa"] = gpa
            # A packed ring has no avail index: a driver that made any buffer
            # available wrote the first descriptor (a fresh ring starts there,
            # virtio spec 2.8.1), so all of it still zero is a ring the driver
            # never wrote, as far as this mapping shows.
            first = <vs_pdesc *>vq.desc
            info["first_desc_written"] = (vs_load_acquire_u16(&first.flags) != 0
                                          or first.addr != 0 or first.len != 0 or first.id != 0)
        elif vq.started and vq.avail != NULL:
            info["avail_idx"] = vs_load_acquire_u16(&vq.avail.idx)
            if mem_host_to_gpa(&self._port(p).mem, <uint8_t *>vq.used, &gpa):
                info["used_gpa"] = gpa
        return info

    cdef void _watch_kick(self, int p, int idx, vs_vring *vq) noexcept:
        """Register a started TX ring's kick fd with its worker's epoll set, so
        that a sleeping worker wakes when the guest kicks."""
        cdef epoll_event ev
        cdef int epfd
        if idx % 2 == 0 or vq.kick_fd < 0 or vq.kick_epfd >= 0:
            return
        epfd = self.workers[(p + idx // 2) % self.nworkers].epfd
        ev.events = EPOLLIN
        ev.data.ptr = vq
        if epoll_ctl(epfd, EPOLL_CTL_ADD, vq.kick_fd, &ev) == 0:
            vq.kick_epfd = epfd

    cdef void _unwatch_kick(self, vs_vring *vq) noexcept:
        # Explicitly: closing our fd does not remove the registration while
        # the front-end still holds the same eventfd open.
        if vq.kick_epfd >= 0 and vq.kick_fd >= 0:
            epoll_ctl(vq.kick_epfd, EPOLL_CTL_DEL, vq.kick_fd, NULL)
        vq.kick_epfd = -1

    cdef void _unwatch_fd(self, int epfd, int fd) noexcept:
        if epfd >= 0 and fd >= 0:
            epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL)


    # --- notify: kick, call and err fds, notification writes (notify.pxi) -------------

    def vring_set_kick(self, int p, int idx, int fd):
        cdef vs_vring *vq = self._vring(p, idx)
        # No O_NONBLOCK here: the front-end shares the open file description
        # and can clear it any time; workers read kicks with RWF_NOWAIT.
        self._unwatch_kick(vq)
        self._swap_fd(vq, &vq.kick_fd, fd, False)
        if vq.started:
            self._watch_kick(p, idx, vq)

    def vring_set_call(self, int p, int idx, int fd):
        cdef vs_vring *vq = self._vring(p, idx)
        self._swap_fd(vq, &vq.call_fd, fd, True)

    def vring_set_err(self, int p, int idx, int fd):
        cdef vs_vring *vq = self._vring(p, idx)
        self._swap_fd(vq, &vq.err_fd, fd, True)

    cdef int _swap_fd(self, vs_vring *vq, int *slot, int fd, bint notified) except -1:
        """Put fd in a ring's fd slot and close the old one once no worker
        can use it. `notified`: a call/err fd, which workers write even while
        the ring is stopped (a notification re-queued when an earlier write
        completes): its writes in flight are forgotten and cancelled."""
        cdef int old = slot[0]
        slot[0] = fd
        if notified:
            self._notify_forget(vq)
        if old >= 0:
            if vq.started or notified:
                self._quiesce()     # a worker may be about to write the old fd
            close(old)
        if notified and slot == &vq.call_fd and fd >= 0 and vq.started:
            # A notification merged into a write on the old fd was forgotten
            # with it: one on the new fd covers it (a spurious interrupt is
            # harmless; a missing one can stall the ring for good).
            notify_request(self.ctlw, vq, NOTIFY_CALL)
            notify_flush(self.ctlw)
        return 0

    cdef void _post_cancel(self, uint64_t tag) noexcept:
        """Have every worker cancel the notification write tagged `tag` (the
        one that queued it has it): an io-wq thread blocked in it returns."""
        cdef int i, posted, tries
        cdef vs_worker *w
        for i in range(self.nworkers + 1):
            w = self.workers[i] if i < self.nworkers else self.ctlw
            posted = 0
            tries = 0
            # a full mailbox empties at the worker's next round; give up
            # after a few (the write stays in flight until the ring closes)
            while not posted and tries < 8:
                tries += 1
                vs_spin_lock(&w.cancel_lock)
                if w.ncancel < VS_NOTIFY_CANCELS:
                    w.cancel_tags[w.ncancel] = tag
                    vs_store_release_int(&w.ncancel, w.ncancel + 1)
                    posted = 1
                vs_spin_unlock(&w.cancel_lock)
                if w == self.ctlw:
                    notify_cancels(w)           # the control plane is its worker
                elif not posted:
                    if not self.running:
                        break
                    try:
                        self._quiesce()         # every worker empties its mailbox each round
                    except DatapathError:
                        break

    cdef void _notify_forget(self, vs_vring *vq) noexcept:
        """The ring's fds change (or its port resets): completions of writes
        queued before are ignored from now on, writes still in flight are
        cancelled, and the next notification is written at once."""
        cdef int which
        cdef uint64_t tags[2]
        cdef int busy[2]
        for which in range(2):
            tags[which] = notify_tag(vq, which)
            busy[which] = vs_load_seq_int(&vq.notify_busy[which])
        vq.notify_gen += 1
        for which in range(2):
            vs_store_seq_int(&vq.notify_again[which], 0)
            vs_store_seq_int(&vq.notify_busy[which], 0)
        for which in range(2):
            if busy[which]:
                self._post_cancel(tags[which])

    def reap_notifications(self):
        """Account the control plane's own notification writes (those of
        frames it injected, or sent after a call fd changed) and submit what
        their completion re-queued; called when control_notify_fd is
        readable, and periodically."""
        self._check_control_thread()
        notify_flush(self.ctlw)

    @property
    def control_notify_fd(self):
        """The control plane's notification ring (readable: completions), or -1."""
        return self.ctlw.nring.fd if self.ctlw.nring.enabled else -1


    # --- policy: VLANs, port security, storm control, policing, mirrors (policy.pxi) --
    # Settings a worker reads per frame are written while it may run: each is a
    # set of aligned words whose intermediate states are harmless (a frame or
    # two judged by the old or new rule), except the allowed-MAC list, which
    # is double-buffered so that no frame is ever checked against a half list.

    def port_set_vlan(self, int p, str mode="all", int vid=0, allowed=(), int native=0):
        """mode "all" (no vlan config), "access" (vid) or "trunk" (allowed VIDs, native)."""
        cdef vs_port *port = self._port(p)
        cdef uint64_t carry[64]
        cdef int v
        if mode == "all":
            memset(carry, 0xff, sizeof(carry))
        else:
            memset(carry, 0, sizeof(carry))
            ids = [vid] if mode == "access" else list(allowed) + ([native] if native else [])
            for v in ids:
                if not 1 <= v <= 4094:
                    raise DatapathError(f"VLAN id {v} out of range 1..4094")
                carry[v >> 6] |= (<uint64_t>1) << (v & 63)
        if mode not in ("all", "access", "trunk"):
            raise DatapathError(f"unknown VLAN mode {mode!r}")
        port.vlan_access = vid if mode == "access" else 0
        port.vlan_native = native if mode == "trunk" else 0
        memcpy(port.vlan_carry, carry, sizeof(carry))
        vs_store_release_int(&port.vlan_mode,
                             VLAN_ALL if mode == "all" else VLAN_ACCESS if mode == "access" else VLAN_TRUNK)

    def port_set_allowed_macs(self, int p, macs):
        """Port security: only these source MACs may enter (empty: no check)."""
        cdef vs_port *port = self._port(p)
        cdef int nxt = 1 - port.allowed_sel
        cdef int i
        macs = list(macs)
        if len(macs) > VS_MAX_ALLOWED_MACS:
            raise DatapathError(f"at most {VS_MAX_ALLOWED_MACS} allowed MACs per port")
        for i, mac in enumerate(macs):
            port.allowed[nxt][i] = int(mac.replace(":", ""), 16)
        port.n_allowed[nxt] = len(macs)
        vs_store_release_int(&port.allowed_sel, nxt)
        self._set_policy_bit(port, POL_SECURITY, len(macs) > 0)
        self._quiesce()          # nobody reads the old list any more: it may be rewritten next time

    cdef void _set_policy_bit(self, vs_port *port, int bit, bint on) noexcept:
        cdef int v = port.ingress_policy
        v = (v | bit) if on else (v & ~bit)
        vs_store_release_int(&port.ingress_policy, v)

    @staticmethod
    cdef void _gcra_set(vs_gcra *g, double units_per_s, double burst_units) noexcept:
        # k: ns per unit in 1/65536 ns; tolerance: the burst minus one unit, in ns
        if units_per_s <= 0:
            g.k_q16 = 0
            return
        g.tol_ns = <uint64_t>(max(burst_units - 1.0, 0.0) * 1e9 / units_per_s)
        g.tat = 0
        g.k_q16 = <uint64_t>(1e9 * 65536.0 / units_per_s)
        if g.k_q16 == 0:
            g.k_q16 = 1

    def port_set_storm_control(self, int p, broadcast=None, multicast=None, unknown_unicast=None):
        """Caps in frames/s on flooded frames from the port; None: no cap.
        The burst tolerance is a tenth of a second's worth (at least one frame)."""
        cdef vs_port *port = self._port(p)
        Datapath._gcra_set(&port.storm_bcast, broadcast or 0, max((broadcast or 0) / 10, 1))
        Datapath._gcra_set(&port.storm_mcast, multicast or 0, max((multicast or 0) / 10, 1))
        Datapath._gcra_set(&port.storm_unknown, unknown_unicast or 0, max((unknown_unicast or 0) / 10, 1))
        self._set_policy_bit(port, POL_STORM, bool(broadcast or multicast or unknown_unicast))

    def port_set_policer(self, int p, str direction, rate_bps=None, burst_bytes=None,
                         pps=None, pps_burst=None, str action="drop"):
        """Police frames from ("ingress") or to ("egress") the port: bits/s with
        a burst in bytes, frames/s with a burst in frames; None: no limit.
        action "hold" (ingress): frames wait in the port's TX rings for credit."""
        cdef vs_port *port = self._port(p)
        cdef vs_gcra *b
        cdef vs_gcra *k
        if direction == "ingress":
            b, k = &port.in_bytes, &port.in_pkts
        elif direction == "egress":
            b, k = &port.out_bytes, &port.out_pkts
        else:
            raise DatapathError(f"direction must be ingress or egress, not {direction!r}")
        Datapath._gcra_set(b, (rate_bps or 0) / 8.0, burst_bytes or 0)
        Datapath._gcra_set(k, pps or 0, pps_burst or 0)
        on = bool(rate_bps or pps)
        if action not in ("drop", "hold") or (action == "hold" and direction != "ingress"):
            raise DatapathError(f"action {action!r} is not possible for {direction} policing")
        if direction == "ingress":
            self._set_policy_bit(port, POL_POLICE, on and action == "drop")
            self._set_policy_bit(port, POL_SHAPE, on and action == "hold")
        else:
            vs_store_release_int(&port.egress_policy, POL_POLICE if on else 0)

    def port_set_mirror(self, int p, int ingress_to=-1, int egress_to=-1):
        """Copy frames from the port (ingress_to) and frames to it (egress_to)
        to those ports (-1: none)."""
        cdef vs_port *port = self._port(p)
        cdef int q, n = 0
        for q in (ingress_to, egress_to):
            if q >= 0:
                self._port(q)
        port.mirror_in = ingress_to + 1
        port.mirror_out = egress_to + 1
        for q in range(self.sw.nports_hi):
            if self.sw.ports[q] != NULL and self.sw.ports[q].in_use and \
                    (self.sw.ports[q].mirror_in or self.sw.ports[q].mirror_out):
                n += 1
        vs_store_release_int(&self.sw.mirrors, n)

    def port_policy(self, int p):
        """What the datapath enforces on the port (for port show and tests)."""
        cdef vs_port *port = self._port(p)
        mode = {VLAN_ALL: "all", VLAN_ACCESS: "access", VLAN_TRUNK: "trunk"}[port.vlan_mode]
        return {
            "vlan_mode": mode, "vlan_access": port.vlan_access, "vlan_native": port.vlan_native,
            "allowed_macs": port.n_allowed[port.allowed_sel] if port.ingress_policy & POL_SECURITY else 0,
            "storm_control": bool(port.ingress_policy & POL_STORM),
            "ingress_policing": bool(port.ingress_policy & POL_POLICE),
            "egress_policing": bool(port.egress_policy),
            "mirror_ingress_to": port.mirror_in - 1, "mirror_egress_to": port.mirror_out - 1,
        }


    # --- fdb: the MAC table (fdb.pxi) -------------------------------------------------

    cdef uint16_t _vlan(self, vlan) except? 0xffff:
        if not 0 <= vlan <= 4095:
            raise DatapathError(f"VLAN {vlan} out of range (0..4095)")
        return vlan

    def fdb_entries(self, port=None, vlan=None, bint static_only=False):
        """The live entries, optionally of one port index and/or one VLAN
        (and only the static ones):
        [{"mac", "vlan", "port" (index), "static", "age_s"}] in table order.
        age_s: seconds since the entry was last refreshed (the sweep's
        clock, so up to a second coarse); 0 for static entries."""
        cdef int i, want_port = -1 if port is None else port
        cdef int want_vlan = -1 if vlan is None else <int>self._vlan(vlan)
        cdef uint64_t k, v, v2
        cdef uint32_t now = self.sw.now_s
        out = []
        for i in range(VS_FDB_SIZE):
            v = vs_load_acquire_u64(&self.sw.fdb[i].val)
            if not (v & FDB_PORT_MASK) or (static_only and not (v & FDB_STATIC)):
                continue
            k = vs_load_acquire_u64(&self.sw.fdb[i].key)
            if (want_port >= 0 and fdb_val_port(v) != want_port) or \
                    (want_vlan >= 0 and <int>((k >> 48) & 0xfff) != want_vlan):
                continue
            v2 = vs_load_acquire_u64(&self.sw.fdb[i].val)
            if v2 != v:
                continue               # changed while we looked: the next call sees it
            mac = k & <uint64_t>0xffffffffffff
            out.append({"mac": ":".join(f"{(mac >> s) & 0xff:02x}" for s in range(40, -8, -8)),
                        "vlan": <int>((k >> 48) & 0xfff), "port": fdb_val_port(v),
                        "static": bool(v & FDB_STATIC),
                        "age_s": 0 if v & FDB_STATIC else <uint32_t>(now - <uint32_t>(v >> 32))})
        return out

    def fdb_set_static(self, str mac, int p, vlan=0):
        """Pin `mac` in `vlan` to port p (p = -1: unpin it)."""
        cdef uint64_t m = int(mac.replace(":", ""), 16)
        cdef uint16_t vid = self._vlan(vlan)
        cdef int rc
        if p >= 0:
            self._port(p)
        with nogil:
            rc = fdb_set_static(self.sw, vid, m, p)
        if rc < 0:
            raise DatapathError(f"FDB full: cannot pin {mac} in VLAN {vid}")

    def fdb_flush(self, port=None, vlan=None):
        """Forget learned entries (all, of a port index, of a VLAN, or both);
        static ones stay. Returns how many were forgotten."""
        cdef int p = FDB_ANY if port is None else port
        cdef int vid = FDB_ANY if vlan is None else <int>self._vlan(vlan)
        cdef uint64_t n
        if port is not None:
            self._port(p)
        with nogil:
            n = fdb_forget(self.sw, p, vid, False)
        return n

    def fdb_set_aging(self, int seconds):
        """fdb.aging_time: learned entries not seen for longer are forgotten
        by fdb_age(); 0: never."""
        if not 0 <= seconds <= 1_000_000_000:
            raise DatapathError(f"aging time {seconds} out of range (0..1000000000 s)")
        self.aging_s = seconds

    def fdb_age(self, now=None):
        """The periodic sweep (the daemon calls it every second): advance the
        clock entries are stamped with, forget learned entries older than the
        aging time. now: the clock in seconds (tests); default: seconds since
        this datapath was created. Returns how many were forgotten."""
        cdef uint32_t t = <uint32_t>(int(time.monotonic() - self.t0) + 1 if now is None else now)
        cdef uint32_t aging = self.aging_s
        cdef uint64_t n
        with nogil:
            n = fdb_age(self.sw, t, aging)
        return n

    def fdb_set_default_max(self, int n):
        """fdb.max_entries_per_port (0: no cap), for every port without its own."""
        cdef int p
        if n < 0:
            raise DatapathError("FDB cap must be >= 0")
        self.sw.fdb_default_max = n
        for p in range(VS_MAX_PORTS):
            if self.sw.ports[p] != NULL and self.sw.ports[p].fdb_max_set < 0:
                self.sw.ports[p].fdb_max = n

    def port_set_fdb_max(self, int p, n):
        """The port's own cap on learned MACs (0: none; None: the default).
        Lowering it below what is learned forgets nothing: learning on the
        port is refused until entries age out or are flushed."""
        cdef vs_port *port = self._port(p)
        if n is not None and not 0 <= n <= 0xffffffff:
            raise DatapathError(f"FDB cap {n} out of range")
        port.fdb_max_set = -1 if n is None else n
        port.fdb_max = self.sw.fdb_default_max if n is None else n

    def port_fdb_info(self, int p):
        cdef vs_port *port = self._port(p)
        return {"learned": vs_load_relaxed_int(&port.fdb_count), "max": port.fdb_max,
                "limit_refused": port.fdb_limit_refused}

    def fdb_stats(self):
        """Table-wide counters, and per port index {learned, max, limit_refused}."""
        cdef int p, learned = 0, static = 0, dead = 0, i
        cdef uint64_t v
        for i in range(VS_FDB_SIZE):
            v = vs_load_relaxed_u64(&self.sw.fdb[i].val)
            if v & FDB_PORT_MASK:
                if v & FDB_STATIC:
                    static += 1
                else:
                    learned += 1
            elif v == 0 and vs_load_relaxed_u64(&self.sw.fdb[i].key) != 0:
                dead += 1
        ports = {}
        for p in range(VS_MAX_PORTS):
            if self.sw.ports[p] != NULL and self.sw.ports[p].in_use:
                ports[p] = self.port_fdb_info(p)
        return {"learned": learned, "static": static, "full": self.sw.fdb_full,
                "static_moves": self.sw.fdb_static_moves, "aged": self.sw.fdb_aged,
                "aging_time": self.aging_s, "dead_keys": dead, "size": VS_FDB_SIZE, "ports": ports}

    def fdb_forget(self, int p):
        """Forget what port p taught the FDB (learned entries only)."""
        fdb_forget(self.sw, p, FDB_ANY, False)


    # --- tap: TAP ports (tap.pxi) -----------------------------------------------------

    def tap_attach(self, int p, list fds, unsigned int mtu):
        """Hand a TAP port's queue fds to the workers (the datapath owns them
        from now on). The kernel may send checksum-partial and GSO frames
        (TUNSETOFFLOAD), so its header is validated as a guest's with CSUM and
        HOST_TSO4/6/ECN would be."""
        cdef vs_port *port = self._port(p)
        cdef epoll_event ev
        cdef int q, epfd
        if port.kind != PORT_TAP:
            raise DatapathError(f"port {p} is not a TAP port")
        if len(fds) != port.nqp:
            raise DatapathError(f"{len(fds)} fds for {port.nqp} queues")
        self.port_reset(p)
        port.features = ((1 << F_NET_CSUM) | (1 << F_NET_HOST_TSO4) | (1 << F_NET_HOST_TSO6)
                         | (1 << F_NET_HOST_ECN))
        port.hdr_len = VS_HDR_MAX
        port.mtu = mtu
        port.tap_errno = 0
        for q in range(port.nqp):
            port.tap_fd[q] = fds[q]
            port.tap_fixed[q] = self._fixed_file_add(fds[q])
            epfd = self.workers[(p + q) % self.nworkers].epfd
            ev.events = EPOLLIN
            ev.data.ptr = &port.vq[2 * q + 1]     # kick_fd -1: woken, nothing to drain
            if epoll_ctl(epfd, EPOLL_CTL_ADD, port.tap_fd[q], &ev) == 0:
                port.vq[2 * q + 1].kick_epfd = epfd
        vs_store_release_int(&port.active, 1)

    cdef int _fixed_file_add(self, int fd) noexcept:
        """A registered-file slot that holds fd in every worker's ring (the
        same index in each: a queue's frames may be written by any worker),
        or -1: the queue is written through its plain fd."""
        cdef int idx, i, j
        for idx in range(VS_URING_FILES):
            if not self.fixed_used[idx]:
                break
        else:
            return -1
        for i in range(self.nworkers):
            if not self.workers[i].uring.enabled or not self.workers[i].uring.fixed or \
                    vs_uring_set_file(&self.workers[i].uring, idx, fd) != 0:
                for j in range(i):
                    vs_uring_set_file(&self.workers[j].uring, idx, -1)
                return -1
        self.fixed_used[idx] = 1
        return idx

    cdef void _fixed_file_remove(self, int idx) noexcept:
        """Empty slot idx in every ring; the caller has quiesced the workers
        (no request on it is in flight) and closes the fd afterwards."""
        cdef int i
        if idx < 0:
            return
        for i in range(self.nworkers):
            if self.workers[i] != NULL:
                vs_uring_set_file(&self.workers[i].uring, idx, -1)
        self.fixed_used[idx] = 0

    def tap_fixed_files(self, int p):
        """Registered-file slot of each TAP queue (-1: written by plain fd)."""
        cdef vs_port *port = self._port(p)
        return [port.tap_fixed[q] for q in range(port.nqp)]

    def tap_errno(self, int p):
        """A fatal errno a worker saw on this TAP (EBADFD: the device was deleted), or 0."""
        return self._port(p).tap_errno


    # --- vxlan: VXLAN ports (vxlan.pxi) -----------------------------------------------

    cdef vs_vxlan *_vxlan(self, int p) except NULL:
        cdef vs_port *port = self._port(p)
        if port.kind != PORT_VXLAN:
            raise DatapathError(f"port {p} is not a VXLAN port")
        if port.vx == NULL:
            port.vx = <vs_vxlan *>calloc(1, sizeof(vs_vxlan))
            if port.vx == NULL:
                raise MemoryError()
            port.vx.fd = -1
        return port.vx

    cdef int _vxlan_store_remotes(self, vs_vxlan *vx, list remotes) except -1:
        """Copy packed sockaddrs into the port and forget the learned MACs
        (they name remotes by index). The caller has stopped the workers."""
        cdef int i
        cdef bytes sa
        vx.nremotes = 0
        for i, sa in enumerate(remotes):
            memcpy(vx.remotes[i].sa, <const char *>sa, len(sa))
            vx.remotes[i].salen = <uint32_t>len(sa)
        vx.nremotes = len(remotes)
        memset(vx.macs, 0, sizeof(vx.macs))
        return 0

    @staticmethod
    def _check_remotes(list remotes):
        if not 1 <= len(remotes) <= VS_VXLAN_MAX_REMOTES:
            raise DatapathError(f"{len(remotes)} remotes (1..{VS_VXLAN_MAX_REMOTES})")
        for sa in remotes:
            if not isinstance(sa, bytes) or not 16 <= len(sa) <= VS_SOCKADDR_MAX:
                raise DatapathError("a remote is a packed sockaddr_in or sockaddr_in6")

    def vxlan_attach(self, int p, int fd, uint32_t vni, list remotes, unsigned int mtu):
        """Hand a VXLAN port its bound, non-blocking UDP socket (the datapath
        owns the fd from now on), its VNI and its remotes (packed sockaddr_in
        or sockaddr_in6 with the destination UDP port). mtu: largest L3 size
        sent to the remotes, 0 for no limit."""
        cdef vs_vxlan *vx = self._vxlan(p)
        cdef vs_port *port = self._port(p)
        cdef epoll_event ev
        cdef int epfd
        if not 1 <= vni <= 0xFFFFFF:
            raise DatapathError(f"VNI {vni} is not 1..16777215")
        self._check_remotes(remotes)
        self.port_reset(p)                  # closes a previous socket
        vx.fd = fd
        vx.vni = vni
        vx.macs_full = 0
        self._vxlan_store_remotes(vx, remotes)
        port.hdr_len = 0
        port.mtu = mtu
        # The socket wakes a sleeping worker like a TAP queue fd (kick_fd -1:
        # woken, nothing to drain; the next round reads the socket).
        epfd = self.workers[p % self.nworkers].epfd
        ev.events = EPOLLIN
        ev.data.ptr = &port.vq[1]
        if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0:
            port.vq[1].kick_epfd = epfd
        vs_store_release_int(&port.active, 1)

    def vxlan_set_remotes(self, int p, list remotes):
        """Replace the remote list in place (reload): the port pauses for one
        worker round; MACs are learned again from the next frames."""
        cdef vs_vxlan *vx = self._vxlan(p)
        cdef vs_port *port = self._port(p)
        self._check_remotes(remotes)
        was = port.active
        vs_store_release_int(&port.active, 0)
        self._quiesce()
        self._vxlan_store_remotes(vx, remotes)
        vs_store_release_int(&port.active, was)

    def vxlan_set_vni(self, int p, uint32_t vni):
        cdef vs_vxlan *vx = self._vxlan(p)
        if not 1 <= vni <= 0xFFFFFF:
            raise DatapathError(f"VNI {vni} is not 1..16777215")
        vx.vni = vni      # one aligned store: a frame carries the old or the new one

    def vxlan_learned(self, int p):
        """Inner MACs learned behind each remote (list, in remote order), and
        learn attempts that found the table full."""
        cdef vs_vxlan *vx = self._vxlan(p)
        cdef int i, r
        cdef uint64_t v
        counts = [0] * vx.nremotes
        for i in range(VS_VXLAN_MACS):
            v = vs_load_relaxed_u64(&vx.macs[i])
            r = <int>(v & 0xffff) - 1
            if v != 0 and 0 <= r < vx.nremotes:
                counts[r] += 1
        return {"per_remote": counts, "table_full": vx.macs_full}


    # --- capture: live capture (capture.pxi) ------------------------------------------

    def capture_start(self, int p, str direction="both", uint32_t snaplen=CAP_MAX_SNAPLEN,
                      uint64_t ring_bytes=4 << 20):
        """Start copying port p's frames into a new capture ring of ring_bytes
        (two halves; a frame that does not fit in the current half is lost).
        direction: "in" (from the port), "out" (to the port) or "both"."""
        cdef vs_port *port = self._port(p)
        cdef vs_capture *cap
        if port.capture != NULL:
            raise DatapathError(f"port {p} is already being captured")
        if direction not in CAPTURE_DIRECTIONS:
            raise DatapathError(f"capture direction must be in, out or both, not {direction!r}")
        if not 1 <= snaplen <= CAP_MAX_SNAPLEN:
            raise DatapathError(f"snaplen must be 1..{CAP_MAX_SNAPLEN}")
        if not CAP_MIN_RING <= ring_bytes <= CAP_MAX_RING:
            raise DatapathError(f"capture ring must be {CAP_MIN_RING}..{CAP_MAX_RING} bytes")
        cap = capture_alloc(CAPTURE_DIRECTIONS[direction], snaplen, ring_bytes)
        if cap == NULL:
            raise MemoryError()
        vs_mb()                 # the ring is initialised before workers can see it
        port.capture = cap
        vs_mb()

    def capture_drain(self, int p):
        """The records captured since the last drain: [(ts_ns, "in"|"out", orig_len, bytes)]."""
        cdef vs_port *port = self._port(p)
        if port.capture == NULL:
            raise DatapathError(f"port {p} is not being captured")
        return capture_collect(port.capture)

    def capture_info(self, int p):
        """None, or {direction, snaplen, ring_bytes, captured, lost} of the running capture."""
        cdef vs_port *port = self._port(p)
        cdef vs_capture *cap = port.capture
        if cap == NULL:
            return None
        names = {v: k for k, v in CAPTURE_DIRECTIONS.items()}
        return {"direction": names[cap.dirmask], "snaplen": cap.snaplen,
                "ring_bytes": 2 * cap.half, "captured": cap.captured, "lost": cap.lost}

    def capture_stop(self, int p):
        """Detach and free the capture: {captured, lost, frames} where frames
        are the records not drained yet."""
        cdef vs_port *port = self._port(p)
        cdef vs_capture *cap = port.capture
        if cap == NULL:
            raise DatapathError(f"port {p} is not being captured")
        self._capture_detach(port)
        frames = capture_collect(cap)
        result = {"captured": cap.captured, "lost": cap.lost, "frames": frames}
        capture_free(cap)
        return result

    cdef int _capture_detach(self, vs_port *port) except -1:
        """Unpublish the port's capture and wait until no worker can hold it.
        The caller frees it (or reads it first)."""
        port.capture = NULL
        self._quiesce()
        return 0


    # --- IOTLB: ACCESS_PLATFORM with a vIOMMU (iotlb.pxi) ------------------------------

    def iotlb_set(self, int p, list entries, bint sync=True):
        """Publish the port's IOTLB: [(iova, size, uaddr, perm)] sorted by
        iova, not overlapping (vswitch/vhost/iotlb.py keeps it so). Returns
        the started rings that stopped because their addresses no longer
        translate as they did (they start again once they do). With `sync`,
        when it returns no worker uses an entry that is not in `entries`:
        an INVALIDATE may be acknowledged. Without (entries only added),
        nothing waits: the old table is freed after a later quiescent point."""
        cdef vs_port *port = self._port(p)
        cdef vs_iotlb *new
        cdef vs_iotlb *old = port.iotlb
        cdef int i
        self._check_control_thread()
        if port.iotlb_nretired == VS_IOTLB_RETIRED:
            self._quiesce()             # room for `old`: what waits is out of use now
            for i in range(port.iotlb_nretired):
                free(port.iotlb_retired[i])
            port.iotlb_nretired = 0
        new = iotlb_build(entries)
        vs_mb()
        port.iotlb = new
        port.iotlb_entries = new.n
        vs_mb()
        stopped = []
        for i in range(2 * port.nqp):
            if port.vq[i].started and not _ring_translates_as_now(port, &port.vq[i]):
                vs_store_release_int(&port.vq[i].started, 0)
                self._unwatch_kick(&port.vq[i])
                stopped.append(i)
        if old != NULL:
            port.iotlb_retired[port.iotlb_nretired] = old
            port.iotlb_nretired += 1
        if stopped:
            sync = True                 # the stopped rings' pointers must be out of use
        if sync:
            # If a worker does not finish its round this raises: the retired
            # tables then leak rather than being freed under it, and the
            # change is not acknowledged.
            self._quiesce()
            for i in range(port.iotlb_nretired):
                free(port.iotlb_retired[i])
            port.iotlb_nretired = 0
        iotlb_prefetch_rx(port)
        self._iotlb_retry(port)
        return stopped

    cdef void _iotlb_retry(self, vs_port *port) noexcept:
        """TX rings that stopped at a miss try again (after an update, or
        now and then in case the front-end never answered a MISS)."""
        cdef int i
        for i in range(port.nqp):
            vs_store_release_int(&port.vq[2 * i + 1].iotlb_wait, 0)
        self._wake()

    def iotlb_retry(self, int p):
        self._iotlb_retry(self._port(p))

    def iotlb_set_event_fd(self, int p, int fd):
        """The eventfd workers write when they queue a miss (the control
        plane's, non-blocking); -1 to stop before it closes it."""
        cdef vs_port *port = self._port(p)
        port.miss_efd = fd
        if fd < 0:
            self._quiesce()

    def iotlb_take_misses(self, int p):
        """Drain the port's miss queue: [(iova, perm)], and how many misses
        found it full since the last drain. Takes a spinlock workers hold
        for a few stores, never waits for them: callable from the event loop."""
        cdef vs_port *port = self._port(p)
        cdef uint64_t iova[VS_IOTLB_MISSQ]
        cdef uint8_t perm[VS_IOTLB_MISSQ]
        cdef int n, i
        cdef uint64_t overflow
        vs_spin_lock(&port.miss_lock)
        n = port.nmiss
        for i in range(n):
            iova[i] = port.miss_iova[i]
            perm[i] = port.miss_perm[i]
        port.nmiss = 0
        overflow = port.miss_overflow
        port.miss_overflow = 0
        port.miss_signalled = 0
        vs_spin_unlock(&port.miss_lock)
        return [(iova[i], perm[i]) for i in range(n)], overflow

    def iotlb_info(self, int p):
        cdef vs_port *port = self._port(p)
        return {"active": bool(port.iotlb_on), "entries": port.iotlb_entries,
                "hits": port.iotlb_hits, "misses": port.iotlb_misses,
                "denied": port.iotlb_denied}


    # --- stats: counters for metrics and `port show` ----------------------------------

    def worker_stats(self):
        return [{"rounds": self.workers[i].rounds, "idle_sleeps": self.workers[i].idle_sleeps,
                 "wakeups": self.workers[i].wakeups, "busy_ns": self.workers[i].busy_ns,
                 "cpu": self.cpus[i % len(self.cpus)] if self.cpus else None,
                 "tap_io": self._tap_io(self.workers[i]),
                 "notify_io": self._notify_io(self.workers[i]),
                 # every io_uring the worker uses runs only writes (vs_uring.h vs_uring_restrict)
                 "io_uring_restricted": bool(
                     (self.workers[i].uring.restricted or not self.workers[i].uring.enabled)
                     and (self.workers[i].nring.restricted or not self.workers[i].nring.enabled)),
                 "tap_batches": self.workers[i].uring.enters,
                 "tap_batched_writes": self.workers[i].uring.submitted}
                for i in range(self.nworkers)]

    cdef str _notify_io(self, vs_worker *w):
        """How the worker writes guests' call eventfds: "io_uring" (never
        blocks) or "write" with why (a blocked fd can stall the worker)."""
        if w.nring.enabled:
            return "io_uring"
        return f"write (io_uring: {os.strerror(w.nring_errno) if w.nring_errno else 'failed'})"

    cdef str _tap_io(self, vs_worker *w):
        """How the worker writes into TAP queues: "io_uring" (a burst per
        syscall) or "write" (one syscall per frame), with the reason when
        io_uring was wanted but is not used."""
        if w.uring.enabled:
            return "io_uring"
        if w.uring_errno:
            return f"write (io_uring: {os.strerror(w.uring_errno)})"
        return "write"

    def vring_counters(self, int p, int idx):
        cdef vs_vring *vq = self._vring(p, idx)
        return {
            "packets": vq.c.packets, "bytes": vq.c.bytes,
            "notifications": vq.c.notifications,
            "notify_suppressed": vq.c.notify_suppressed,
            "notify_merged": vq.c.notify_merged,
            "notify_failed": vq.c.notify_failed,
            "kicks": vq.c.kicks,
            "offload": {"csum_passthrough": vq.c.csum_passthrough,
                        "gso_passthrough": vq.c.gso_passthrough,
                        "sw_csum": vq.c.sw_csum, "sw_gso": vq.c.sw_gso,
                        "sw_gso_segments": vq.c.sw_gso_segments},
            "drops": {DROP_REASONS[i]: vq.c.drops[i] for i in range(1, DROP_MAX) if vq.c.drops[i]},
        }


    # --- testing: test hooks (testing.pxi) --------------------------------------------

    def enable_test_hooks(self):
        """Make this datapath's test hooks callable (debug_stall_worker,
        debug_fdb_learn, debug_fdb_learn_many, debug_fdb_lookup: testing.pxi),
        and the module's (_offload_*). The daemon calls it when its
        configuration says `debug: true`; tests that build a Datapath call it
        themselves. Until then a hook raises DatapathError."""
        self.test_hooks = True
        enable_test_hooks()

    def __getattr__(self, str name):
        # Only reached when normal lookup fails: the Datapath's own methods
        # cost nothing more. The hooks live in testing.pxi (_TestHooks).
        if name in TEST_HOOKS:
            if not self.test_hooks:
                raise DatapathError(
                    f"Datapath.{name} is a test hook: call enable_test_hooks() first "
                    "(the daemon does when its configuration has `debug: true`)")
            return getattr(_TestHooks(self), name)
        raise AttributeError(f"'Datapath' object has no attribute {name!r}")
