# The forwarding database: (VLAN, MAC) -> port, learned from source addresses.
#
# One open-addressing table (linear probing, VS_FDB_PROBE slots at most)
# shared by all workers and the control plane, without locks. A slot is two
# u64 in one cache line:
#
#   key  0 = unused (ends every probe chain), else
#        FDB_KEY_USED | vlan << 48 | mac. A key stays when its entry is
#        forgotten, so chains through the slot stay intact when it is
#        reused; only a free slot at the end of a chain gets key 0 back.
#   val  0 = free: forgotten (aged, flushed, port gone) or never filled;
#        FDB_LOCKED = being filled (the key may change under it);
#        else last_seen << 32 | FDB_STATIC? | (port + 1).
#
# Who writes what. A free slot is taken by CAS(val, 0 -> FDB_LOCKED); only the
# winner then stores the key and, last, the value (release). Every other
# change of a value is a CAS from the value just read: a refresh of the
# last-seen stamp, a move to another port, forgetting (-> 0) by the aging
# sweep, a flush or a port going away. So a value never lands on a slot whose
# key changed since it was read: the key only changes while the value is
# FDB_LOCKED, and no CAS expects FDB_LOCKED.
#
# Readers load key, value, key again and use the value only if both key
# loads match. Because the value is stored after the key, a value that
# belongs to a newer key is always seen together with that newer key. (The
# one hole is the same slot being forgotten and refilled twice between the
# two key loads, nanoseconds apart; forgetting is done by the control plane
# at most once per sweep, so it does not happen.)
#
# Reuse: forgotten slots are free slots, taken again by the next new entry
# whose probe chain passes them (learning takes the first free slot of the
# chain), so a table that sees new MACs for days does not fill up with dead
# ones; it is full only when VS_FDB_PROBE consecutive slots hold live entries.
# The aging sweep also clears the keys of free slots at the end of chains
# (fdb_shorten_chains), so that chains do not stay long once the MACs that
# made them are gone.
#
# Per-port counts: vs_port.fdb_count is the number of live learned entries
# pointing at the port. Whoever makes a value live on port p reserves one on
# p first (refused when p is at fdb_max); whoever's CAS takes a value away
# from p (move, forget) gives one back. Static entries are not counted.

cdef enum:
    FDB_FLOOD = -1
    FRAME_DROPPED = -2
    FDB_PORT_MASK = 0x7fff
    FDB_STATIC = 0x8000
    FDB_LOCKED = 0x10000           # port part 0: readers see "no port"
    FDB_ANY = -1                   # flush / forget: every port or every VLAN

cdef extern from *:
    """
    #define FDB_KEY_USED (1ULL << 63)
    """
    uint64_t FDB_KEY_USED


cdef inline uint64_t mac_load(const uint8_t *p) noexcept nogil:
    """(p[0] << 40) | (p[1] << 32) | ... | p[5], by two loads (vs_defs.h)."""
    return vs_mac_load(p)


cdef inline uint64_t fdb_key(uint16_t vlan, uint64_t mac) noexcept nogil:
    return FDB_KEY_USED | (<uint64_t>(vlan & 0xfff) << 48) | (mac & <uint64_t>0xffffffffffff)


cdef inline uint32_t fdb_hash(uint64_t key) noexcept nogil:
    return <uint32_t>((key * <uint64_t>0x9E3779B97F4A7C15) >> (64 - VS_FDB_BITS)) & (VS_FDB_SIZE - 1)


cdef inline int fdb_val_port(uint64_t v) noexcept nogil:
    """The port a value points to, or -1 (free, locked)."""
    return <int>(v & FDB_PORT_MASK) - 1


cdef inline uint64_t fdb_val(uint32_t now, int port, bint static) noexcept nogil:
    return (<uint64_t>now << 32) | (FDB_STATIC if static else 0) | <uint64_t>(port + 1)


cdef inline void fdb_count_add(vs_switch *sw, int port, int delta) noexcept nogil:
    cdef vs_port *p
    if 0 <= port < VS_MAX_PORTS:
        p = sw.ports[port]
        if p != NULL:
            vs_add_int(&p.fdb_count, delta)


cdef inline int fdb_lookup(vs_switch *sw, uint16_t vlan, uint64_t mac) noexcept nogil:
    """The port (vlan, mac) was learned or pinned on, or FDB_FLOOD."""
    cdef uint64_t key = fdb_key(vlan, mac)
    cdef uint32_t h = fdb_hash(key)
    cdef vs_fdb_slot *s
    cdef uint64_t k, v
    cdef int i
    for i in range(VS_FDB_PROBE):
        s = &sw.fdb[(h + i) & (VS_FDB_SIZE - 1)]
        k = vs_load_acquire_u64(&s.key)
        if k == 0:
            return FDB_FLOOD
        if k == key:
            v = vs_load_acquire_u64(&s.val)
            if (v & FDB_PORT_MASK) and vs_load_acquire_u64(&s.key) == key:
                return fdb_val_port(v)
            # forgotten (a live copy may sit further on) or refilled under us: go on
    return FDB_FLOOD


cdef inline bint fdb_reserve(vs_switch *sw, int port) noexcept nogil:
    """Count one more learned entry on port, unless it is at its cap
    (then count the refusal). The cheap check first: a port flooded with
    new source MACs stays at its cap without an atomic per frame."""
    cdef vs_port *p = sw.ports[port]
    cdef uint32_t cap = p.fdb_max
    if cap:
        if <uint32_t>vs_load_relaxed_int(&p.fdb_count) >= cap:
            vs_add_u64(&p.fdb_limit_refused, 1)
            return False
        if <uint32_t>vs_add_int(&p.fdb_count, 1) > cap:      # lost a race for the last one
            vs_add_int(&p.fdb_count, -1)
            vs_add_u64(&p.fdb_limit_refused, 1)
            return False
        return True
    vs_add_int(&p.fdb_count, 1)
    return True


cdef void fdb_move(vs_switch *sw, vs_fdb_slot *s, uint64_t v, int port, uint32_t now) noexcept nogil:
    """A learned MAC seen on another port. If that port is at its cap the
    MAC is forgotten rather than left pointing at the old port (its frames
    flood until it is learned again)."""
    cdef int old = fdb_val_port(v)
    if not fdb_reserve(sw, port):
        if vs_cas_u64(&s.val, v, 0):
            fdb_count_add(sw, old, -1)
        return
    if vs_cas_u64(&s.val, v, fdb_val(now, port, False)):
        fdb_count_add(sw, old, -1)
    else:
        fdb_count_add(sw, port, -1)        # someone else changed it first


cdef int fdb_claim(vs_switch *sw, uint64_t key, uint64_t want) noexcept nogil:
    """Put key -> want into the first free slot of key's chain. 0, or -1
    when the chain has no free slot."""
    cdef uint32_t h = fdb_hash(key)
    cdef vs_fdb_slot *s
    cdef int i
    for i in range(VS_FDB_PROBE):
        s = &sw.fdb[(h + i) & (VS_FDB_SIZE - 1)]
        if vs_load_relaxed_u64(&s.val) == 0 and vs_cas_u64(&s.val, 0, FDB_LOCKED):
            vs_store_release_u64(&s.key, key)
            vs_store_release_u64(&s.val, want)
            return 0
    return -1


cdef void fdb_insert(vs_switch *sw, uint64_t key, int port, uint32_t now) noexcept nogil:
    """Learn a new entry (the caller found no live one). Two workers
    learning the same new MAC at once may both insert it: lookups use the
    first, the other ages out (counts stay right, each slot is counted)."""
    if not fdb_reserve(sw, port):
        return
    if fdb_claim(sw, key, fdb_val(now, port, False)) < 0:
        fdb_count_add(sw, port, -1)
        sw.fdb_full += 1


cdef inline bint fdb_learn(vs_switch *sw, uint16_t vlan, uint64_t mac, int port) noexcept nogil:
    """Source (vlan, mac) seen on port. The common case -- known, same port,
    stamp current -- only reads the slot. True when the entry is on `port`
    (learned with a current stamp, or pinned there) and nothing was counted:
    learning it again within the burst would change nothing (switch_burst)."""
    cdef uint64_t key = fdb_key(vlan, mac)
    cdef uint32_t h = fdb_hash(key)
    cdef uint32_t now = vs_load_relaxed_u32(&sw.now_s)
    cdef vs_fdb_slot *s
    cdef uint64_t k, v
    cdef int i
    for i in range(VS_FDB_PROBE):
        s = &sw.fdb[(h + i) & (VS_FDB_SIZE - 1)]
        k = vs_load_acquire_u64(&s.key)
        if k == 0:
            break
        if k != key:
            continue
        v = vs_load_acquire_u64(&s.val)
        if not (v & FDB_PORT_MASK):
            continue                   # forgotten or being filled: not this one
        if v & FDB_STATIC:
            if fdb_val_port(v) != port:
                sw.fdb_static_moves += 1      # refused: the config pins this MAC
                return False
            return True
        if fdb_val_port(v) == port:
            if <uint32_t>(v >> 32) != now:     # at most once a second per entry
                vs_cas_u64(&s.val, v, fdb_val(now, port, False))
            return True
        fdb_move(sw, s, v, port, now)
        return False
    fdb_insert(sw, key, port, now)
    return False


cdef int fdb_set_static(vs_switch *sw, uint16_t vlan, uint64_t mac, int port) noexcept nogil:
    """Pin (vlan, mac) to port; port < 0: unpin it (the MAC is learned
    again). 0, or -1 if its chain is full."""
    cdef uint64_t key = fdb_key(vlan, mac)
    cdef uint32_t h = fdb_hash(key)
    cdef uint32_t now = vs_load_relaxed_u32(&sw.now_s)
    cdef uint64_t want = fdb_val(now, port, True) if port >= 0 else 0
    cdef vs_fdb_slot *s
    cdef uint64_t k, v
    cdef int i, spins
    for i in range(VS_FDB_PROBE):
        s = &sw.fdb[(h + i) & (VS_FDB_SIZE - 1)]
        k = vs_load_acquire_u64(&s.key)
        if k == 0:
            break
        if k != key:
            continue
        for spins in range(1000000):
            v = vs_load_acquire_u64(&s.val)
            if v == FDB_LOCKED:        # a worker is filling it: for nanoseconds
                vs_cpu_relax()
                continue
            if v == 0 or vs_load_acquire_u64(&s.key) != key:
                break                  # free (or reused): not ours any more
            if port < 0 and not (v & FDB_STATIC):
                return 0               # a learned entry: nothing pinned to undo
            if vs_cas_u64(&s.val, v, want):
                if not (v & FDB_STATIC):
                    fdb_count_add(sw, fdb_val_port(v), -1)   # learned entry now pinned
                return 0
        else:
            return -1
    if port < 0:
        return 0
    return fdb_claim(sw, key, want)


cdef uint64_t fdb_forget(vs_switch *sw, int port, int vlan, bint statics) noexcept nogil:
    """Forget the learned entries (and, with statics, the pinned ones) on
    port and vlan (FDB_ANY: all). Returns how many learned ones went."""
    cdef uint64_t n = 0, k, v
    cdef vs_fdb_slot *s
    cdef int i
    for i in range(VS_FDB_SIZE):
        s = &sw.fdb[i]
        v = vs_load_acquire_u64(&s.val)
        if not (v & FDB_PORT_MASK):
            continue
        if port != FDB_ANY and fdb_val_port(v) != port:
            continue
        if (v & FDB_STATIC) and not statics:
            continue
        if vlan != FDB_ANY:
            k = vs_load_acquire_u64(&s.key)
            if <int>((k >> 48) & 0xfff) != vlan:
                continue
        if vs_cas_u64(&s.val, v, 0) and not (v & FDB_STATIC):
            fdb_count_add(sw, fdb_val_port(v), -1)
            n += 1
    return n


cdef uint64_t fdb_age(vs_switch *sw, uint32_t now, uint32_t aging) noexcept nogil:
    """The periodic sweep: advance the clock workers stamp entries with and
    forget learned entries not seen for more than `aging` seconds (0: never).
    Returns how many went.

    The clock only moves at sweeps (once a second), so a stamp may be up to
    a sweep period older than the frame that wrote it: an entry goes when
    its stamp is more than aging + 1 old, never before `aging` seconds of
    silence, and at most about 3 s after (clock step + sweep period)."""
    cdef uint64_t n = 0, v
    cdef vs_fdb_slot *s
    cdef int i
    vs_store_relaxed_u32(&sw.now_s, now)
    if aging == 0:
        return 0
    for i in range(VS_FDB_SIZE):
        s = &sw.fdb[i]
        v = vs_load_relaxed_u64(&s.val)
        if not (v & FDB_PORT_MASK) or (v & FDB_STATIC):
            continue
        # u32 arithmetic: right across the wrap of the clock
        if <uint32_t>(now - <uint32_t>(v >> 32)) > aging + 1 and vs_cas_u64(&s.val, v, 0):
            fdb_count_add(sw, fdb_val_port(v), -1)
            n += 1
    sw.fdb_aged += n
    fdb_shorten_chains(sw)
    return n


cdef void fdb_shorten_chains(vs_switch *sw) noexcept nogil:
    """Give free slots at the end of a probe chain their "never used" key
    back, so that lookups of unknown MACs and new learns stop early again
    instead of walking VS_FDB_PROBE slots of dead keys once the table has
    seen many MACs. A free slot whose next slot is never-used ends every
    chain through it; walking backwards, whole dead tails go in one pass.

    The slot is locked (FDB_LOCKED) while its key is cleared, as a learner
    filling it would. The one race left: a learner that found this slot
    live a moment before it was forgotten may fill the next slot just after
    the check; its entry is then past the chain's end, lookups miss it
    (frames flood), the MAC is learned again in this slot, and the lost one
    ages out. Counts stay right: each slot is counted on its own."""
    cdef vs_fdb_slot *s
    cdef vs_fdb_slot *nxt
    cdef int i, k, start = 0
    # Start right before an unused slot, so that a chain wrapping around the
    # end of the table collapses in this pass too.
    for i in range(VS_FDB_SIZE):
        if vs_load_relaxed_u64(&sw.fdb[i].key) == 0:
            start = i
            break
    for k in range(VS_FDB_SIZE):
        i = (start - 1 - k) & (VS_FDB_SIZE - 1)
        s = &sw.fdb[i]
        nxt = &sw.fdb[(i + 1) & (VS_FDB_SIZE - 1)]
        if vs_load_relaxed_u64(&s.val) != 0 or vs_load_relaxed_u64(&s.key) == 0:
            continue
        if vs_load_acquire_u64(&nxt.key) != 0 or vs_load_acquire_u64(&nxt.val) != 0:
            continue
        if not vs_cas_u64(&s.val, 0, FDB_LOCKED):
            continue
        if vs_load_acquire_u64(&nxt.key) == 0 and vs_load_acquire_u64(&nxt.val) == 0:
            vs_store_release_u64(&s.key, 0)
        vs_store_release_u64(&s.val, 0)
