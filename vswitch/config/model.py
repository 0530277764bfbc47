"""The configuration as the rest of the switch sees it: frozen dataclasses
with every default filled in, built by the validator (validate.py) and
written back by their to_dict() methods.

The enumerations and defaults live here with the fields they belong to;
numeric ranges are in bounds.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

SUPPORTED_VERSIONS = (1,)
DEFAULT_VERSION = 1
DEFAULT_RUNTIME_DIR = "/run/vswitch"
PORT_TYPES = ("vhost-user", "tap", "vxlan")
PORT_MODES = ("server", "client")
DEFAULT_PORT_MODE = "server"
DEFAULT_QUEUES = 1
DEFAULT_WORKERS = 1
# poll: workers spin (lowest latency, a full core each); event: workers sleep
# on the guests' kick eventfds whenever a round finds nothing; adaptive: spin
# while busy, sleep after a short idle spell.
DATAPATH_MODES = ("poll", "event", "adaptive")
DEFAULT_DATAPATH_MODE = "adaptive"
TAP_IO_METHODS = ("io_uring", "write")
DEFAULT_TAP_IO = "io_uring"
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT = "127.0.0.1", 9479
DEFAULT_VXLAN_PORT = 4789             # IANA

# Per-port switches for virtio features that cause interop trouble; each is
# offered to the guest unless set to false.
FEATURE_KEYS = ("mrg_rxbuf", "event_idx", "indirect_desc", "in_order", "offloads", "memory_slots")
# Only for server-mode vhost-user ports: in client mode QEMU owns the socket.
SOCKET_PERMISSION_KEYS = ("socket_owner", "socket_group", "socket_mode")
# Per-port switches that widen what a front-end may hand the switch; off by
# default. allow_file_memory: guest memory in files on any filesystem, not
# only memfd, tmpfs and hugetlbfs (vswitch/vhost/fdkind.py says why).
TRUST_KEYS = ("allow_file_memory",)

# `limits`: what a front-end (anyone who can connect to a port socket) can
# make the daemon hold. A message is read in one go once it has begun:
# QEMU writes each one with a single sendmsg, so a well-behaved front-end
# completes it at once, and the first one as soon as it connects (also with
# -S or -incoming); between complete messages it may wait for ever. A
# daemon-wide setting: it is about the protocol, not about a guest.
DEFAULT_MESSAGE_TIMEOUT = 10.0
# Guest memory mapped (regions and dirty logs; sparse files cost a front-end
# nothing, address space costs the daemon). x86-64 gives a process 128 TiB of
# address space: the total cap keeps a quarter of it at most for guests, so
# the daemon's own mappings always fit, and 1 TiB per port is more than the
# RAM of nearly any VM (raise it for larger ones).
DEFAULT_GUEST_MEMORY_PER_PORT = 1 << 40
DEFAULT_GUEST_MEMORY_TOTAL = 32 << 40

# Per-port forwarding policies, accepted by every port type: VLAN
# membership, port security, storm control, policing and mirroring.  All of
# them are applied to a running port in place (vswitch/reconcile.py).
POLICY_KEYS = ("vlan", "allowed_macs", "storm_control", "ingress_policing", "egress_policing",
               "mirror")
POLICER_ACTIONS = ("drop", "hold")
VLAN_MODES = ("access", "trunk")
MIRROR_DIRECTIONS = ("ingress", "egress", "both")
DEFAULT_MIRROR_DIRECTION = "both"
# Default buckets: 20 ms at the rate, and never less than 64 KiB (one TSO
# frame's worth) or 64 frames.
BURST_DEFAULT_DIVISOR = 400           # rate_bps / 8 bits * 0.02 s
MIN_DEFAULT_BURST_BYTES = 65536
PPS_BURST_DEFAULT_DIVISOR = 50        # 20 ms of frames
MIN_DEFAULT_PPS_BURST = 64

# The top-level `fdb` section and the per-port cap.
DEFAULT_FDB_AGING, DEFAULT_FDB_MAX_ENTRIES = 300, 1024


# --------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class VlanConfig:
    """A port's VLAN membership (absent: the port carries every VLAN, and
    untagged frames are VLAN 0)."""

    mode: str                       # "access" | "trunk"
    id: int | None = None           # access: 1..4094; frames towards the port leave untagged
    allowed: tuple[int, ...] = ()   # trunk: sorted unique ids 1..4094, ranges expanded
    native: int | None = None       # trunk: untagged frames belong to it and leave untagged;
                                    # carried even if not in `allowed`

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.id is not None:
            out["id"] = self.id
        if self.mode == "trunk":
            out["allowed"] = vlan_ranges(self.allowed)
        if self.native is not None:
            out["native"] = self.native
        return out


@dataclass(frozen=True)
class StormControlConfig:
    """Per-port caps on flooded frames received from the port, frames/s
    (None: no cap of that kind)."""

    broadcast: int | None = None
    multicast: int | None = None
    unknown_unicast: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("broadcast", self.broadcast), ("multicast", self.multicast),
                                  ("unknown_unicast", self.unknown_unicast)) if v is not None}


@dataclass(frozen=True)
class PolicerConfig:
    """A token-bucket policer: bytes, frames, or both (at least one is set).
    The bursts are filled in with their defaults when the rate is given."""

    rate_bps: int | None = None     # bits/s, 1 kbit/s .. 400 Gbit/s
    burst_bytes: int | None = None  # default max(rate_bps / 8 * 0.02, 65536)
    pps: int | None = None          # frames/s (a GSO frame counts once per on-wire segment)
    pps_burst: int | None = None    # default max(pps // 50, 64)
    # ingress only: "drop" frames over the limit (a policer), or "hold" them
    # in the port's own queue (the guest's TX ring) until the bucket has
    # credit - shaping the sender without a drop, so TCP reaches the rate
    action: str = "drop"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: v for k, v in (("rate", self.rate_bps), ("burst", self.burst_bytes),
                              ("pps", self.pps), ("pps_burst", self.pps_burst)) if v is not None}
        if self.action != "drop":
            out["action"] = self.action
        return out


@dataclass(frozen=True)
class MirrorConfig:
    """Copy this port's frames to another port."""

    to: str                         # another port's name
    direction: str = DEFAULT_MIRROR_DIRECTION  # "ingress" (from the port) | "egress" (to it) | "both"

    def to_dict(self) -> dict[str, Any]:
        return {"to": self.to, "direction": self.direction}


def vlan_ranges(ids: tuple[int, ...]) -> list[int | str]:
    """Sorted unique VLAN ids as written in the file: (10, 20, 21, 22) ->
    [10, "20-22"]."""
    out: list[int | str] = []
    for a, b in _runs(ids):
        out.append(a if a == b else f"{a}-{b}")
    return out


def _runs(values: Iterable[int]) -> list[list[int]]:
    """Sorted ints -> [[first, last], ...] of consecutive runs."""
    runs: list[list[int]] = []
    for value in sorted(values):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return runs


# Units of `rate` (bits/s; decimal, case-insensitive like tc's "mbit") and of
@dataclass(frozen=True, kw_only=True)
class PortPolicies:
    """The forwarding policies every port type takes (POLICY_KEYS), applied
    in place. Keyword-only, so each port type's own fields come first."""

    vlan: VlanConfig | None = None
    allowed_macs: tuple[str, ...] = ()   # port security: lower case, unicast; `mac` is allowed too
    storm_control: StormControlConfig | None = None
    ingress_policing: PolicerConfig | None = None   # port -> switch
    egress_policing: PolicerConfig | None = None    # switch -> port
    mirror: MirrorConfig | None = None

    def policies_to_dict(self) -> dict[str, Any]:
        """The policy keys the port sets, as they would be written in the file."""
        out: dict[str, Any] = {}
        if self.vlan is not None:
            out["vlan"] = self.vlan.to_dict()
        if self.allowed_macs:
            out["allowed_macs"] = list(self.allowed_macs)
        if self.storm_control is not None:
            out["storm_control"] = self.storm_control.to_dict()
        if self.ingress_policing is not None:
            out["ingress_policing"] = self.ingress_policing.to_dict()
        if self.egress_policing is not None:
            out["egress_policing"] = self.egress_policing.to_dict()
        if self.mirror is not None:
            out["mirror"] = self.mirror.to_dict()
        return out


@dataclass(frozen=True)
class VhostUserPortConfig(PortPolicies):
    """A vhost-user port (a QEMU guest's virtio-net device)."""

    name: str
    mode: str                       # "server": we listen; "client": we connect to QEMU
    socket: str
    queues: int
    mtu: int | None = None          # None: not advertised (VIRTIO_NET_F_MTU not offered)
    mac: str | None = None          # static FDB entry, lower case "52:54:00:12:34:56"
    socket_owner: int | None = None  # uid to chown the listening socket to (server mode)
    socket_group: int | None = None  # gid to chown the listening socket to (server mode)
    socket_mode: int = DEFAULT_SOCKET_MODE
    mrg_rxbuf: bool = True          # offer VIRTIO_NET_F_MRG_RXBUF
    event_idx: bool = True          # offer VIRTIO_RING_F_EVENT_IDX
    indirect_desc: bool = True      # offer VIRTIO_RING_F_INDIRECT_DESC
    in_order: bool = True           # offer VIRTIO_F_IN_ORDER
    offloads: bool = True           # offer checksum / TSO features
    memory_slots: bool = True       # offer CONFIGURE_MEM_SLOTS (ADD/REM_MEM_REG, memory hot-plug)
    allow_file_memory: bool = False  # map guest memory in files outside memfd/tmpfs/hugetlbfs
    fdb_max_entries: int | None = None  # cap on learned MACs; None: fdb.max_entries_per_port
    type: str = "vhost-user"
    # Forwarding policies (POLICY_KEYS), applied in place:

    def to_dict(self) -> dict[str, Any]:
        """The port as it would be written in the file (without the name)."""
        out: dict[str, Any] = {
            "type": self.type,
            "mode": self.mode,
            "socket": self.socket,
            "queues": self.queues,
        }
        if self.mtu is not None:
            out["mtu"] = self.mtu
        if self.mac is not None:
            out["mac"] = self.mac
        if self.mode == "server":
            if self.socket_owner is not None:
                out["socket_owner"] = self.socket_owner
            if self.socket_group is not None:
                out["socket_group"] = self.socket_group
            out["socket_mode"] = self.socket_mode
        out["mrg_rxbuf"] = self.mrg_rxbuf
        out["event_idx"] = self.event_idx
        out["indirect_desc"] = self.indirect_desc
        out["in_order"] = self.in_order
        out["offloads"] = self.offloads
        out["memory_slots"] = self.memory_slots
        out["allow_file_memory"] = self.allow_file_memory
        out.update(self.policies_to_dict())
        if self.fdb_max_entries is not None:
            out["fdb_max_entries"] = self.fdb_max_entries
        return out


@dataclass(frozen=True)
class TapPortConfig(PortPolicies):
    """The uplink to the host kernel: a multiqueue TAP device."""

    name: str
    ifname: str
    queues: int
    mtu: int | None = None      # None: keep the device's MTU
    create: bool = True         # False: attach to an existing persistent TAP only
    mac: str | None = None      # static FDB entry (the host side's MAC)
    fdb_max_entries: int | None = None  # cap on learned MACs; None: fdb.max_entries_per_port
    type: str = "tap"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "ifname": self.ifname, "queues": self.queues,
                               "create": self.create}
        if self.mtu is not None:
            out["mtu"] = self.mtu
        if self.mac is not None:
            out["mac"] = self.mac
        out.update(self.policies_to_dict())
        if self.fdb_max_entries is not None:
            out["fdb_max_entries"] = self.fdb_max_entries
        return out


@dataclass(frozen=True)
class VxlanPortConfig(PortPolicies):
    """A VXLAN tunnel endpoint (RFC 7348): the switch's frames carried over
    UDP to peer VTEPs (other hosts' switches, Linux vxlan devices)."""

    name: str
    local: str                      # our address, normalised ("192.0.2.1", "2001:db8::1")
    remotes: tuple[str, ...]        # peer VTEPs, same family as local, normalised
    vni: int                        # 1..16777215
    udp_port: int = DEFAULT_VXLAN_PORT
    mtu: int | None = None          # largest L3 size sent through the tunnel; None: no limit
    type: str = "vxlan"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "local": self.local, "remotes": list(self.remotes),
                               "vni": self.vni, "udp_port": self.udp_port}
        if self.mtu is not None:
            out["mtu"] = self.mtu
        out.update(self.policies_to_dict())
        return out


PortConfig = VhostUserPortConfig | TapPortConfig | VxlanPortConfig


@dataclass(frozen=True)
class DatapathConfig:
    workers: int = DEFAULT_WORKERS
    mode: str = DEFAULT_DATAPATH_MODE
    cpus: tuple[int, ...] | None = None  # worker i runs on cpus[i % len(cpus)]
    # how workers write frames into TAP queues: a burst per io_uring_enter, or
    # one write(2) per frame (also what io_uring's absence falls back to)
    tap_io: str = DEFAULT_TAP_IO

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"workers": self.workers, "mode": self.mode, "tap_io": self.tap_io}
        if self.cpus is not None:
            out["cpus"] = list(self.cpus)
        return out


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    enabled: bool = True
    host: str = DEFAULT_METRICS_HOST   # an IP literal, without brackets
    port: int = DEFAULT_METRICS_PORT

    @property
    def listen(self) -> str:
        """"HOST:PORT", with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "listen": self.listen}


@dataclass(frozen=True)
class ControlConfig:
    """The control socket ({runtime_dir}/vswitchd.ctl)."""

    group: int | None = None  # gid allowed to use it; None: the daemon's own group

    def to_dict(self) -> dict[str, Any]:
        return {} if self.group is None else {"group": self.group}


@dataclass(frozen=True)
class StaticFdbEntry:
    """fdb.static: frames to `mac` in `vlan` go to `port` (a port name)."""

    mac: str                    # lower case
    port: str
    vlan: int | None = None     # None: the port's default VLAN (port_vlan below)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mac": self.mac, "port": self.port}
        if self.vlan is not None:
            out["vlan"] = self.vlan
        return out


@dataclass(frozen=True)
class FdbConfig:
    """The forwarding database (top-level `fdb`)."""

    aging_time: int = DEFAULT_FDB_AGING          # seconds; 0: learned entries never age
    max_entries_per_port: int = DEFAULT_FDB_MAX_ENTRIES   # 0: no cap
    static: tuple[StaticFdbEntry, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"aging_time": self.aging_time, "max_entries_per_port": self.max_entries_per_port,
                "static": [e.to_dict() for e in self.static]}


@dataclass(frozen=True)
class SecurityConfig:
    """How the daemon confines itself (top-level `security`)."""

    # a seccomp filter that denies the system calls a switch never makes,
    # installed by the daemon itself before it serves anything
    seccomp: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"seccomp": self.seccomp}


@dataclass(frozen=True)
class LimitsConfig:
    """What a front-end can make the daemon hold (top-level `limits`)."""

    message_timeout: float = DEFAULT_MESSAGE_TIMEOUT   # s to complete a message once begun
    guest_memory_per_port: int = DEFAULT_GUEST_MEMORY_PER_PORT   # bytes mapped by one port
    guest_memory_total: int = DEFAULT_GUEST_MEMORY_TOTAL         # bytes mapped by all ports

    def to_dict(self) -> dict[str, Any]:
        return {"message_timeout": self.message_timeout,
                "guest_memory_per_port": self.guest_memory_per_port,
                "guest_memory_total": self.guest_memory_total}


@dataclass(frozen=True)
class Config:
    version: int
    runtime_dir: str
    ports: dict[str, PortConfig]  # in file order
    datapath: DatapathConfig
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    fdb: FdbConfig = field(default_factory=FdbConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    # control commands that exist for tests (`debug seccomp-probe`) answer only with this
    debug: bool = False
    path: str | None = None  # file it was loaded from; None for parse_config()

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration (all defaults filled in) as plain
        dicts/strs/ints; ``parse_config(yaml.safe_dump(c.to_dict()))`` gives
        back an equal Config (apart from ``path``).  User and group names
        are written as their numeric ids."""
        return {
            "version": self.version,
            "runtime_dir": self.runtime_dir,
            "control": self.control.to_dict(),
            "metrics": self.metrics.to_dict(),
            "datapath": self.datapath.to_dict(),
            "ports": {name: port.to_dict() for name, port in self.ports.items()},
            # written only when set, so that files without it round-trip unchanged
            **({"fdb": self.fdb.to_dict()} if self.fdb != FdbConfig() else {}),
            **({"security": self.security.to_dict()} if self.security != SecurityConfig() else {}),
            **({"debug": self.debug} if self.debug else {}),
            **({"limits": self.limits.to_dict()} if self.limits != LimitsConfig() else {}),
        }



def port_vlan(port: PortConfig) -> int:
    """The VLAN a port's untagged frames belong to, where its `mac` and
    fdb.static entries without a vlan are pinned: an access port's id, a
    trunk's native VLAN, else 0 (a port without VLAN settings)."""
    vlan = port.vlan
    if vlan is None:
        return 0
    if vlan.mode == "access":
        return vlan.id or 0
    return vlan.native or 0


def static_mac(port: PortConfig) -> str | None:
    """The port's own MAC, pinned in the FDB: a VXLAN port has none."""
    return None if isinstance(port, VxlanPortConfig) else port.mac


def fdb_max_entries(port: PortConfig) -> int | None:
    """The port's own cap on learned MACs (None: fdb.max_entries_per_port;
    a VXLAN port has no setting of its own)."""
    return None if isinstance(port, VxlanPortConfig) else port.fdb_max_entries
