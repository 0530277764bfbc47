# VIRTIO_F_ACCESS_PLATFORM with a vIOMMU: addresses are IOVAs.
#
# When the front-end negotiates bit 33 (QEMU does only with a vIOMMU), every
# descriptor address and the ring addresses of SET_VRING_ADDR are I/O virtual
# addresses of the guest's IOMMU. The front-end tells us what each maps to
# with IOTLB_MSG (UPDATE: iova, size -> its own user address, with a
# permission; INVALIDATE: forget a range), and a user address is then one of
# the memory table's (vs_region.uaddr). What we lack we ask for with a MISS
# on the back-end channel: the worker that missed queues the IOVA here
# (iotlb_note_miss), the control plane sends it (vswitch/ports/vhost_user.py).
#
# The table is built whole by the control plane (sorted by iova, entries
# never overlap, each checked not to wrap) and published as one pointer; the
# old one is freed after every worker has finished its round (Datapath
# iotlb_set), so a worker never reads freed entries, and an INVALIDATE is
# acknowledged only after that point: no worker uses an entry the front-end
# was told is gone. Lookups are a binary search, without the GIL.
#
# Every call site that translated a guest address (mem_gpa_segments,
# mem_gpa_contig) goes through port_segments / port_contig, which fall back
# to those when bit 33 is not negotiated.


cdef inline vs_iotlb_entry *iotlb_find(vs_iotlb *t, uint64_t iova) noexcept nogil:
    """The entry holding iova, or NULL."""
    cdef int lo = 0, hi = t.n, mid
    cdef vs_iotlb_entry *e
    while lo < hi:
        mid = (lo + hi) >> 1
        if t.e[mid].iova <= iova:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0:
        return NULL
    e = &t.e[lo - 1]
    if iova - e.iova < e.size:
        return e
    return NULL


cdef inline void iotlb_note_miss(vs_port *port, uint64_t iova, int perm) noexcept nogil:
    """Queue a MISS for the control plane (once per page and permission while
    queued) and wake it through its eventfd, once until it drains the queue."""
    cdef int i
    cdef bint signal = False
    cdef uint64_t one = 1
    cdef uint64_t page = iova & ~(<uint64_t>0xfff)
    port.iotlb_misses += 1
    vs_spin_lock(&port.miss_lock)
    for i in range(port.nmiss):
        if (port.miss_iova[i] & ~(<uint64_t>0xfff)) == page and (port.miss_perm[i] & perm) == perm:
            vs_spin_unlock(&port.miss_lock)
            return
    if port.nmiss < VS_IOTLB_MISSQ:
        port.miss_iova[port.nmiss] = iova
        port.miss_perm[port.nmiss] = <uint8_t>perm
        port.nmiss += 1
    else:
        port.miss_overflow += 1
    if not port.miss_signalled:
        port.miss_signalled = 1
        signal = True
    vs_spin_unlock(&port.miss_lock)
    if signal and port.miss_efd >= 0:
        # our own non-blocking eventfd, read by the control plane: never blocks
        write(port.miss_efd, &one, 8)


cdef inline int mem_uaddr_segments(vs_memtable *m, uint64_t ua, uint64_t length,
                                   vs_seg *segs, int *nseg, int maxseg) noexcept nogil:
    """mem_gpa_segments for front-end user addresses (what IOTLB entries map to)."""
    cdef int i
    cdef vs_region *r
    cdef uint64_t off, room, chunk
    while length > 0:
        r = NULL
        for i in range(m.n):
            if ua >= m.r[i].uaddr and ua - m.r[i].uaddr < m.r[i].size:
                r = &m.r[i]
                break
        if r == NULL:
            return DROP_BAD_ADDRESS
        off = ua - r.uaddr
        room = r.size - off
        chunk = length if length < room else room
        if nseg[0] >= maxseg:
            return DROP_TOO_MANY_SEGMENTS
        segs[nseg[0]].p = r.host + off
        segs[nseg[0]].len = <uint32_t>chunk
        nseg[0] += 1
        length -= chunk
        ua += chunk          # cannot wrap: the region's end was checked
    return 0


cdef inline int port_segments(vs_port *port, uint64_t addr, uint32_t length, int perm,
                              vs_seg *segs, int *nseg, int maxseg) noexcept nogil:
    """Append the host pieces of the guest buffer [addr, addr+length) to segs:
    a guest physical address, or with ACCESS_PLATFORM an IOVA the IOTLB must
    map with `perm` (IOTLB_PERM_R for what we read, _W for what we write);
    a buffer may span entries and regions. 0, or a drop reason."""
    cdef vs_iotlb *t
    cdef vs_iotlb_entry *e
    cdef uint64_t left = length, off, room, chunk
    cdef int rc
    if not port.iotlb_on:
        return mem_gpa_segments(&port.mem, addr, length, segs, nseg, maxseg)
    t = <vs_iotlb *>vs_load_acquire_ptr(<void **>&port.iotlb)
    while left > 0:
        e = iotlb_find(t, addr) if t != NULL else NULL
        if e == NULL:
            iotlb_note_miss(port, addr, perm)
            return DROP_IOTLB_MISS
        if (<int>e.perm & perm) != perm:
            port.iotlb_denied += 1
            return DROP_IOTLB_DENIED
        off = addr - e.iova
        room = e.size - off
        chunk = left if left < room else room
        rc = mem_uaddr_segments(&port.mem, e.uaddr + off, chunk, segs, nseg, maxseg)
        if rc:
            return rc
        left -= chunk
        if left > 0:
            if addr + chunk < addr:
                return DROP_BAD_ADDRESS      # the buffer runs past the top of the IOVA space
            addr += chunk
    port.iotlb_hits += 1
    return 0


cdef inline int port_segments_ring(vs_port *port, vs_vring *vq, uint64_t addr, uint32_t length,
                                   int perm, vs_seg *segs, int *nseg, int maxseg) noexcept nogil:
    """port_segments for a buffer of ring vq (the caller owns the ring: its
    TX worker, or the RX ring's lock holder). Without ACCESS_PLATFORM a
    buffer inside one region - nearly every one - is one region test (the
    ring's hint first) and one segment; anything else (IOVAs, a buffer
    across regions, a bad address, length 0) goes the general way."""
    cdef vs_region *r
    cdef uint64_t off
    if not port.iotlb_on and length != 0 and nseg[0] < maxseg:
        r = mem_find_gpa_hint(&port.mem, addr, &vq.mem_hint)
        if r != NULL:
            off = addr - r.gpa
            if length <= r.size - off:          # by subtraction: cannot overflow
                segs[nseg[0]].p = r.host + off
                segs[nseg[0]].len = length
                nseg[0] += 1
                return 0
    return port_segments(port, addr, length, perm, segs, nseg, maxseg)


cdef inline void *port_contig(vs_port *port, uint64_t addr, uint64_t length, int perm,
                              int *rc) noexcept nogil:
    """Host pointer for [addr, addr+length) when it is one piece of our
    mapping (rings, indirect tables), else NULL with *rc the drop reason
    (DROP_BAD_ADDRESS, or DROP_IOTLB_MISS / _DENIED with ACCESS_PLATFORM).
    Adjacent IOTLB entries whose user addresses follow on make one piece."""
    cdef vs_iotlb *t
    cdef vs_iotlb_entry *e
    cdef uint64_t start_ua, covered, nxt
    cdef void *host
    rc[0] = DROP_BAD_ADDRESS
    if not port.iotlb_on:
        host = mem_gpa_contig(&port.mem, addr, length)
        if host != NULL:
            rc[0] = 0
        return host
    t = <vs_iotlb *>vs_load_acquire_ptr(<void **>&port.iotlb)
    e = iotlb_find(t, addr) if t != NULL else NULL
    if e == NULL:
        iotlb_note_miss(port, addr, perm)
        rc[0] = DROP_IOTLB_MISS
        return NULL
    if (<int>e.perm & perm) != perm:
        port.iotlb_denied += 1
        rc[0] = DROP_IOTLB_DENIED
        return NULL
    start_ua = e.uaddr + (addr - e.iova)
    covered = e.size - (addr - e.iova)
    while covered < length:
        nxt = addr + covered
        if nxt < addr:
            return NULL                      # past the top of the IOVA space
        e = iotlb_find(t, nxt)
        if e == NULL:
            iotlb_note_miss(port, nxt, perm)
            rc[0] = DROP_IOTLB_MISS
            return NULL
        if (<int>e.perm & perm) != perm:
            port.iotlb_denied += 1
            rc[0] = DROP_IOTLB_DENIED
            return NULL
        if e.uaddr + (nxt - e.iova) != start_ua + covered:
            return NULL                      # not one piece of the front-end's memory
        covered += e.size - (nxt - e.iova)
    host = mem_uaddr_contig(&port.mem, start_ua, length)
    if host != NULL:
        rc[0] = 0
        port.iotlb_hits += 1
    return host


cdef inline int ring_desc_perm(vs_vring *vq) noexcept nogil:
    # a packed ring's used elements are written into its descriptor ring
    return IOTLB_PERM_R | IOTLB_PERM_W if vq.packed else IOTLB_PERM_R


cdef inline uint64_t ring_avail_size(vs_vring *vq) noexcept nogil:
    # packed: the driver's 4-byte event suppression area (packed.pxi)
    return 4 if vq.packed else 6 + 2 * <uint64_t>vq.num


cdef inline uint64_t ring_used_size(vs_vring *vq) noexcept nogil:
    # packed: the device's 4-byte event suppression area
    return 4 if vq.packed else 6 + 8 * <uint64_t>vq.num


cdef int _translate_ring_port(vs_port *port, vs_vring *vq) noexcept nogil:
    """_translate_ring for a port: with ACCESS_PLATFORM the ring addresses
    are IOVAs (desc and avail are read, used is written), and a missing one
    is asked for (the ring starts when it translates). The dirty log's used
    ring address is then the guest address behind the IOVA."""
    cdef uint64_t num = vq.num
    cdef int rc
    cdef uint64_t gpa
    if not port.iotlb_on:
        return _translate_ring(&port.mem, vq)
    vq.desc = <vs_vring_desc *>port_contig(port, vq.desc_ua, 16 * num, ring_desc_perm(vq), &rc)
    vq.avail = <vs_vring_avail *>port_contig(port, vq.avail_ua, ring_avail_size(vq), IOTLB_PERM_R, &rc)
    vq.used = <vs_vring_used *>port_contig(port, vq.used_ua, ring_used_size(vq), IOTLB_PERM_W, &rc)
    if vq.desc == NULL or vq.avail == NULL or vq.used == NULL:
        vq.desc = NULL
        vq.avail = NULL
        vq.used = NULL
        return -1
    if vq.log_used and mem_host_to_gpa(&port.mem, <uint8_t *>vq.used, &gpa):
        vq.log_used_gpa = gpa
    return 0


cdef vs_iotlb *iotlb_build(list entries) except NULL:
    """A table from [(iova, size, uaddr, perm)], sorted and checked by the
    caller (vswitch/vhost/iotlb.py); checked again here, since a wrong table
    would send workers to the wrong memory."""
    cdef vs_iotlb *t
    cdef int i
    cdef uint64_t prev_end = 0
    if len(entries) > VS_IOTLB_MAX:
        raise DatapathError(f"{len(entries)} IOTLB entries (at most {VS_IOTLB_MAX})")
    # only the entries it has (a full table is 64 KiB)
    t = <vs_iotlb *>malloc(sizeof(vs_iotlb) - (VS_IOTLB_MAX - max(1, len(entries))) * sizeof(vs_iotlb_entry))
    if t == NULL:
        raise MemoryError()
    t.n = 0
    try:
        for i, (iova, size, uaddr, perm) in enumerate(entries):
            if size == 0 or iova > 0xFFFFFFFFFFFFFFFF - (size - 1) \
                    or uaddr > 0xFFFFFFFFFFFFFFFF - (size - 1) or not 1 <= perm <= 3:
                raise DatapathError(f"IOTLB entry iova={iova:#x} size={size:#x} perm={perm} is not valid")
            if i > 0 and iova < prev_end:
                raise DatapathError(f"IOTLB entry iova={iova:#x} overlaps or is out of order")
            t.e[i].iova = iova
            t.e[i].size = size
            t.e[i].uaddr = uaddr
            t.e[i].perm = perm
            prev_end = iova + (size - 1) + 1 if iova + (size - 1) < 0xFFFFFFFFFFFFFFFF else 0xFFFFFFFFFFFFFFFF
            t.n = i + 1
    except BaseException:
        free(t)
        raise
    return t


cdef bint _ring_translates_as_now(vs_port *port, vs_vring *vq) noexcept nogil:
    """With the table now published, would the ring's addresses lead to
    the same memory? (A ring whose entries went away, or now map elsewhere,
    must stop before the change is acknowledged.)"""
    cdef int rc
    cdef uint64_t num = vq.num
    if not port.iotlb_on:
        return True
    return (port_contig(port, vq.desc_ua, 16 * num, ring_desc_perm(vq), &rc) == <void *>vq.desc
            and port_contig(port, vq.avail_ua, ring_avail_size(vq), IOTLB_PERM_R, &rc) == <void *>vq.avail
            and port_contig(port, vq.used_ua, ring_used_size(vq), IOTLB_PERM_W, &rc) == <void *>vq.used)


cdef void iotlb_free(vs_port *port) noexcept nogil:
    """After a quiescent point (port reset): the table, the mode, the queue."""
    cdef int i
    free(port.iotlb)
    port.iotlb = NULL
    for i in range(port.iotlb_nretired):
        free(port.iotlb_retired[i])
    port.iotlb_nretired = 0
    port.iotlb_entries = 0
    port.iotlb_on = 0
    port.nmiss = 0
    port.miss_signalled = 0


cdef enum:
    IOTLB_PREFETCH_CHAINS = 32     # RX buffers asked for after a change (the next frames' buffers)


cdef void iotlb_prefetch_rx(vs_port *port) noexcept nogil:
    """After the table changed, ask for the IOVAs of the next buffers each RX
    ring holds. A Linux guest with lazy IOMMU invalidation invalidates its
    whole IOVA space after it sent frames, while its RX buffers stay mapped:
    a frame for it would miss (and be dropped, the switch holds no frames)
    unless the entries are back before it comes. Reads guest memory only.

    Under the ring's lock, so that the position is the ring's, not a stale
    copy: a buffer behind it was given back, and the guest may have
    unmapped its IOVA and mapped it again read-only (a TX buffer). Asking
    for write access there is a DMA fault the guest logs against its NIC
    ("DMAR: [DMA Write] ... PTE Write access is not set")."""
    cdef vs_seg segs[VS_MAX_SEGS]
    cdef int nseg, q, k, n
    cdef uint64_t total
    cdef int64_t budget
    cdef uint16_t avail_idx, head
    cdef vs_vring *vq
    if not port.iotlb_on:
        return
    for q in range(port.nqp):
        vq = &port.vq[2 * q]
        if not vs_load_acquire_int(&vq.started) or vq.avail == NULL:
            continue
        vs_spin_lock(&vq.lock)
        if vq.packed:
            pk_prefetch_rx(port, vq, IOTLB_PREFETCH_CHAINS)
            vs_spin_unlock(&vq.lock)
            continue
        avail_idx = vs_load_acquire_u16(&vq.avail.idx)
        n = <uint16_t>(avail_idx - vq.last_avail)
        if n > <int>vq.num:
            n = 0
        if n > IOTLB_PREFETCH_CHAINS:
            n = IOTLB_PREFETCH_CHAINS
        for k in range(n):
            head = vq.avail.ring[<uint16_t>(vq.last_avail + k) & (vq.num - 1)]
            budget = VS_MAX_CHAIN_DESCS + 1
            walk_chain(port, vq, head, True, segs, VS_MAX_SEGS, &nseg, &total, &budget)
        vs_spin_unlock(&vq.lock)
