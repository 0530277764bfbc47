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


cdef inline vs_region *mem_find_gpa_hint(vs_memtable *m, uint64_t gpa, int *hint) noexcept nogil:
    """mem_find_gpa, trying region hint[0] first (and leaving there the one
    found): a ring's buffers mostly lie in one region (a guest's RAM above
    4 GiB, say), which is then found by one test whatever the table's order.
    The hint is an index, never a pointer: it is checked against the table
    in place now (m.n, and the region's own bounds, by the same overflow-safe
    test as the search), so it means nothing more than where to look first
    and stays harmless when the control plane installs another table."""
    cdef int i = hint[0]
    cdef vs_region *r
    if <unsigned int>i < <unsigned int>m.n:
        r = &m.r[i]
        if gpa >= r.gpa and gpa - r.gpa < r.size:
            return r
    for i in range(m.n):
        r = &m.r[i]
        if gpa >= r.gpa and gpa - r.gpa < r.size:
            hint[0] = i
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


# --- mapping guest memory ------------------------------------------------------
#
# A front-end's memory table names byte ranges of files it passes; it may
# point anywhere in a file of any size (a sparse memfd of 128 TiB costs it
# nothing). So each range is mapped alone - from its offset rounded down to
# the file's page, to its end rounded up - never the file from offset 0; the
# bytes a port maps, and all ports together, are capped (config `limits`);
# and every mapping is left out of core dumps (the default coredump_filter
# includes shared memfd mappings: a core would hold every tenant's RAM).

# config `limits`: guest_memory_per_port and guest_memory_total (bytes)
DEFAULT_GUEST_MEMORY_PER_PORT = 1 << 40
DEFAULT_GUEST_MEMORY_TOTAL = 32 << 40

cdef size_t _PAGE = os.sysconf("SC_PAGE_SIZE")
cdef enum:
    HUGETLBFS_MAGIC = 0x958458f6
# The largest huge page a hugetlbfs st_blksize may claim (x86 has 2 MiB and
# 1 GiB, arm64 up to 16 GiB).
cdef size_t _MAX_HUGE_PAGE = 1 << 34


cdef size_t _map_page(int fd, long blksize) except 0:
    """The unit fd is mapped in: on hugetlbfs its huge page size (st_blksize;
    mmap offsets and lengths must be multiples of it, and munmap of part of
    a huge page fails), else the base page."""
    cdef statfs fs
    if fstatfs(fd, &fs) != 0:
        raise DatapathError(f"fstatfs of fd {fd}: {os.strerror(errno)}")
    if <uint32_t>fs.f_type != HUGETLBFS_MAGIC:
        return _PAGE
    if blksize < <long>_PAGE or blksize > <long>_MAX_HUGE_PAGE or (blksize & (blksize - 1)) != 0:
        raise DatapathError(f"hugetlbfs file with a page size of {blksize} bytes")
    return <size_t>blksize


cdef void *_map_guest(int fd, uint64_t map_off, size_t map_len, str what) except NULL:
    """Map [map_off, map_off + map_len) of fd, shared, left out of core dumps."""
    cdef void *base = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, <long>map_off)
    cdef int err
    if base == MAP_FAILED:
        raise DatapathError(f"mmap of {what} ({map_len} bytes at offset {map_off:#x}) failed: "
                            f"{os.strerror(errno)}")
    if madvise(base, map_len, MADV_DONTDUMP) != 0:
        err = errno
        munmap(base, map_len)
        raise DatapathError(f"madvise(MADV_DONTDUMP) of {what} failed: {os.strerror(err)}")
    return base


cdef int _map_span(uint64_t off, uint64_t size, size_t page, uint64_t *map_off, uint64_t *lead,
                   uint64_t *map_len) noexcept nogil:
    """The pages [off, off + size) touches: map_off (off rounded down),
    lead (where off falls in the first page), map_len (whole pages). The
    caller checked off + size against the file's size, so nothing wraps."""
    map_off[0] = off - off % page
    lead[0] = off - map_off[0]
    map_len[0] = (lead[0] + size + page - 1) // page * page
    return 0


cdef uint64_t _port_mapped(vs_port *port) noexcept nogil:
    """Bytes of guest memory the port maps: its regions and its dirty log."""
    cdef uint64_t total = port.log_map_len
    cdef int i
    for i in range(port.mem.n):
        total += port.mem.r[i].map_len
    return total


def _human_size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n} bytes"


cdef void _unmap_all(vs_memtable *m) noexcept nogil:
    cdef int i
    for i in range(m.n):
        vs_guard_remove(m.r[i].guard)      # unguarded first: then it is gone
        if m.r[i].map_base != NULL:
            munmap(m.r[i].map_base, m.r[i].map_len)
    memset(m, 0, sizeof(vs_memtable))


cdef int _translate_ring(vs_memtable *m, vs_vring *vq) noexcept nogil:
    """Point desc/avail/used at our mapping of the front-end's addresses."""
    cdef uint64_t num = vq.num
    # a packed ring (packed.pxi): avail and used are its two 4-byte event areas
    vq.desc = <vs_vring_desc *>mem_uaddr_contig(m, vq.desc_ua, 16 * num)
    vq.avail = <vs_vring_avail *>mem_uaddr_contig(m, vq.avail_ua, 4 if vq.packed else 6 + 2 * num)
    vq.used = <vs_vring_used *>mem_uaddr_contig(m, vq.used_ua, 4 if vq.packed else 6 + 8 * num)
    if vq.desc == NULL or vq.avail == NULL or vq.used == NULL:
        vq.desc = NULL
        vq.avail = NULL
        vq.used = NULL
        return -1
    return 0


def memory_guard_info():
    """The SIGBUS guard of guest memory: mappings guarded, faults absorbed."""
    return {"mappings": vs_guard_in_use(), "faults": vs_guard_total(),
            "unguarded": vs_guard_refused()}


def memory_guard_ranges():
    """(start, length) of every mapping the SIGBUS guard covers, sorted: the
    tests compare them with the mappings the kernel reports."""
    cdef int i
    return sorted((vs_guard_slots[i].start, vs_guard_slots[i].len)
                  for i in range(VS_GUARD_SLOTS) if vs_guard_slots[i].start != 0)
