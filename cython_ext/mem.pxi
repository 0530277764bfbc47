# Guest memory: the region table and address translation.
#
# Every address that comes from a guest is translated here with bounds checks
# that cannot overflow: the region's own end was checked when the table was
# set (gpa + size and uaddr + size do not wrap), and a request is compared by
# subtraction (`gpa - r.gpa < r.size`) rather than by computing its end.

cdef inline vs_region *mem_find_gpa(vs_memtable *m, uint64_t gpa) noexcept nogil:
    cdef int i
    cdef vs_region *r
    for i in range(m.n):
        r = &m.r[i]
        if gpa >= r.gpa and gpa - r.gpa < r.size:
            return r
    return NULL


cdef inline void *mem_gpa_contig(vs_memtable *m, uint64_t gpa, uint64_t length) noexcept nogil:
    """Host pointer for [gpa, gpa+length) if it lies inside one region, else NULL."""
    cdef vs_region *r = mem_find_gpa(m, gpa)
    if r == NULL:
        return NULL
    if length > r.size - (gpa - r.gpa):
        return NULL
    return r.host + (gpa - r.gpa)


cdef inline void *mem_uaddr_contig(vs_memtable *m, uint64_t ua, uint64_t length) noexcept nogil:
    """Host pointer for a front-end virtual address range (ring addresses)."""
    cdef int i
    cdef vs_region *r
    for i in range(m.n):
        r = &m.r[i]
        if ua >= r.uaddr and ua - r.uaddr < r.size:
            if length > r.size - (ua - r.uaddr):
                return NULL
            return r.host + (ua - r.uaddr)
    return NULL


cdef inline int mem_host_to_gpa(vs_memtable *m, const uint8_t *p, uint64_t *gpa) noexcept nogil:
    """The guest address of a host pointer into one of the regions (dirty log)."""
    cdef int i
    cdef vs_region *r
    for i in range(m.n):
        r = &m.r[i]
        if p >= r.host and <uint64_t>(p - r.host) < r.size:
            gpa[0] = r.gpa + <uint64_t>(p - r.host)
            return 1
    return 0


cdef inline int mem_gpa_segments(vs_memtable *m, uint64_t gpa, uint32_t length,
                                 vs_seg *segs, int *nseg, int maxseg) noexcept nogil:
    """Append the host pieces of [gpa, gpa+length) to segs; a buffer may span
    regions. Returns 0, or a drop reason."""
    cdef vs_region *r
    cdef uint64_t off, room, chunk
    cdef uint64_t left = length
    while left > 0:
        r = mem_find_gpa(m, gpa)
        if r == NULL:
            return DROP_BAD_ADDRESS
        off = gpa - r.gpa
        room = r.size - off
        chunk = left if left < room else room
        if nseg[0] >= maxseg:
            return DROP_TOO_MANY_SEGMENTS
        segs[nseg[0]].p = r.host + off
        segs[nseg[0]].len = <uint32_t>chunk
        nseg[0] += 1
        left -= chunk
        # cannot wrap: gpa + chunk <= r.gpa + r.size, which was checked not to wrap
        gpa += chunk
    return 0
