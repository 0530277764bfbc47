# VXLAN ports (RFC 7348): the switch's frames carried to peer VTEPs over UDP.
#
# A datagram is an 8-byte VXLAN header (flags 0x08 = "VNI valid", 24-bit VNI)
# followed by the inner Ethernet frame, without FCS and without a
# virtio_net_hdr. The control plane binds the UDP socket (local:udp_port) and
# hands its fd over; the datapath reads with recvmmsg in bursts, as TAP
# queues are read, and writes with sendmsg, gathering the VXLAN header and
# the source's buffers (no copy) - except for frames with an offload
# request, which are finished in software first (the peer is a network, not
# a virtio device that could take a partial checksum or a GSO frame).
#
# Everything that arrives on the socket is hostile: the source address must
# be one of the configured remotes, the header must carry the I flag and the
# port's VNI, the inner frame must hold an Ethernet header. Each refusal is
# counted with its reason on the port's "from the network" queue.
#
# Learning: the RX worker records behind which remote each inner source MAC
# was seen (a small open-addressing table, one u64 per slot like the FDB, so
# delivering workers read it without a lock). A unicast frame to a MAC in
# the table goes to that remote only; broadcast, multicast and unknown
# unicast go to every remote (head-end replication).

cdef enum:
    VXLAN_F_VNI = 0x08                 # the I flag: the VNI field is valid
    VXLAN_IDLE_SKIP = 7                # as TAP_IDLE_SKIP: rounds to skip after an empty read
    # largest datagram read: VXLAN header + the largest frame a port accepts
    VXLAN_RX_MAX = VS_VXLAN_HLEN + VS_MAX_FRAME


cdef inline uint32_t vxlan_mac_hash(uint64_t mac) noexcept nogil:
    return <uint32_t>((mac * <uint64_t>0x9E3779B97F4A7C15) >> 40) & (VS_VXLAN_MACS - 1)


cdef inline int vxlan_mac_lookup(vs_vxlan *vx, uint64_t mac) noexcept nogil:
    """The remote `mac` was last seen behind, or -1 (send to every remote)."""
    cdef uint32_t h = vxlan_mac_hash(mac)
    cdef uint64_t v
    cdef int i, r
    for i in range(VS_VXLAN_PROBE):
        v = vs_load_relaxed_u64(&vx.macs[(h + i) & (VS_VXLAN_MACS - 1)])
        if v == 0:
            return -1
        if (v >> 16) == mac:
            r = <int>(v & 0xffff) - 1
            # a stale entry after the remote list shrank: flood instead
            return r if r < vx.nremotes else -1
    return -1


cdef inline void vxlan_mac_learn(vs_vxlan *vx, uint64_t mac, int remote) noexcept nogil:
    """Only the port's RX worker writes the table: plain stores suffice."""
    cdef uint32_t h = vxlan_mac_hash(mac)
    cdef uint64_t v
    cdef uint64_t want = (mac << 16) | <uint64_t>(remote + 1)
    cdef uint64_t *slot
    cdef int i
    for i in range(VS_VXLAN_PROBE):
        slot = &vx.macs[(h + i) & (VS_VXLAN_MACS - 1)]
        v = vs_load_relaxed_u64(slot)
        if v == 0 or (v >> 16) == mac:
            if v != want:
                vs_store_relaxed_u64(slot, want)
            return
    vx.macs_full += 1


cdef inline uint16_t sa_family(const uint8_t *sa) noexcept nogil:
    cdef uint16_t fam
    memcpy(&fam, sa, 2)          # sa_family_t, host order; the buffer may be unaligned
    return fam


cdef inline int vxlan_remote_of(vs_vxlan *vx, const uint8_t *sa, socklen_t salen) noexcept nogil:
    """Index of the remote whose address (not port: a kernel VTEP picks its
    source port per flow) sent this datagram, or -1."""
    cdef int i
    cdef uint16_t fam
    cdef const uint8_t *ra
    if salen < 16:
        return -1
    fam = sa_family(sa)
    for i in range(vx.nremotes):
        ra = vx.remotes[i].sa
        if sa_family(ra) != fam:
            continue
        if fam == AF_INET:
            if memcmp(sa + 4, ra + 4, 4) == 0:          # sin_addr
                return i
        elif fam == AF_INET6 and salen >= 24:
            if memcmp(sa + 8, ra + 8, 16) == 0:         # sin6_addr
                return i
    return -1


cdef int vxlan_ingress_burst(vs_switch *sw, vs_worker *w, int pidx, vs_port *port) noexcept nogil:
    """Read up to VS_BURST datagrams from the port's socket, check them, and
    switch the inner frames."""
    cdef vs_vxlan *vx = port.vx
    cdef vs_vring *vq = &port.vq[1]          # "from the network" counters
    cdef mmsghdr msgs[VS_BURST]
    cdef iovec iovs[VS_BURST]
    cdef uint8_t names[VS_BURST][VS_SOCKADDR_MAX + 4]
    cdef int i, got, n = 0, r
    cdef uint32_t len, vni
    cdef uint8_t *buf
    cdef vs_frame *f
    if vx == NULL or vx.fd < 0 or w.budget <= 0:
        return 0
    if vq.tap_skip:
        # After an empty read, look again only every few rounds (a syscall each).
        vq.tap_skip -= 1
        return 0
    for i in range(VS_BURST):
        iovs[i].iov_base = w.tapbuf + <size_t>i * VS_TAP_BUF
        iovs[i].iov_len = VXLAN_RX_MAX
        memset(&msgs[i], 0, sizeof(mmsghdr))
        msgs[i].msg_hdr.msg_name = names[i]
        msgs[i].msg_hdr.msg_namelen = VS_SOCKADDR_MAX + 4
        msgs[i].msg_hdr.msg_iov = &iovs[i]
        msgs[i].msg_hdr.msg_iovlen = 1
    got = recvmmsg(vx.fd, msgs, VS_BURST, MSG_DONTWAIT, NULL)
    if got <= 0:
        vq.tap_skip = VXLAN_IDLE_SKIP
        return 0
    for i in range(got):
        buf = <uint8_t *>iovs[i].iov_base
        len = msgs[i].msg_len
        f = &w.frames[n]
        f.dst = FRAME_DROPPED
        f.nseg = 0
        n += 1
        r = vxlan_remote_of(vx, names[i], msgs[i].msg_hdr.msg_namelen)
        if r < 0:
            vq.c.drops[DROP_VXLAN_UNKNOWN_REMOTE] += 1
            continue
        if len < VS_VXLAN_HLEN or not (buf[0] & VXLAN_F_VNI):
            vq.c.drops[DROP_VXLAN_BAD_HEADER] += 1
            continue
        # MSG_TRUNC: larger than any frame we accept (cannot happen with UDP's
        # 64 KiB limit, but the datagram would be cut: never forward a part)
        if msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
            vq.c.drops[DROP_BAD_LENGTH] += 1
            continue
        vni = (<uint32_t>buf[4] << 16) | (<uint32_t>buf[5] << 8) | buf[6]
        if vni != vx.vni:
            vq.c.drops[DROP_VXLAN_WRONG_VNI] += 1
            continue
        if len < VS_VXLAN_HLEN + VS_ETH_HLEN:
            vq.c.drops[DROP_RUNT] += 1
            continue
        # The VXLAN header is "the header to skip", as a virtio_net_hdr is for
        # frames from guests: the inner frame is never moved.
        w.segs[n - 1].p = buf
        w.segs[n - 1].len = len
        f.seg0 = n - 1
        f.nseg = 1
        f.hdr_len = VS_VXLAN_HLEN
        f.len = len - VS_VXLAN_HLEN
        f.vflags = 0
        f.gso_type = VS_GSO_NONE
        f.vhdr_len = 0
        f.gso_size = 0
        f.csum_start = 0
        f.csum_offset = 0
        if not (buf[VS_VXLAN_HLEN + 6] & 1):
            vxlan_mac_learn(vx, mac_load(buf + VS_VXLAN_HLEN + 6), r)
        vq.c.packets += 1
        vq.c.bytes += f.len
    if n:
        switch_burst(sw, w, pidx, 0, vq, n)
    return n


cdef inline int vxlan_send(vs_worker *w, vs_vxlan *vx, vs_vring *rvq, iovec *iov, int cnt, int remote,
                           uint32_t len) noexcept nogil:
    """Send one datagram (iov[0] is the VXLAN header) to `remote`, or to
    every remote when it is < 0. Counts on rvq; returns the datagrams sent."""
    cdef msghdr m
    cdef int i, first = 0, last = vx.nremotes, sent = 0
    if remote >= 0:
        first = remote
        last = remote + 1
    memset(&m, 0, sizeof(msghdr))
    m.msg_iov = iov
    m.msg_iovlen = cnt
    for i in range(first, last):
        w.budget -= 1
        m.msg_name = vx.remotes[i].sa
        m.msg_namelen = vx.remotes[i].salen
        if sendmsg(vx.fd, &m, MSG_DONTWAIT) < 0:
            rvq.c.drops[DROP_VXLAN_SEND] += 1
        else:
            rvq.c.packets += 1
            rvq.c.bytes += len
            sent += 1
    return sent


cdef void deliver_to_vxlan(vs_switch *sw, vs_worker *w, int d, vs_vring *src_vq, int qp,
                           int n, int view) noexcept nogil:
    """Send the frames of this burst that go to VXLAN port d to its remotes."""
    cdef vs_port *dport = sw.ports[d]
    cdef vs_vxlan *vx = dport.vx
    cdef vs_vring *rvq = &dport.vq[0]       # "towards the network" counters
    cdef int i, k, cnt, remote, tag
    cdef uint32_t skip, s, seglen
    cdef vs_frame *f
    cdef vs_frame *vf
    cdef vs_seg *segs
    cdef vs_seg *seg
    cdef uint64_t now = 0
    cdef vs_tso plan
    cdef uint8_t hdr[VS_VXLAN_HLEN]
    cdef uint8_t eth[14]
    cdef iovec iov[VS_MAX_SEGS + 4]
    if vx == NULL or vx.fd < 0 or vx.nremotes == 0:
        if view == VIEW_NORMAL:
            for i in range(n):
                if w.frames[i].dst == d:
                    src_vq.c.drops[DROP_NO_RX_QUEUE] += 1
        return
    if dport.egress_policy and view == VIEW_NORMAL:
        now = now_ns()
    memset(hdr, 0, VS_VXLAN_HLEN)
    hdr[0] = VXLAN_F_VNI
    hdr[4] = <uint8_t>(vx.vni >> 16)
    hdr[5] = <uint8_t>(vx.vni >> 8)
    hdr[6] = <uint8_t>vx.vni
    iov[0].iov_base = hdr
    iov[0].iov_len = VS_VXLAN_HLEN
    vs_spin_lock(&rvq.lock)
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
        # the Ethernet header of the frame as delivered (a tag pushed or popped)
        sg_read(segs, vf.nseg, vf.hdr_len, eth, 14)
        if dport.mtu and not frame_fits_mtu(dport, vf, eth + 12):
            rvq.c.drops[DROP_MTU_EXCEEDED] += 1
            continue
        if now and not police(&dport.out_bytes, &dport.out_pkts, f, now):
            rvq.c.drops[DROP_RATE_LIMITED] += 1
            continue
        f = vf                                 # the frame as this port sends it (VLAN tag)
        if dport.capture != NULL:              # live capture, egress: the inner frame
            capture_frame(dport.capture, CAP_OUT, segs, f.nseg, f.hdr_len, f.len)
        remote = -1 if (eth[0] & 1) else vxlan_mac_lookup(vx, mac_load(eth))
        if f.gso_type == VS_GSO_NONE and not (f.vflags & VNET_F_NEEDS_CSUM):
            # The common case: gather the source's buffers behind the header.
            cnt = 1
            skip = f.hdr_len
            for k in range(f.nseg):
                seg = &segs[k]
                if skip >= seg.len:
                    skip -= seg.len
                    continue
                iov[cnt].iov_base = seg.p + skip
                iov[cnt].iov_len = seg.len - skip
                skip = 0
                cnt += 1
            vxlan_send(w, vx, rvq, iov, cnt, remote, f.len)
            continue
        # An offload request: finish it here (offload.pxi), as vhost_deliver_frame
        # does for a guest that did not negotiate it.
        sg_read(segs, f.nseg, f.hdr_len, w.lin, f.len)
        if f.gso_type == VS_GSO_NONE:
            if finish_csum(w.lin, f.len, f.csum_start, f.csum_offset):
                rvq.c.drops[DROP_BAD_OFFLOAD] += 1
                continue
            iov[1].iov_base = w.lin
            iov[1].iov_len = f.len
            vxlan_send(w, vx, rvq, iov, 2, remote, f.len)
            rvq.c.sw_csum += 1
            continue
        if tso_plan(w.lin, f.len, f.gso_type, f.gso_size, &plan):
            rvq.c.drops[DROP_BAD_OFFLOAD] += 1
            continue
        for s in range(plan.nsegs):
            if w.budget <= 0:
                src_vq.c.drops[DROP_OVER_BUDGET] += 1
                break
            seglen = tso_segment(w.lin, &plan, f.gso_size, s, w.segbuf)
            iov[1].iov_base = w.segbuf
            iov[1].iov_len = seglen
            vxlan_send(w, vx, rvq, iov, 2, remote, seglen)
        rvq.c.sw_gso += 1
        rvq.c.sw_gso_segments += plan.nsegs
    vs_spin_unlock(&rvq.lock)
