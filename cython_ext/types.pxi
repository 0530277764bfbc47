# The datapath's own C types, limits and enums, in one place (what it
# declares of outside C - libc, Linux, io_uring, atomics - is in includes/*.pxd).
#
# Ownership (docs/architecture.md, "Who owns each ring"): the control plane
# writes a ring's configuration only while the ring is stopped (`started == 0`) and every
# worker has passed a quiescent point since; workers read it after an acquire
# load of `started`. Counters of a TX ring are written only by the worker that
# owns that ring; counters of an RX ring only under the ring's spinlock.

# Limits. Ports and queue pairs are bounded so that every table is a fixed
# array allocated once: no allocation on the datapath.
cdef enum:
    VS_MAX_PORTS = 256
    VS_MAX_QP = 64
    VS_MAX_VRINGS = 128            # 2 * VS_MAX_QP
    VS_MAX_REGIONS = 32            # memory slots (CONFIGURE_MEM_SLOTS; SET_MEM_TABLE sends <= 8)
    VS_BURST = 32                  # frames per queue per round
    VS_MAX_SEGS = 64               # guest buffer pieces per frame
    VS_MAX_RX_CHAINS = 64          # MRG_RXBUF chains per frame
    VS_HDR_MAX = 12                # virtio_net_hdr_v1 (VERSION_1 or MRG_RXBUF)
    # Bytes of a guest's frame copied out of its memory once, before anything
    # is decided about it: the Ethernet header and one 802.1Q tag (18), with
    # the virtio-net header in front; a frame of up to VS_SMALL_COPY bytes is
    # copied whole (one segment, nothing left in guest memory).
    VS_L2_COPY = 20
    VS_SMALL_COPY = 128
    VS_FHEAD = VS_HDR_MAX + VS_SMALL_COPY
# Largest frame accepted from a guest, header excluded: 64 KiB (the largest
# GSO frame) plus an Ethernet and a VLAN header.
cdef enum:
    VS_MAX_FRAME = 65536 + 18
    VS_ETH_HLEN = 14
    VS_FDB_BITS = 16
    VS_FDB_SIZE = 65536            # 1 << VS_FDB_BITS slots of 16 bytes: 1 MiB
    VS_FDB_PROBE = 32
    # Bounded work: no guest can make a worker walk, copy or cut without end.
    # A descriptor chain has at most 256 descriptors, zero-length and
    # indirect ones counted (DPDK's vhost library: BUF_VECTOR_MAX 256; Linux
    # drivers use MAX_SKB_FRAGS + 2 = 19).
    VS_MAX_CHAIN_DESCS = 256
    # A TSO request the switch may have to cut in software: gso_size at least
    # 64 bytes, so at most 1024 segments (Linux accepts any TCP gso_size but
    # 0xFFFF; the floor is ours: no real stack sends segments that small).
    VS_GSO_MIN_SIZE = 64
    VS_GSO_MAX_SEGS = 1024
    # Work a port's frames may cost a worker in one round: one unit per
    # descriptor walked, per frame or software segment copied into a
    # destination and per datagram sent. A legal burst (32 frames flooded to
    # 64 ports, or cut into 45 segments each for a few ports) stays below it;
    # beyond it the burst's remaining deliveries are dropped (over_budget).
    # At ~100 ns a unit (a 1.5 KB copy) it bounds a port to ~2 ms a round.
    VS_PORT_WORK = 16384
    # Descriptors walked to place one frame in a receiver's RX buffers
    # (MRG_RXBUF: up to 64 chains); a receiver needing more is too small.
    VS_MAX_RX_WALK = 1024

# virtio-net feature bits the datapath reads (virtio spec 5.1.3)
cdef enum:
    F_NET_CSUM = 0
    F_NET_GUEST_CSUM = 1
    F_NET_GUEST_TSO4 = 7
    F_NET_GUEST_TSO6 = 8
    F_NET_GUEST_ECN = 9
    F_NET_HOST_TSO4 = 11
    F_NET_HOST_TSO6 = 12
    F_NET_HOST_ECN = 13
    VNET_F_NEEDS_CSUM = 1          # virtio_net_hdr.flags
    VNET_F_DATA_VALID = 2

# Drop reasons: index into vs_counters.drops. Names for Python in DROP_REASONS.
# 0 is not a reason: functions return 0 for success or a reason.
cdef enum:
    DROP_BAD_HEAD = 1              # avail ring entry >= ring size
    DROP_BAD_ADDRESS = 2           # buffer not inside guest memory
    DROP_BAD_LENGTH = 3            # chain longer than any frame can be
    DROP_BAD_CHAIN = 4             # loop, chain longer than the table, next out of range
    DROP_BAD_INDIRECT = 5          # indirect not negotiated, nested, misaligned, unmapped
    DROP_BAD_FLAGS = 6             # write-only buffer in a TX chain or read-only in an RX chain
    DROP_TOO_MANY_SEGMENTS = 7     # more pieces than VS_MAX_SEGS
    DROP_RUNT = 8                  # shorter than header + Ethernet header
    DROP_RING_DISABLED = 9         # TX from a started but disabled ring (spec: consume and discard)
    DROP_NO_RX_BUFFER = 10          # destination ring has no (or not enough) buffers
    DROP_RX_BUFFER_TOO_SMALL = 11  # no MRG_RXBUF and the buffer cannot hold the frame
    DROP_RX_BAD_CHAIN = 12         # destination posted an invalid buffer
    DROP_NO_RX_QUEUE = 13          # destination connected but has no enabled RX queue
    DROP_SAME_PORT = 14            # destination learned on the ingress port
    DROP_RING_BROKEN = 15          # avail index jumped by more than the ring size
    DROP_BAD_OFFLOAD = 16          # offload request not negotiated, or a GSO frame that does not parse
    DROP_MTU_EXCEEDED = 17         # larger than the egress port's MTU (GSO: judged per segment)
    DROP_TAP_WRITE = 18            # the kernel refused the frame (queue full, link down, device gone)
    DROP_SPOOFED_SOURCE = 19       # source MAC not in the port's allowed_macs
    DROP_STORM_CONTROL = 20        # broadcast/multicast/unknown-unicast over the port's cap
    DROP_RATE_LIMITED = 21         # over the port's ingress or egress policer
    DROP_VLAN_FILTERED = 22        # VLAN the port does not carry (tagged on access, not in trunk list)
    DROP_VXLAN_BAD_HEADER = 23     # VXLAN: shorter than its header or the I flag (valid VNI) not set
    DROP_VXLAN_WRONG_VNI = 24      # VXLAN: a VNI other than the port's
    DROP_VXLAN_UNKNOWN_REMOTE = 25 # VXLAN: from an address that is not one of the port's remotes
    DROP_VXLAN_SEND = 26           # VXLAN: the kernel refused the datagram (socket buffer full, no route)
    DROP_OVER_BUDGET = 27          # the ingress port's work budget for this round was spent
    DROP_IOTLB_MISS = 28           # ACCESS_PLATFORM: an IOVA with no IOTLB entry yet (a MISS is sent)
    DROP_IOTLB_DENIED = 29         # ACCESS_PLATFORM: the IOTLB entry forbids the access (write through read-only)
    DROP_MAX = 30

ctypedef struct vs_counters:
    uint64_t packets
    uint64_t bytes
    uint64_t notifications         # call eventfd writes
    uint64_t notify_suppressed     # bursts where the guest asked for no interrupt
    uint64_t notify_merged         # asked for while a write to the call fd was in flight
    uint64_t notify_failed         # call/err writes the kernel refused or that were cancelled
    uint64_t kicks                 # kick eventfd reads (event/adaptive mode)
    # RX side: how frames that asked for an offload reached this guest
    uint64_t csum_passthrough      # partial checksum handed on (guest has GUEST_CSUM)
    uint64_t gso_passthrough       # GSO frame handed on (guest has GUEST_TSO4/6)
    uint64_t sw_csum               # checksum finished by the switch
    uint64_t sw_gso                # GSO frames segmented by the switch
    uint64_t sw_gso_segments       # segments those produced
    uint64_t drops[DROP_MAX]

ctypedef struct vs_region:
    uint64_t gpa
    uint64_t size
    uint64_t uaddr                 # front-end virtual address (ring addresses use it)
    uint8_t *host                  # our mapping of gpa
    void *map_base
    size_t map_len
    int guard                      # vs_memguard.h token of the mapping (0: none)

ctypedef struct vs_memtable:
    int n
    vs_region r[VS_MAX_REGIONS]

ctypedef struct vs_seg:
    uint8_t *p
    uint32_t len

ctypedef struct vs_vring:
    # --- state flags (atomic ints) ---
    int started                    # configured and running: workers may touch it
    int enabled                    # SET_VRING_ENABLE
    int broken                     # stopped by the datapath after a fatal guest error
    int lock                       # RX writers' spinlock
    # --- configuration (control plane, while stopped) ---
    uint32_t num
    uint64_t desc_ua
    uint64_t avail_ua
    uint64_t used_ua
    vs_vring_desc *desc
    vs_vring_avail *avail
    vs_vring_used *used
    int tap_skip                   # TAP: rounds to skip reading after an empty read
    int log_used                   # VHOST_VRING_F_LOG: log used-ring writes at log_used_gpa
    uint64_t log_used_gpa
    int kick_fd
    int kick_epfd                  # epoll set the kick fd is registered in, or -1
    int call_fd
    int err_fd
    # notification writes (notify.pxi): [NOTIFY_CALL], [NOTIFY_ERR]
    int notify_busy[2]             # a write is in flight (claimed by CAS)
    int notify_again[2]            # asked for meanwhile: one more write when it completes
    uint32_t notify_gen            # bumped when the fds change: older completions are ignored
    # --- datapath state ---
    uint16_t last_avail            # next avail index to process
    uint16_t used_idx              # shadow of used->idx
    uint16_t start_avail           # avail idx seen at start (shared-memory check)
    uint32_t base_resyncs          # split starts whose base was taken from the used index
    int avail_moved
    # --- packed rings (packed.pxi): last_avail and used_idx are then ring
    # positions (0..num-1), each with its wrap counter ---
    int packed                     # VIRTIO_F_RING_PACKED was negotiated when the ring started
    uint8_t avail_wrap
    uint8_t used_wrap
    int pk_valid                   # the packed state above has been set (a fresh ring: 0, wrap 1)
    int base_set                   # SET_VRING_BASE since the last start: `base` is applied at start
    uint32_t base                  # its value (32 bits for a packed ring)
    int pk_pending                 # used elements written but not yet published
    uint16_t pk_first              # slot of the first of them: its flags are written last
    uint16_t pk_first_flags
    uint32_t pk_ndescs             # descriptors they cover (dirty logging)
    int iotlb_wait                 # TX stopped at an IOVA the IOTLB misses: skipped until an update
    int mem_hint                   # memory region its buffers were last found in (mem_find_gpa_hint)
    vs_counters c

cdef enum:
    VS_NOTIFY_CANCELS = 64         # cancel requests a worker's mailbox holds

cdef enum:
    PORT_VHOST = 0
    PORT_TAP = 1
    # read buffer of one TAP frame: virtio_net_hdr + the largest GSO frame
    VS_TAP_BUF = VS_HDR_MAX + VS_MAX_FRAME + 64
    # frames up to this size go to the kernel as one buffer (header + frame
    # copied together): a write of one buffer costs the kernel less than
    # importing an iovec array, by far more than copying <= 256 bytes
    TAP_SMALL_FRAME = 256
    TAP_OUT_SLOT = VS_HDR_MAX + TAP_SMALL_FRAME + 4   # + 4: 16-byte aligned slots
    # pieces of a larger frame written from the source's buffers: the
    # header, the source's segments and up to 3 more of a VLAN re-tagged view
    TAP_IOV_MAX = VS_MAX_SEGS + 6

# A policer or storm cap: GCRA (the virtual-scheduling form of a token
# bucket) in one u64, so workers sharing a port update it with a CAS and no
# lock. `tat` is the theoretical arrival time of the next unit; a frame
# conforms when tat - now <= tol_ns, and then moves tat by its cost.
ctypedef struct vs_gcra:
    uint64_t tat                   # ns, CLOCK_MONOTONIC
    uint64_t k_q16                 # ns per unit (byte or frame), << 16; 0: off
    uint64_t tol_ns                # burst tolerance

cdef enum:
    VLAN_ALL = 0                   # no vlan config: every VLAN, untagged frames are VLAN 0
    VLAN_ACCESS = 1
    VLAN_TRUNK = 2
    VS_NO_TCI = 0xffff             # vs_frame.tci of an untagged frame (VID 4095 is never accepted)
    VS_MAX_ALLOWED_MACS = 64
    POL_SECURITY = 1               # vs_port.ingress_policy bits: which checks run
    POL_STORM = 2
    POL_POLICE = 4
    POL_SHAPE = 8                  # ingress limit with action hold: rings wait for credit

# VXLAN ports (vxlan.pxi): a UDP socket the control plane bound, the VNI, the
# remote VTEPs as ready-made sockaddrs, and which remote each inner MAC was
# last seen behind. Allocated once per port slot, on the first attach.
cdef enum:
    PORT_VXLAN = 2
    VS_VXLAN_HLEN = 8              # RFC 7348 header
    VS_VXLAN_MAX_REMOTES = 64
    VS_VXLAN_MACS = 1024           # inner MAC -> remote table, power of two
    VS_VXLAN_PROBE = 16
    VS_SOCKADDR_MAX = 28           # sizeof(struct sockaddr_in6)

ctypedef struct vs_vxlan_remote:
    uint8_t sa[VS_SOCKADDR_MAX]    # sockaddr_in or sockaddr_in6 (address + udp port)
    uint32_t salen

ctypedef struct vs_vxlan:
    int fd                         # non-blocking UDP socket bound to local:udp_port
    uint32_t vni
    int nremotes
    vs_vxlan_remote remotes[VS_VXLAN_MAX_REMOTES]
    uint64_t macs[VS_VXLAN_MACS]   # (mac << 16) | (remote + 1); written by the port's RX worker only
    uint64_t macs_full             # learn attempts that found no slot (those MACs are flooded)

# Live capture of one port (capture.pxi): a ring in two halves, workers
# append records to the active half under `lock`, the control plane swaps the
# halves and reads the other one. NULL in vs_port.capture: no capture.
ctypedef struct vs_capture:
    int lock
    int dirmask                    # CAP_IN | CAP_OUT
    uint32_t snaplen
    int active                     # half workers append to
    uint64_t half                  # bytes per half
    uint64_t used                  # bytes of records in the active half
    uint8_t *buf[2]
    uint64_t captured              # records written (under lock)
    uint64_t lost                  # records that did not fit (under lock)

# IOTLB (iotlb.pxi): entries sorted by iova, never overlapping (the control
# plane keeps them so), at most VS_IOTLB_MAX per connection as DPDK.
cdef enum:
    VS_IOTLB_MAX = 2048
    VS_IOTLB_MISSQ = 64
    VS_IOTLB_RETIRED = 16
    IOTLB_PERM_R = 1               # vhost_iotlb_msg.perm: 1 RO, 2 WO, 3 RW
    IOTLB_PERM_W = 2

ctypedef struct vs_iotlb_entry:
    uint64_t iova
    uint64_t size                  # > 0; iova + size - 1 and uaddr + size - 1 do not wrap
    uint64_t uaddr
    uint64_t perm

ctypedef struct vs_iotlb:
    int n
    vs_iotlb_entry e[VS_IOTLB_MAX]

ctypedef struct vs_dirty_log:
    uint8_t *bits
    uint64_t size                  # bytes

ctypedef struct vs_port:
    int in_use
    int kind                       # PORT_VHOST, PORT_TAP or PORT_VXLAN
    uint32_t mtu                   # egress limit on the L3 size; 0: none
    int tap_fd[VS_MAX_QP]          # TAP: one fd per queue (IFF_MULTI_QUEUE)
    int tap_fixed[VS_MAX_QP]       # its registered-file slot in every worker's ring, or -1
    int tap_errno                  # TAP: a fatal errno seen by a worker (EBADFD: device deleted)
    vs_vxlan *vx                   # VXLAN: socket, VNI, remotes (NULL until the first attach)
    int active                     # memory mapped, session up: workers may look at it
    int nqp                        # queue pairs offered
    uint32_t hdr_len               # virtio_net_hdr size negotiated: 10 or 12
    uint64_t features              # negotiated virtio features
    int mrg_rxbuf
    int event_idx
    int indirect
    int n_rx_enabled
    uint16_t rx_enabled[VS_MAX_QP] # enabled RX queue pairs, for spreading
    vs_memtable mem
    # Dirty log for live migration (SET_LOG_BASE + VHOST_F_LOG_ALL): `log` is
    # NULL unless both are set; one bit per 4 KiB guest page. Workers read
    # the bitmap and its size through this one pointer, published whole (a
    # worker never sees a new bitmap with the old size): it points to one of
    # `logs`, and the control plane writes the other only after a quiescent
    # point has passed since it last published.
    vs_dirty_log *log
    vs_dirty_log logs[2]
    int log_cur                    # the one of logs[] published last
    uint64_t log_size              # bytes (the control plane's record)
    void *log_map_base
    size_t log_map_len             # the whole mapping, in pages of the log's file
    size_t log_lead                # where the bitmap starts in the mapping (its offset's page offset)
    int log_guard                  # vs_memguard.h token of the log mapping
    uint64_t mem_faults            # SIGBUS taken in this port's guest memory (vs_memguard.h)
    uint64_t mem_faults_ok         # mem_faults when the memory now mapped was installed
    int log_all
    uint64_t log_marks             # ranges marked (racy between workers: a statistic)
    # --- per-port policy (docs/tenants.md); each part is skipped by one test when unset ---
    int vlan_mode                  # VLAN_ALL / VLAN_ACCESS / VLAN_TRUNK
    uint16_t vlan_access           # access: its VLAN
    uint16_t vlan_native           # trunk: VLAN of untagged frames, 0: untagged frames dropped
    uint64_t vlan_carry[64]        # bit v: the port carries VLAN v (VLAN_ALL: every bit)
    int ingress_policy             # POL_* checks on frames from the port
    int egress_policy              # POL_POLICE: frames to the port are policed
    int allowed_sel                # which of the two allowed-MAC lists is current
    int n_allowed[2]
    uint64_t allowed[2][VS_MAX_ALLOWED_MACS]
    vs_gcra storm_bcast
    vs_gcra storm_mcast
    vs_gcra storm_unknown
    vs_gcra in_bytes
    vs_gcra in_pkts
    vs_gcra out_bytes
    vs_gcra out_pkts
    int mirror_in                  # port index + 1 that gets a copy of frames from this port, 0: none
    int mirror_out                 # port index + 1 that gets a copy of frames to this port, 0: none
    # FDB (fdb.pxi): learned entries pointing here, the cap on them (0: none;
    # fdb_max_set < 0: the cap follows sw.fdb_default_max), refused learns
    int fdb_count
    uint32_t fdb_max
    int64_t fdb_max_set
    uint64_t fdb_limit_refused

    vs_capture *capture            # live capture, or NULL (one test per burst/frame)
    # ACCESS_PLATFORM with a vIOMMU (iotlb.pxi): addresses are IOVAs, translated
    # through `iotlb` (published whole, freed after a quiescent point); misses
    # are queued for the control plane, which asks the front-end for them.
    int iotlb_on
    vs_iotlb *iotlb
    int iotlb_entries              # entries of the table published last (for readers off the control thread)
    int iotlb_nretired             # tables replaced without a wait: freed after the next quiescent point
    vs_iotlb *iotlb_retired[VS_IOTLB_RETIRED]
    int miss_lock
    int nmiss
    int miss_signalled             # the control plane was told (miss_efd) and has not drained yet
    int miss_efd                   # the control plane's eventfd, or -1
    uint64_t miss_iova[VS_IOTLB_MISSQ]
    uint8_t miss_perm[VS_IOTLB_MISSQ]
    uint64_t miss_overflow         # misses that found the queue full (racy statistics below too)
    uint64_t iotlb_hits
    uint64_t iotlb_misses
    uint64_t iotlb_denied
    vs_vring vq[VS_MAX_VRINGS]

ctypedef struct vs_frame:
    uint16_t head
    int seg0                       # first segment in the worker's pool
    int nseg
    uint32_t len                   # frame bytes, virtio-net header excluded
    uint32_t hdr_len               # source header length to skip
    int dst                        # port index, FDB_FLOOD, or FRAME_DROPPED
    # the source's virtio_net_hdr, validated against its negotiated features
    uint8_t vflags
    uint8_t gso_type
    uint16_t vhdr_len
    uint16_t gso_size
    uint16_t csum_start
    uint16_t csum_offset
    uint16_t vlan                  # the VLAN the frame is switched in (0: untagged on a VLAN-unaware port)
    uint16_t tci                   # 802.1Q TCI it arrived with, VS_NO_TCI if untagged
    int sel                        # selected for the mirror pass being delivered

ctypedef struct vs_rx_copy:        # a small frame's copy into an RX buffer, done later in the delivery
    uint8_t *dst
    const uint8_t *src
    uint32_t len

ctypedef struct vs_rx_chain:
    uint16_t head
    uint16_t ndesc                 # packed rings: descriptors the chain took in the ring
    int seg0
    int nseg
    uint32_t cap

cdef enum:
    VS_EPOLL_BATCH = 64
    # datapath modes (config datapath.mode)
    MODE_POLL = 0
    MODE_EVENT = 1
    MODE_ADAPTIVE = 2

ctypedef struct vs_worker:
    int id
    int quit
    uint64_t epoch                 # bumped after every round: quiescence
    int wake_fd                    # control plane -> worker: "finish your round"
    int epfd                       # wake_fd + kick fds of the TX rings this worker owns
    uint64_t rounds
    uint64_t idle_sleeps
    uint64_t wakeups
    uint64_t busy_ns               # time in rounds that moved frames (metrics)
    int stall_ms                   # test hook: sleep this long once (watchdog tests)
    epoll_event events[VS_EPOLL_BATCH]
    vs_frame frames[VS_BURST]
    vs_seg segs[VS_BURST * (VS_MAX_SEGS + 1)]   # + 1: each frame's private header copy
    uint8_t fhead[VS_BURST][VS_FHEAD]           # those copies (take_headers)
    vs_seg rxsegs[VS_MAX_RX_CHAINS * VS_MAX_SEGS]
    vs_rx_chain rxchains[VS_MAX_RX_CHAINS]
    vs_vring_used_elem tx_used[VS_BURST]
    uint16_t heads[VS_BURST]       # a TX burst's avail ring entries, read once (vhost_ingress_burst)
    # a delivery's small copies into the guest's buffers, done together at
    # its end (vring.pxi rx_copies_flush); rx_defer: the frame being
    # delivered may be copied later (its source stays as it is until then)
    vs_rx_copy rx_copies[VS_BURST]
    int nrx_copies
    int rx_defer
    # a frame as one port sees it (VLAN tag pushed, popped or rewritten):
    # slices of the source's segments around a 4-byte tag
    vs_frame view
    vs_seg vsegs[VS_MAX_SEGS + 5]
    uint8_t vtag[4]
    # software offload fallback: the frame made linear, and one segment
    uint8_t lin[VS_MAX_FRAME + 64]
    uint8_t segbuf[VS_MAX_FRAME + 64]
    uint8_t *tapbuf                # VS_BURST * VS_TAP_BUF bytes: frames read from TAP fds
    # writes into TAP queues, a burst per io_uring_enter: small frames are
    # staged in tapout (header + frame, one buffer each), larger ones are
    # written from the source's buffers (header in tapout, pieces in tapiov)
    vs_uring uring                 # enabled == 0: one write(2) per frame
    int uring_errno                # why the ring is not used (0: it is, or not wanted)
    uint8_t *tapout                # VS_BURST * TAP_OUT_SLOT bytes
    iovec *tapiov                  # VS_BURST * TAP_IOV_MAX
    int32_t tapres[VS_BURST]       # result of each queued write
    # notifications (notify.pxi): call/err eventfd writes go through their own
    # ring, never waited for; the control plane posts cancels of writes that
    # are stuck in the kernel to every worker's mailbox
    vs_uring nring
    int nring_errno                # why there is no notification ring (0: there is)
    int cancel_lock
    int ncancel
    uint64_t cancel_tags[VS_NOTIFY_CANCELS]
    uint32_t taplen[VS_BURST]      # its frame's length (counters)
    # bounded work (VS_PORT_WORK): what the port being served may still cost
    # this round, and the RX chains found bad in the current delivery (not
    # walked again for the next frame)
    int64_t budget
    int nbad_heads
    uint16_t bad_heads[8]
    uint8_t tapkind[VS_BURST]      # its offload: 0, csum or gso passthrough

ctypedef struct vs_switch:
    int nworkers
    int mode                       # MODE_POLL / MODE_EVENT / MODE_ADAPTIVE
    int nports_hi                  # highest port slot in use + 1
    vs_port *ports[VS_MAX_PORTS]
    vs_fdb_slot fdb[VS_FDB_SIZE]
    uint64_t fdb_full              # learn attempts that found no free slot
    uint64_t fdb_static_moves      # learn attempts refused by a static entry
    int mirrors                    # ports with a mirror set: the mirror pass runs only if > 0
    int paused                     # control plane applying a reload: workers wait between rounds
    uint64_t fdb_aged              # learned entries forgotten by the aging sweep
    uint32_t now_s                 # coarse clock (s) for last-seen stamps, set by the sweep
    uint32_t fdb_default_max       # fdb.max_entries_per_port (0: no cap)
