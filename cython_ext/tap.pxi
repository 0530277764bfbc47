# TAP ports (tap_ingress_burst, deliver_to_tap).
#
# A TAP port is the host kernel: frames are read from and written to its queue
# fds with a 12-byte virtio_net_hdr (IFF_VNET_HDR), so offloads pass both ways
# in the same header format guests use. Reading is the one copy in (the kernel
# copies into our buffer); writing gathers straight from the source guest's
# buffers (writev), so frames to the kernel are not copied by us at all.

cdef enum:
    TAP_SENT_PLAIN = 0
    TAP_SENT_CSUM = 1
    TAP_SENT_GSO = 2


cdef inline void tap_sent(vs_port *dport, vs_vring *rvq, ssize_t rc, uint32_t flen,
                          uint8_t kind) noexcept nogil:
    """Account one write into a TAP queue: rc is its result (bytes or -errno)."""
    if rc < 0:
        rvq.c.drops[DROP_TAP_WRITE] += 1
        if rc == -EBADFD:
            dport.tap_errno = EBADFD    # deleted under us: the control plane re-creates it
        return
    rvq.c.packets += 1
    rvq.c.bytes += flen
    if kind == TAP_SENT_GSO:
        rvq.c.gso_passthrough += 1
    elif kind == TAP_SENT_CSUM:
        rvq.c.csum_passthrough += 1


cdef inline void tap_flush(vs_worker *w, vs_port *dport, vs_vring *rvq, int *nq) noexcept nogil:
    """Hand the writes queued on the worker's ring to the kernel, in order, and
    account each when it completed (vs_uring_flush waits for all of them)."""
    cdef int i, err
    if nq[0] == 0:
        return
    err = vs_uring_flush(&w.uring, w.tapres)
    if err:
        w.uring_errno = err     # the ring is disabled: write(2) from now on
    for i in range(nq[0]):
        tap_sent(dport, rvq, w.tapres[i], w.taplen[i], w.tapkind[i])
    nq[0] = 0


cdef void deliver_to_tap(vs_switch *sw, vs_worker *w, int d, vs_vring *src_vq, int qp, int n,
                         int view) noexcept nogil:
    cdef vs_port *dport = sw.ports[d]
    cdef int q, i, k, fd, cnt, tag, nq = 0
    cdef vs_vring *rvq
    cdef vs_frame *f
    cdef vs_frame *vf
    cdef vs_seg *segs
    cdef vs_seg *seg
    cdef uint8_t one[TAP_OUT_SLOT]
    cdef uint8_t *hdr
    cdef uint8_t eth_type[2]
    cdef uint8_t kind
    cdef uint32_t skip
    cdef iovec iov1[TAP_IOV_MAX]
    cdef iovec *iov
    cdef ssize_t rc
    cdef uint64_t now = 0
    cdef bint batch
    q = qp % dport.nqp
    fd = dport.tap_fd[q]
    rvq = &dport.vq[2 * q]          # counters of "towards the kernel" on queue q
    if fd < 0 or dport.tap_errno:
        if view == VIEW_NORMAL:
            for i in range(n):
                if w.frames[i].dst == d:
                    src_vq.c.drops[DROP_NO_RX_QUEUE] += 1
        return
    if dport.egress_policy and view == VIEW_NORMAL:
        now = now_ns()
    # A live capture records each frame after its write: one at a time then.
    batch = w.uring.enabled and dport.capture == NULL
    vs_spin_lock(&rvq.lock)
    for i in range(n):
        f = &w.frames[i]
        tag = egress_select(sw, dport, d, f, view, src_vq)
        if tag < 0:
            continue
        if w.budget <= 0:
            src_vq.c.drops[DROP_OVER_BUDGET] += 1
            continue
        w.budget -= 1
        vf = frame_view(w, f, w.segs, tag, &segs)
        if vf == NULL:
            rvq.c.drops[DROP_BAD_OFFLOAD] += 1
            continue
        # the EtherType of the frame as delivered (a tag pushed or popped)
        sg_read(segs, vf.nseg, vf.hdr_len + 12, eth_type, 2)
        if not frame_fits_mtu(dport, vf, eth_type):
            rvq.c.drops[DROP_MTU_EXCEEDED] += 1
            continue
        if now and not police(&dport.out_bytes, &dport.out_pkts, f, now):
            rvq.c.drops[DROP_RATE_LIMITED] += 1
            continue
        hdr = w.tapout + <size_t>nq * TAP_OUT_SLOT if batch else one
        # The offload request travels as is: the kernel finishes checksums and
        # segments GSO frames itself (it validated nothing of ours yet, but
        # parse_offload checked csum_start/offset against the frame length).
        memset(hdr, 0, VS_HDR_MAX)
        kind = TAP_SENT_PLAIN
        hdr[0] = vf.vflags & VNET_F_NEEDS_CSUM
        if hdr[0]:
            put_le16(hdr + 6, vf.csum_start)
            put_le16(hdr + 8, vf.csum_offset)
            kind = TAP_SENT_CSUM
        if vf.gso_type != VS_GSO_NONE:
            hdr[1] = vf.gso_type
            put_le16(hdr + 2, vf.vhdr_len)
            put_le16(hdr + 4, vf.gso_size)
            kind = TAP_SENT_GSO
        if vf.len <= TAP_SMALL_FRAME:
            # one buffer: the header, then the frame
            sg_read(segs, vf.nseg, vf.hdr_len, hdr + VS_HDR_MAX, vf.len)
            if batch:
                vs_uring_queue_write(&w.uring, fd, dport.tap_fixed[q], hdr, VS_HDR_MAX + vf.len, nq)
        else:
            # a larger frame is written from the source's buffers (the one
            # copy is the kernel's)
            iov = w.tapiov + <size_t>nq * TAP_IOV_MAX if batch else iov1
            iov[0].iov_base = hdr
            iov[0].iov_len = VS_HDR_MAX
            cnt = 1
            skip = vf.hdr_len
            for k in range(vf.nseg):
                seg = &segs[k]
                if skip >= seg.len:
                    skip -= seg.len
                    continue
                iov[cnt].iov_base = seg.p + skip
                iov[cnt].iov_len = seg.len - skip
                if batch and seg.p == w.vtag:
                    # the VLAN tag of a re-tagged view lives in the worker
                    # until the next frame's view: give it the slot's room
                    memcpy(hdr + VS_HDR_MAX, w.vtag + skip, 4 - skip)
                    iov[cnt].iov_base = hdr + VS_HDR_MAX
                skip = 0
                cnt += 1
            if batch:
                vs_uring_queue_writev(&w.uring, fd, dport.tap_fixed[q], iov, cnt, nq)
        if batch:
            # accounted when the ring reports its result (tap_flush)
            w.taplen[nq] = vf.len
            w.tapkind[nq] = kind
            nq += 1
            continue
        if vf.len <= TAP_SMALL_FRAME:
            rc = write(fd, hdr, VS_HDR_MAX + vf.len)
        else:
            rc = writev(fd, iov, cnt)
        if rc < 0:
            rc = -errno
        elif dport.capture != NULL:     # live capture, egress: what the kernel was given
            capture_frame(dport.capture, CAP_OUT, segs, vf.nseg, vf.hdr_len, vf.len)
        tap_sent(dport, rvq, rc, vf.len, kind)
    tap_flush(w, dport, rvq, &nq)
    vs_spin_unlock(&rvq.lock)


cdef enum:
    TAP_IDLE_SKIP = 7


cdef int tap_ingress_burst(vs_switch *sw, vs_worker *w, int pidx, vs_port *port, int q) noexcept nogil:
    """Read up to VS_BURST frames the kernel sent out of the TAP's queue q."""
    cdef vs_vring *vq = &port.vq[2 * q + 1]
    cdef int fd = port.tap_fd[q]
    cdef int i, n = 0, rc
    cdef ssize_t got
    cdef uint8_t *buf
    cdef vs_frame *f
    if fd < 0 or port.tap_errno or w.budget <= 0:
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
        if got > VS_HDR_MAX + VS_MAX_FRAME:
            # larger than any frame from a guest (or cut by the read): its
            # delivery could need 4 bytes more for a pushed VLAN tag than
            # the worker's linear buffer holds
            vq.c.drops[DROP_BAD_LENGTH] += 1
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
