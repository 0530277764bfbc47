# Split virtqueues: walking descriptor chains, filling RX buffers, publishing
# used entries and notifying guests. Everything read from guest memory is read
# once into a local and validated there.


cdef inline int walk_chain(vs_port *port, vs_vring *vq, uint16_t head, bint device_writes,
                           vs_seg *segs, int maxseg, int *nseg, uint64_t *total,
                           int64_t *budget) noexcept nogil:
    """Collect the buffers of the chain starting at `head` into segs.

    `device_writes`: RX chains must be all device-writable, TX chains all
    device-readable (virtio-net never mixes them). Returns 0 or a drop reason.

    The head descriptor is read once (all 16 bytes into a local). A buffer
    of one direct descriptor - what Linux and DPDK drivers post for a small
    frame, the virtio-net header and the frame together (virtio spec 5.1.6:
    with VERSION_1 "the driver can use any layout") - is checked and
    translated here, inline: the same checks as walk_chain_general makes of
    a chain of one, in the same order, with the same drop reasons. A chain
    (NEXT) or an indirect table goes to walk_chain_general with that copy."""
    cdef vs_vring_desc d
    nseg[0] = 0
    total[0] = 0
    if head >= vq.num:
        return DROP_BAD_HEAD
    if budget[0] <= 0:
        return DROP_OVER_BUDGET
    d = vq.desc[head]
    if d.flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT):
        return walk_chain_general(port, vq, &d, device_writes, segs, maxseg, nseg, total, budget)
    budget[0] -= 1
    if ((d.flags & VRING_DESC_F_WRITE) != 0) != device_writes:
        return DROP_BAD_FLAGS
    total[0] = d.len
    if d.len > VS_MAX_FRAME + VS_HDR_MAX:
        return DROP_BAD_LENGTH
    # DROP_TOO_MANY_SEGMENTS included: with nothing after it, the general
    # walk returns what translating this one buffer returned
    return port_segments_ring(port, vq, d.addr, d.len,
                              IOTLB_PERM_W if device_writes else IOTLB_PERM_R, segs, nseg, maxseg)


cdef int walk_chain_general(vs_port *port, vs_vring *vq, vs_vring_desc *first, bint device_writes,
                            vs_seg *segs, int maxseg, int *nseg, uint64_t *total,
                            int64_t *budget) noexcept nogil:
    """walk_chain for any chain: `first` is the copy walk_chain read of the
    head descriptor (the head is in the ring, the budget not spent).

    A chain is bounded by the size of the table it lives in (virtio spec
    2.7.5.3.1: the driver must not create a loop), which stops loops, and by
    VS_MAX_CHAIN_DESCS, every descriptor counted (a zero-length one too), so
    no chain costs more than that to walk; each one is charged to `budget`.
    Each descriptor is read once, whole, into `d`."""
    cdef uint32_t walked = 0
    cdef vs_vring_desc *table = vq.desc
    cdef uint32_t table_len = vq.num
    cdef uint32_t idx
    cdef uint32_t count = 0
    cdef bint indirect = False
    cdef bint too_many = False
    cdef vs_vring_desc d = first[0]
    cdef uint64_t addr
    cdef uint32_t length
    cdef uint16_t flags, nxt
    cdef int rc
    while True:
        walked += 1
        budget[0] -= 1
        if walked > VS_MAX_CHAIN_DESCS:
            return DROP_BAD_CHAIN
        addr = d.addr
        length = d.len
        flags = d.flags
        nxt = d.next
        if flags & VRING_DESC_F_INDIRECT:
            # "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an
            # indirect descriptor" and "MUST NOT set both INDIRECT and NEXT".
            if not port.indirect or indirect or (flags & VRING_DESC_F_NEXT):
                return DROP_BAD_INDIRECT
            if length == 0 or length % sizeof(vs_vring_desc) != 0 \
                    or length // sizeof(vs_vring_desc) > 65536:
                return DROP_BAD_INDIRECT
            table = <vs_vring_desc *>port_contig(port, addr, length, IOTLB_PERM_R, &rc)
            if table == NULL:
                return rc if rc == DROP_IOTLB_MISS or rc == DROP_IOTLB_DENIED else DROP_BAD_INDIRECT
            table_len = length // sizeof(vs_vring_desc)
            indirect = True
            count = 0
            d = table[0]
            continue
        count += 1
        if count > table_len:
            return DROP_BAD_CHAIN
        if ((flags & VRING_DESC_F_WRITE) != 0) != device_writes:
            return DROP_BAD_FLAGS
        total[0] += length
        if total[0] > VS_MAX_FRAME + VS_HDR_MAX:
            return DROP_BAD_LENGTH
        if not too_many:
            rc = port_segments_ring(port, vq, addr, length, IOTLB_PERM_W if device_writes else IOTLB_PERM_R,
                                    segs, nseg, maxseg)
            if rc == DROP_TOO_MANY_SEGMENTS:
                # Keep walking (without collecting) to tell a loop or an
                # over-long chain (bad_chain) from a merely fragmented one.
                too_many = True
            elif rc:
                return rc
        if not (flags & VRING_DESC_F_NEXT):
            return DROP_TOO_MANY_SEGMENTS if too_many else 0
        idx = nxt
        if idx >= table_len:
            return DROP_BAD_CHAIN
        d = table[idx]


cdef inline void sg_read(vs_seg *segs, int nseg, uint32_t off, uint8_t *out, uint32_t n) noexcept nogil:
    """Copy n bytes starting at offset off of a segment list (small reads:
    headers). The caller guarantees the segments hold off + n bytes."""
    cdef int i = 0
    cdef uint32_t take
    if nseg > 0 and off + n <= segs[0].len:
        memcpy(out, segs[0].p + off, n)     # all in the first piece: the usual case
        return
    while i < nseg and off >= segs[i].len:
        off -= segs[i].len
        i += 1
    while n > 0 and i < nseg:
        take = segs[i].len - off
        if take > n:
            take = n
        memcpy(out, segs[i].p + off, take)
        out += take
        n -= take
        off = 0
        i += 1


cdef inline void sg_copy(vs_seg *dst, int ndst, uint32_t doff,
                         vs_seg *src, int nsrc, uint32_t soff, uint32_t n) noexcept nogil:
    """The one copy of a frame: scatter-gather to scatter-gather."""
    cdef int di = 0, si = 0
    cdef uint32_t take, droom, sroom
    if ndst > 0 and nsrc > 0 and doff + n <= dst[0].len and soff + n <= src[0].len:
        # one piece to one piece (a small frame into one RX buffer): no walk
        memcpy(dst[0].p + doff, src[0].p + soff, n)
        return
    while di < ndst and doff >= dst[di].len:
        doff -= dst[di].len
        di += 1
    while si < nsrc and soff >= src[si].len:
        soff -= src[si].len
        si += 1
    while n > 0 and di < ndst and si < nsrc:
        droom = dst[di].len - doff
        sroom = src[si].len - soff
        take = droom if droom < sroom else sroom
        if take > n:
            take = n
        memcpy(dst[di].p + doff, src[si].p + soff, take)
        n -= take
        doff += take
        soff += take
        if doff == dst[di].len:
            di += 1
            doff = 0
        if soff == src[si].len:
            si += 1
            soff = 0


cdef inline void sg_write(vs_seg *dst, int ndst, uint32_t doff, const uint8_t *src, uint32_t n) noexcept nogil:
    cdef vs_seg one
    one.p = <uint8_t *>src
    one.len = n
    sg_copy(dst, ndst, doff, &one, 1, 0, n)


cdef inline void vring_notify(vs_worker *w, vs_vring *vq, int event_idx, uint16_t old_used) noexcept nogil:
    """Signal the guest after publishing used entries, unless it asked not to.
    virtio spec 2.7.10: with EVENT_IDX, notify iff used idx passed used_event;
    otherwise unless avail->flags has NO_INTERRUPT. The write is queued on
    the worker's notification ring (notify.pxi), sent after the burst."""
    cdef uint16_t new_used = vq.used_idx
    cdef uint16_t used_event
    cdef bint need
    vs_mb()
    if event_idx:
        used_event = (<volatile uint16_t *>&vq.avail.ring[vq.num])[0]
        need = vs_need_event(used_event, new_used, old_used)
    else:
        need = not ((<volatile uint16_t *>&vq.avail.flags)[0] & VRING_AVAIL_F_NO_INTERRUPT)
    if need and vq.call_fd >= 0:
        notify_request(w, vq, NOTIFY_CALL)
        vq.c.notifications += 1
    else:
        vq.c.notify_suppressed += 1


# --- dirty logging (vhost-user.rst "Migration") ----------------------------------
# "the back-end must mark the pages it writes: for every write to guest memory
# (frame data and used-ring updates) set bit gpa / 4096 of the log". Only
# while migrating; otherwise one NULL test per burst.

cdef inline void log_gpa_range(vs_port *port, uint64_t gpa, uint64_t length) noexcept nogil:
    cdef uint64_t page, last
    cdef vs_dirty_log *lg = <vs_dirty_log *>vs_load_acquire_ptr(<void **>&port.log)   # bitmap and size together
    if lg == NULL or length == 0 or gpa > (~(<uint64_t>0)) - (length - 1):
        return
    page = gpa >> 12
    last = (gpa + (length - 1)) >> 12
    port.log_marks += 1
    while page <= last and (page >> 3) < lg.size:
        vs_log_page(lg.bits, page)
        page += 1


cdef inline void log_segs(vs_port *port, vs_seg *segs, int nseg, uint32_t nbytes) noexcept nogil:
    cdef int i
    cdef uint32_t n
    cdef uint64_t gpa
    for i in range(nseg):
        if nbytes == 0:
            return
        n = segs[i].len if segs[i].len < nbytes else nbytes
        if mem_host_to_gpa(&port.mem, segs[i].p, &gpa):
            log_gpa_range(port, gpa, n)
        nbytes -= n


cdef inline void log_used_ring(vs_port *port, vs_vring *vq) noexcept nogil:
    """The used ring as a whole (flags, idx, ring[num], avail_event): a page or
    two, marked once per burst rather than per entry."""
    if vq.log_used:
        log_gpa_range(port, vq.log_used_gpa, 4 + 8 * <uint64_t>vq.num + 2)


cdef inline void vring_put_used(vs_vring *vq, uint16_t head, uint32_t length) noexcept nogil:
    cdef vs_vring_used_elem *e = &vq.used.ring[vq.used_idx & (vq.num - 1)]
    e.id = head
    e.len = length
    vq.used_idx += 1


cdef inline void vring_publish(vs_port *port, vs_vring *vq) noexcept nogil:
    vs_store_release_u16(&vq.used.idx, vq.used_idx)
    if port.log != NULL:
        log_used_ring(port, vq)


cdef inline int vring_avail_count(vs_vring *vq, uint16_t *avail_idx) noexcept nogil:
    """Entries the guest made available; -1 if the index jumped by more than the
    ring size, which no correct driver can do (the ring is then broken)."""
    cdef uint16_t idx = vs_load_acquire_u16(&vq.avail.idx)
    cdef uint16_t n = <uint16_t>(idx - vq.last_avail)
    avail_idx[0] = idx
    if n > vq.num:
        return -1
    if n and not vq.avail_moved:
        vq.avail_moved = 1
    return n


cdef inline void vring_mark_broken(vs_worker *w, vs_vring *vq) noexcept nogil:
    vq.c.drops[DROP_RING_BROKEN] += 1
    vs_store_release_int(&vq.broken, 1)
    if vq.err_fd >= 0:
        # SPEC SET_VRING_ERR: "Set the event file descriptor to signal when
        # error occurs" - let the front-end know the ring stopped.
        notify_request(w, vq, NOTIFY_ERR)


cdef inline void put_vnet_hdr(uint8_t *dst, uint8_t *hdr, uint32_t hdr_len, uint16_t nbuf) noexcept nogil:
    """The virtio-net header `hdr` with num_buffers = nbuf (when the header
    has the field: 12 bytes) at dst, which has room for hdr_len bytes (10 or
    12, VS_HDR_MAX). The
    12-byte header, every modern driver's, is written only where the buffer
    holds something else (vs_put_vnet_hdr12: a recycled buffer's header is
    mostly the same, and an unneeded store into the driver's line costs a
    cross-core round trip)."""
    if hdr_len == 12:
        vs_put_vnet_hdr12(dst, hdr, nbuf)
    else:
        vs_copy(dst, hdr, hdr_len)      # the legacy 10-byte header: no num_buffers


cdef inline void rx_copies_flush(vs_worker *w) noexcept nogil:
    """Do the small copies rx_enqueue put off, in order: the frames' bytes
    into the guest's RX buffers, before the delivery publishes them.

    Why later: the driver's core read these buffers last (a DPDK or Linux
    driver looks at the frame it received), so each copy's first store waits
    for the line to be handed over. Interleaved with the next frames' work
    (descriptor reads, the used entry, counters, calls: a score of stores
    each) the CPU's store buffer filled after two frames and the worker
    waited out nearly every hand-over one by one (measured in
    docs/performance.md, "The slow state"); the copies of a burst back to
    back keep many hand-overs in flight at once. DPDK's lib/vhost does the
    same with copies of up to 256 bytes (do_data_copy_enqueue)."""
    cdef int k
    for k in range(w.nrx_copies):
        vs_copy(w.rx_copies[k].dst, w.rx_copies[k].src, w.rx_copies[k].len)
    w.nrx_copies = 0


cdef inline void rx_copy_small(vs_worker *w, uint8_t *dst, const uint8_t *src, uint32_t n) noexcept nogil:
    """A small frame's copy into its RX buffer: queued for rx_copies_flush
    when the delivery allows it (w.rx_defer: the frame as it came, its bytes
    in place until the burst ends, no dirty log), else made now."""
    if w.rx_defer and w.nrx_copies < VS_BURST:
        w.rx_copies[w.nrx_copies].dst = dst
        w.rx_copies[w.nrx_copies].src = src
        w.rx_copies[w.nrx_copies].len = n
        w.nrx_copies += 1
    else:
        vs_copy(dst, src, n)


cdef inline void rx_fill_one(vs_worker *w, vs_port *dport, vs_seg *src, int nsrc, uint32_t src_off,
                             uint32_t flen, uint8_t *hdr, int nseg) noexcept nogil:
    """Write one frame (flen bytes at src_off of src) behind the header
    `hdr` into one RX buffer, its pieces at w.rxsegs[0..nseg): what
    rx_enqueue_general does with one buffer. The caller gives the buffer
    back (split or packed) and then calls rx_count_one."""
    cdef uint32_t hdr_len = dport.hdr_len
    cdef uint64_t need = <uint64_t>hdr_len + flen
    if need <= VS_INLINE_COPY and need <= w.rxsegs[0].len and nsrc > 0 \
            and src_off + flen <= src[0].len:
        # one piece into the first piece of the buffer, copied inline; the
        # header (num_buffers 1) only where the buffer's differs (vs_defs.h)
        put_vnet_hdr(w.rxsegs[0].p, hdr, hdr_len, 1)
        rx_copy_small(w, w.rxsegs[0].p + hdr_len, src[0].p + src_off, flen)
    else:
        # num_buffers (le16 at offset 10): one buffer
        if hdr_len >= 12:
            hdr[10] = 1
            hdr[11] = 0
        sg_write(&w.rxsegs[0], nseg, 0, hdr, hdr_len)
        sg_copy(&w.rxsegs[0], nseg, hdr_len, src, nsrc, src_off, flen)
    if dport.log != NULL:
        log_segs(dport, &w.rxsegs[0], nseg, <uint32_t>need)


cdef inline void rx_count_one(vs_worker *w, vs_port *dport, vs_vring *vq, vs_seg *src, int nsrc,
                              uint32_t src_off, uint32_t flen) noexcept nogil:
    """A frame delivered: the ring's counters, the work budget, a live capture."""
    vq.c.packets += 1
    vq.c.bytes += flen
    w.budget -= 1                 # the copy
    if dport.capture != NULL:     # live capture, egress: the frame as this guest got it
        capture_frame(dport.capture, CAP_OUT, src, nsrc, src_off, flen)


cdef int rx_enqueue(vs_worker *w, vs_port *dport, vs_vring *vq, uint16_t avail_idx,
                    vs_seg *src, int nsrc, uint32_t src_off, uint32_t flen,
                    uint8_t *hdr) noexcept nogil:
    """Copy one frame (flen bytes at src_off of src) into the guest RX ring vq,
    behind the virtio_net_hdr `hdr` (VS_HDR_MAX bytes; num_buffers is set here).

    The caller holds vq.lock and has read avail_idx for this burst. Buffers
    are reserved first (so num_buffers is known before the header is
    written), then filled; on failure nothing is consumed except invalid
    chains, which are returned to the guest with length 0.

    A split ring's first buffer is walked here: when it holds the whole
    frame (the usual case: a 2 KiB or larger buffer, a small frame) the
    frame is written and the buffer given back without the general
    reservation's bookkeeping; what rx_enqueue_general would do with one
    chain, in the same order. Otherwise rx_enqueue_general goes on from that
    walk (the buffer is not walked, nor its head read, twice). A packed
    ring takes the same shortcut in pk_rx_enqueue (packed.pxi)."""
    cdef uint32_t hdr_len = dport.hdr_len
    cdef uint64_t need = <uint64_t>hdr_len + flen
    cdef uint64_t chain_len
    cdef int nseg, rc
    cdef uint16_t head
    cdef int64_t budget_at_start = w.budget
    if vq.packed or w.nbad_heads:
        if vq.packed:
            return pk_rx_enqueue(w, dport, vq, src, nsrc, src_off, flen, hdr)
        # a bad head seen in this delivery is looked for before any walk,
        # in the general loop
        return rx_enqueue_general(w, dport, vq, avail_idx, src, nsrc, src_off, flen, hdr,
                                  False, 0, 0, 0, 0, budget_at_start)
    if vq.last_avail == avail_idx:
        return DROP_NO_RX_BUFFER
    head = vq.avail.ring[vq.last_avail & (vq.num - 1)]
    rc = walk_chain(dport, vq, head, True, &w.rxsegs[0], VS_MAX_RX_CHAINS * VS_MAX_SEGS,
                    &nseg, &chain_len, &w.budget)
    if rc or chain_len < need:
        return rx_enqueue_general(w, dport, vq, avail_idx, src, nsrc, src_off, flen, hdr,
                                  True, head, rc, nseg, chain_len, budget_at_start)
    vq.last_avail += 1
    rx_fill_one(w, dport, src, nsrc, src_off, flen, hdr, nseg)
    vring_put_used(vq, head, <uint32_t>need)
    rx_count_one(w, dport, vq, src, nsrc, src_off, flen)
    return 0


cdef int rx_enqueue_general(vs_worker *w, vs_port *dport, vs_vring *vq, uint16_t avail_idx,
                            vs_seg *src, int nsrc, uint32_t src_off, uint32_t flen,
                            uint8_t *hdr, bint walked_first, uint16_t first_head, int first_rc,
                            int first_nseg, uint64_t first_len, int64_t budget_at_start) noexcept nogil:
    """rx_enqueue for any frame and ring. `walked_first`: rx_enqueue read the
    split ring's next head (first_head) and walked it (first_rc, first_nseg,
    first_len, its pieces at w.rxsegs[0]); budget_at_start is the work
    budget before that walk."""
    cdef uint32_t hdr_len = dport.hdr_len
    cdef uint64_t need = <uint64_t>hdr_len + flen
    cdef uint64_t cap = 0, chain_len
    cdef int nchains = 0, nseg_total = 0, nseg, rc, i
    cdef uint16_t head
    cdef uint16_t saved_avail = vq.last_avail
    cdef uint32_t written, fill
    cdef bint walked
    if vq.packed:
        # packed.pxi: its own reservation, then the same copy (cap >= need: the loop is skipped)
        rc = pk_rx_reserve(w, dport, vq, need, &nchains, &nseg_total, &cap)
        if rc:
            return rc
    while cap < need:
        if vq.last_avail == avail_idx:
            vq.last_avail = saved_avail
            return DROP_NO_RX_BUFFER
        if nchains == 1 and not dport.mrg_rxbuf:
            vq.last_avail = saved_avail
            return DROP_RX_BUFFER_TOO_SMALL
        # Bounded per frame: buffers that take more than VS_MAX_RX_WALK
        # descriptors to hold one frame (legal chains of zero-length pieces)
        # are too small for it - the receiver's choice must not spend the
        # sender's work budget.
        if nchains == VS_MAX_RX_CHAINS or budget_at_start - w.budget > VS_MAX_RX_WALK:
            vq.last_avail = saved_avail
            return DROP_RX_BUFFER_TOO_SMALL
        walked = True
        if walked_first:
            # the first chain, as rx_enqueue read and walked it
            walked_first = False
            head = first_head
            rc = first_rc
            nseg = first_nseg
            chain_len = first_len
        else:
            head = vq.avail.ring[vq.last_avail & (vq.num - 1)]
            rc = DROP_RX_BAD_CHAIN
            for i in range(w.nbad_heads):
                if w.bad_heads[i] == head:
                    walked = False     # found bad already in this delivery: not walked again
                    break
            else:
                rc = walk_chain(dport, vq, head, True, &w.rxsegs[nseg_total],
                                VS_MAX_RX_CHAINS * VS_MAX_SEGS - nseg_total, &nseg, &chain_len,
                                &w.budget)
        vq.last_avail += 1
        if walked:
            if rc == 0 and chain_len == 0:
                rc = DROP_RX_BAD_CHAIN
            if rc == DROP_OVER_BUDGET or rc == DROP_IOTLB_MISS:
                # the sender's work is spent, or the buffer's IOVA is being
                # asked for: not the receiver's fault, its buffer stays
                vq.last_avail = saved_avail
                return rc
            if rc and w.nbad_heads < 8:
                w.bad_heads[w.nbad_heads] = head
                w.nbad_heads += 1
        if rc:
            # A bad buffer is the guest's loss: return it and the buffers
            # already reserved for this frame empty (Linux counts them as
            # length errors), and drop the frame. A head outside the ring
            # cannot be returned: the ring is broken.
            for i in range(nchains):
                vring_put_used(vq, w.rxchains[i].head, 0)
            if head < vq.num:
                vring_put_used(vq, head, 0)
            else:
                vring_mark_broken(w, vq)
            return DROP_IOTLB_DENIED if rc == DROP_IOTLB_DENIED else DROP_RX_BAD_CHAIN
        w.rxchains[nchains].head = head
        w.rxchains[nchains].seg0 = nseg_total
        w.rxchains[nchains].nseg = nseg
        w.rxchains[nchains].cap = <uint32_t>chain_len
        nchains += 1
        nseg_total += nseg
        cap += chain_len
    if need <= VS_INLINE_COPY and nseg_total > 0 and need <= w.rxsegs[0].len and nsrc > 0 \
            and src_off + flen <= src[0].len:
        # the small frame's usual case: one piece into the first buffer,
        # copied inline (vs_defs.h vs_copy) rather than by two memcpy calls,
        # or queued for the end of the delivery as rx_enqueue does (a packed
        # ring's batch, like a split ring's used index, is published after
        # rx_copies_flush: pk_put_used holds back the first element's flags)
        put_vnet_hdr(w.rxsegs[0].p, hdr, hdr_len, <uint16_t>nchains)
        rx_copy_small(w, w.rxsegs[0].p + hdr_len, src[0].p + src_off, flen)
    else:
        # num_buffers (le16 at offset 10) counts the chains used.
        if hdr_len >= 12:
            hdr[10] = <uint8_t>(nchains & 0xff)
            hdr[11] = <uint8_t>(nchains >> 8)
        sg_write(&w.rxsegs[0], nseg_total, 0, hdr, hdr_len)
        sg_copy(&w.rxsegs[0], nseg_total, hdr_len, src, nsrc, src_off, flen)
    written = 0
    for i in range(nchains):
        fill = w.rxchains[i].cap
        if written + fill > need:
            fill = <uint32_t>(need - written)
        written += fill
        if dport.log != NULL:
            log_segs(dport, &w.rxsegs[w.rxchains[i].seg0], w.rxchains[i].nseg, fill)
        if vq.packed:
            pk_put_used(vq, w.rxchains[i].head, fill, w.rxchains[i].ndesc, True)
        else:
            vring_put_used(vq, w.rxchains[i].head, fill)
    vq.c.packets += 1
    vq.c.bytes += flen
    w.budget -= 1                 # the copy
    if dport.capture != NULL:     # live capture, egress: the frame as this guest got it
        capture_frame(dport.capture, CAP_OUT, src, nsrc, src_off, flen)
    return 0
