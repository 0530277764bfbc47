# The worker loop: poll guest TX rings in bursts, switch, fill guest RX rings.
#
# Ring ownership: the TX ring of queue pair q of port p is dequeued only by
# worker (p + q) % nworkers. A guest RX ring may be filled by any worker, so
# it is taken under its spinlock for one burst (design.md: "a destination
# queue shared by workers is taken under a per-queue lock for a whole burst").
# Frames from TX queue q go to RX queue q of the destination (modulo its
# enabled queues): a flow stays on one queue, and traffic that the guest
# spreads over its TX queues is spread over the peer's RX queues.

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)

cdef extern from * nogil:
    void __builtin_prefetch(const void *p, int rw, int locality)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int nanosleep(const timespec *req, timespec *rem)
    enum:
        CLOCK_MONOTONIC

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


cdef inline void prefetch_frame_head(vs_seg *segs, int nseg, uint32_t off) noexcept nogil:
    cdef int i = 0
    while i < nseg and off >= segs[i].len:
        off -= segs[i].len
        i += 1
    if i < nseg:
        __builtin_prefetch(segs[i].p + off, 0, 3)


cdef inline uint16_t le16(const uint8_t *p) noexcept nogil:
    return <uint16_t>(p[0] | (p[1] << 8))


cdef inline void put_le16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v & 0xff)
    p[1] = <uint8_t>(v >> 8)


cdef inline bint has_feature(vs_port *port, int bit) noexcept nogil:
    return (port.features >> bit) & 1


cdef int parse_offload(vs_port *port, vs_frame *f, const uint8_t *hdr) noexcept nogil:
    """Read the source's virtio_net_hdr into f and check it against what the
    source negotiated (virtio spec 5.1.6.2.1: the driver sets NEEDS_CSUM only
    with VIRTIO_NET_F_CSUM, a gso_type only with the matching HOST_* feature).
    Returns 0 or DROP_BAD_OFFLOAD."""
    cdef uint8_t base
    f.vflags = hdr[0]
    f.gso_type = hdr[1]
    f.vhdr_len = le16(hdr + 2)
    f.gso_size = le16(hdr + 4)
    f.csum_start = le16(hdr + 6)
    f.csum_offset = le16(hdr + 8)
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
        if f.gso_size == 0 or not (f.vflags & VNET_F_NEEDS_CSUM):
            return DROP_BAD_OFFLOAD
    return 0


cdef inline bint accepts_gso(vs_port *dport, uint8_t gso_type) noexcept nogil:
    cdef uint8_t base = gso_type & ~(<uint8_t>VS_GSO_ECN)
    if (gso_type & VS_GSO_ECN) and not has_feature(dport, F_NET_GUEST_ECN):
        return False
    if base == VS_GSO_TCPV4:
        return has_feature(dport, F_NET_GUEST_TSO4)
    return base == VS_GSO_TCPV6 and has_feature(dport, F_NET_GUEST_TSO6)


cdef int deliver_frame(vs_worker *w, vs_port *dport, vs_vring *rvq, uint16_t avail_idx,
                       vs_frame *f) noexcept nogil:
    """Deliver one frame to one destination ring, re-expressing the source's
    offload request in what this destination negotiated (anchors.md §2.2):
    hand the partial checksum or GSO frame on when it can take it, else
    finish the checksum or cut the segments here - for this destination only."""
    cdef uint8_t hdr[VS_HDR_MAX]
    cdef vs_tso plan
    cdef vs_seg one
    cdef uint32_t i, seglen
    cdef int rc
    memset(hdr, 0, VS_HDR_MAX)
    if f.gso_type == VS_GSO_NONE and not (f.vflags & VNET_F_NEEDS_CSUM):
        return rx_enqueue(w, dport, rvq, avail_idx, &w.segs[f.seg0], f.nseg, f.hdr_len, f.len, hdr)
    if f.gso_type != VS_GSO_NONE and accepts_gso(dport, f.gso_type):
        hdr[0] = VNET_F_NEEDS_CSUM
        hdr[1] = f.gso_type
        put_le16(hdr + 2, f.vhdr_len)
        put_le16(hdr + 4, f.gso_size)
        put_le16(hdr + 6, f.csum_start)
        put_le16(hdr + 8, f.csum_offset)
        rc = rx_enqueue(w, dport, rvq, avail_idx, &w.segs[f.seg0], f.nseg, f.hdr_len, f.len, hdr)
        if rc == 0:
            rvq.c.gso_passthrough += 1
        return rc
    if f.gso_type == VS_GSO_NONE and has_feature(dport, F_NET_GUEST_CSUM):
        hdr[0] = VNET_F_NEEDS_CSUM
        put_le16(hdr + 6, f.csum_start)
        put_le16(hdr + 8, f.csum_offset)
        rc = rx_enqueue(w, dport, rvq, avail_idx, &w.segs[f.seg0], f.nseg, f.hdr_len, f.len, hdr)
        if rc == 0:
            rvq.c.csum_passthrough += 1
        return rc
    # Software fallback: make the frame linear (a second copy, only on this path).
    sg_read(&w.segs[f.seg0], f.nseg, f.hdr_len, w.lin, f.len)
    one.p = w.lin
    one.len = f.len
    if f.gso_type == VS_GSO_NONE:
        if finish_csum(w.lin, f.len, f.csum_start, f.csum_offset):
            return DROP_BAD_OFFLOAD
        rc = rx_enqueue(w, dport, rvq, avail_idx, &one, 1, 0, f.len, hdr)
        if rc == 0:
            rvq.c.sw_csum += 1
        return rc
    if tso_plan(w.lin, f.len, f.gso_type, f.gso_size, &plan):
        return DROP_BAD_OFFLOAD
    for i in range(plan.nsegs):
        seglen = tso_segment(w.lin, &plan, f.gso_size, i, w.segbuf)
        one.p = w.segbuf
        one.len = seglen
        rc = rx_enqueue(w, dport, rvq, avail_idx, &one, 1, 0, seglen, hdr)
        if rc:
            rvq.c.drops[rc] += 1
    rvq.c.sw_gso += 1
    rvq.c.sw_gso_segments += plan.nsegs
    return 0


cdef void deliver_to_port(vs_switch *sw, vs_worker *w, int d, vs_vring *src_vq,
                          int qp, int n) noexcept nogil:
    """Copy the frames of this burst that go to port d into one of its RX rings."""
    cdef vs_port *dport = sw.ports[d]
    cdef vs_vring *rvq
    cdef int i, rc, nrx, q, navail
    cdef uint16_t avail_idx, old_used, head
    cdef vs_frame *f
    cdef uint8_t eth_type[2]
    if dport == NULL or not vs_load_acquire_int(&dport.active):
        return
    if dport.kind == PORT_TAP:
        deliver_to_tap(sw, w, d, src_vq, qp, n)
        return
    nrx = dport.n_rx_enabled
    rvq = NULL
    if nrx > 0:
        q = dport.rx_enabled[qp % nrx]
        if q < dport.nqp:
            rvq = &dport.vq[2 * q]
    if rvq == NULL or not vs_load_acquire_int(&rvq.started) or \
            not vs_load_acquire_int(&rvq.enabled) or rvq.broken:
        # Only a frame addressed to this port counts; floods just pass it by.
        for i in range(n):
            if w.frames[i].dst == d:
                src_vq.c.drops[DROP_NO_RX_QUEUE] += 1
        return
    vs_spin_lock(&rvq.lock)
    old_used = rvq.used_idx
    navail = vring_avail_count(rvq, &avail_idx)
    if navail < 0:
        vring_mark_broken(rvq)
        vs_spin_unlock(&rvq.lock)
        return
    # Prefetch the RX descriptors this burst will use, as on the TX side.
    if navail > n:
        navail = n
    for i in range(navail):
        head = rvq.avail.ring[<uint16_t>(rvq.last_avail + i) & (rvq.num - 1)]
        if head < rvq.num:
            __builtin_prefetch(&rvq.desc[head], 0, 3)
    for i in range(n):
        f = &w.frames[i]
        if f.dst == d or f.dst == FDB_FLOOD:
            if dport.mtu:      # the port's configured mtu (0: none): one branch when unset
                sg_read(&w.segs[f.seg0], f.nseg, f.hdr_len + 12, eth_type, 2)
                if not frame_fits_mtu(dport, f, eth_type):
                    rvq.c.drops[DROP_MTU_EXCEEDED] += 1
                    continue
            rc = deliver_frame(w, dport, rvq, avail_idx, f)
            if rc:
                rvq.c.drops[rc] += 1
    if rvq.used_idx != old_used:
        vring_publish(dport, rvq)
        vring_notify(rvq, dport.event_idx, old_used)
    vs_spin_unlock(&rvq.lock)


cdef void switch_burst(vs_switch *sw, vs_worker *w, int pidx, int qp, vs_vring *vq, int n) noexcept nogil:
    """The port-independent half of a burst: learn source MACs, look up
    destinations, deliver. w.frames[0:n] hold the frames (nseg 0: dropped);
    vq is the ingress queue whose counters take ingress drops."""
    cdef int i, d, ndest = 0
    cdef bint flood = False
    cdef uint64_t dst_mac, src_mac
    cdef uint8_t eth[12]
    cdef int dests[VS_BURST]
    cdef vs_frame *f
    cdef vs_capture *cap = sw.ports[pidx].capture
    for i in range(n):
        f = &w.frames[i]
        if f.dst != FRAME_DROPPED or f.nseg == 0:
            continue
        if cap != NULL:     # live capture, ingress: the frame as the port sent it
            capture_frame(cap, CAP_IN, &w.segs[f.seg0], f.nseg, f.hdr_len, f.len)
        sg_read(&w.segs[f.seg0], f.nseg, f.hdr_len, eth, 12)
        dst_mac = mac_load(eth)
        src_mac = mac_load(eth + 6)
        if not (eth[6] & 1) and src_mac != 0:
            fdb_learn(sw, src_mac, pidx)
        if eth[0] & 1:
            f.dst = FDB_FLOOD            # broadcast and multicast
        else:
            f.dst = fdb_lookup(sw, dst_mac)   # FDB_FLOOD when unknown
        if f.dst == pidx:
            vq.c.drops[DROP_SAME_PORT] += 1
            f.dst = FRAME_DROPPED
        elif f.dst == FDB_FLOOD:
            flood = True
        elif f.dst >= 0:
            for d in range(ndest):
                if dests[d] == f.dst:
                    break
            else:
                dests[ndest] = f.dst
                ndest += 1
    if flood:
        for d in range(sw.nports_hi):
            if d != pidx:
                deliver_to_port(sw, w, d, vq, qp, n)
    else:
        for i in range(ndest):
            deliver_to_port(sw, w, dests[i], vq, qp, n)


# --- TAP ports ---------------------------------------------------------------------
# A TAP port is the host kernel: frames are read from and written to its queue
# fds with a 12-byte virtio_net_hdr (IFF_VNET_HDR), so offloads pass both ways
# in the same header format guests use. Reading is the one copy in (the kernel
# copies into our buffer); writing gathers straight from the source guest's
# buffers (writev), so frames to the kernel are not copied by us at all.

cdef inline bint frame_fits_mtu(vs_port *dport, vs_frame *f, const uint8_t *eth_type) noexcept nogil:
    """virtio spec 5.1.6.3.2 / the uplink issue: a frame larger than the MTU
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


cdef void deliver_to_tap(vs_switch *sw, vs_worker *w, int d, vs_vring *src_vq, int qp, int n) noexcept nogil:
    cdef vs_port *dport = sw.ports[d]
    cdef int q, i, k, fd, cnt
    cdef vs_vring *rvq
    cdef vs_frame *f
    cdef vs_seg *seg
    cdef uint8_t hdr[VS_HDR_MAX]
    cdef uint8_t eth_type[2]
    cdef uint32_t skip
    cdef iovec iov[VS_MAX_SEGS + 1]
    cdef ssize_t rc
    q = qp % dport.nqp
    fd = dport.tap_fd[q]
    rvq = &dport.vq[2 * q]          # counters of "towards the kernel" on queue q
    if fd < 0 or dport.tap_errno:
        for i in range(n):
            if w.frames[i].dst == d:
                src_vq.c.drops[DROP_NO_RX_QUEUE] += 1
        return
    vs_spin_lock(&rvq.lock)
    for i in range(n):
        f = &w.frames[i]
        if not (f.dst == d or f.dst == FDB_FLOOD):
            continue
        sg_read(&w.segs[f.seg0], f.nseg, f.hdr_len + 12, eth_type, 2)
        if not frame_fits_mtu(dport, f, eth_type):
            rvq.c.drops[DROP_MTU_EXCEEDED] += 1
            continue
        # The offload request travels as is: the kernel finishes checksums and
        # segments GSO frames itself (it validated nothing of ours yet, but
        # parse_offload checked csum_start/offset against the frame length).
        memset(hdr, 0, VS_HDR_MAX)
        hdr[0] = f.vflags & VNET_F_NEEDS_CSUM
        if hdr[0]:
            put_le16(hdr + 6, f.csum_start)
            put_le16(hdr + 8, f.csum_offset)
        if f.gso_type != VS_GSO_NONE:
            hdr[1] = f.gso_type
            put_le16(hdr + 2, f.vhdr_len)
            put_le16(hdr + 4, f.gso_size)
        iov[0].iov_base = hdr
        iov[0].iov_len = VS_HDR_MAX
        cnt = 1
        skip = f.hdr_len
        for k in range(f.nseg):
            seg = &w.segs[f.seg0 + k]
            if skip >= seg.len:
                skip -= seg.len
                continue
            iov[cnt].iov_base = seg.p + skip
            iov[cnt].iov_len = seg.len - skip
            skip = 0
            cnt += 1
        rc = writev(fd, iov, cnt)
        if rc < 0:
            rvq.c.drops[DROP_TAP_WRITE] += 1
            if errno == EBADFD:
                dport.tap_errno = EBADFD
        else:
            if dport.capture != NULL:     # live capture, egress: what the kernel was given
                capture_frame(dport.capture, CAP_OUT, &w.segs[f.seg0], f.nseg, f.hdr_len, f.len)
            rvq.c.packets += 1
            rvq.c.bytes += f.len
            if f.gso_type != VS_GSO_NONE:
                rvq.c.gso_passthrough += 1
            elif f.vflags & VNET_F_NEEDS_CSUM:
                rvq.c.csum_passthrough += 1
    vs_spin_unlock(&rvq.lock)


cdef enum:
    TAP_IDLE_SKIP = 7


cdef int tap_rx_burst(vs_switch *sw, vs_worker *w, int pidx, vs_port *port, int q) noexcept nogil:
    """Read up to VS_BURST frames the kernel sent out of the TAP's queue q."""
    cdef vs_vring *vq = &port.vq[2 * q + 1]
    cdef int fd = port.tap_fd[q]
    cdef int i, n = 0, rc
    cdef ssize_t got
    cdef uint8_t *buf
    cdef vs_frame *f
    if fd < 0 or port.tap_errno:
        return 0
    if vq.tap_skip:
        # After an empty read, look again only every few rounds: an empty
        # read is a whole syscall, the cost of a frame written to the kernel.
        vq.tap_skip -= 1
        return 0
    for i in range(VS_BURST):
        buf = w.tapbuf + <size_t>n * VS_TAP_BUF
        got = read(fd, buf, VS_TAP_BUF)
        if got < 0:
            if errno == EBADFD:
                port.tap_errno = EBADFD     # deleted under us: the control plane re-creates it
            elif i == 0:
                vq.tap_skip = TAP_IDLE_SKIP
            break
        f = &w.frames[n]
        f.dst = FRAME_DROPPED
        f.nseg = 0
        n += 1
        if got < VS_HDR_MAX + VS_ETH_HLEN:
            vq.c.drops[DROP_RUNT] += 1
            continue
        w.segs[n - 1].p = buf
        w.segs[n - 1].len = <uint32_t>got
        f.seg0 = n - 1
        f.hdr_len = VS_HDR_MAX
        f.len = <uint32_t>got - VS_HDR_MAX
        rc = parse_offload(port, f, buf)
        if rc:
            vq.c.drops[rc] += 1
            continue
        f.nseg = 1
        vq.c.packets += 1
        vq.c.bytes += f.len
    if n:
        switch_burst(sw, w, pidx, q, vq, n)
    return n


cdef int tx_burst(vs_switch *sw, vs_worker *w, int pidx, vs_port *port, int qp,
                  vs_vring *vq) noexcept nogil:
    """Dequeue up to VS_BURST frames from a guest TX ring and switch them."""
    cdef uint16_t avail_idx, head, old_used
    cdef int n = vring_avail_count(vq, &avail_idx)
    cdef int i, rc, nseg, nused = 0, pool = 0
    cdef uint64_t total
    cdef bint discard
    cdef uint8_t vhdr[VS_HDR_MAX]
    cdef vs_frame *f
    if n < 0:
        vring_mark_broken(vq)
        return 0
    if n == 0:
        return 0
    if n > VS_BURST:
        n = VS_BURST
    # "started but disabled: consume and discard TX" (vhost-user.rst, Ring states)
    discard = not vs_load_acquire_int(&vq.enabled)
    # The guest just wrote these descriptors: start all their misses at once
    # (the heads sit in one or two lines of the avail ring).
    for i in range(n):
        head = vq.avail.ring[<uint16_t>(vq.last_avail + i) & (vq.num - 1)]
        if head < vq.num:
            __builtin_prefetch(&vq.desc[head], 0, 3)
    for i in range(n):
        head = vq.avail.ring[<uint16_t>(vq.last_avail + i) & (vq.num - 1)]
        f = &w.frames[i]
        f.head = head
        f.dst = FRAME_DROPPED
        f.nseg = 0
        if head < vq.num:
            w.tx_used[nused].id = head
            w.tx_used[nused].len = 0
            nused += 1
        if discard:
            vq.c.drops[DROP_RING_DISABLED] += 1
            continue
        rc = walk_chain(port, vq, head, False, &w.segs[pool], VS_MAX_SEGS, &nseg, &total)
        if rc == 0 and total < port.hdr_len + VS_ETH_HLEN:
            rc = DROP_RUNT
        if rc:
            vq.c.drops[rc] += 1
            continue
        f.seg0 = pool
        f.nseg = nseg
        f.hdr_len = port.hdr_len
        f.len = <uint32_t>(total - port.hdr_len)
        sg_read(&w.segs[pool], nseg, 0, vhdr, port.hdr_len)
        rc = parse_offload(port, f, vhdr)
        if rc:
            vq.c.drops[rc] += 1
            f.nseg = 0
            continue
        pool += nseg
        vq.c.packets += 1
        vq.c.bytes += f.len
        # The guest's core wrote this frame: its first line is a cache miss.
        # Start every frame's miss now and parse them in a second pass, so
        # the misses of a burst overlap instead of queueing one by one.
        prefetch_frame_head(&w.segs[f.seg0], nseg, f.hdr_len)
    vq.last_avail += <uint16_t>n
    switch_burst(sw, w, pidx, qp, vq, n)
    # Only now give the source its buffers back: the frames have been copied.
    old_used = vq.used_idx
    for i in range(nused):
        vring_put_used(vq, w.tx_used[i].id, 0)
    vring_publish(port, vq)
    vring_notify(vq, port.event_idx, old_used)
    return n


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
    cdef bint pending = False
    cdef vs_port *port
    cdef vs_vring *vq
    cdef uint64_t value
    nports = vs_load_acquire_int(&sw.nports_hi)
    for p in range(nports):
        port = sw.ports[p]
        if port == NULL or not vs_load_acquire_int(&port.active):
            continue
        for qp in range(port.nqp):
            if not worker_owns(sw, w, p, qp):
                continue
            vq = &port.vq[2 * qp + 1]
            if vs_load_acquire_int(&vq.started) and not vs_load_acquire_int(&vq.broken):
                vring_notify_enable(vq, port.event_idx)
                if port.log != NULL:
                    log_used_ring(port, vq)       # flags / avail_event live in the used ring
                if vq.kick_fd < 0:
                    timeout = NOKICK_SLEEP_MS
    vs_mb()
    for p in range(nports):
        port = sw.ports[p]
        if port == NULL or not vs_load_acquire_int(&port.active):
            continue
        for qp in range(port.nqp):
            if not worker_owns(sw, w, p, qp):
                continue
            vq = &port.vq[2 * qp + 1]
            if vs_load_acquire_int(&vq.started) and not vs_load_acquire_int(&vq.broken) and \
                    vs_load_acquire_u16(&vq.avail.idx) != vq.last_avail:
                pending = True
    if not pending:
        w.idle_sleeps += 1
        n = epoll_wait(w.epfd, w.events, VS_EPOLL_BATCH, timeout)
        for i in range(n):
            vq = <vs_vring *>w.events[i].data.ptr
            if vq == NULL:
                read(w.wake_fd, &value, 8)
            elif vq.kick_fd >= 0:
                # kick fds are non-blocking (set by the control plane)
                if read(vq.kick_fd, &value, 8) == 8:
                    vq.c.kicks += 1
        if n > 0:
            w.wakeups += 1
    for p in range(nports):
        port = sw.ports[p]
        if port == NULL or not vs_load_acquire_int(&port.active):
            continue
        for qp in range(port.nqp):
            if not worker_owns(sw, w, p, qp):
                continue
            vq = &port.vq[2 * qp + 1]
            if vs_load_acquire_int(&vq.started):
                vring_notify_disable(vq, port.event_idx)
                if port.log != NULL:
                    log_used_ring(port, vq)


cdef void stall(vs_worker *w) noexcept nogil:
    """Test hook (debug stall-worker): stop making progress for a while, as a
    worker stuck in a bug would, so the watchdog tests can see it noticed."""
    cdef timespec ts
    ts.tv_sec = w.stall_ms // 1000
    ts.tv_nsec = (w.stall_ms % 1000) * 1000000
    nanosleep(&ts, NULL)
    w.stall_ms = 0


cdef void worker_loop(vs_switch *sw, vs_worker *w) noexcept nogil:
    cdef int p, qp, nports, work
    cdef uint32_t idle = 0
    cdef int64_t now, idle_since = 0, busy_since = 0
    cdef uint32_t busy_rounds = 0
    cdef timespec ts
    cdef vs_port *port
    cdef vs_vring *vq
    while not vs_load_acquire_int(&w.quit):
        work = 0
        nports = vs_load_acquire_int(&sw.nports_hi)
        for p in range(nports):
            port = sw.ports[p]
            if port == NULL or not vs_load_acquire_int(&port.active):
                continue
            for qp in range(port.nqp):
                if not worker_owns(sw, w, p, qp):
                    continue
                if port.kind == PORT_TAP:
                    work += tap_rx_burst(sw, w, p, port, qp)
                    continue
                vq = &port.vq[2 * qp + 1]
                if not vs_load_acquire_int(&vq.started) or vs_load_acquire_int(&vq.broken):
                    continue
                work += tx_burst(sw, w, p, port, qp, vq)
        w.rounds += 1
        # End of a round: nothing from before this point is still in use.
        vs_store_release_u64(&w.epoch, w.epoch + 1)
        if w.stall_ms:
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
