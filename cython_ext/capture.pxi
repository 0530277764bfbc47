# Live capture (vswitchctl capture): copies of the frames a port receives
# and/or is given, for the control plane to hand to a pcap writer.
#
# Design: a vs_capture per capturing port, pointed to by vs_port.capture
# (NULL when nobody captures: the hooks cost one NULL test). Its memory is two
# halves of one ring budget. Workers (several may capture the same port: TX
# rings of one port belong to different workers, and any worker delivers to
# it) append records to the active half under a spinlock. The control plane
# drains by swapping the halves under the lock - O(1) - and then parses the
# half it took without the lock: no worker writes a half that is not active,
# and only the control-plane thread swaps. A record that does not fit in the
# active half is not written and counted in `lost`; nothing ever blocks a
# worker except another worker's copy of a frame into the same capture.
#
# Record layout (native endianness, packed, memcpy'd):
#   u64 timestamp ns (CLOCK_REALTIME), u32 original length, u32 captured
#   length, u32 direction (CAP_IN / CAP_OUT), then `captured length` bytes.
#
# Lifetime: the control plane allocates the capture before publishing the
# pointer (release barrier) and frees it only after storing NULL and waiting
# for every worker to finish its round (Datapath._quiesce).

cdef enum:
    CAP_IN = 1                     # from the port into the switch
    CAP_OUT = 2                    # from the switch to the port
    CAP_REC_HDR = 20
    CAP_MIN_RING = 8192            # two halves of 4 KiB
    CAP_MAX_RING = 256 << 20
    CAP_MAX_SNAPLEN = 262144       # tcpdump's default and pcap readers' limit


cdef void capture_frame(vs_capture *cap, int direction, vs_seg *segs, int nseg, uint32_t skip,
                        uint32_t len) noexcept nogil:
    """Append one frame (len bytes at offset skip of segs) to the capture, or
    count it lost if the active half is full. The caller guarantees the
    segments hold skip + len bytes (as for sg_read)."""
    cdef uint32_t caplen
    cdef uint64_t need
    cdef uint64_t ts_ns
    cdef uint32_t hdr32[3]
    cdef uint8_t *p
    cdef timespec ts
    if not (cap.dirmask & direction):
        return
    caplen = len if len < cap.snaplen else cap.snaplen
    need = <uint64_t>CAP_REC_HDR + caplen
    clock_gettime(CLOCK_REALTIME, &ts)
    ts_ns = <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec
    hdr32[0] = len
    hdr32[1] = caplen
    hdr32[2] = <uint32_t>direction
    vs_spin_lock(&cap.lock)
    if need > cap.half - cap.used:          # used <= half always: no underflow
        cap.lost += 1
        vs_spin_unlock(&cap.lock)
        return
    p = cap.buf[cap.active] + cap.used
    memcpy(p, &ts_ns, 8)
    memcpy(p + 8, hdr32, 12)
    sg_read(segs, nseg, skip, p + CAP_REC_HDR, caplen)
    cap.used += need
    cap.captured += 1
    vs_spin_unlock(&cap.lock)


cdef vs_capture *capture_alloc(int dirmask, uint32_t snaplen, uint64_t ring_bytes) noexcept nogil:
    cdef vs_capture *cap = <vs_capture *>calloc(1, sizeof(vs_capture))
    if cap == NULL:
        return NULL
    cap.dirmask = dirmask
    cap.snaplen = snaplen
    cap.half = ring_bytes // 2
    cap.buf[0] = <uint8_t *>malloc(cap.half)
    cap.buf[1] = <uint8_t *>malloc(cap.half)
    if cap.buf[0] == NULL or cap.buf[1] == NULL:
        free(cap.buf[0])
        free(cap.buf[1])
        free(cap)
        return NULL
    return cap


cdef void capture_free(vs_capture *cap) noexcept nogil:
    if cap != NULL:
        free(cap.buf[0])
        free(cap.buf[1])
        free(cap)


cdef list capture_collect(vs_capture *cap):
    """Swap the halves and return the records of the one taken:
    [(ts_ns, "in" | "out", orig_len, bytes)]. Control-plane thread only."""
    cdef uint64_t used, off = 0
    cdef uint8_t *p
    cdef uint64_t ts_ns
    cdef uint32_t hdr32[3]
    cdef int taken
    vs_spin_lock(&cap.lock)
    taken = cap.active
    used = cap.used
    cap.active = 1 - taken
    cap.used = 0
    vs_spin_unlock(&cap.lock)
    out = []
    p = cap.buf[taken]
    while off + CAP_REC_HDR <= used:
        memcpy(&ts_ns, p + off, 8)
        memcpy(hdr32, p + off + 8, 12)
        off += CAP_REC_HDR
        out.append((ts_ns, "in" if hdr32[2] == CAP_IN else "out", hdr32[0],
                    (<char *>p + off)[:hdr32[1]]))
        off += hdr32[1]
    return out


CAPTURE_DIRECTIONS = {"in": CAP_IN, "out": CAP_OUT, "both": CAP_IN | CAP_OUT}
CAPTURE_MAX_SNAPLEN = CAP_MAX_SNAPLEN
CAPTURE_RING_LIMITS = (CAP_MIN_RING, CAP_MAX_RING)
