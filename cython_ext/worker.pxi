# The worker loop and the port-independent half of switching: the frame
# helpers every port type uses, classification, learning and lookup
# (switch_burst), mirrors, and deliver_to_port, which hands a burst to the
# destination's type (vhost.pxi, tap.pxi, vxlan.pxi hold the per-type
# ingress and delivery).
#
# Ring ownership: the TX ring of queue pair q of port p is dequeued only by
# worker (p + q) % nworkers. A guest RX ring may be filled by any worker, so
# it is taken under its spinlock for one burst (docs/architecture.md, "Who
# owns each ring"). Frames from TX queue q go to RX queue q of the destination
# (modulo its enabled queues): a flow stays on one queue, and traffic that
# the guest spreads over its TX queues is spread over the peer's RX queues.


cdef enum:
    # Adaptive mode sleeps after this long without a frame. Counted in time,
    # not rounds: a round over two idle rings takes ~10 ns, and sleeping after
    # a few thousand of them put a worker to sleep in the gaps of a 10 Mpps
    # stream, where kicks and wake-ups cost more than they save (measured in
    # the loopback bench: hundreds of sleeps per second and a collapsing
    # rate). A millisecond of spinning after traffic stops is cheap.
    ADAPTIVE_IDLE_NS = 1000000
    # Check the clock every this many empty rounds (clock_gettime is ~20 ns).
    IDLE_CLOCK_EVERY = 64
    # Longest sleep: a worker wakes on kicks and on its wake fd anyway; the
    # timeout only bounds the cost of a kick lost by a misbehaving guest.
    SLEEP_TIMEOUT_MS = 1000
    # A ring without a kick fd (SET_VRING_KICK with the no-fd flag) must be
    # polled: its worker naps at most this long.
    NOKICK_SLEEP_MS = 1
    # While the control plane holds the workers (Datapath.pause) they nap
    # this long between looks: a reload's changes take well under a second.
    PAUSE_NAP_NS = 20000


cdef inline uint16_t le16(const uint8_t *p) noexcept nogil:
    return <uint16_t>(p[0] | (p[1] << 8))


cdef inline void put_le16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v & 0xff)
    p[1] = <uint8_t>(v >> 8)


cdef inline bint mem_lost(vs_port *port) noexcept nogil:
    """A SIGBUS in the port's guest memory put zero pages in place of a
    mapping (vs_memguard.h): nothing there is the guest's any more, until the
    control plane installs a new memory table or ends the connection."""
    return vs_load_relaxed_u64(&port.mem_faults) != port.mem_faults_ok


cdef inline bint port_usable(vs_port *port) noexcept nogil:
    return vs_load_acquire_int(&port.active) and not mem_lost(port)


cdef inline bint is_vlan_type(uint8_t hi, uint8_t lo) noexcept nogil:
    """802.1Q (0x8100), 802.1ad (0x88a8) or the old QinQ 0x9100."""
    return (hi == 0x81 and lo == 0x00) or (hi == 0x88 and lo == 0xa8) or (hi == 0x91 and lo == 0x00)


cdef inline bint has_feature(vs_port *port, int bit) noexcept nogil:
    return (port.features >> bit) & 1


cdef inline int parse_offload(vs_port *port, vs_frame *f, const uint8_t *hdr) noexcept nogil:
    """Read the source's virtio_net_hdr into f and check it against what the
    source negotiated (virtio spec 5.1.6.2.1: the driver sets NEEDS_CSUM only
    with VIRTIO_NET_F_CSUM, a gso_type only with the matching HOST_* feature).
    Returns 0 or DROP_BAD_OFFLOAD. `hdr` is the worker's own copy. A frame
    without offload (flags and gso_type 0: nothing to check) is done here,
    inline; offload_check checks the others."""
    f.vflags = hdr[0]
    f.gso_type = hdr[1]
    f.vhdr_len = le16(hdr + 2)
    f.gso_size = le16(hdr + 4)
    f.csum_start = le16(hdr + 6)
    f.csum_offset = le16(hdr + 8)
    if f.vflags == 0 and f.gso_type == VS_GSO_NONE:
        return 0
    return offload_check(port, f)


cdef int offload_check(vs_port *port, vs_frame *f) noexcept nogil:
    """parse_offload's checks of a frame that asks for an offload (f holds
    its header's fields)."""
    cdef uint8_t base
    if f.vflags & VNET_F_NEEDS_CSUM:
        if not has_feature(port, F_NET_CSUM):
            return DROP_BAD_OFFLOAD
        if <uint32_t>f.csum_start + f.csum_offset + 2 > f.len:
            return DROP_BAD_OFFLOAD
    if f.gso_type != VS_GSO_NONE:
        base = f.gso_type & ~(<uint8_t>VS_GSO_ECN)
        if base == VS_GSO_TCPV4:
            if not has_feature(port, F_NET_HOST_TSO4):
                return DROP_BAD_OFFLOAD
        elif base == VS_GSO_TCPV6:
            if not has_feature(port, F_NET_HOST_TSO6):
                return DROP_BAD_OFFLOAD
        else:
            return DROP_BAD_OFFLOAD      # UFO/USO are not offered
        if (f.gso_type & VS_GSO_ECN) and not has_feature(port, F_NET_HOST_ECN):
            return DROP_BAD_OFFLOAD
        if f.gso_size < VS_GSO_MIN_SIZE or not (f.vflags & VNET_F_NEEDS_CSUM):
            return DROP_BAD_OFFLOAD
    return 0


cdef inline bint accepts_gso(vs_port *dport, uint8_t gso_type) noexcept nogil:
    cdef uint8_t base = gso_type & ~(<uint8_t>VS_GSO_ECN)
    if (gso_type & VS_GSO_ECN) and not has_feature(dport, F_NET_GUEST_ECN):
        return False
    if base == VS_GSO_TCPV4:
        return has_feature(dport, F_NET_GUEST_TSO4)
    return base == VS_GSO_TCPV6 and has_feature(dport, F_NET_GUEST_TSO6)


cdef enum:
    VIEW_NORMAL = -1               # deliver_to_port: frames switched to the port
    VIEW_AS_RECEIVED = -2          # mirror pass: selected frames, tagged as they arrived
    # a port index >= 0: mirror pass, selected frames tagged as that port sends them


cdef inline int egress_select(vs_switch *sw, vs_port *dport, int d, vs_frame *f,
                              int view, vs_vring *src_vq) noexcept nogil:
    """Whether frame f goes to port d in this pass: -1 if not, else the VID it
    leaves with (0: untagged)."""
    if view == VIEW_NORMAL:
        if f.dst != d and f.dst != FDB_FLOOD:
            return -1
        if not vlan_carried(dport, f.vlan):
            if f.dst == d:                  # a static entry into a VLAN the port lacks
                src_vq.c.drops[DROP_VLAN_FILTERED] += 1
            return -1
        return vlan_egress_tag(dport, f.vlan)
    if not f.sel:
        return -1
    if view == VIEW_AS_RECEIVED:
        return 0 if f.tci == VS_NO_TCI else f.tci & 0xfff
    return vlan_egress_tag(sw.ports[view], f.vlan)


cdef void deliver_to_port(vs_switch *sw, vs_worker *w, int d, vs_vring *src_vq,
                          int qp, int n, int view) noexcept nogil:
    """Deliver the frames of this burst that go to port d (`view`: which
    ones, see egress_select), by the port's type."""
    cdef vs_port *dport = sw.ports[d]
    if dport == NULL or not vs_load_acquire_int(&dport.active):
        return
    if dport.kind != PORT_VHOST:
        if dport.kind == PORT_TAP:
            deliver_to_tap(sw, w, d, src_vq, qp, n, view)
        else:
            deliver_to_vxlan(sw, w, d, src_vq, qp, n, view)
        return
    deliver_to_vhost(sw, w, d, src_vq, qp, n, view)


cdef inline int ingress_policy(vs_switch *sw, vs_port *port, vs_frame *f, uint64_t src_mac,
                               uint64_t now) noexcept nogil:
    """The checks a frame from a port with `ingress_policy` set must pass
    before it may teach the FDB or be switched. 0 or a drop reason."""
    if port.ingress_policy & POL_SECURITY and not source_allowed(port, src_mac):
        return DROP_SPOOFED_SOURCE
    cdef uint64_t nbytes, npkts
    if port.ingress_policy & POL_POLICE and not police(&port.in_bytes, &port.in_pkts, f, now):
        return DROP_RATE_LIMITED
    if port.ingress_policy & POL_SHAPE:
        # taken from the ring because the bucket had credit: charge it all
        frame_wire_cost(f, &nbytes, &npkts)
        gcra_charge(&port.in_bytes, now, nbytes)
        gcra_charge(&port.in_pkts, now, npkts)
    return 0


cdef inline bint storm_conform(vs_port *port, vs_frame *f, const uint8_t *eth, uint64_t now) noexcept nogil:
    """Storm control: a frame that will be flooded is charged to the port's
    broadcast, multicast or unknown-unicast cap."""
    if eth[0] & 1:
        if (eth[0] & eth[1] & eth[2] & eth[3] & eth[4] & eth[5]) == 0xff:
            return gcra_conform(&port.storm_bcast, now, 1)
        return gcra_conform(&port.storm_mcast, now, 1)
    return gcra_conform(&port.storm_unknown, now, 1)


cdef void mirror_burst(vs_switch *sw, vs_worker *w, int pidx, int qp, vs_vring *vq, int n) noexcept nogil:
    """Copies for the mirrors: frames from port pidx to its ingress mirror
    target as they arrived, and frames switched to a port with an egress
    mirror to that mirror's target as that port got them."""
    cdef vs_port *port = sw.ports[pidx]
    cdef vs_port *xp
    cdef vs_frame *f
    cdef int i, x, m, nports, any_sel
    m = port.mirror_in - 1
    if m >= 0 and m != pidx:
        any_sel = 0
        for i in range(n):
            f = &w.frames[i]
            f.sel = f.nseg > 0 and f.dst != FRAME_DROPPED
            any_sel |= f.sel
        if any_sel:
            deliver_to_port(sw, w, m, vq, qp, n, VIEW_AS_RECEIVED)
    nports = vs_load_acquire_int(&sw.nports_hi)
    for x in range(nports):
        xp = sw.ports[x]
        if xp == NULL or xp.mirror_out == 0 or x == pidx:
            continue
        m = xp.mirror_out - 1
        if m == pidx:
            continue                        # never send a port's frames back to it
        any_sel = 0
        for i in range(n):
            f = &w.frames[i]
            f.sel = f.dst == x or (f.dst == FDB_FLOOD and vlan_carried(xp, f.vlan))
            any_sel |= f.sel
        if any_sel:
            deliver_to_port(sw, w, m, vq, qp, n, x)


cdef void switch_burst(vs_switch *sw, vs_worker *w, int pidx, int qp, vs_vring *vq, int n) noexcept nogil:
    """The port-independent half of a burst: classify (VLAN, policy), learn
    source MACs, look up destinations, deliver. w.frames[0:n] hold the
    frames (nseg 0: dropped); vq is the ingress queue whose counters take
    ingress drops."""
    cdef vs_port *port = sw.ports[pidx]
    cdef int i, d, ndest = 0, rc
    cdef bint flood = False
    cdef uint64_t dst_mac, src_mac, now = 0
    cdef uint8_t eth[18]
    cdef uint16_t tci
    cdef int dests[VS_BURST]
    cdef vs_frame *f
    cdef vs_capture *cap = port.capture
    # A burst from a guest is mostly one source talking to one destination:
    # the last source this burst learned that the FDB already had on this
    # port (learning it again changes nothing), and the last unicast lookup
    # (forgotten whenever a learn may have changed the table), each as
    # fdb_key(vlan, mac); 0 is none (fdb_key always sets FDB_KEY_USED).
    cdef uint64_t learned_key = 0, looked_key = 0, key
    cdef int looked_port = FDB_FLOOD
    if mem_lost(port):
        # a frame of this burst hit memory the guest took away: what was read
        # of the burst is zero pages now, so none of it goes anywhere
        for i in range(n):
            if w.frames[i].dst == FRAME_DROPPED and w.frames[i].nseg != 0:
                w.frames[i].nseg = 0
                vq.c.drops[DROP_BAD_ADDRESS] += 1
        return
    if port.ingress_policy:
        now = now_ns()
    for i in range(n):
        f = &w.frames[i]
        if f.dst != FRAME_DROPPED or f.nseg == 0:
            continue
        if cap != NULL:     # live capture, ingress: the frame as the port sent it
            capture_frame(cap, CAP_IN, &w.segs[f.seg0], f.nseg, f.hdr_len, f.len)
        sg_read(&w.segs[f.seg0], f.nseg, f.hdr_len, eth, 14)
        tci = VS_NO_TCI
        if eth[12] == 0x81 and eth[13] == 0x00 and f.len >= 18:
            sg_read(&w.segs[f.seg0], f.nseg, f.hdr_len + 14, eth + 14, 4 if f.len >= 20 else 2)
            tci = <uint16_t>((eth[14] << 8) | eth[15])
            if (tci & 0xfff) == 0 and f.len >= 20 and is_vlan_type(eth[16], eth[17]):
                # A priority tag (VID 0, "untagged") around another tag: the
                # egress pop of the priority tag would uncover the inner one
                # (VLAN hopping out of an access port). No driver sends this.
                vq.c.drops[DROP_VLAN_FILTERED] += 1
                continue
        if tci == VS_NO_TCI and port.vlan_mode == VLAN_ALL:
            f.vlan = 0                     # the common case: no VLAN anywhere
            f.tci = VS_NO_TCI
        else:
            rc = vlan_classify(port, f, tci)
            if rc:
                vq.c.drops[rc] += 1
                continue
        dst_mac = mac_load(eth)
        src_mac = mac_load(eth + 6)
        if port.ingress_policy:
            rc = ingress_policy(sw, port, f, src_mac, now)
            if rc:
                vq.c.drops[rc] += 1
                continue
        if not (eth[6] & 1) and src_mac != 0:
            key = fdb_key(f.vlan, src_mac)
            if key != learned_key:
                if fdb_learn(sw, f.vlan, src_mac, pidx):
                    learned_key = key
                else:
                    learned_key = 0
                looked_key = 0             # the table may have changed
        if eth[0] & 1:
            d = FDB_FLOOD                  # broadcast and multicast
        else:
            key = fdb_key(f.vlan, dst_mac)
            if key != looked_key:
                looked_port = fdb_lookup(sw, f.vlan, dst_mac)    # FDB_FLOOD when unknown
                looked_key = key
            d = looked_port
        if d == pidx:
            vq.c.drops[DROP_SAME_PORT] += 1
            continue
        if d == FDB_FLOOD:
            if port.ingress_policy & POL_STORM and not storm_conform(port, f, eth, now):
                vq.c.drops[DROP_STORM_CONTROL] += 1
                continue
            flood = True
        f.dst = d
    if mem_lost(port):
        # the fault hit a header read just now: the classification above
        # read zero pages, so the burst goes nowhere
        for i in range(n):
            if w.frames[i].dst != FRAME_DROPPED:
                w.frames[i].dst = FRAME_DROPPED
                vq.c.drops[DROP_BAD_ADDRESS] += 1
        return
    # Distinct unicast destinations of the burst, each delivered once.
    for i in range(n):
        d = w.frames[i].dst
        if d >= 0:
            for rc in range(ndest):
                if dests[rc] == d:
                    break
            else:
                dests[ndest] = d
                ndest += 1
    if flood:
        for d in range(sw.nports_hi):
            if d != pidx:
                deliver_to_port(sw, w, d, vq, qp, n, VIEW_NORMAL)
    else:
        for i in range(ndest):
            deliver_to_port(sw, w, dests[i], vq, qp, n, VIEW_NORMAL)
    if sw.mirrors:
        mirror_burst(sw, w, pidx, qp, vq, n)


cdef inline bint frame_fits_mtu(vs_port *dport, vs_frame *f, const uint8_t *eth_type) noexcept nogil:
    """virtio spec 5.1.6.3.2 (docs/uplink.md): a frame larger than the MTU
    plus the Ethernet (and one VLAN) header is dropped; a GSO frame is judged
    by its segment size (headers + gso_size), not its total length."""
    cdef uint32_t l2 = VS_ETH_HLEN
    cdef uint32_t l3
    if dport.mtu == 0:
        return True
    if eth_type[0] == 0x81 and eth_type[1] == 0x00:
        l2 += 4
    if f.gso_type != VS_GSO_NONE:
        # hdr_len is the guest's hint of L2+L3+L4; csum_start + 20 bounds it from below
        l3 = (f.csum_start + 20 if f.vhdr_len < f.csum_start + 20 else f.vhdr_len) + f.gso_size
        return l3 <= dport.mtu + l2
    return f.len <= dport.mtu + l2


cdef inline bint worker_owns(vs_switch *sw, vs_worker *w, int p, int qp) noexcept nogil:
    return (p + qp) % sw.nworkers == w.id


cdef inline void vring_notify_enable(vs_vring *vq, int event_idx) noexcept nogil:
    """Ask the guest to kick on its next buffer (virtio spec 2.7.10)."""
    if event_idx:
        # avail_event lives after the used ring: kick once avail passes it
        (<volatile uint16_t *>(<uint8_t *>vq.used + 4 + 8 * vq.num))[0] = vq.last_avail
    else:
        (<volatile uint16_t *>&vq.used.flags)[0] = 0


cdef inline void vring_notify_disable(vs_vring *vq, int event_idx) noexcept nogil:
    if not event_idx:
        (<volatile uint16_t *>&vq.used.flags)[0] = VRING_USED_F_NO_NOTIFY
    # with EVENT_IDX, a stale avail_event already stops further kicks


cdef void worker_sleep(vs_switch *sw, vs_worker *w) noexcept nogil:
    """Sleep until a guest kicks, the control plane wakes us, or a timeout.

    No kick may be lost: notifications are re-enabled on every owned ring,
    then (after a full barrier, so the guest sees them before we look) every
    ring is checked once more; only if all are still empty do we sleep."""
    cdef int p, qp, n, i, nports, timeout = SLEEP_TIMEOUT_MS
    cdef uint64_t wait
    cdef bint pending = False
    cdef vs_port *port
    cdef vs_vring *vq
    cdef uint64_t value
    nports = vs_load_acquire_int(&sw.nports_hi)
    for p in range(nports):
        port = sw.ports[p]
        if port == NULL or not port_usable(port):
            continue
        for qp in range(port.nqp):
            if not worker_owns(sw, w, p, qp):
                continue
            vq = &port.vq[2 * qp + 1]
            if vs_load_acquire_int(&vq.started) and not vs_load_acquire_int(&vq.broken):
                if vq.packed:
                    pk_notify_enable(vq, port.event_idx)
                    if port.log != NULL:
                        pk_log_device_event(port, vq)
                else:
                    vring_notify_enable(vq, port.event_idx)
                    if port.log != NULL:
                        log_used_ring(port, vq)       # flags / avail_event live in the used ring
                if vq.kick_fd < 0:
                    timeout = NOKICK_SLEEP_MS
    vs_mb()
    for p in range(nports):
        port = sw.ports[p]
        if port == NULL or not port_usable(port):
            continue
        for qp in range(port.nqp):
            if not worker_owns(sw, w, p, qp):
                continue
            vq = &port.vq[2 * qp + 1]
            if vs_load_acquire_int(&vq.started) and not vs_load_acquire_int(&vq.broken) and \
                    not vs_load_acquire_int(&vq.iotlb_wait) and \
                    (pk_has_avail(vq) if vq.packed else vs_load_acquire_u16(&vq.avail.idx) != vq.last_avail):
                if port.ingress_policy & POL_SHAPE:
                    # held for credit: sleep until the bucket has it, not a spin
                    wait = shape_wait(port, now_ns())
                    if wait:
                        if <int>(wait // 1000000 + 1) < timeout:
                            timeout = <int>(wait // 1000000 + 1)
                        continue
                pending = True
    if not pending:
        w.idle_sleeps += 1
        notify_flush(w)             # nothing queued stays behind while we sleep
        n = epoll_wait(w.epfd, w.events, VS_EPOLL_BATCH, timeout)
        for i in range(n):
            vq = <vs_vring *>w.events[i].data.ptr
            if vq == NULL:
                read(w.wake_fd, &value, 8)
            elif <void *>vq == <void *>&w.nring:
                notify_flush(w)         # a notification write completed (io-wq)
            elif vq.kick_fd >= 0:
                if kick_drain(vq):
                    vq.c.kicks += 1
        if n > 0:
            w.wakeups += 1
    for p in range(nports):
        port = sw.ports[p]
        if port == NULL or not port_usable(port):
            continue
        for qp in range(port.nqp):
            if not worker_owns(sw, w, p, qp):
                continue
            vq = &port.vq[2 * qp + 1]
            if vs_load_acquire_int(&vq.started):
                if vq.packed:
                    pk_notify_disable(vq)
                    if port.log != NULL:
                        pk_log_device_event(port, vq)
                    continue
                vring_notify_disable(vq, port.event_idx)
                if port.log != NULL:
                    log_used_ring(port, vq)


cdef void worker_loop(vs_switch *sw, vs_worker *w) noexcept nogil:
    cdef int p, qp, nports, work
    cdef uint32_t idle = 0
    cdef int64_t now, idle_since = 0, busy_since = 0
    cdef uint64_t shape_now
    cdef uint32_t busy_rounds = 0
    cdef timespec ts
    cdef vs_port *port
    cdef vs_vring *vq
    while not vs_load_acquire_int(&w.quit):
        if vs_load_acquire_int(&sw.paused):
            # A reload applies its in-place changes to every port at once:
            # no frame is switched by half of them. Rounds still end (epoch),
            # so the control plane's quiescence waits keep working, and so
            # does the notification ring (cancels posted meanwhile, late
            # completions).
            if vs_load_relaxed_int(&w.ncancel):
                notify_cancels(w)
            notify_flush(w)
            vs_store_release_u64(&w.epoch, w.epoch + 1)
            ts.tv_sec = 0
            ts.tv_nsec = PAUSE_NAP_NS
            nanosleep(&ts, NULL)
            continue
        work = 0
        shape_now = 0
        if vs_load_relaxed_int(&w.ncancel):
            notify_cancels(w)
        notify_flush(w)             # writes that completed (io-wq), and what they re-queued
        nports = vs_load_acquire_int(&sw.nports_hi)
        for p in range(nports):
            port = sw.ports[p]
            if port == NULL or not port_usable(port):
                continue
            if port.ingress_policy & POL_SHAPE:
                # ingress limit with action hold: the frames wait in the
                # guest's own TX ring until the bucket has credit again
                if shape_now == 0:
                    shape_now = now_ns()
                if shape_wait(port, shape_now):
                    continue
            w.budget = VS_PORT_WORK     # what this port's frames may cost this round
            for qp in range(port.nqp):
                if not worker_owns(sw, w, p, qp):
                    continue
                if port.kind != PORT_VHOST:
                    if port.kind == PORT_TAP:
                        work += tap_ingress_burst(sw, w, p, port, qp)
                    else:
                        work += vxlan_ingress_burst(sw, w, p, port)
                    continue
                vq = &port.vq[2 * qp + 1]
                if not vs_load_acquire_int(&vq.started) or vs_load_acquire_int(&vq.broken):
                    continue
                work += vhost_ingress_burst(sw, w, p, port, qp, vq)
                if w.nring.pending:
                    # the burst's notifications (the source's and its
                    # destinations'), out of every ring lock, in one submit
                    notify_flush(w)
        if w.nring.pending:
            notify_flush(w)         # those of TAP and VXLAN bursts
        w.rounds += 1
        # End of a round: nothing from before this point is still in use.
        vs_store_release_u64(&w.epoch, w.epoch + 1)
        if vs_unlikely(w.stall_ms):     # debug_stall_worker (testing.pxi); 0 unless hooks are on
            stall(w)
        if work:
            idle = 0
            idle_since = 0
            # Busy time for the metrics: the clock is read when a busy spell
            # starts, every 64 busy rounds, and when it ends, not per round.
            if busy_rounds % 64 == 0:
                clock_gettime(CLOCK_MONOTONIC, &ts)
                now = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
                if busy_since:
                    w.busy_ns += now - busy_since
                busy_since = now
            busy_rounds += 1
            continue
        if busy_since:
            clock_gettime(CLOCK_MONOTONIC, &ts)
            w.busy_ns += <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec - busy_since
            busy_since = 0
            busy_rounds = 0
        if sw.mode == MODE_EVENT:
            worker_sleep(sw, w)
        elif sw.mode == MODE_ADAPTIVE:
            idle += 1
            if idle % IDLE_CLOCK_EVERY == 0:
                clock_gettime(CLOCK_MONOTONIC, &ts)
                now = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
                if idle_since == 0:
                    idle_since = now
                elif now - idle_since >= ADAPTIVE_IDLE_NS:
                    worker_sleep(sw, w)
                    idle = 0
                    idle_since = 0
