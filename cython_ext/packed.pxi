# Packed virtqueues (virtio spec 1.1+, "Packed Virtqueues"): one descriptor
# ring that the driver and the device both write, instead of the split ring's
# three areas. The walker, the used-element writer and the notification
# decision for VIRTIO_F_RING_PACKED rings; vhost.pxi dispatches to them once
# per burst (vs_vring.packed), the switching code between is the same.
#
# Positions: vq.last_avail (next descriptor to look at) and vq.used_idx (next
# slot a used element goes to) are ring positions 0..num-1, each with a wrap
# counter that flips when the position passes the end of the ring. The ring
# size need not be a power of two, so positions wrap by comparison, never by
# masking. Everything read from the ring is read once into a local.
#
# vhost-user SET_VRING_ADDR for a packed ring: desc is the descriptor ring,
# avail the driver event suppression area, used the device event suppression
# area (vq.avail / vq.used point at them, 4 bytes each).

cdef enum:
    F_RING_PACKED = 34
    VRING_PACKED_DESC_F_AVAIL = 1 << 7
    VRING_PACKED_DESC_F_USED = 1 << 15
    # event suppression area flags (spec "Event Suppression Structure Format")
    VRING_PACKED_EVENT_F_ENABLE = 0
    VRING_PACKED_EVENT_F_DISABLE = 1
    VRING_PACKED_EVENT_F_DESC = 2        # only with VIRTIO_F_EVENT_IDX

# Descriptor and event suppression layouts (le16/le32/le64 on x86: native).
ctypedef struct vs_pdesc:
    uint64_t addr
    uint32_t len
    uint16_t id
    uint16_t flags

ctypedef struct vs_pevent:
    uint16_t off_wrap                    # bits 0-14 descriptor offset, bit 15 its wrap counter
    uint16_t flags


cdef inline bint pk_is_avail(uint16_t flags, uint8_t wrap) noexcept nogil:
    """Spec: a descriptor is available when its AVAIL bit equals the driver's
    wrap counter and its USED bit does not."""
    return (((flags & VRING_PACKED_DESC_F_AVAIL) != 0) == (wrap != 0)) and \
        (((flags & VRING_PACKED_DESC_F_USED) != 0) != (wrap != 0))


cdef inline uint16_t pk_head_flags(vs_vring *vq) noexcept nogil:
    """The flags of the descriptor at last_avail, loaded with acquire: its
    other fields (and those of the rest of its chain, which the driver made
    available before the head) are read only after this."""
    return vs_load_acquire_u16(&(<vs_pdesc *>vq.desc)[vq.last_avail].flags)


cdef inline bint pk_has_avail(vs_vring *vq) noexcept nogil:
    return pk_is_avail(pk_head_flags(vq), vq.avail_wrap)


cdef inline void pk_advance(uint16_t *pos, uint8_t *wrap, uint32_t n, uint32_t num) noexcept nogil:
    """Move a ring position by n <= num slots, flipping its wrap counter when
    it passes the end (the size may be any number: compare, never mask)."""
    cdef uint32_t i = <uint32_t>pos[0] + n
    if i >= num:
        i -= num
        wrap[0] ^= 1
    pos[0] = <uint16_t>i


cdef void pk_prefetch_rx(vs_port *port, vs_vring *vq, int chains) noexcept nogil:
    """iotlb_prefetch_rx for a packed RX ring (the caller holds its lock):
    translate (and so ask for what misses) the buffers of the next `chains`
    available chains, from the ring's position, without moving it. Direct
    descriptors only: an indirect table's entries are asked for when a
    frame misses them."""
    cdef vs_pdesc *d = <vs_pdesc *>vq.desc
    cdef uint16_t pos = vq.last_avail
    cdef uint8_t wrap = vq.avail_wrap
    cdef uint16_t flags
    cdef uint32_t seen = 0
    cdef int nseg
    cdef vs_seg segs[VS_MAX_SEGS]
    if d == NULL or pos >= vq.num:
        return
    while chains > 0 and seen < vq.num:
        flags = vs_load_acquire_u16(&d[pos].flags)
        if not pk_is_avail(flags, wrap):
            return
        if not (flags & VRING_DESC_F_INDIRECT):
            nseg = 0
            port_segments(port, d[pos].addr, d[pos].len, IOTLB_PERM_W, segs, &nseg, VS_MAX_SEGS)
        if not (flags & VRING_DESC_F_NEXT):
            chains -= 1
        pk_advance(&pos, &wrap, 1, vq.num)
        seen += 1


cdef inline int pk_collect(vs_port *port, uint64_t addr, uint32_t length, uint16_t flags,
                           bint device_writes, vs_seg *segs, int maxseg, int *nseg,
                           uint64_t *total, bint *too_many) noexcept nogil:
    """One buffer descriptor: the same checks as walk_chain (vring.pxi)."""
    cdef int rc
    if ((flags & VRING_DESC_F_WRITE) != 0) != device_writes:
        return DROP_BAD_FLAGS
    total[0] += length
    if total[0] > VS_MAX_FRAME + VS_HDR_MAX:
        return DROP_BAD_LENGTH
    if not too_many[0]:
        rc = port_segments(port, addr, length, IOTLB_PERM_W if device_writes else IOTLB_PERM_R,
                           segs, nseg, maxseg)
        if rc == DROP_TOO_MANY_SEGMENTS:
            too_many[0] = True      # told apart from a loop or an over-long chain, as in walk_chain
        elif rc:
            return rc
    return 0


cdef int pk_indirect(vs_port *port, uint64_t addr, uint32_t length, bint device_writes,
                     vs_seg *segs, int maxseg, int *nseg, uint64_t *total, bint *too_many,
                     uint32_t *walked, int64_t *budget) noexcept nogil:
    """An indirect table of a packed ring: len/16 descriptors used in order
    (spec: NEXT means nothing in it, no `next` field), none of them indirect."""
    cdef vs_pdesc *table
    cdef uint32_t i, n
    cdef uint64_t a
    cdef uint32_t l
    cdef uint16_t f
    cdef int rc
    if not port.indirect:
        return DROP_BAD_INDIRECT
    if length == 0 or length % sizeof(vs_pdesc) != 0 or length // sizeof(vs_pdesc) > 65536:
        return DROP_BAD_INDIRECT
    table = <vs_pdesc *>port_contig(port, addr, length, IOTLB_PERM_R, &rc)
    if table == NULL:
        return rc if rc == DROP_IOTLB_MISS or rc == DROP_IOTLB_DENIED else DROP_BAD_INDIRECT
    n = length // sizeof(vs_pdesc)
    for i in range(n):
        walked[0] += 1
        budget[0] -= 1
        if walked[0] > VS_MAX_CHAIN_DESCS:
            return DROP_BAD_CHAIN
        a = table[i].addr
        l = table[i].len
        f = table[i].flags
        if f & VRING_DESC_F_INDIRECT:
            return DROP_BAD_INDIRECT
        rc = pk_collect(port, a, l, f, device_writes, segs, maxseg, nseg, total, too_many)
        if rc:
            return rc
    return 0


cdef int pk_walk_chain(vs_port *port, vs_vring *vq, uint16_t head_flags, bint device_writes,
                       vs_seg *segs, int maxseg, int *nseg, uint64_t *total, int64_t *budget,
                       uint16_t *buf_id, uint16_t *ndesc) noexcept nogil:
    """Walk the chain whose head is at vq.last_avail (the caller loaded its
    flags, `head_flags`, with acquire and found it available) and move
    last_avail past it.

    Returns 0 or a drop reason; either way the chain is consumed: *ndesc
    descriptors (what the used index moves by; an indirect one counts 1) and
    *buf_id, the id of its last descriptor (spec: the buffer id is in the last
    descriptor of the list), for the used element. A bad chain is still
    walked to its end (its NEXT flags only) so that the next chain is found;
    DROP_RING_BROKEN if no descriptor within the ring ends it (nothing is
    consumed: no driver can make such a chain). At most VS_MAX_CHAIN_DESCS
    descriptors are collected, as in walk_chain; every one looked at is
    charged to `budget`."""
    cdef vs_pdesc *ring = <vs_pdesc *>vq.desc
    cdef uint32_t num = vq.num
    cdef uint32_t idx = vq.last_avail
    cdef uint32_t n = 0, walked = 0
    cdef uint16_t flags = head_flags
    cdef uint64_t addr
    cdef uint32_t length
    cdef int rc = 0
    cdef bint too_many = False
    nseg[0] = 0
    total[0] = 0
    while True:
        addr = ring[idx].addr
        length = ring[idx].len
        buf_id[0] = ring[idx].id
        if n > 0:
            flags = ring[idx].flags
        n += 1
        budget[0] -= 1
        if rc == 0:
            walked += 1
            if walked > VS_MAX_CHAIN_DESCS:
                rc = DROP_BAD_CHAIN
            elif flags & VRING_DESC_F_INDIRECT:
                # "The driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT"
                if flags & VRING_DESC_F_NEXT:
                    rc = DROP_BAD_INDIRECT
                else:
                    rc = pk_indirect(port, addr, length, device_writes, segs, maxseg, nseg,
                                     total, &too_many, &walked, budget)
            else:
                rc = pk_collect(port, addr, length, flags, device_writes, segs, maxseg, nseg,
                                total, &too_many)
        if not (flags & VRING_DESC_F_NEXT):
            break
        if n == num:
            return DROP_RING_BROKEN
        idx += 1
        if idx == num:
            idx = 0             # the chain crosses the end of the ring (its wrap flips below)
    pk_advance(&vq.last_avail, &vq.avail_wrap, n, num)
    ndesc[0] = <uint16_t>n
    if rc == 0 and too_many:
        rc = DROP_TOO_MANY_SEGMENTS
    return rc


# --- used elements -------------------------------------------------------------------------

cdef inline void pk_put_used(vs_vring *vq, uint16_t buf_id, uint32_t length, uint16_t ndesc,
                             bint written) noexcept nogil:
    """Write one used element at the used position: id and len in its first
    slot, then its flags (AVAIL and USED both equal to the used wrap counter;
    WRITE when the device wrote the buffer, else the driver ignores len).
    The flags of the first element since the last publish are held back
    until pk_publish, and every later one's are stored with release: the
    driver reads elements in order, so the whole batch becomes visible at
    once, each with its id and len already in place. The position moves by
    the descriptors the chain took."""
    cdef vs_pdesc *d = &(<vs_pdesc *>vq.desc)[vq.used_idx]
    cdef uint16_t flags = VRING_DESC_F_WRITE if written else 0
    if vq.used_wrap:
        flags |= VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED
    d.id = buf_id
    d.len = length
    if vq.pk_pending:
        vs_store_release_u16(&d.flags, flags)
    else:
        vq.pk_pending = 1
        vq.pk_first = vq.used_idx
        vq.pk_first_flags = flags
    vq.pk_ndescs += ndesc
    pk_advance(&vq.used_idx, &vq.used_wrap, ndesc, vq.num)


cdef inline void pk_log_used(vs_port *port, vs_vring *vq) noexcept nogil:
    """Dirty log (vhost-user.rst "Migration"): the descriptor slots the batch
    wrote, which lie in the descriptor ring (a packed ring has no used ring)."""
    cdef uint64_t gpa
    cdef uint64_t num = vq.num
    cdef uint64_t first = vq.pk_first
    cdef uint64_t n = vq.pk_ndescs
    if not mem_host_to_gpa(&port.mem, <uint8_t *>vq.desc, &gpa):
        return
    if n >= num:
        log_gpa_range(port, gpa, 16 * num)
    elif first + n <= num:
        log_gpa_range(port, gpa + 16 * first, 16 * n)
    else:
        log_gpa_range(port, gpa + 16 * first, 16 * (num - first))
        log_gpa_range(port, gpa, 16 * (first + n - num))


cdef inline void pk_publish(vs_port *port, vs_vring *vq) noexcept nogil:
    """Make the batch of used elements visible: the first one's flags, last,
    with release."""
    if not vq.pk_pending:
        return
    vs_store_release_u16(&(<vs_pdesc *>vq.desc)[vq.pk_first].flags, vq.pk_first_flags)
    vq.pk_pending = 0
    if port.log != NULL:
        pk_log_used(port, vq)
    vq.pk_ndescs = 0


cdef inline void pk_log_device_event(vs_port *port, vs_vring *vq) noexcept nogil:
    """The device event area we write (notification enable/disable); its
    guest address is the log address of SET_VRING_ADDR (QEMU passes the
    "used" address, which for a packed ring is this area)."""
    if vq.log_used:
        log_gpa_range(port, vq.log_used_gpa, 4)


cdef inline void pk_notify(vs_worker *w, vs_vring *vq, int event_idx, uint16_t old_used) noexcept nogil:
    """Signal the guest after publishing, unless its driver event area says
    not to (spec "Driver and Device Event Suppression"): DISABLE never,
    DESC (EVENT_IDX only) when the used position passed its off_wrap since
    old_used, anything else (ENABLE) always. As in DPDK's
    vhost_vring_call_packed."""
    cdef vs_pevent *ev = <vs_pevent *>vq.avail
    cdef uint16_t flags, off_wrap, off
    cdef uint16_t new_used = vq.used_idx
    cdef uint16_t num = <uint16_t>vq.num
    cdef bint need
    vs_mb()
    flags = (<volatile uint16_t *>&ev.flags)[0]
    if flags == VRING_PACKED_EVENT_F_DISABLE:
        need = False
    elif event_idx and flags == VRING_PACKED_EVENT_F_DESC:
        off_wrap = (<volatile uint16_t *>&ev.off_wrap)[0]
        off = off_wrap & 0x7fff
        if new_used <= old_used:
            old_used = <uint16_t>(old_used - num)
        if vq.used_wrap != (off_wrap >> 15):
            off = <uint16_t>(off - num)
        need = vs_need_event(off, new_used, old_used)
    else:
        need = True
    if need and vq.call_fd >= 0:
        notify_request(w, vq, NOTIFY_CALL)
        vq.c.notifications += 1
    else:
        vq.c.notify_suppressed += 1


cdef inline void pk_notify_enable(vs_vring *vq, int event_idx) noexcept nogil:
    """Ask the driver to kick on its next buffer (device event area), as
    vring_notify_enable does for a split ring: with EVENT_IDX at the
    descriptor we look at next, else on any."""
    cdef vs_pevent *ev = <vs_pevent *>vq.used
    if event_idx:
        (<volatile uint16_t *>&ev.off_wrap)[0] = <uint16_t>(vq.last_avail | (<uint16_t>vq.avail_wrap << 15))
        vs_store_release_u16(&ev.flags, VRING_PACKED_EVENT_F_DESC)
    else:
        vs_store_release_u16(&ev.flags, VRING_PACKED_EVENT_F_ENABLE)


cdef inline void pk_notify_disable(vs_vring *vq) noexcept nogil:
    vs_store_release_u16(&(<vs_pevent *>vq.used).flags, VRING_PACKED_EVENT_F_DISABLE)


# --- TX (the guest's sends: the switch's ingress) and RX (delivery: rx_enqueue) -------------

cdef int pk_ingress_burst(vs_switch *sw, vs_worker *w, int pidx, vs_port *port, int qp,
                          vs_vring *vq) noexcept nogil:
    """vhost_ingress_burst for a packed TX ring: dequeue up to VS_BURST
    chains, switch them, then return them all (length 0) in one batch."""
    cdef uint16_t flags, buf_id, ndesc, old_used, chain_pos
    cdef uint8_t chain_wrap
    cdef int n = 0, i, rc, nseg, pool = 0
    cdef uint64_t total
    cdef bint discard
    cdef vs_frame *f
    if vq.iotlb_wait:
        return 0        # stopped at an IOVA being asked for (iotlb.pxi)
    flags = pk_head_flags(vq)
    if not pk_is_avail(flags, vq.avail_wrap):
        return 0
    vq.avail_moved = 1
    # "started but disabled: consume and discard TX" (vhost-user.rst, Ring states)
    discard = not vs_load_acquire_int(&vq.enabled)
    while True:
        if w.budget <= 0:
            break           # the port's work for this round is spent: the rest waits
        f = &w.frames[n]
        f.dst = FRAME_DROPPED
        f.nseg = 0
        # segs[pool] stays free for the private copy of the headers
        chain_pos = vq.last_avail
        chain_wrap = vq.avail_wrap
        rc = pk_walk_chain(port, vq, flags, False, &w.segs[pool + 1], VS_MAX_SEGS, &nseg,
                           &total, &w.budget, &buf_id, &ndesc)
        if rc == DROP_RING_BROKEN:
            vring_mark_broken(w, vq)
            break
        if rc == DROP_IOTLB_MISS:
            # Not consumed, as on a split ring: this chain and the ones behind
            # it wait until the front-end sent the entry.
            vq.last_avail = chain_pos
            vq.avail_wrap = chain_wrap
            vq.iotlb_wait = 1
            break
        f.head = buf_id
        w.tx_used[n].id = buf_id
        w.tx_used[n].len = ndesc          # (TX elements are returned with length 0)
        n += 1
        if discard:
            rc = DROP_RING_DISABLED
        elif rc == 0 and total < port.hdr_len + VS_ETH_HLEN:
            rc = DROP_RUNT
        if rc:
            vq.c.drops[rc] += 1
        else:
            f.seg0 = pool
            f.nseg = nseg
            f.hdr_len = port.hdr_len
            f.len = <uint32_t>(total - port.hdr_len)
            pool += nseg + 1
            prefetch_headers(&w.segs[pool - nseg], nseg, f.hdr_len)
        if n == VS_BURST:
            break
        flags = pk_head_flags(vq)
        if not pk_is_avail(flags, vq.avail_wrap):
            break
    if n == 0:
        return 0
    # From here as vhost_ingress_burst (vhost.pxi).
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
    for i in range(n):
        pk_put_used(vq, <uint16_t>w.tx_used[i].id, 0, <uint16_t>w.tx_used[i].len, False)
    pk_publish(port, vq)
    pk_notify(w, vq, port.event_idx, old_used)
    return n


cdef int pk_rx_reserve(vs_worker *w, vs_port *dport, vs_vring *vq, uint64_t need,
                       int *nchains_out, int *nseg_out, uint64_t *cap_out) noexcept nogil:
    """rx_enqueue's reservation (vring.pxi) for a packed RX ring: take chains
    from the ring until they hold `need` bytes, into w.rxchains/w.rxsegs,
    with the same limits and results. rx_enqueue then copies the frame and
    writes the used elements (pk_put_used) as for a split ring: one copy
    routine for both kinds. On failure nothing is consumed except a bad
    chain, which goes back with length 0 with the chains reserved before it.
    The caller holds vq.lock."""
    cdef uint64_t cap = 0, chain_len
    cdef int nchains = 0, nseg_total = 0, nseg, rc, i
    cdef uint16_t flags, buf_id, ndesc
    cdef uint16_t saved_avail = vq.last_avail
    cdef uint8_t saved_wrap = vq.avail_wrap
    cdef int64_t budget_at_start = w.budget
    while cap < need:
        flags = pk_head_flags(vq)
        rc = 0
        if not pk_is_avail(flags, vq.avail_wrap):
            rc = DROP_NO_RX_BUFFER
        elif nchains == 1 and not dport.mrg_rxbuf:
            rc = DROP_RX_BUFFER_TOO_SMALL
        elif nchains == VS_MAX_RX_CHAINS or budget_at_start - w.budget > VS_MAX_RX_WALK:
            rc = DROP_RX_BUFFER_TOO_SMALL
        elif w.budget <= 0:
            rc = DROP_OVER_BUDGET        # the sender's work is spent, not the receiver's buffer
        if rc:
            vq.last_avail = saved_avail
            vq.avail_wrap = saved_wrap
            return rc
        vq.avail_moved = 1
        rc = pk_walk_chain(dport, vq, flags, True, &w.rxsegs[nseg_total],
                           VS_MAX_RX_CHAINS * VS_MAX_SEGS - nseg_total, &nseg, &chain_len,
                           &w.budget, &buf_id, &ndesc)
        if rc == DROP_RING_BROKEN:
            vq.last_avail = saved_avail
            vq.avail_wrap = saved_wrap
            vring_mark_broken(w, vq)
            return DROP_RX_BAD_CHAIN
        if rc == DROP_IOTLB_MISS:
            # the buffer's IOVA is being asked for: not the receiver's fault,
            # its buffers stay (the frame is dropped and counted)
            vq.last_avail = saved_avail
            vq.avail_wrap = saved_wrap
            return rc
        if rc == 0 and chain_len == 0:
            rc = DROP_RX_BAD_CHAIN
        if rc:
            # A bad buffer is the guest's loss: it and the buffers already
            # reserved for this frame go back empty, and the frame is dropped.
            for i in range(nchains):
                pk_put_used(vq, w.rxchains[i].head, 0, w.rxchains[i].ndesc, True)
            pk_put_used(vq, buf_id, 0, ndesc, True)
            return DROP_IOTLB_DENIED if rc == DROP_IOTLB_DENIED else DROP_RX_BAD_CHAIN
        w.rxchains[nchains].head = buf_id
        w.rxchains[nchains].ndesc = ndesc
        w.rxchains[nchains].seg0 = nseg_total
        w.rxchains[nchains].nseg = nseg
        w.rxchains[nchains].cap = <uint32_t>chain_len
        nchains += 1
        nseg_total += nseg
        cap += chain_len
    nchains_out[0] = nchains
    nseg_out[0] = nseg_total
    cap_out[0] = cap
    return 0


cdef int pk_rx_take_one(vs_worker *w, vs_port *dport, vs_vring *vq, uint64_t need,
                        int *nseg, uint16_t *buf_id) noexcept nogil:
    """rx_enqueue's usual case on a packed RX ring: the next available
    descriptor is one direct, device-writable buffer that holds the whole
    frame (`need` bytes, header included). Then it is taken (last_avail
    moves past it, its pieces at w.rxsegs[0]) and 0 returned; if its buffer
    does not translate, what pk_rx_reserve would do with it (a miss: nothing
    taken; else it goes back empty) and the drop reason. -1 when the
    descriptor is anything else (a chain, an indirect table, too small, not
    available, no budget left): nothing is read further or taken, and
    pk_rx_reserve decides, with the same checks in the same order."""
    cdef vs_pdesc *d = &(<vs_pdesc *>vq.desc)[vq.last_avail]
    cdef uint16_t flags = pk_head_flags(vq)
    cdef uint64_t addr
    cdef uint32_t length
    cdef int rc
    if not pk_is_avail(flags, vq.avail_wrap) or w.budget <= 0 or \
            (flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE)) != VRING_DESC_F_WRITE:
        return -1
    length = d.len
    if length < need or length > VS_MAX_FRAME + VS_HDR_MAX:
        return -1
    addr = d.addr
    buf_id[0] = d.id
    nseg[0] = 0
    vq.avail_moved = 1
    w.budget -= 1
    rc = port_segments(dport, addr, length, IOTLB_PERM_W, &w.rxsegs[0],
                       nseg, VS_MAX_RX_CHAINS * VS_MAX_SEGS)
    if rc == DROP_IOTLB_MISS:
        return rc                 # asked for; the buffer stays (as pk_rx_reserve)
    pk_advance(&vq.last_avail, &vq.avail_wrap, 1, vq.num)
    if rc:
        pk_put_used(vq, buf_id[0], 0, 1, True)
        return DROP_IOTLB_DENIED if rc == DROP_IOTLB_DENIED else DROP_RX_BAD_CHAIN
    return 0


cdef int pk_rx_enqueue(vs_worker *w, vs_port *dport, vs_vring *vq, vs_seg *src, int nsrc,
                       uint32_t src_off, uint32_t flen, uint8_t *hdr) noexcept nogil:
    """rx_enqueue (vring.pxi) for a packed ring: one buffer for the whole
    frame (pk_rx_take_one), written as a split ring's; anything else goes
    through pk_rx_reserve in rx_enqueue_general."""
    cdef uint64_t need = <uint64_t>dport.hdr_len + flen
    cdef int64_t budget_at_start = w.budget
    cdef int nseg, rc
    cdef uint16_t buf_id
    rc = pk_rx_take_one(w, dport, vq, need, &nseg, &buf_id)
    if rc < 0:
        return rx_enqueue_general(w, dport, vq, 0, src, nsrc, src_off, flen, hdr,
                                  False, 0, 0, 0, 0, budget_at_start)
    if rc:
        return rc
    rx_fill_one(w, dport, src, nsrc, src_off, flen, hdr, nseg)
    pk_put_used(vq, buf_id, <uint32_t>need, 1, True)
    rx_count_one(w, dport, vq, src, nsrc, src_off, flen)
    return 0


# --- vring state (GET/SET_VRING_BASE) ------------------------------------------------------

cdef inline uint32_t pk_base(vs_vring *vq) noexcept nogil:
    """The 32-bit vring state of a packed ring (vhost-user.rst): bits 0-14
    last avail position, 15 its wrap counter, 16-30 used position, 31 its
    wrap counter."""
    return (<uint32_t>vq.last_avail | (<uint32_t>vq.avail_wrap << 15)
            | (<uint32_t>vq.used_idx << 16) | (<uint32_t>vq.used_wrap << 31))
