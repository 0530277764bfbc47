# The forwarding database: MAC -> port, learned from source addresses.
#
# One open-addressing table shared by all workers. Each slot is a single u64,
# (mac << 16) | (port + 1), so readers and writers never see a torn entry and
# need no lock: learning is a CAS into an empty slot or a store over the same
# MAC. A port part of 0 means "forgotten" (the port went away); the MAC keeps
# its slot so probe chains stay intact, and the next frame re-learns it.

cdef enum:
    FDB_FLOOD = -1
    FRAME_DROPPED = -2
    FDB_PORT_MASK = 0x7fff
    FDB_STATIC = 0x8000


cdef inline uint64_t mac_load(const uint8_t *p) noexcept nogil:
    return ((<uint64_t>p[0] << 40) | (<uint64_t>p[1] << 32) | (<uint64_t>p[2] << 24) |
            (<uint64_t>p[3] << 16) | (<uint64_t>p[4] << 8) | <uint64_t>p[5])


cdef inline uint32_t fdb_hash(uint64_t mac) noexcept nogil:
    return <uint32_t>((mac * <uint64_t>0x9E3779B97F4A7C15) >> 40) & (VS_FDB_SIZE - 1)


cdef inline int fdb_lookup(vs_switch *sw, uint64_t mac) noexcept nogil:
    cdef uint32_t h = fdb_hash(mac)
    cdef uint64_t v
    cdef int i
    for i in range(VS_FDB_PROBE):
        v = vs_load_relaxed_u64(&sw.fdb[(h + i) & (VS_FDB_SIZE - 1)])
        if v == 0:
            return FDB_FLOOD
        if (v >> 16) == mac:
            return <int>(v & FDB_PORT_MASK) - 1 if (v & FDB_PORT_MASK) else FDB_FLOOD
    return FDB_FLOOD


cdef inline void fdb_learn(vs_switch *sw, uint64_t mac, int port) noexcept nogil:
    cdef uint32_t h = fdb_hash(mac)
    cdef uint64_t v
    cdef uint64_t want = (mac << 16) | <uint64_t>(port + 1)
    cdef uint64_t *slot
    cdef int i
    for i in range(VS_FDB_PROBE):
        slot = &sw.fdb[(h + i) & (VS_FDB_SIZE - 1)]
        v = vs_load_relaxed_u64(slot)
        if v == 0:
            if vs_cas_u64(slot, 0, want):
                return
            v = vs_load_relaxed_u64(slot)   # another worker took it: maybe for this MAC
        if (v >> 16) == mac:
            if v & FDB_STATIC:
                if <int>(v & FDB_PORT_MASK) != port + 1:
                    sw.fdb_static_moves += 1      # refused: the config pins this MAC
            elif v != want:
                vs_store_relaxed_u64(slot, want)
            return
    sw.fdb_full += 1


cdef int fdb_set_static(vs_switch *sw, uint64_t mac, int port) noexcept nogil:
    """Pin mac to port (port < 0: unpin, the MAC is learned again). 0 or -1 if the table is full."""
    cdef uint32_t h = fdb_hash(mac)
    cdef uint64_t want = (mac << 16) | (<uint64_t>(port + 1) | FDB_STATIC if port >= 0 else 0)
    cdef uint64_t v
    cdef uint64_t *slot
    cdef int i
    for i in range(VS_FDB_PROBE):
        slot = &sw.fdb[(h + i) & (VS_FDB_SIZE - 1)]
        v = vs_load_relaxed_u64(slot)
        if v == 0:
            if port < 0:
                return 0
            if vs_cas_u64(slot, 0, want):
                return 0
            v = vs_load_relaxed_u64(slot)
        if (v >> 16) == mac:
            vs_store_relaxed_u64(slot, want)
            return 0
    return -1


cdef void fdb_forget_port(vs_switch *sw, int port) noexcept nogil:
    cdef int i
    cdef uint64_t v
    for i in range(VS_FDB_SIZE):
        v = vs_load_relaxed_u64(&sw.fdb[i])
        if v != 0 and not (v & FDB_STATIC) and <int>(v & FDB_PORT_MASK) == port + 1:
            vs_cas_u64(&sw.fdb[i], v, v & ~(<uint64_t>0xffff))
