"""Every numeric bound of the switch, in one place: the range a setting of
the configuration may take, and the fixed sizes the vhost-user session and
the datapath hold a front-end to.

Named bounds, not limits: in vswitch "limits" already names the `limits:`
section of the file (LimitsConfig: what a front-end may make the daemon
hold) and vswitch/limits.py (the file descriptors a configuration needs).

No imports: the vhost-user session and the fd budget read these without
pulling in the validator. The datapath (cython_ext/) is compiled with its
own copies; tests/unit/test_bounds.py checks the ones it exposes against
these.
"""

from __future__ import annotations

# --- ports and queues ---------------------------------------------------------

MIN_QUEUES, MAX_QUEUES = 1, 64           # queue pairs a port offers (the datapath's MAX_QUEUE_PAIRS)
# Ports of every type share the datapath's fixed slot table (its MAX_PORTS).
MAX_PORTS = 256
MIN_WORKERS, MAX_WORKERS = 1, 64         # datapath threads
MAX_CPU = 4095                           # datapath.cpus: CPU numbers

# --- vhost-user (the session's limits on a front-end) ----------------------------

# Memory slots offered with CONFIGURE_MEM_SLOTS (the datapath's MAX_REGIONS).
MAX_MEM_SLOTS = 32
# Split virtqueues: "Queue Size ... is a power of 2" and at most 32768.
MAX_RING_SIZE = 32768

# --- frames ---------------------------------------------------------------------

# 68: the least IPv4 must carry (RFC 791); 65535: the most an IP packet's
# length field can say. Also what VHOST_USER_NET_SET_MTU accepts.
MIN_MTU, MAX_MTU = 68, 65535
ETH_HEADER_LEN = 14

# --- names and files --------------------------------------------------------------

IFNAMSIZ = 16   # kernel interface names: at most 15 bytes
# sizeof(sockaddr_un.sun_path) is 108 on Linux; one byte goes to the NUL.
UNIX_PATH_MAX = 107
MAX_ID = 2**32 - 2  # uid_t/gid_t; (uid_t)-1 means "unchanged" to chown(2)
MAX_SOCKET_MODE = 0o777
OWNER_RW = 0o600
MIN_PORT, MAX_PORT = 1, 65535            # TCP/UDP ports

# --- VXLAN (RFC 7348) ------------------------------------------------------------

# 24-bit VNI; a head-end replication list the datapath holds in a fixed table.
MIN_VNI, MAX_VNI = 1, 2**24 - 1
MAX_VXLAN_REMOTES = 64

# --- limits: what a front-end may make the daemon hold ---------------------------

MIN_MESSAGE_TIMEOUT, MAX_MESSAGE_TIMEOUT = 0.1, 3600.0
# Guest memory mapped: x86-64 gives a process 128 TiB of address space.
MIN_GUEST_MEMORY, MAX_GUEST_MEMORY = 1 << 20, 1 << 47

# --- forwarding policies -------------------------------------------------------------

# 802.1Q: VID 0 means "priority tag only" and 4095 is reserved.
MIN_VLAN, MAX_VLAN = 1, 4094
# Port security: the source MACs a port may send from, held in a fixed table
# per port so a frame's check needs no allocation (the datapath's MAX_ALLOWED_MACS).
MAX_ALLOWED_MACS = 64
MAX_STORM_RATE = 100_000_000          # frames/s; beyond any port's line rate
MIN_RATE_BPS, MAX_RATE_BPS = 1_000, 400_000_000_000
# A token bucket smaller than one full frame would drop every full frame.
MIN_BURST_BYTES = 1514                # 1500 bytes of payload + the 14-byte Ethernet header
MAX_BURST_BYTES = 2**30               # 1 GiB; the default for 400 Gbit/s (1e9 bytes) fits
MAX_PPS = 1_000_000_000
MAX_PPS_BURST = 1_000_000_000

# --- FDB --------------------------------------------------------------------------------

MAX_FDB_AGING = 1_000_000          # seconds (the Linux bridge's ageing_time max is ~1e6 s too)
MAX_FDB_ENTRIES = 1_000_000
MIN_FDB_VLAN = 0                   # fdb.static vlan: 0 is the untagged frames of a port without VLAN settings
