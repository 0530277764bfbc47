# Per-port policy: VLAN classification and tagging, port security,
# storm control and policing. Each check is reached only when the port has it
# configured (one test of a flag per frame otherwise), so a switch without
# any of it runs the same loop as before.

cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


# --- VLANs (IEEE 802.1Q) ------------------------------------------------------------
# Inside the switch every frame belongs to one VLAN: the tag's VID, or the
# access/native VLAN of the port it came from; VLAN 0 stands for "untagged on
# a VLAN-unaware port" (a port without `vlan:`), so a switch without VLAN
# config switches exactly as a plain learning bridge. The FDB is keyed by
# (VLAN, MAC) and floods reach only ports that carry the frame's VLAN.

cdef inline bint vlan_carried(vs_port *p, uint16_t vlan) noexcept nogil:
    return (p.vlan_carry[(vlan >> 6) & 63] >> (vlan & 63)) & 1


cdef inline int vlan_classify(vs_port *p, vs_frame *f, uint16_t tci) noexcept nogil:
    """Set f.vlan/f.tci for a frame from port p (tci VS_NO_TCI: untagged).
    Returns 0 or DROP_VLAN_FILTERED. A priority tag (VID 0) counts as untagged."""
    cdef uint16_t vid = tci & 0xfff
    f.tci = tci
    if tci == VS_NO_TCI or vid == 0:
        if p.vlan_mode == VLAN_ALL:
            f.vlan = 0
        elif p.vlan_mode == VLAN_ACCESS:
            f.vlan = p.vlan_access
        elif p.vlan_native:
            f.vlan = p.vlan_native
        else:
            return DROP_VLAN_FILTERED      # trunk without a native VLAN: tags only
        return 0
    if vid == 0xfff or p.vlan_mode == VLAN_ACCESS or not vlan_carried(p, vid):
        return DROP_VLAN_FILTERED          # 802.1Q: VID 4095 reserved; access ports take no tags
    f.vlan = vid
    return 0


cdef inline int vlan_egress_tag(vs_port *p, uint16_t vlan) noexcept nogil:
    """The VID a frame of `vlan` carries when it leaves through p, 0 for untagged."""
    if p.vlan_mode == VLAN_ALL:
        return vlan
    if p.vlan_mode == VLAN_ACCESS or vlan == p.vlan_native:
        return 0
    return vlan


cdef inline int sg_slice(vs_seg *src, int nsrc, uint32_t off, uint32_t n,
                         vs_seg *out, int k) noexcept nogil:
    """Append the pieces of bytes [off, off + n) of a segment list to out[k:];
    returns the new count. The caller guarantees the list holds them."""
    cdef int i = 0
    cdef uint32_t take
    while i < nsrc and off >= src[i].len:
        off -= src[i].len
        i += 1
    while n and i < nsrc:
        take = src[i].len - off
        if take > n:
            take = n
        out[k].p = src[i].p + off
        out[k].len = take
        k += 1
        n -= take
        off = 0
        i += 1
    return k


cdef inline vs_frame *frame_view(vs_worker *w, vs_frame *f, vs_seg *segs, int tag,
                                 vs_seg **out_segs) noexcept nogil:
    """Frame f (whose segments are `segs`, header not skipped) as it leaves
    with VID `tag` (0: untagged). Without a change of tag that is f itself
    (decided here, inline: every frame of a switch without VLANs);
    otherwise frame_view_retagged. NULL if the request cannot be re-expressed."""
    cdef bint had = f.tci != VS_NO_TCI
    if (not had and tag == 0) or (had and tag != 0 and tag == (f.tci & 0xfff)):
        out_segs[0] = segs + f.seg0
        return f
    return frame_view_retagged(w, f, segs, tag, out_segs)


cdef vs_frame *frame_view_retagged(vs_worker *w, vs_frame *f, vs_seg *segs, int tag,
                                   vs_seg **out_segs) noexcept nogil:
    """frame_view with a tag pushed, popped or changed: w.view over slices in
    w.vsegs around a tag in w.vtag: no copy of the frame here, the one copy
    into the destination does it. Offload offsets move with the tag."""
    cdef bint had = f.tci != VS_NO_TCI
    cdef uint32_t cut, k
    cdef uint16_t tci
    cdef vs_frame *v = &w.view
    v[0] = f[0]
    v.seg0 = 0
    v.hdr_len = 0
    k = sg_slice(segs + f.seg0, f.nseg, f.hdr_len, 12, w.vsegs, 0)
    if tag:
        tci = <uint16_t>tag
        if had:
            tci |= f.tci & 0xf000           # keep the priority bits it came with
        w.vtag[0] = 0x81
        w.vtag[1] = 0x00
        w.vtag[2] = <uint8_t>(tci >> 8)
        w.vtag[3] = <uint8_t>(tci & 0xff)
        w.vsegs[k].p = w.vtag
        w.vsegs[k].len = 4
        k += 1
    cut = 16 if had else 12
    if f.len < cut:
        return NULL
    k = sg_slice(segs + f.seg0, f.nseg, f.hdr_len + cut, f.len - cut, w.vsegs, k)
    v.nseg = k
    if had and not tag:                     # pop
        v.len = f.len - 4
        if f.vflags & VNET_F_NEEDS_CSUM:
            if f.csum_start < 16:
                return NULL                 # checksum over the tag itself: nonsense
            v.csum_start = f.csum_start - 4
        v.vhdr_len = f.vhdr_len - 4 if f.vhdr_len >= 16 else 0
    elif tag and not had:                   # push
        v.len = f.len + 4
        if f.vflags & VNET_F_NEEDS_CSUM:
            if f.csum_start > 0xffff - 4:
                return NULL
            v.csum_start = f.csum_start + 4
        if f.vhdr_len:
            v.vhdr_len = f.vhdr_len + 4 if f.vhdr_len <= 0xffff - 4 else 0xffff
    out_segs[0] = w.vsegs
    return v


# --- policers and storm caps (GCRA) ----------------------------------------------------

cdef inline bint gcra_conform(vs_gcra *g, uint64_t now, uint64_t units) noexcept nogil:
    """Charge `units` to g if it conforms (tat - now <= tolerance), lock-free.
    A frame larger than the burst still passes when the bucket is full, and
    its cost is carried forward: the long-run rate holds, GSO frames pass."""
    cdef uint64_t tat, cost, base
    cdef int tries
    if g.k_q16 == 0:
        return True
    if units > (<uint64_t>0xffffffffffffffff) // g.k_q16:
        return False       # a cost beyond any bucket (hostile gso_size of 1, say)
    cost = (units * g.k_q16) >> 16
    for tries in range(8):
        tat = vs_load_relaxed_u64(&g.tat)
        if tat > now and tat - now > g.tol_ns:
            return False
        base = tat if tat > now else now
        if vs_cas_u64(&g.tat, tat, base + cost):
            return True
    return True        # heavy contention: let it pass rather than spin


cdef inline void frame_wire_cost(vs_frame *f, uint64_t *nbytes, uint64_t *npkts) noexcept nogil:
    """IP bytes and frames this frame is on the wire: a GSO frame is charged
    per segment it becomes, each with its own copy of the headers. Rates
    count L3 bytes (the Ethernet header and any VLAN tag are not charged), as
    IP tools and cloud QoS APIs state bandwidth."""
    cdef uint32_t l2 = VS_ETH_HLEN if f.tci == VS_NO_TCI else VS_ETH_HLEN + 4
    cdef uint32_t hl, payload, nseg
    if f.len <= l2:
        nbytes[0] = 0
        npkts[0] = 1
        return
    if f.gso_type == VS_GSO_NONE or f.gso_size == 0:
        nbytes[0] = f.len - l2
        npkts[0] = 1
        return
    hl = f.vhdr_len
    if hl < <uint32_t>f.csum_start + 20:
        hl = <uint32_t>f.csum_start + 20
    if hl >= f.len or hl <= l2:
        nbytes[0] = f.len - l2
        npkts[0] = 1
        return
    payload = f.len - hl
    nseg = (payload + f.gso_size - 1) // f.gso_size
    nbytes[0] = <uint64_t>(f.len - l2) + <uint64_t>(nseg - 1) * (hl - l2)
    npkts[0] = nseg


cdef inline void gcra_charge(vs_gcra *g, uint64_t now, uint64_t units) noexcept nogil:
    """Charge unconditionally (shaping: the frame was taken because the
    bucket conformed before its burst was dequeued)."""
    cdef uint64_t tat, cost, base
    cdef int tries
    if g.k_q16 == 0:
        return
    if units > (<uint64_t>0xffffffffffffffff) // g.k_q16:
        cost = <uint64_t>1 << 40          # ~18 min of debt: a hostile size, bounded
    else:
        cost = (units * g.k_q16) >> 16
    for tries in range(8):
        tat = vs_load_relaxed_u64(&g.tat)
        base = tat if tat > now else now
        if vs_cas_u64(&g.tat, tat, base + cost):
            return


cdef inline uint64_t gcra_wait(vs_gcra *g, uint64_t now) noexcept nogil:
    """Nanoseconds until g conforms again (0: it does now)."""
    cdef uint64_t tat
    if g.k_q16 == 0:
        return 0
    tat = vs_load_relaxed_u64(&g.tat)
    if tat <= now + g.tol_ns:
        return 0
    return tat - now - g.tol_ns


cdef inline uint64_t shape_wait(vs_port *p, uint64_t now) noexcept nogil:
    """A port whose ingress limit holds frames in its TX rings: how long
    until its rings may be read again (0: now)."""
    cdef uint64_t a = gcra_wait(&p.in_bytes, now)
    cdef uint64_t b = gcra_wait(&p.in_pkts, now)
    return a if a > b else b


cdef inline bint police(vs_gcra *bytes_b, vs_gcra *pkts_b, vs_frame *f, uint64_t now) noexcept nogil:
    cdef uint64_t nbytes, npkts
    frame_wire_cost(f, &nbytes, &npkts)
    if not gcra_conform(bytes_b, now, nbytes):
        return False
    return gcra_conform(pkts_b, now, npkts)


cdef inline bint source_allowed(vs_port *p, uint64_t mac) noexcept nogil:
    cdef int sel = vs_load_acquire_int(&p.allowed_sel)
    cdef int i, n = p.n_allowed[sel]
    for i in range(n):
        if p.allowed[sel][i] == mac:
            return True
    return False
