# vhost-user ports: a guest's virtio-net queues in its own memory.
#
# Ingress (vhost_ingress_burst): the guest's TX ring, dequeued in bursts by
# the worker that owns the queue pair; each frame's headers are copied once
# into the worker (take_headers) before anything is decided about it.
# Delivery (deliver_to_vhost): into one of the guest's RX rings, under the
# ring's spinlock for the whole burst, the source's offload request
# re-expressed in what this guest negotiated (vhost_deliver_frame).

cdef inline void prefetch_frame_head(vs_seg *segs, int nseg, uint32_t off) noexcept nogil:
    cdef int i = 0
    while i < nseg and off >= segs[i].len:
        off -= segs[i].len
        i += 1
    if i < nseg:
        __builtin_prefetch(segs[i].p + off, 0, 3)


cdef inline void prefetch_headers(vs_seg *segs, int nseg, uint32_t hdr_len) noexcept nogil:
    """The lines take_headers will read: when the headers are in the first
    piece (the usual layout), its first and its last byte, no search."""
    cdef uint32_t nh = hdr_len + VS_L2_COPY
    if nseg > 0 and segs[0].len >= nh:
        __builtin_prefetch(segs[0].p, 0, 3)
        __builtin_prefetch(segs[0].p + nh - 1, 0, 3)
        return
    prefetch_frame_head(segs, nseg, 0)
    prefetch_frame_head(segs, nseg, hdr_len)


cdef int vhost_deliver_frame(vs_worker *w, vs_port *dport, vs_vring *rvq, uint16_t avail_idx,
                             vs_frame *f, vs_seg *segs) noexcept nogil:
    """Deliver one frame (segments `segs`, f.hdr_len header bytes to skip) to
    one destination ring, re-expressing the source's offload request in what
    this destination negotiated (docs/architecture.md, "Offloads between
    guests"): hand the partial checksum or GSO frame on when it can take it,
    else finish the checksum or cut the segments here - for this destination
    only."""
    cdef uint8_t hdr[VS_HDR_MAX]
    cdef vs_tso plan
    cdef vs_seg one
    cdef uint32_t i, seglen
    cdef int rc
    memset(hdr, 0, VS_HDR_MAX)
    if f.gso_type == VS_GSO_NONE and not (f.vflags & VNET_F_NEEDS_CSUM):
        return rx_enqueue(w, dport, rvq, avail_idx, segs, f.nseg, f.hdr_len, f.len, hdr)
    if f.gso_type != VS_GSO_NONE and accepts_gso(dport, f.gso_type):
        hdr[0] = VNET_F_NEEDS_CSUM
        hdr[1] = f.gso_type
        put_le16(hdr + 2, f.vhdr_len)
        put_le16(hdr + 4, f.gso_size)
        put_le16(hdr + 6, f.csum_start)
        put_le16(hdr + 8, f.csum_offset)
        rc = rx_enqueue(w, dport, rvq, avail_idx, segs, f.nseg, f.hdr_len, f.len, hdr)
        if rc == 0:
            rvq.c.gso_passthrough += 1
        return rc
    if f.gso_type == VS_GSO_NONE and has_feature(dport, F_NET_GUEST_CSUM):
        hdr[0] = VNET_F_NEEDS_CSUM
        put_le16(hdr + 6, f.csum_start)
        put_le16(hdr + 8, f.csum_offset)
        rc = rx_enqueue(w, dport, rvq, avail_idx, segs, f.nseg, f.hdr_len, f.len, hdr)
        if rc == 0:
            rvq.c.csum_passthrough += 1
        return rc
    # Software fallback: make the frame linear (a second copy, only on this path).
    # w.lin and w.segbuf are the next frame's too: copied out now, not deferred.
    w.rx_defer = 0
    sg_read(segs, f.nseg, f.hdr_len, w.lin, f.len)
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
        if w.budget <= 0:
            rc = DROP_OVER_BUDGET
        else:
            seglen = tso_segment(w.lin, &plan, f.gso_size, i, w.segbuf)
            one.p = w.segbuf
            one.len = seglen
            rc = rx_enqueue(w, dport, rvq, avail_idx, &one, 1, 0, seglen, hdr)
        if rc:
            # The ring refused one segment (or the work is spent): the rest
            # would meet the same, and a frame with a hole is lost anyway.
            if rc == DROP_OVER_BUDGET:
                return rc
            rvq.c.drops[rc] += plan.nsegs - i
            break
    rvq.c.sw_gso += 1
    rvq.c.sw_gso_segments += plan.nsegs
    return 0


cdef void deliver_to_vhost(vs_switch *sw, vs_worker *w, int d, vs_vring *src_vq,
                           int qp, int n, int view) noexcept nogil:
    """Copy the frames of this burst that go to vhost port d into one of its
    guest's RX rings (deliver_to_port checked that the port is active)."""
    cdef vs_port *dport = sw.ports[d]
    cdef vs_vring *rvq
    cdef int i, rc, nrx, q, navail, tag
    cdef uint16_t avail_idx, old_used, head
    cdef vs_frame *f
    cdef vs_frame *vf
    cdef vs_seg *segs
    cdef uint8_t eth_type[2]
    cdef uint64_t now = 0
    # The smallest frame this ring could not take in this delivery, and why:
    # frames as large are dropped for the same reason without walking its
    # buffers again (a receiver's buffers cost its senders one walk a burst).
    cdef uint32_t refused_len = 0xffffffff
    cdef int refused_rc = 0
    nrx = dport.n_rx_enabled
    rvq = NULL
    if nrx > 0:
        q = dport.rx_enabled[qp % nrx]
        if q < dport.nqp:
            rvq = &dport.vq[2 * q]
    if rvq == NULL or not vs_load_acquire_int(&rvq.started) or \
            not vs_load_acquire_int(&rvq.enabled) or rvq.broken or mem_lost(dport):
        # Only a frame addressed to this port counts; floods just pass it by.
        if view == VIEW_NORMAL:
            for i in range(n):
                if w.frames[i].dst == d:
                    src_vq.c.drops[DROP_NO_RX_QUEUE] += 1
        return
    if dport.egress_policy and view == VIEW_NORMAL:
        now = now_ns()
    vs_spin_lock(&rvq.lock)
    w.nbad_heads = 0
    old_used = rvq.used_idx
    if rvq.packed:
        # packed.pxi: no avail index; pk_rx_enqueue looks at the ring itself
        navail = 0
        avail_idx = 0
    else:
        navail = vring_avail_count(rvq, &avail_idx)
    if navail < 0:
        if not mem_lost(dport):     # zero pages in place of the ring are not a wild index
            vring_mark_broken(w, rvq)
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
        tag = egress_select(sw, dport, d, f, view, src_vq)
        if tag < 0:
            continue
        if w.budget <= 0:
            src_vq.c.drops[DROP_OVER_BUDGET] += 1
            continue
        vf = frame_view(w, f, w.segs, tag, &segs)
        if vf == NULL:
            rvq.c.drops[DROP_BAD_OFFLOAD] += 1
            continue
        if dport.mtu:      # the port's configured mtu (0: none): one branch when unset
            # the EtherType of the frame as delivered (a tag pushed or popped)
            sg_read(segs, vf.nseg, vf.hdr_len + 12, eth_type, 2)
            if not frame_fits_mtu(dport, vf, eth_type):
                rvq.c.drops[DROP_MTU_EXCEEDED] += 1
                continue
        if now and not police(&dport.out_bytes, &dport.out_pkts, f, now):
            rvq.c.drops[DROP_RATE_LIMITED] += 1
            continue
        if vf.len >= refused_len and vf.gso_type == VS_GSO_NONE:
            rvq.c.drops[refused_rc] += 1
            continue
        # A frame as it came (no retag, no linear copy): its bytes stay put
        # until the burst ends, so its copy may wait for the others'. Not
        # while the dirty log is on: a page is marked after it is written.
        w.rx_defer = vf == f and dport.log == NULL
        rc = vhost_deliver_frame(w, dport, rvq, avail_idx, vf, segs)
        if rc == DROP_OVER_BUDGET:
            src_vq.c.drops[rc] += 1
        elif rc:
            rvq.c.drops[rc] += 1
            if (rc == DROP_NO_RX_BUFFER or rc == DROP_RX_BUFFER_TOO_SMALL) and \
                    vf.gso_type == VS_GSO_NONE and vf.len < refused_len:
                refused_len = vf.len
                refused_rc = rc
    w.rx_defer = 0
    if w.nrx_copies:
        rx_copies_flush(w)
    if rvq.packed:
        if rvq.pk_pending:
            pk_publish(dport, rvq)
            pk_notify(w, rvq, dport.event_idx, old_used)
    elif rvq.used_idx != old_used:
        vring_publish(dport, rvq)
        vring_notify(w, rvq, dport.event_idx, old_used)
    vs_spin_unlock(&rvq.lock)


cdef inline void take_headers(vs_worker *w, vs_frame *f, int i) noexcept nogil:
    """Copy the virtio-net header and the L2 header (Ethernet + one 802.1Q
    tag) of frame i out of guest memory into w.fhead[i], once, and make that
    private copy the frame's first segment: every decision (offload, VLAN,
    port security, FDB, MTU, policing) and every delivery (vhost, TAP, VXLAN,
    mirror, capture) reads the same bytes, whatever a second vCPU writes into
    the guest's buffer meanwhile. On entry the frame's nseg segments start at
    f.seg0 + 1 and f.seg0 is free; the rest of the frame stays in place."""
    cdef vs_seg *segs = &w.segs[f.seg0]
    cdef uint32_t nh = f.hdr_len + (f.len if f.len < VS_L2_COPY else VS_L2_COPY)
    cdef uint32_t skip = nh
    cdef int k = 1, out = 1
    if f.len <= VS_SMALL_COPY:
        # a small frame whole: one segment, as the guest had it (the copy into
        # the destination then has one source piece, not two)
        nh = f.hdr_len + f.len
        if nh <= segs[1].len:
            vs_copy(w.fhead[i], segs[1].p, nh)   # one piece, inline (vs_defs.h)
        else:
            sg_read(segs + 1, f.nseg, 0, w.fhead[i], nh)
        segs[0].p = w.fhead[i]
        segs[0].len = nh
        f.nseg = 1
        return
    sg_read(segs + 1, f.nseg, 0, w.fhead[i], nh)
    while k <= f.nseg and skip >= segs[k].len:
        skip -= segs[k].len
        k += 1
    while k <= f.nseg:
        segs[out].p = segs[k].p + skip
        segs[out].len = segs[k].len - skip
        skip = 0
        out += 1
        k += 1
    segs[0].p = w.fhead[i]
    segs[0].len = nh
    f.nseg = out


cdef int vhost_ingress_burst(vs_switch *sw, vs_worker *w, int pidx, vs_port *port, int qp,
                             vs_vring *vq) noexcept nogil:
    """Dequeue up to VS_BURST frames from a guest's TX ring (the switch's
    ingress from that port) and switch them."""
    cdef uint16_t avail_idx, head, old_used
    cdef int n
    cdef int i, rc, nseg, nused = 0, pool = 0
    cdef uint64_t total
    cdef bint discard
    cdef vs_frame *f
    if vq.packed:
        return pk_ingress_burst(sw, w, pidx, port, qp, vq)     # packed.pxi
    n = vring_avail_count(vq, &avail_idx)
    if n < 0:
        if not mem_lost(port):      # zero pages in place of the ring are not a wild index
            vring_mark_broken(w, vq)
        return 0
    if n == 0 or vq.iotlb_wait:
        return 0
    if n > VS_BURST:
        n = VS_BURST
    # "started but disabled: consume and discard TX" (vhost-user.rst, Ring states)
    discard = not vs_load_acquire_int(&vq.enabled)
    # The guest just wrote these descriptors: read the burst's heads in one
    # pass (one or two lines of the avail ring; each entry read once, kept
    # in w.heads) and start all their descriptors' misses at once.
    for i in range(n):
        head = vq.avail.ring[<uint16_t>(vq.last_avail + i) & (vq.num - 1)]
        w.heads[i] = head
        if head < vq.num:
            __builtin_prefetch(&vq.desc[head], 0, 3)
    for i in range(n):
        if w.budget <= 0:
            n = i           # the port's work for this round is spent: the rest waits
            break
        head = w.heads[i]
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
        # segs[pool] stays free for the private copy of the headers
        rc = walk_chain(port, vq, head, False, &w.segs[pool + 1], VS_MAX_SEGS, &nseg, &total,
                        &w.budget)
        if rc == DROP_IOTLB_MISS:
            # Not consumed: this frame and the ones behind it wait until the
            # front-end sent the entry (the control plane clears iotlb_wait).
            if head < vq.num:
                nused -= 1
            n = i
            vq.iotlb_wait = 1
            break
        if rc == 0 and total < port.hdr_len + VS_ETH_HLEN:
            rc = DROP_RUNT
        if rc:
            vq.c.drops[rc] += 1
            continue
        f.seg0 = pool
        f.nseg = nseg
        f.hdr_len = port.hdr_len
        f.len = <uint32_t>(total - port.hdr_len)
        pool += nseg + 1
        # The guest's core wrote this frame: its first line is a cache miss.
        # Start every frame's miss now and copy the headers in a second pass,
        # so the misses of a burst overlap instead of queueing one by one.
        prefetch_headers(&w.segs[pool - nseg], nseg, f.hdr_len)
    vq.last_avail += <uint16_t>n
    for i in range(n):
        f = &w.frames[i]
        if f.nseg == 0:
            continue
        take_headers(w, f, i)
        rc = parse_offload(port, f, w.fhead[i])
        if rc:
            vq.c.drops[rc] += 1
            f.nseg = 0
            continue
        vq.c.packets += 1
        vq.c.bytes += f.len
    switch_burst(sw, w, pidx, qp, vq, n)
    # Only now give the source its buffers back: the frames have been copied.
    old_used = vq.used_idx
    for i in range(nused):
        vring_put_used(vq, w.tx_used[i].id, 0)
    vring_publish(port, vq)
    vring_notify(w, vq, port.event_idx, old_used)
    return n
