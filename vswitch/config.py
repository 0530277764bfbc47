"""Configuration loading and validation.

The configuration is a single YAML document; every key is optional except
``ports`` (docs/configuration.md is the full reference, and
config/vswitch.schema.json a JSON Schema of it for editors)::

    version: 1                 # default 1; only 1 is accepted
    runtime_dir: /run/vswitch  # default /run/vswitch; absolute path
    control:
      group: vswitch           # group (name or gid) that may use the control socket
    metrics:
      enabled: true            # default true
      listen: 127.0.0.1:9479   # "IP:PORT" or "[IPv6]:PORT"; default 127.0.0.1:9479
    datapath:
      workers: 1               # 1..64, default 1
      mode: adaptive           # poll | event | adaptive (default)
      cpus: [2, 3]             # pin worker i to cpus[i % len(cpus)]; default unpinned
    limits:                    # what a front-end may make the daemon hold
      message_timeout: 10      # s to complete a message once begun (and the first one); 0.1..3600
      guest_memory_per_port: 1TiB   # guest memory one port may map; bytes or "<n>[KMGT]iB"
      guest_memory_total: 32TiB     # all ports together; at least guest_memory_per_port
    defaults:                  # for every vhost-user port that does not set them:
      queues: 2                # mode queues mtu socket_owner socket_group socket_mode
      socket_group: kvm        # mrg_rxbuf event_idx indirect_desc offloads allow_file_memory
    ports:                     # required (may be {}); mapping name -> port
      vm1:
        type: vhost-user       # required: vhost-user | tap | vxlan
        mode: server           # server (default): we listen | client: we connect
        socket: /run/vswitch/vm1.sock  # default {runtime_dir}/{name}.sock
        queues: 2              # queue pairs offered, 1..64, default 1
        mtu: 1500              # 68..65535, default: not advertised
        mac: "52:54:00:12:34:56"  # static FDB entry; unicast, not all-zero
        socket_owner: qemu     # server mode only: user name or uid
        socket_group: kvm      # server mode only: group name or gid
        socket_mode: 0660      # server mode only; default 0660; needs 0600
        mrg_rxbuf: true        # offer VIRTIO_NET_F_MRG_RXBUF (default true)
        event_idx: true        # offer VIRTIO_RING_F_EVENT_IDX (default true)
        indirect_desc: true    # offer VIRTIO_RING_F_INDIRECT_DESC (default true)
        offloads: true         # offer checksum/TSO features (default true)
        memory_slots: true     # offer CONFIGURE_MEM_SLOTS (ADD/REM_MEM_REG; default true)
        allow_file_memory: false  # map guest memory in files outside memfd/tmpfs/hugetlbfs
      uplink:
        type: tap
        ifname: vsw-up0        # at most 15 bytes; default the port name
        queues: 2
        mtu: 1500              # default: keep the device's MTU
        create: true           # false: attach to an existing persistent TAP only
        mac: "02:00:00:00:00:01"
      vx0:
        type: vxlan            # docs/vxlan.md
        local: 192.0.2.1       # our IPv4/IPv6 address on this host (the UDP socket binds it)
        remotes: [192.0.2.2]   # peer VTEPs, same family, 1..64, no duplicates, not local
        vni: 100               # 1..16777215
        udp_port: 4789         # default 4789 (IANA)
        mtu: 1450              # default: no limit; frames with a larger L3 size are dropped
    security:
      seccomp: true            # default true: the daemon confines itself with a seccomp filter
    debug: false               # default false: true enables control commands meant for tests

Every port type also takes the forwarding policies (POLICY_KEYS; see
docs/configuration.md): ``vlan``, ``allowed_macs``, ``storm_control``,
``ingress_policing``, ``egress_policing`` and ``mirror``, parsed into
VlanConfig, StormControlConfig, PolicerConfig and MirrorConfig with their
defaults filled in (rates in bits/s, bursts in bytes).

The file is composed into a YAML node tree (not loaded into Python objects
directly) so that every problem can be reported with the line and column of
the offending node, as ``FILE:LINE:COL: dotted.key: message (got X)``, so
that duplicate keys can be detected (PyYAML silently keeps the last one),
and so that all problems are reported at once.  Scalars are converted with
PyYAML's SafeConstructor (YAML 1.1), so ``2`` is an int, ``"2"`` is a
string, ``true`` is a bool and ``0660`` is the octal int 432; only real ints
are accepted where an integer is expected.  An unquoted MAC address, which
YAML 1.1 reads as a base-60 integer, is taken as written.

After the per-key checks come the checks across keys: socket paths, MAC
addresses and TAP interface names must be unique among ports, a mirror
names another port and forms no loop, no port may send from another port's
``mac`` (allowed_macs), and
socket_owner/socket_group/socket_mode belong to server-mode ports only.
With ``check_host`` (the default) the checks that depend on the host are
made too: runtime_dir and the directories of server-mode sockets must be
creatable by this process and writable by nobody else (safefiles), and
datapath.cpus must be in its CPU affinity mask.  User and group names are
always resolved to ids.
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import ipaddress
import os
import posixpath
import pwd
import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .safefiles import directory_problem

__all__ = [
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ControlConfig",
    "DatapathConfig",
    "FdbConfig",
    "SecurityConfig",
    "LimitsConfig",
    "MetricsConfig",
    "PortConfig",
    "StaticFdbEntry",
    "VhostUserPortConfig",
    "TapPortConfig",
    "VlanConfig",
    "StormControlConfig",
    "PolicerConfig",
    "MirrorConfig",
    "parse_rate",
    "parse_burst",
    "parse_size",
    "VxlanPortConfig",
    "load_config",
    "parse_config",
]

SUPPORTED_VERSIONS = (1,)
DEFAULT_VERSION = 1
DEFAULT_RUNTIME_DIR = "/run/vswitch"
PORT_TYPES = ("vhost-user", "tap", "vxlan")
PORT_MODES = ("server", "client")
DEFAULT_PORT_MODE = "server"
MIN_QUEUES, MAX_QUEUES, DEFAULT_QUEUES = 1, 64, 1
MIN_WORKERS, MAX_WORKERS, DEFAULT_WORKERS = 1, 64, 1
# poll: workers spin (lowest latency, a full core each); event: workers sleep
# on the guests' kick eventfds whenever a round finds nothing; adaptive: spin
# while busy, sleep after a short idle spell.
DATAPATH_MODES = ("poll", "event", "adaptive")
DEFAULT_DATAPATH_MODE = "adaptive"
TAP_IO_METHODS = ("io_uring", "write")
DEFAULT_TAP_IO = "io_uring"
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT = "127.0.0.1", 9479
# sizeof(sockaddr_un.sun_path) is 108 on Linux; one byte goes to the NUL.
UNIX_PATH_MAX = 107
PORT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")

MIN_MTU, MAX_MTU = 68, 65535
IFNAMSIZ = 16   # kernel interface names: at most 15 bytes
MAX_CPU = 4095
MAX_ID = 2**32 - 2  # uid_t/gid_t; (uid_t)-1 means "unchanged" to chown(2)
MAX_SOCKET_MODE = 0o777
OWNER_RW = 0o600
MIN_PORT, MAX_PORT = 1, 65535
# VXLAN (RFC 7348): 24-bit VNI; IANA port 4789; a head-end replication list
# the datapath holds in a fixed table.
MIN_VNI, MAX_VNI = 1, 2**24 - 1
DEFAULT_VXLAN_PORT = 4789
MAX_VXLAN_REMOTES = 64

# Per-port switches for virtio features that cause interop trouble; each is
# offered to the guest unless set to false.
FEATURE_KEYS = ("mrg_rxbuf", "event_idx", "indirect_desc", "offloads", "memory_slots")
# Only for server-mode vhost-user ports: in client mode QEMU owns the socket.
SOCKET_PERMISSION_KEYS = ("socket_owner", "socket_group", "socket_mode")
# Per-port switches that widen what a front-end may hand the switch; off by
# default. allow_file_memory: guest memory in files on any filesystem, not
# only memfd, tmpfs and hugetlbfs (vswitch/vhost/fdkind.py says why).
TRUST_KEYS = ("allow_file_memory",)

_TOP_KEYS = ("version", "runtime_dir", "control", "metrics", "datapath", "limits", "defaults",
             "ports")
_DEFAULTS_KEYS = ("mode", "queues", "mtu", *SOCKET_PERMISSION_KEYS, *FEATURE_KEYS, *TRUST_KEYS)
_VHOST_USER_KEYS = ("type", "mode", "socket", "queues", "mtu", "mac",
                    *SOCKET_PERMISSION_KEYS, *FEATURE_KEYS, *TRUST_KEYS)
_TAP_KEYS = ("type", "ifname", "queues", "mtu", "create", "mac")
_VXLAN_KEYS = ("type", "local", "remotes", "vni", "udp_port", "mtu")
_DATAPATH_KEYS = ("workers", "mode", "cpus", "tap_io")
_METRICS_KEYS = ("enabled", "listen")
_CONTROL_KEYS = ("group",)

# `limits`: what a front-end (anyone who can connect to a port socket) can
# make the daemon hold. A message is read in one go once it has begun:
# QEMU writes each one with a single sendmsg, so a well-behaved front-end
# completes it at once, and the first one as soon as it connects (also with
# -S or -incoming); between complete messages it may wait for ever. A
# daemon-wide setting: it is about the protocol, not about a guest.
_LIMITS_KEYS = ("message_timeout", "guest_memory_per_port", "guest_memory_total")
DEFAULT_MESSAGE_TIMEOUT = 10.0
MIN_MESSAGE_TIMEOUT, MAX_MESSAGE_TIMEOUT = 0.1, 3600.0
# Guest memory mapped (regions and dirty logs; sparse files cost a front-end
# nothing, address space costs the daemon). x86-64 gives a process 128 TiB of
# address space: the total cap keeps a quarter of it at most for guests, so
# the daemon's own mappings always fit, and 1 TiB per port is more than the
# RAM of nearly any VM (raise it for larger ones).
DEFAULT_GUEST_MEMORY_PER_PORT = 1 << 40
DEFAULT_GUEST_MEMORY_TOTAL = 32 << 40
MIN_GUEST_MEMORY, MAX_GUEST_MEMORY = 1 << 20, 1 << 47

# Per-port forwarding policies (issue 7), accepted by every port type: VLAN
# membership, port security, storm control, policing and mirroring.  All of
# them are applied to a running port in place (vswitch/reconcile.py).
POLICY_KEYS = ("vlan", "allowed_macs", "storm_control", "ingress_policing", "egress_policing",
               "mirror")
_VHOST_USER_KEYS = (*_VHOST_USER_KEYS, *POLICY_KEYS)
_TAP_KEYS = (*_TAP_KEYS, *POLICY_KEYS)
_VXLAN_KEYS = (*_VXLAN_KEYS, *POLICY_KEYS)
_VLAN_KEYS = ("mode", "id", "allowed", "native")
_STORM_CONTROL_KEYS = ("broadcast", "multicast", "unknown_unicast")
_POLICER_KEYS = ("rate", "burst", "pps", "pps_burst", "action")
POLICER_ACTIONS = ("drop", "hold")
_MIRROR_KEYS = ("to", "direction")
VLAN_MODES = ("access", "trunk")
# 802.1Q: VID 0 means "priority tag only" and 4095 is reserved.
MIN_VLAN, MAX_VLAN = 1, 4094
MIRROR_DIRECTIONS = ("ingress", "egress", "both")
DEFAULT_MIRROR_DIRECTION = "both"
MAX_STORM_RATE = 100_000_000          # frames/s; beyond any port's line rate
MIN_RATE_BPS, MAX_RATE_BPS = 1_000, 400_000_000_000
# A token bucket smaller than one full frame would drop every full frame.
MIN_BURST_BYTES = 1514                # 1500 bytes of payload + the 14-byte Ethernet header
ETH_HEADER_LEN = 14
MAX_BURST_BYTES = 2**30               # 1 GiB; the default for 400 Gbit/s (1e9 bytes) fits
MAX_PPS = 1_000_000_000
MAX_PPS_BURST = 1_000_000_000
# Default buckets: 20 ms at the rate, and never less than 64 KiB (one TSO
# frame's worth) or 64 frames.
BURST_DEFAULT_DIVISOR = 400           # rate_bps / 8 bits * 0.02 s
MIN_DEFAULT_BURST_BYTES = 65536
PPS_BURST_DEFAULT_DIVISOR = 50        # 20 ms of frames
MIN_DEFAULT_PPS_BURST = 64

MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
_SOCKET_MODE_RE = re.compile(r"(?:0o?)?([0-7]{3})")

# FDB (issue 7): the top-level `fdb` section and the per-port cap.
MAX_FDB_AGING = 1_000_000          # seconds (the Linux bridge's ageing_time max is ~1e6 s too)
MAX_FDB_ENTRIES = 1_000_000
DEFAULT_FDB_AGING, DEFAULT_FDB_MAX_ENTRIES = 300, 1024
MIN_FDB_VLAN = 0                   # fdb.static vlan: 0 is the untagged frames of a port without VLAN settings
_FDB_KEYS = ("aging_time", "max_entries_per_port", "static")
_FDB_STATIC_KEYS = ("mac", "port", "vlan")
_TOP_KEYS += ("fdb",)
_VHOST_USER_KEYS += ("fdb_max_entries",)
_TAP_KEYS += ("fdb_max_entries",)

# How the daemon confines itself (vswitch/seccomp.py), and the switch that
# enables the control commands meant for tests only (`debug ...`).
_SECURITY_KEYS = ("seccomp",)
_TOP_KEYS += ("security", "debug")

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


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
        out = {k: v for k, v in (("rate", self.rate_bps), ("burst", self.burst_bytes),
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


def _policies_to_dict(port: VhostUserPortConfig | TapPortConfig) -> dict[str, Any]:
    """The policy keys a port sets, as they would be written in the file."""
    out: dict[str, Any] = {}
    if port.vlan is not None:
        out["vlan"] = port.vlan.to_dict()
    if port.allowed_macs:
        out["allowed_macs"] = list(port.allowed_macs)
    for name in ("storm_control", "ingress_policing", "egress_policing", "mirror"):
        value = getattr(port, name)
        if value is not None:
            out[name] = value.to_dict()
    return out


def vlan_ranges(ids: tuple[int, ...]) -> list[int | str]:
    """Sorted unique VLAN ids as written in the file: (10, 20, 21, 22) ->
    [10, "20-22"]."""
    out: list[int | str] = []
    for a, b in _runs(ids):
        out.append(a if a == b else f"{a}-{b}")
    return out


def _runs(values: Any) -> list[list[int]]:
    """Sorted ints -> [[first, last], ...] of consecutive runs."""
    runs: list[list[int]] = []
    for value in sorted(values):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return runs


# Units of `rate` (bits/s; decimal, case-insensitive like tc's "mbit") and of
# `burst` (bytes; k/M/G decimal, KiB/MiB/GiB binary).
_RATE_PREFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_BURST_UNITS = {"": 1, "B": 1, "k": 10**3, "kB": 10**3, "KiB": 2**10, "M": 10**6, "MB": 10**6,
                "MiB": 2**20, "G": 10**9, "GB": 10**9, "GiB": 2**30}
_QUANTITY_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([A-Za-z/]*)")
# Sizes of memory: binary units only (memory comes in pages).
_SIZE_UNITS = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _quantity(text: str) -> tuple[Decimal, str]:
    """"2.5 Gbit" -> (Decimal("2.5"), "Gbit")."""
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise ValueError("must be a number with an optional unit")
    return Decimal(match.group(1)), match.group(2)


def parse_rate(value: int | str) -> int:
    """A rate in bits/s: an int, or a string "<number>[k|M|G][bit[/s]]" with
    decimal units ("100Mbit", "1G", "500k", "2.5Gbit"; the prefixes in either
    case, as tc writes "mbit"), rounded to whole bits/s.  Raises ValueError
    saying what is wrong; the range is the caller's to check."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be an integer (bits/s) or a string such as '100Mbit'")
    if isinstance(value, int):
        return value
    number, unit = _quantity(value)
    prefix = unit.removesuffix("/s") if unit.endswith("bit/s") else unit
    prefix = prefix.removesuffix("bit")
    if prefix.lower() not in _RATE_PREFIXES:
        if "B" in unit or unit.lower().endswith(("bps", "byte", "bytes")):
            raise ValueError("rates are in bits per second: write e.g. '100Mbit' (bytes per "
                             "second are not accepted; tc's 'mbps' means megabytes/s)")
        raise ValueError(f"unknown unit {unit!r} (use k, M or G, optionally followed by 'bit')")
    return int((number * _RATE_PREFIXES[prefix.lower()]).to_integral_value(ROUND_HALF_UP))


def parse_burst(value: int | str) -> int:
    """A size in bytes: an int, or a string "<number>[B|k|kB|KiB|M|MB|MiB|G|GB|GiB]"
    (k/M/G decimal, KiB/MiB/GiB binary), rounded to whole bytes.  Raises
    ValueError saying what is wrong (no range check)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be an integer (bytes) or a string such as '64KiB'")
    if isinstance(value, int):
        return value
    number, unit = _quantity(value)
    if unit not in _BURST_UNITS:
        raise ValueError(f"unknown unit {unit!r} (use B, k, kB, KiB, M, MB, MiB, G, GB or GiB)")
    return int((number * _BURST_UNITS[unit]).to_integral_value(ROUND_HALF_UP))


def parse_size(value: int | str) -> int:
    """A memory size in bytes: an int, or a string "<number>[B|KiB|MiB|GiB|TiB]"
    ("1TiB", "1.5 GiB"), rounded to whole bytes.  Raises ValueError saying
    what is wrong (no range check)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be an integer (bytes) or a string such as '1TiB'")
    if isinstance(value, int):
        return value
    number, unit = _quantity(value)
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown unit {unit!r} (use B, KiB, MiB, GiB or TiB)")
    return int((number * _SIZE_UNITS[unit]).to_integral_value(ROUND_HALF_UP))


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
        out["offloads"] = self.offloads
        out["memory_slots"] = self.memory_slots
        out["allow_file_memory"] = self.allow_file_memory
        out.update(_policies_to_dict(self))
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
        out.update(_policies_to_dict(self))
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
        out.update(_policies_to_dict(self))
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
    vlan: int | None = None     # None: the port's default VLAN (vswitch.fdb.port_vlan)

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


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file.

    ``line`` and ``col`` are 1-based; both are 0 when there is no position
    (e.g. the file could not be read).  ``key`` is the dotted path of the
    offending setting (``ports.vm1.queues``), "" for the document itself.
    """

    file: str
    line: int
    col: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = list(errors)
        super().__init__("\n".join(str(issue) for issue in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.errors)


# --------------------------------------------------------------------------
# Entry points


def load_config(path: str | os.PathLike[str], *, check_host: bool = True) -> Config:
    """Read, parse and validate a configuration file (UTF-8 YAML).

    Raises ConfigError for every failure, including an unreadable file.
    With ``check_host`` (the default) the checks that depend on this host
    and process are made too: that runtime_dir and the server sockets'
    directories can be created, and only by this process (or root), and that
    datapath.cpus are available.
    User and group names are always resolved (the Config holds ids).
    """
    filename = os.fsdecode(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigIssue(filename, 0, 0, "", f"cannot read configuration file: {reason}")]
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start]
        raise ConfigError(
            [ConfigIssue(filename, line, col, "", f"file is not valid UTF-8 (byte 0x{bad:02x})")]
        ) from exc
    return _parse(text.removeprefix("\ufeff"), filename, path=filename, check_host=check_host)


def parse_config(text: str, filename: str = "<string>", *, check_host: bool = True) -> Config:
    """Parse and validate configuration text; ``filename`` is only used in
    error messages (the resulting Config has ``path=None``).  See
    load_config() for ``check_host``."""
    return _parse(text, filename, path=None, check_host=check_host)


def _parse(text: str, filename: str, path: str | None, check_host: bool = True) -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error_issue(exc, text, filename)]) from None
    except RecursionError:
        raise ConfigError(
            [ConfigIssue(filename, 0, 0, "", "invalid YAML: nesting too deep")]
        ) from None
    validator = _Validator(filename, check_host)
    config = validator.document(root, path)
    if validator.issues or config is None:
        issues = sorted(validator.issues, key=lambda i: (i.line, i.col))
        raise ConfigError(issues)
    return config


def _yaml_error_issue(exc: yaml.YAMLError, text: str, filename: str) -> ConfigIssue:
    """Turn a PyYAML syntax error into a positioned issue."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = []
        if exc.context:
            context = exc.context
            cm = exc.context_mark
            if cm is not None and (mark is None or (cm.line, cm.column) != (mark.line, mark.column)):
                context += f" (line {cm.line + 1}, column {cm.column + 1})"
            parts.append(context)
        if exc.problem:
            parts.append(exc.problem)
        message = "invalid YAML: " + (", ".join(parts) or "syntax error")
        if mark is None:
            return ConfigIssue(filename, 0, 0, "", message)
        return ConfigIssue(filename, mark.line + 1, mark.column + 1, "", message)
    if isinstance(exc, yaml.reader.ReaderError):
        # For str input, position is an index into the text.
        pos = exc.position
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return ConfigIssue(
            filename, line, col, "",
            f"invalid YAML: unacceptable character U+{char:04X}: {exc.reason}",
        )
    return ConfigIssue(filename, 0, 0, "", f"invalid YAML: {exc}")


# --------------------------------------------------------------------------
# Validation


# Returned by _Validator.construct() when a scalar could not be converted
# (the problem has already been reported).
_BAD = object()

# Mapping entries: key text -> (key node, value node), in file order.
_Entries = dict[str, tuple[ScalarNode, Node]]


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _describe(node: Node, value: Any) -> str:
    """Short description of a value for "(got ...)" in messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {node.value}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {node.value}"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {node.value!r}"


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


@dataclass
class _Use:
    """A value that must be unique among ports (socket path, MAC, ifname)."""

    port: str
    value: str
    node: Node  # where to report problems with it
    key: str
    derived: bool  # True if not written but built from a default
    server: bool = False  # sockets: True if we create it (server mode)


@dataclass
class _Uses:
    sockets: list[_Use] = field(default_factory=list)
    macs: list[_Use] = field(default_factory=list)
    ifnames: list[_Use] = field(default_factory=list)
    allowed_macs: list[_Use] = field(default_factory=list)  # may repeat across ports
    mirrors: list[_Use] = field(default_factory=list)       # value: the target port
    endpoints: list[_Use] = field(default_factory=list)   # VXLAN local address + UDP port


@dataclass
class _Defaults:
    values: dict[str, Any]  # valid settings from 'defaults'
    bad: set[str]           # invalid ones (already reported)


class _PolicyChecks:
    """Checks of the per-port policy keys (POLICY_KEYS), mixed into
    _Validator (whose generic checks they use)."""

    def port_policies(self, name: str, entries: _Entries, key: str, mtu: int | None,
                      uses: _Uses) -> dict[str, Any] | None:
        """The port dataclass's policy fields for the keys present; None if
        any is invalid (and reported).  ``mtu`` is the port's, if set: a
        policer's burst must hold a full frame of it."""
        out: dict[str, Any] = {}
        ok = True
        if "vlan" in entries:
            out["vlan"] = self.vlan(entries["vlan"][1], f"{key}.vlan")
            ok = ok and out["vlan"] is not None
        if "allowed_macs" in entries:
            macs = self.allowed_macs(name, entries["allowed_macs"][1], f"{key}.allowed_macs", uses)
            ok = ok and macs is not None
            out["allowed_macs"] = macs
        if "storm_control" in entries:
            out["storm_control"] = self.storm_control(entries["storm_control"][1],
                                                      f"{key}.storm_control")
            ok = ok and out["storm_control"] is not None
        for direction in ("ingress_policing", "egress_policing"):
            if direction in entries:
                out[direction] = self.policer(entries[direction][1], f"{key}.{direction}", mtu)
                ok = ok and out[direction] is not None
        if "mirror" in entries:
            out["mirror"] = self.mirror(name, entries["mirror"][1], f"{key}.mirror", uses)
            ok = ok and out["mirror"] is not None
        return out if ok else None

    # -- vlan --------------------------------------------------------------

    def vlan(self, node: Node, key: str) -> VlanConfig | None:
        entries = self.mapping(node, key)
        if entries is None:
            return None
        self.check_keys(entries, _VLAN_KEYS, key, node, required=("mode",))
        if "mode" not in entries:
            return None
        mode = self.choice(entries["mode"][1], f"{key}.mode", VLAN_MODES)
        if mode is None:
            return None
        ok = True
        if mode == "access":
            for extra in ("allowed", "native"):
                if extra in entries:
                    self.error(entries[extra][0], f"{key}.{extra}",
                               "only for trunk ports: an access port carries the one VLAN "
                               "'id', untagged")
                    ok = False
            if "id" not in entries:
                self.error(node, key, f"an access port needs 'id', its VLAN "
                                      f"({MIN_VLAN}..{MAX_VLAN})")
                return None
            vid = self.vlan_id(entries["id"][1], f"{key}.id")
            if vid is None or not ok:
                return None
            return VlanConfig(mode="access", id=vid)

        if "id" in entries:
            self.error(entries["id"][0], f"{key}.id",
                       "only for access ports: a trunk port lists its tagged VLANs in "
                       "'allowed' and its untagged VLAN in 'native'")
            ok = False
        allowed: tuple[int, ...] | None = ()
        if "allowed" in entries:
            allowed = self.vlan_list(entries["allowed"][1], f"{key}.allowed")
            ok = ok and allowed is not None
        native: int | None = None
        if "native" in entries:
            native = self.vlan_id(entries["native"][1], f"{key}.native")
            ok = ok and native is not None
        if not ok or allowed is None:
            return None
        if not allowed and native is None:
            where, where_key = (entries["allowed"][1], f"{key}.allowed") if "allowed" in entries \
                else (node, key)
            self.error(where, where_key,
                       "a trunk port needs 'allowed' (the tagged VLANs it carries) or 'native' "
                       "(its untagged VLAN), or both")
            return None
        return VlanConfig(mode="trunk", allowed=allowed, native=native)

    def vlan_id(self, node: Node, key: str) -> int | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(node, key, f"must be a VLAN id, an integer {MIN_VLAN}..{MAX_VLAN} "
                                  f"(got {_describe(node, value)})")
            return None
        if not MIN_VLAN <= value <= MAX_VLAN:
            self.error(node, key, f"must be {MIN_VLAN}..{MAX_VLAN}{_reserved_vlan_hint(value)} "
                                  f"(got {value})")
            return None
        return value

    def vlan_list(self, node: Node, key: str) -> tuple[int, ...] | None:
        """A list of VLAN ids and "a-b" ranges -> sorted unique ids.
        Overlaps are fine (the union is taken)."""
        if not isinstance(node, SequenceNode):
            self.error(node, key, f"must be a list of VLAN ids and ranges such as "
                                  f"[10, '20-30'] (got {self.describe(node)})")
            return None
        ids: set[int] = set()
        ok = True
        for index, item in enumerate(node.value):
            item_key = f"{key}[{index}]"
            value = self.construct(item, item_key)
            if value is _BAD:
                ok = False
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                vid = self.vlan_id(item, item_key)
                if vid is None:
                    ok = False
                else:
                    ids.add(vid)
                continue
            match = _VLAN_RANGE_RE.fullmatch(value) if isinstance(value, str) else None
            if match is None:
                self.error(item, item_key, f"must be a VLAN id {MIN_VLAN}..{MAX_VLAN} or a range "
                                           f"such as '20-30' (got {_describe(item, value)})")
                ok = False
                continue
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) is not None else first
            bad = [v for v in (first, last) if not MIN_VLAN <= v <= MAX_VLAN]
            if bad:
                self.error(item, item_key, f"VLAN ids must be {MIN_VLAN}..{MAX_VLAN}"
                                           f"{_reserved_vlan_hint(bad[0])} (got {value!r})")
                ok = False
            elif first > last:
                self.error(item, item_key, f"range is reversed: its first id must not be above "
                                           f"its last; write '{last}-{first}' (got {value!r})")
                ok = False
            else:
                ids.update(range(first, last + 1))
        return tuple(sorted(ids)) if ok else None

    # -- port security -----------------------------------------------------

    def allowed_macs(self, name: str, node: Node, key: str, uses: _Uses) -> tuple[str, ...] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, key, f"must be a list of MAC addresses such as "
                                  f"['52:54:00:12:34:56'] (got {self.describe(node)})")
            return None
        if not node.value:
            self.error(node, key, "must not be empty (leave 'allowed_macs' out to allow every "
                                  "source MAC, or list the port's MAC to allow only it)")
            return None
        macs: list[str] = []
        ok = True
        for index, item in enumerate(node.value):
            item_key = f"{key}[{index}]"
            mac = self.mac(item, item_key)
            if mac is None:
                ok = False
                continue
            if mac in macs:
                self.error(item, item_key, f"{mac!r} is listed twice (first at "
                                           f"{key}[{macs.index(mac)}])")
                ok = False
            else:
                uses.allowed_macs.append(_Use(name, mac, item, item_key, derived=False))
            macs.append(mac)
        return tuple(macs) if ok else None

    def storm_control(self, node: Node, key: str) -> StormControlConfig | None:
        entries = self.mapping(node, key)
        if entries is None:
            return None
        self.check_keys(entries, _STORM_CONTROL_KEYS, key, node)
        limits: dict[str, int] = {}
        ok = True
        for kind in _STORM_CONTROL_KEYS:
            if kind in entries:
                value = self.integer(entries[kind][1], f"{key}.{kind}", 1, MAX_STORM_RATE)
                if value is None:
                    ok = False
                else:
                    limits[kind] = value
        if ok and not limits and not set(entries) - set(_STORM_CONTROL_KEYS):
            self.error(node, key, f"must set at least one of: {', '.join(_STORM_CONTROL_KEYS)} "
                                  f"(frames/s; leave 'storm_control' out for no limit)")
            return None
        return StormControlConfig(**limits) if ok else None

    # -- policing ----------------------------------------------------------

    def policer(self, node: Node, key: str, mtu: int | None) -> PolicerConfig | None:
        entries = self.mapping(node, key)
        if entries is None:
            return None
        self.check_keys(entries, _POLICER_KEYS, key, node)
        ok = True
        if "rate" not in entries and "pps" not in entries:
            self.error(node, key, "needs 'rate' (bits/s) or 'pps' (frames/s), or both")
            ok = False
        rate: int | None = None
        if "rate" in entries:
            rate = self.rate(entries["rate"][1], f"{key}.rate")
            ok = ok and rate is not None
        burst: int | None = None
        if "burst" in entries:
            if "rate" not in entries:
                self.error(entries["burst"][0], f"{key}.burst",
                           "only with 'rate': it sizes the byte bucket (the frame bucket's "
                           "size is 'pps_burst')")
                ok = False
            burst = self.burst(entries["burst"][1], f"{key}.burst", mtu)
            ok = ok and burst is not None
        elif rate is not None:
            burst = max((rate + BURST_DEFAULT_DIVISOR // 2) // BURST_DEFAULT_DIVISOR,
                        MIN_DEFAULT_BURST_BYTES)
        pps: int | None = None
        if "pps" in entries:
            pps = self.integer(entries["pps"][1], f"{key}.pps", 1, MAX_PPS)
            ok = ok and pps is not None
        pps_burst: int | None = None
        if "pps_burst" in entries:
            if "pps" not in entries:
                self.error(entries["pps_burst"][0], f"{key}.pps_burst",
                           "only with 'pps': it sizes the frame bucket (the byte bucket's "
                           "size is 'burst')")
                ok = False
            pps_burst = self.integer(entries["pps_burst"][1], f"{key}.pps_burst", 1, MAX_PPS_BURST)
            ok = ok and pps_burst is not None
        elif pps is not None:
            pps_burst = max(pps // PPS_BURST_DEFAULT_DIVISOR, MIN_DEFAULT_PPS_BURST)
        action = "drop"
        if "action" in entries:
            anode = entries["action"][1]
            value = self.construct(anode, f"{key}.action")
            if key.endswith("egress_policing") and value != "drop":
                self.error(anode, f"{key}.action", "egress policing can only drop: frames to a port "
                           "come from many senders and the switch keeps no queue per port "
                           f"(got {value!r})")
                ok = False
            elif value not in POLICER_ACTIONS:
                self.error(anode, f"{key}.action", f"must be one of: {', '.join(POLICER_ACTIONS)} "
                           f"(got {value!r})")
                ok = False
            else:
                action = value
        if not ok:
            return None
        return PolicerConfig(rate_bps=rate, burst_bytes=burst, pps=pps, pps_burst=pps_burst,
                             action=action)

    def hold_needs_a_ring(self, policies: dict | None, entries: _Entries, key: str) -> bool:
        """`action: hold` keeps frames in the sender's own queue: a guest's TX
        ring. A TAP or VXLAN port has none the switch could leave them in."""
        pol = (policies or {}).get("ingress_policing")
        if pol is None or pol.action != "hold":
            return True
        node = self.mapping(entries["ingress_policing"][1], f"{key}.ingress_policing") or {}
        where = node["action"][1] if "action" in node else entries["ingress_policing"][1]
        self.error(where, f"{key}.ingress_policing.action", "'hold' needs a vhost-user port (frames "
                   "wait in the guest's TX ring); use 'drop' here (got 'hold')")
        return False

    def rate(self, node: Node, key: str) -> int | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        try:
            bps = parse_rate(value)
        except ValueError as exc:
            self.error(node, key, f"{exc} (got {_describe(node, value)})")
            return None
        if not MIN_RATE_BPS <= bps <= MAX_RATE_BPS:
            got = f"{value!r} = {bps} bit/s" if isinstance(value, str) else f"{bps}"
            self.error(node, key, f"must be 1kbit..400Gbit, {MIN_RATE_BPS}..{MAX_RATE_BPS} "
                                  f"bits/s (got {got})")
            return None
        return bps

    def burst(self, node: Node, key: str, mtu: int | None) -> int | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        try:
            size = parse_burst(value)
        except ValueError as exc:
            self.error(node, key, f"{exc} (got {_describe(node, value)})")
            return None
        got = f"{value!r} = {size} bytes" if isinstance(value, str) else f"{size}"
        least = MIN_BURST_BYTES
        why = f"a full {MIN_BURST_BYTES}-byte frame"
        if mtu is not None and mtu + ETH_HEADER_LEN > least:
            least = mtu + ETH_HEADER_LEN
            why = f"a full frame of the port's mtu {mtu} ({least} bytes with the Ethernet header)"
        if size < least:
            self.error(node, key, f"must be at least {least} bytes so that {why} fits "
                                  f"(got {got})")
            return None
        if size > MAX_BURST_BYTES:
            self.error(node, key, f"must be at most 1GiB, {MAX_BURST_BYTES} bytes (got {got})")
            return None
        return size

    # -- mirroring ---------------------------------------------------------

    def mirror(self, name: str, node: Node, key: str, uses: _Uses) -> MirrorConfig | None:
        entries = self.mapping(node, key)
        if entries is None:
            return None
        self.check_keys(entries, _MIRROR_KEYS, key, node, required=("to",))
        to: str | None = None
        if "to" in entries:
            to_node = entries["to"][1]
            to = self.string(to_node, f"{key}.to")
            if to == name:
                self.error(to_node, f"{key}.to", f"a port cannot mirror to itself (got {to!r})")
                to = None
            elif to is not None:
                uses.mirrors.append(_Use(name, to, to_node, f"{key}.to", derived=False))
        direction: str | None = DEFAULT_MIRROR_DIRECTION
        if "direction" in entries:
            direction = self.choice(entries["direction"][1], f"{key}.direction", MIRROR_DIRECTIONS)
        if to is None or direction is None:
            return None
        return MirrorConfig(to=to, direction=direction)

    # -- across ports ------------------------------------------------------

    def check_policy_references(self, port_names: set[str], uses: _Uses) -> None:
        """Mirror targets exist and form no loop; no port is allowed to send
        from another port's static MAC."""
        static = {}
        for use in uses.macs:
            static.setdefault(use.value, use.port)
        for use in uses.allowed_macs:
            owner = static.get(use.value)
            if owner is not None and owner != use.port:
                self.error(use.node, use.key,
                           f"{use.value!r} is the mac of port {owner!r} (its static FDB "
                           f"entry): port {use.port!r} may not send from it")
        targets: dict[str, _Use] = {}
        for use in uses.mirrors:
            if use.value not in port_names:
                close = difflib.get_close_matches(use.value, sorted(port_names), n=1)
                hint = f", did you mean {close[0]!r}?" if close else ""
                self.error(use.node, use.key, f"no port named {use.value!r}{hint}")
            else:
                targets[use.port] = use
        # Each port mirrors to at most one port: follow the chain from each.
        for start, use in targets.items():
            path = [start]
            current = use.value
            while current in targets and current not in path:
                path.append(current)
                current = targets[current].value
            if current == start:
                loop = " -> ".join([*path, start])
                self.error(use.node, use.key,
                           f"mirror loop: port {path[-1]!r} mirrors back to {start!r} ({loop})")


def _reserved_vlan_hint(value: int) -> str:
    return " (802.1Q reserves 0 and 4095)" if value in (0, 4095) else ""


_VLAN_RANGE_RE = re.compile(r"(0|[1-9][0-9]{0,4})(?:-(0|[1-9][0-9]{0,4}))?")


class _Validator(_PolicyChecks):
    """Walks the composed node tree, collecting every problem found."""

    def __init__(self, filename: str, check_host: bool = True) -> None:
        self.filename = filename
        self.check_host = check_host
        self.issues: list[ConfigIssue] = []
        self._constructor = SafeConstructor()

    # -- reporting and generic checks ------------------------------------

    def error(self, node: Node, key: str, message: str) -> None:
        mark = node.start_mark
        self.issues.append(
            ConfigIssue(self.filename, mark.line + 1, mark.column + 1, key, message)
        )

    def construct(self, node: Node, key: str) -> Any:
        """Python value of a scalar node; the node itself for collections
        (which then fail every type check); _BAD if conversion failed."""
        if not isinstance(node, ScalarNode):
            return node
        try:
            return self._constructor.construct_object(node)
        except Exception as exc:  # explicit tags can fail in many ways
            self.error(node, key, f"invalid value {node.value!r} for tag {node.tag}: {exc}")
            return _BAD

    def describe(self, node: Node) -> str:
        """Like _describe(), converting the node without reporting errors."""
        try:
            value = self._constructor.construct_object(node) if isinstance(node, ScalarNode) else node
        except Exception:
            return repr(node.value)
        return _describe(node, value)

    def mapping(self, node: Node, key: str) -> _Entries | None:
        """Entries of a mapping node, reporting duplicate and non-scalar
        keys (the first occurrence of a duplicated key wins)."""
        if not isinstance(node, MappingNode):
            self.error(node, key, f"must be a mapping (got {self.describe(node)})")
            return None
        entries: _Entries = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, key, f"keys must be scalars (got {_describe(key_node, None)})")
                continue
            if key_node.tag == _MERGE_TAG:
                self.error(key_node, key, "merge keys ('<<') are not supported")
                continue
            name = key_node.value
            if name in entries:
                first = entries[name][0].start_mark
                self.error(
                    key_node, _join(key, name),
                    f"duplicate key {name!r} (first defined at line {first.line + 1}, "
                    f"column {first.column + 1})",
                )
                continue
            entries[name] = (key_node, value_node)
        return entries

    def check_keys(
        self,
        entries: _Entries,
        allowed: tuple[str, ...],
        key: str,
        node: Node,
        required: tuple[str, ...] = (),
    ) -> None:
        expected = ", ".join(sorted(allowed))
        for name, (key_node, _) in entries.items():
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f", did you mean {close[0]!r}?" if close else ""
                self.error(
                    key_node, _join(key, name),
                    f"unknown key {name!r}{hint} (expected one of: {expected})",
                )
        for name in required:
            if name not in entries:
                self.error(node, key, f"missing required key {name!r}")

    def integer(self, node: Node, key: str, lo: int, hi: int) -> int | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(node, key, f"must be an integer {lo}..{hi} (got {_describe(node, value)})")
            return None
        if not lo <= value <= hi:
            self.error(node, key, f"must be {lo}..{hi} (got {value})")
            return None
        return value

    def string(self, node: Node, key: str) -> str | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if not isinstance(value, str):
            self.error(node, key, f"must be a string (got {_describe(node, value)})")
            return None
        return value

    def choice(self, node: Node, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if isinstance(value, str) and value in choices:
            return value
        got = repr(value) if isinstance(value, str) else _describe(node, value)
        self.error(node, key, f"must be one of: {', '.join(choices)} (got {got})")
        return None

    def absolute_path(self, node: Node, key: str) -> str | None:
        path = self.string(node, key)
        if path is None:
            return None
        if not path:
            self.error(node, key, "must be an absolute path (got an empty string)")
            return None
        if "\0" in path:
            self.error(node, key, f"must not contain NUL characters (got {path!r})")
            return None
        if not posixpath.isabs(path):
            self.error(node, key, f"must be an absolute path (got {path!r})")
            return None
        return path

    def boolean(self, node: Node, key: str) -> bool | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if not isinstance(value, bool):
            self.error(node, key, f"must be true or false (got {_describe(node, value)})")
            return None
        return value

    def _account(self, node: Node, key: str, kind: str) -> int | None:
        """A user (kind "user") or group ("group") given by name or number;
        names are resolved in the host's databases."""
        what = "uid" if kind == "user" else "gid"
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= MAX_ID:
                self.error(node, key, f"{what} must be 0..{MAX_ID} (got {value})")
                return None
            return value
        if not isinstance(value, str) or not value:
            got = "an empty string" if value == "" else _describe(node, value)
            self.error(node, key, f"must be a {kind} name or a numeric {what} (got {got})")
            return None
        try:
            if kind == "user":
                return pwd.getpwnam(value).pw_uid
            return grp.getgrnam(value).gr_gid
        except (KeyError, ValueError):  # ValueError: embedded NUL
            self.error(node, key, f"unknown {kind} {value!r} (no such {kind} on this host; "
                                  f"create it or give a numeric {what})")
            return None

    def user(self, node: Node, key: str) -> int | None:
        return self._account(node, key, "user")

    def group(self, node: Node, key: str) -> int | None:
        return self._account(node, key, "group")

    def socket_mode(self, node: Node, key: str) -> int | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= MAX_SOCKET_MODE:
                hint = ""
                if value > 0 and not node.value.lstrip("+").startswith("0"):
                    hint = (f"; YAML reads {node.value} without a leading 0 as a decimal number: "
                            f"write 0{node.value} or quote it")
                self.error(node, key, f"must be a permission mode 0000..0777 (got {value}{hint})")
                return None
            mode = value
        elif isinstance(value, str):
            match = _SOCKET_MODE_RE.fullmatch(value)
            if match is None:
                self.error(node, key, f"must be a permission mode of 3 octal digits such as "
                                      f"0660 or '0660' (got {value!r})")
                return None
            mode = int(match.group(1), 8)
        else:
            self.error(node, key, f"must be a permission mode such as 0660 or '0660' "
                                  f"(got {_describe(node, value)})")
            return None
        if mode & OWNER_RW != OWNER_RW:
            self.error(node, key, f"must give the owner read and write permission (0600), "
                                  f"else nobody can connect as the owner (got 0{mode:03o})")
            return None
        return mode

    def mac(self, node: Node, key: str) -> str | None:
        # YAML 1.1 reads an unquoted 52:54:00:12:34:56 as a base-60 integer:
        # take the text of a plain scalar as written.
        if isinstance(node, ScalarNode) and node.style is None and MAC_RE.fullmatch(node.value) \
                and node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:str"):
            value: Any = node.value
        else:
            value = self.construct(node, key)
            if value is _BAD:
                return None
        if not isinstance(value, str):
            self.error(node, key, f"must be a MAC address such as '52:54:00:12:34:56' "
                                  f"(got {_describe(node, value)})")
            return None
        if MAC_RE.fullmatch(value) is None:
            self.error(node, key, f"must be a MAC address of 6 hex bytes separated by ':', such as "
                                  f"'52:54:00:12:34:56' (got {value!r})")
            return None
        mac = value.lower()
        if int(mac[:2], 16) & 1:
            self.error(node, key, f"must be a unicast MAC address (the first byte's lowest bit "
                                  f"is the multicast bit) (got {value!r})")
            return None
        if mac == "00:00:00:00:00:00":
            self.error(node, key, f"must not be the all-zero MAC address (got {value!r})")
            return None
        return mac

    def listen(self, node: Node, key: str) -> tuple[str, int] | None:
        text = self.string(node, key)
        if text is None:
            return None
        usage = '"HOST:PORT" with an IP address as HOST, IPv6 in brackets ("[::1]:9479")'
        if text.startswith("["):
            match = re.fullmatch(r"\[([^\[\]]*)\]:([0-9]+)", text)
        else:
            match = re.fullmatch(r"([^:\[\]]*):([0-9]+)", text)
        if match is None:
            if not text.startswith("[") and text.count(":") > 1:
                self.error(node, key, f"an IPv6 address must be written in brackets, "
                                      f"such as '[::1]:9479' (got {text!r})")
            else:
                self.error(node, key, f"must be {usage} (got {text!r})")
            return None
        host, port_text = match.group(1), match.group(2)
        ok = True
        try:
            if "%" in host:
                raise ValueError
            address = ipaddress.ip_address(host)
        except ValueError:
            self.error(node, key, f"host must be an IPv4 or IPv6 address, not a name "
                                  f"(got {host!r} in {text!r})")
            ok = False
        else:
            if text.startswith("[") and address.version == 4:
                self.error(node, key, f"brackets are only for IPv6 addresses (got {text!r})")
                ok = False
            host = str(address)
        port = int(port_text)
        if not MIN_PORT <= port <= MAX_PORT:
            self.error(node, key, f"port must be {MIN_PORT}..{MAX_PORT} (got {port} in {text!r})")
            ok = False
        return (host, port) if ok else None

    def cpus(self, node: Node, key: str) -> tuple[int, ...] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, key, f"must be a list of CPU numbers such as [0, 1] "
                                  f"(got {self.describe(node)})")
            return None
        if not node.value:
            self.error(node, key, "must not be empty (leave 'cpus' out to let the workers "
                                  "run on every CPU the daemon may use)")
            return None
        cpus: list[int] = []
        ok = True
        allowed = _allowed_cpus() if self.check_host else None
        for index, item in enumerate(node.value):
            item_key = f"{key}[{index}]"
            cpu = self.integer(item, item_key, 0, MAX_CPU)
            if cpu is None:
                ok = False
                continue
            if cpu in cpus:
                self.error(item, item_key, f"cpu {cpu} is listed twice")
                ok = False
                continue
            if allowed is not None and cpu not in allowed:
                self.error(item, item_key, f"cpu {cpu} is not available to this process "
                                           f"(allowed: {_cpu_list(allowed)})")
                ok = False
            cpus.append(cpu)
        return tuple(cpus) if ok else None

    def check_creatable(self, path: str, directory: str, node: Node, key: str) -> None:
        """Report if ``path`` (in ``directory``, which may not exist yet)
        cannot be created by this process, or not safely: where others may
        write, they could replace it with a link elsewhere (safefiles)."""
        nearest = posixpath.normpath(directory)
        while not os.path.exists(nearest) and nearest != "/":
            nearest = posixpath.dirname(nearest)
        if not os.path.isdir(nearest):
            self.error(node, key, f"cannot create {path}: {nearest} is not a directory")
        elif (problem := self.directory_problem(directory)) is not None:
            self.error(node, key, problem)
        elif not os.access(nearest, os.W_OK | os.X_OK):
            self.error(node, key, f"cannot create {path}: {nearest} is not writable "
                                  f"by this process (uid {os.geteuid()})")

    @staticmethod
    def directory_problem(directory: str) -> str | None:
        try:
            return directory_problem(directory)
        except OSError:
            # Not searchable by whoever runs the check (not the daemon's
            # user): the daemon checks again as itself before using it.
            return None

    # -- the schema --------------------------------------------------------

    def document(self, root: Node | None, path: str | None) -> Config | None:
        if root is None or _is_null(root):
            line, col = (root.start_mark.line + 1, root.start_mark.column + 1) if root else (1, 1)
            self.issues.append(ConfigIssue(
                self.filename, line, col, "",
                "configuration is empty (expected a mapping with at least a 'ports' key; "
                "use 'ports: {}' for a switch without ports)",
            ))
            return None
        if not isinstance(root, MappingNode):
            got = self.describe(root)
            self.error(root, "", f"top level must be a mapping of settings (got {got})")
            return None
        top = self.mapping(root, "")
        assert top is not None

        version: int | None = DEFAULT_VERSION
        if "version" in top:
            version_node = top["version"][1]
            value = self.construct(version_node, "version")
            if value is _BAD:
                version = None
            elif not isinstance(value, int) or isinstance(value, bool):
                self.error(version_node, "version",
                           f"must be an integer (got {_describe(version_node, value)})")
                version = None
            elif value not in SUPPORTED_VERSIONS:
                supported = ", ".join(map(str, SUPPORTED_VERSIONS))
                self.error(version_node, "version",
                           f"unsupported configuration version {value} (supported: {supported})")
                # The rest of the file follows a schema we do not know.
                return None
            else:
                version = value

        self.check_keys(top, _TOP_KEYS, "", root, required=("ports",))

        runtime_dir: str | None = DEFAULT_RUNTIME_DIR
        if "runtime_dir" in top:
            runtime_dir = self.absolute_path(top["runtime_dir"][1], "runtime_dir")
        if runtime_dir is not None and self.check_host:
            where = top["runtime_dir"][1] if "runtime_dir" in top else root
            self.check_creatable(runtime_dir, runtime_dir, where, "runtime_dir")

        control: ControlConfig | None = ControlConfig()
        if "control" in top:
            control = self.control(top["control"][1])

        metrics: MetricsConfig | None = MetricsConfig()
        if "metrics" in top:
            metrics = self.metrics(top["metrics"][1])

        datapath: DatapathConfig | None = DatapathConfig()
        if "datapath" in top:
            datapath = self.datapath(top["datapath"][1])

        defaults = _Defaults({}, set())
        if "defaults" in top:
            defaults = self.defaults(top["defaults"][1])

        ports: dict[str, PortConfig] = {}
        if "ports" in top:
            ports = self.ports(top["ports"][1], runtime_dir, defaults)

        fdb: FdbConfig | None = FdbConfig()
        if "fdb" in top:
            fdb = self.fdb(top["fdb"][1], ports, "ports" in top)

        security: SecurityConfig | None = SecurityConfig()
        if "security" in top:
            security = self.security(top["security"][1])

        debug: bool | None = False
        if "debug" in top:
            debug = self.boolean(top["debug"][1], "debug")

        limits: LimitsConfig | None = LimitsConfig()
        if "limits" in top:
            limits = self.limits(top["limits"][1])

        if (self.issues or version is None or runtime_dir is None or datapath is None
                or metrics is None or control is None or fdb is None or security is None
                or debug is None or limits is None):
            return None
        return Config(version=version, runtime_dir=runtime_dir, ports=ports,
                      datapath=datapath, metrics=metrics, control=control, fdb=fdb,
                      security=security, debug=debug, limits=limits, path=path)

    def security(self, node: Node) -> SecurityConfig | None:
        entries = self.mapping(node, "security")
        if entries is None:
            return None
        self.check_keys(entries, _SECURITY_KEYS, "security", node)
        seccomp: bool | None = True
        if "seccomp" in entries:
            seccomp = self.boolean(entries["seccomp"][1], "security.seccomp")
        if seccomp is None:
            return None
        return SecurityConfig(seccomp=seccomp)

    def limits(self, node: Node) -> LimitsConfig | None:
        entries = self.mapping(node, "limits")
        if entries is None:
            return None
        self.check_keys(entries, _LIMITS_KEYS, "limits", node)
        timeout: float | None = DEFAULT_MESSAGE_TIMEOUT
        if "message_timeout" in entries:
            timeout = self.seconds(entries["message_timeout"][1], "limits.message_timeout",
                                   MIN_MESSAGE_TIMEOUT, MAX_MESSAGE_TIMEOUT)
        sizes: dict[str, int | None] = {"guest_memory_per_port": DEFAULT_GUEST_MEMORY_PER_PORT,
                                        "guest_memory_total": DEFAULT_GUEST_MEMORY_TOTAL}
        for name in sizes:
            if name in entries:
                sizes[name] = self.memory_size(entries[name][1], f"limits.{name}")
        per_port, total = sizes["guest_memory_per_port"], sizes["guest_memory_total"]
        if per_port is not None and total is not None and total < per_port:
            # a guest could never have what its port allows
            if "guest_memory_total" in entries:
                self.error(entries["guest_memory_total"][1], "limits.guest_memory_total",
                           f"must be at least limits.guest_memory_per_port ({per_port} bytes) "
                           f"(got {total})")
            else:
                self.error(entries["guest_memory_per_port"][1], "limits.guest_memory_per_port",
                           f"must not be more than limits.guest_memory_total (default {total} bytes) "
                           f"(got {per_port})")
            return None
        if timeout is None or per_port is None or total is None:
            return None
        return LimitsConfig(message_timeout=timeout, guest_memory_per_port=per_port,
                            guest_memory_total=total)

    def seconds(self, node: Node, key: str, lo: float, hi: float) -> float | None:
        """A duration: an int or a float (YAML 1.1: "0.5", "10"), lo..hi."""
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(node, key, f"must be a number of seconds {lo:g}..{hi:g} "
                                  f"(got {_describe(node, value)})")
            return None
        if not lo <= value <= hi:       # NaN fails this too
            self.error(node, key, f"must be {lo:g}..{hi:g} seconds (got {value:g})")
            return None
        return float(value)

    def memory_size(self, node: Node, key: str) -> int | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.error(node, key, f"{exc} (got {_describe(node, value)})")
            return None
        if not MIN_GUEST_MEMORY <= size <= MAX_GUEST_MEMORY:
            got = f"{value!r} = {size} bytes" if isinstance(value, str) else f"{size}"
            self.error(node, key, f"must be 1MiB..128TiB, {MIN_GUEST_MEMORY}..{MAX_GUEST_MEMORY} "
                                  f"bytes (got {got})")
            return None
        return size

    def control(self, node: Node) -> ControlConfig | None:
        entries = self.mapping(node, "control")
        if entries is None:
            return None
        self.check_keys(entries, _CONTROL_KEYS, "control", node)
        group: int | None = None
        if "group" in entries:
            group = self.group(entries["group"][1], "control.group")
            if group is None:
                return None
        return ControlConfig(group=group)

    def metrics(self, node: Node) -> MetricsConfig | None:
        entries = self.mapping(node, "metrics")
        if entries is None:
            return None
        self.check_keys(entries, _METRICS_KEYS, "metrics", node)
        enabled: bool | None = True
        if "enabled" in entries:
            enabled = self.boolean(entries["enabled"][1], "metrics.enabled")
        listen: tuple[str, int] | None = (DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT)
        if "listen" in entries:
            listen = self.listen(entries["listen"][1], "metrics.listen")
        if enabled is None or listen is None:
            return None
        return MetricsConfig(enabled=enabled, host=listen[0], port=listen[1])

    def setting(self, name: str, node: Node, key: str) -> Any:
        """A vhost-user port setting that may also be given in 'defaults';
        None if invalid (and reported)."""
        if name == "mode":
            return self.choice(node, key, PORT_MODES)
        if name == "queues":
            return self.integer(node, key, MIN_QUEUES, MAX_QUEUES)
        if name == "mtu":
            return self.integer(node, key, MIN_MTU, MAX_MTU)
        if name == "socket_owner":
            return self.user(node, key)
        if name == "socket_group":
            return self.group(node, key)
        if name == "socket_mode":
            return self.socket_mode(node, key)
        assert name in FEATURE_KEYS or name in TRUST_KEYS, name
        return self.boolean(node, key)

    def defaults(self, node: Node) -> _Defaults:
        result = _Defaults({}, set())
        entries = self.mapping(node, "defaults")
        if entries is None:
            return result
        self.check_keys(entries, _DEFAULTS_KEYS, "defaults", node)
        for name, (_, value_node) in entries.items():
            if name not in _DEFAULTS_KEYS:
                continue
            value = self.setting(name, value_node, f"defaults.{name}")
            if value is None:
                result.bad.add(name)  # reported once, here; ports just fail quietly
            else:
                result.values[name] = value
        return result

    def ports(self, node: Node, runtime_dir: str | None, defaults: _Defaults) -> dict[str, PortConfig]:
        if _is_null(node):
            self.error(node, "ports",
                       "must be a mapping of port name to port (got null); "
                       "use 'ports: {}' for a switch without ports")
            return {}
        entries = self.mapping(node, "ports")
        if entries is None:
            return {}
        self._port_names = set(entries)     # fdb.static may name only these
        ports: dict[str, PortConfig] = {}
        uses = _Uses()
        for name, (key_node, value_node) in entries.items():
            key = f"ports.{name}"
            name_ok = PORT_NAME_RE.fullmatch(name) is not None
            if not name_ok:
                self.error(
                    key_node, key,
                    f"invalid port name {name!r} (must be 1..32 characters from "
                    "A-Z a-z 0-9 _ . - and start with a letter or digit)",
                )
            port = self.port(name, key_node, value_node, key, runtime_dir, name_ok, defaults, uses)
            port = self.port_fdb_max(port, value_node, key)
            if port is not None and name_ok:
                ports[name] = port
        self.check_conflicts(uses.sockets, "socket path", lambda u: posixpath.normpath(u.value))
        self.check_conflicts(uses.macs, "MAC address", lambda u: u.value)
        self.check_conflicts(uses.ifnames, "interface name", lambda u: u.value)
        self.check_policy_references(set(entries), uses)
        self.check_conflicts(uses.endpoints, "VXLAN endpoint", lambda u: u.value)
        if self.check_host and runtime_dir is not None:
            for use in uses.sockets:
                directory = posixpath.dirname(posixpath.normpath(use.value))
                # Sockets in runtime_dir: checked once, on runtime_dir itself.
                if use.server and directory != posixpath.normpath(runtime_dir):
                    self.check_creatable(use.value, directory, use.node, use.key)
        return ports

    def port(
        self,
        name: str,
        key_node: ScalarNode,
        node: Node,
        key: str,
        runtime_dir: str | None,
        name_ok: bool,
        defaults: _Defaults,
        uses: _Uses,
    ) -> PortConfig | None:
        entries = self.mapping(node, key)
        if entries is None:
            return None

        ok = True
        if "type" in entries:
            type_node = entries["type"][1]
            value = self.construct(type_node, f"{key}.type")
            if value is _BAD:
                return None
            if not isinstance(value, str):
                self.error(type_node, f"{key}.type",
                           f"must be one of: {', '.join(PORT_TYPES)} (got {_describe(type_node, value)})")
                return None
            if value not in PORT_TYPES:
                # Other keys depend on the type: don't guess at them.
                self.error(type_node, f"{key}.type",
                           f"unsupported port type {value!r} (supported: {', '.join(PORT_TYPES)})")
                return None
            if value == "tap":
                return self.tap_port(name, entries, node, key, uses)
            if value == "vxlan":
                return self.vxlan_port(name, entries, node, key, uses)
        else:
            # Keep checking the rest of the port as vhost-user (the usual
            # type) to report everything at once.
            self.error(node, key,
                       f"missing required key 'type' (supported: {', '.join(PORT_TYPES)})")
            ok = False

        self.check_keys(entries, _VHOST_USER_KEYS, key, node)

        # A setting missing from the port comes from 'defaults'; an invalid
        # default has been reported there already.
        mode: str | None
        if "mode" in entries:
            mode = self.setting("mode", entries["mode"][1], f"{key}.mode")
        elif "mode" in defaults.bad:
            mode = None
        else:
            mode = defaults.values.get("mode", DEFAULT_PORT_MODE)
        ok = ok and mode is not None
        settings: dict[str, Any] = {"queues": DEFAULT_QUEUES}
        for setting in _DEFAULTS_KEYS:
            if setting == "mode":
                continue
            if mode == "client" and setting in SOCKET_PERMISSION_KEYS:
                # Defaults for these apply to server-mode ports only.
                if setting in entries:
                    self.error(entries[setting][0], f"{key}.{setting}",
                               "only for server-mode ports: in client mode QEMU creates the "
                               "socket and sets its owner, group and mode")
                    ok = False
                continue
            if setting in entries:
                value = self.setting(setting, entries[setting][1], f"{key}.{setting}")
                if value is None:
                    ok = False
                else:
                    settings[setting] = value
            elif setting in defaults.bad:
                ok = False
            elif setting in defaults.values:
                settings[setting] = defaults.values[setting]

        mac: str | None = None
        if "mac" in entries:
            mac_node = entries["mac"][1]
            mac = self.mac(mac_node, f"{key}.mac")
            if mac is None:
                ok = False
            else:
                uses.macs.append(_Use(name, mac, mac_node, f"{key}.mac", derived=False))

        socket: str | None = None
        socket_use: _Use | None = None
        if "socket" in entries:
            socket_node = entries["socket"][1]
            socket = self.absolute_path(socket_node, f"{key}.socket")
            if socket is not None:
                socket_use = _Use(name, socket, socket_node, f"{key}.socket", derived=False)
        elif runtime_dir is not None and name_ok:
            socket = posixpath.join(runtime_dir, f"{name}.sock")
            socket_use = _Use(name, socket, key_node, f"{key}.socket", derived=True)

        if socket_use is not None:
            socket_use.server = mode == "server"
            uses.sockets.append(socket_use)
            size = len(socket_use.value.encode("utf-8", "surrogatepass"))
            if size > UNIX_PATH_MAX:
                message = (
                    f"socket path too long for AF_UNIX: {size} bytes, at most "
                    f"{UNIX_PATH_MAX} allowed (got {socket_use.value!r})"
                )
                if socket_use.derived:
                    message = ("default " + message
                               + "; use a shorter runtime_dir or port name, or set 'socket'")
                self.error(socket_use.node, socket_use.key, message)
                socket_use.server = False  # no point checking its directory
                socket = None

        policies = self.port_policies(name, entries, key, settings.get("mtu"), uses)
        if not ok or mode is None or socket is None or policies is None:
            return None
        return VhostUserPortConfig(name=name, mode=mode, socket=socket, mac=mac, **settings,
                                   **policies)

    def tap_port(self, name: str, entries: _Entries, node: Node, key: str,
                 uses: _Uses) -> TapPortConfig | None:
        self.check_keys(entries, _TAP_KEYS, key, node)
        ok = True
        ifname: str | None = name
        if "ifname" in entries:
            ifname = self.string(entries["ifname"][1], f"{key}.ifname")
        if ifname is not None:
            where = entries["ifname"][1] if "ifname" in entries else node
            size = len(ifname.encode("utf-8", "surrogatepass"))
            if not ifname or size >= IFNAMSIZ or any(c in ifname for c in "/: \t\n%") \
                    or ifname in (".", ".."):
                self.error(where, f"{key}.ifname",
                           f"not a valid interface name: at most {IFNAMSIZ - 1} bytes, no '/', ':', "
                           f"'%' or whitespace (got {ifname!r}, {size} bytes)")
                ok = False
            else:
                uses.ifnames.append(_Use(name, ifname, where, f"{key}.ifname",
                                         derived="ifname" not in entries))
        queues: int | None = DEFAULT_QUEUES
        if "queues" in entries:
            queues = self.integer(entries["queues"][1], f"{key}.queues", MIN_QUEUES, MAX_QUEUES)
        mtu: int | None = None
        if "mtu" in entries:
            mtu = self.integer(entries["mtu"][1], f"{key}.mtu", MIN_MTU, MAX_MTU)
            ok = ok and mtu is not None
        create: bool | None = True
        if "create" in entries:
            create = self.boolean(entries["create"][1], f"{key}.create")
        mac: str | None = None
        if "mac" in entries:
            mac_node = entries["mac"][1]
            mac = self.mac(mac_node, f"{key}.mac")
            if mac is None:
                ok = False
            else:
                uses.macs.append(_Use(name, mac, mac_node, f"{key}.mac", derived=False))
        policies = self.port_policies(name, entries, key, mtu, uses)
        ok = self.hold_needs_a_ring(policies, entries, key) and ok
        if not ok or ifname is None or queues is None or create is None or policies is None:
            return None
        return TapPortConfig(name=name, ifname=ifname, queues=queues, mtu=mtu, create=create, mac=mac,
                             **policies)

    def ip_address(self, node: Node, key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """A unicast IPv4 or IPv6 address usable as a VXLAN endpoint."""
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if not isinstance(value, str):
            self.error(node, key, f"must be an IPv4 or IPv6 address (got {_describe(node, value)})")
            return None
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            self.error(node, key, f"must be an IPv4 or IPv6 address (got {value!r})")
            return None
        if addr.is_multicast or addr.is_unspecified or (addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255")):
            self.error(node, key, f"must be a unicast address (got {value!r})")
            return None
        if addr.version == 6 and addr.is_link_local:
            # a link-local peer needs an interface scope, which the port does not take
            self.error(node, key, f"link-local IPv6 addresses are not supported (got {value!r})")
            return None
        return addr

    def vxlan_port(self, name: str, entries: _Entries, node: Node, key: str,
                   uses: _Uses) -> VxlanPortConfig | None:
        self.check_keys(entries, _VXLAN_KEYS, key, node, required=("local", "remotes", "vni"))
        ok = True
        local = None
        if "local" in entries:
            local = self.ip_address(entries["local"][1], f"{key}.local")
        remotes: list[Any] = []
        if "remotes" in entries:
            rnode = entries["remotes"][1]
            if not isinstance(rnode, SequenceNode):
                self.error(rnode, f"{key}.remotes",
                           f"must be a list of IP addresses (got {self.describe(rnode)})")
                ok = False
            elif not 1 <= len(rnode.value) <= MAX_VXLAN_REMOTES:
                self.error(rnode, f"{key}.remotes",
                           f"must list 1..{MAX_VXLAN_REMOTES} remote endpoints (got {len(rnode.value)})")
                ok = False
            else:
                seen: dict[Any, int] = {}
                for i, item in enumerate(rnode.value):
                    ikey = f"{key}.remotes[{i}]"
                    addr = self.ip_address(item, ikey)
                    if addr is None:
                        ok = False
                        continue
                    if local is not None and addr.version != local.version:
                        self.error(item, ikey, f"IPv{addr.version} remote {str(addr)!r} with an "
                                   f"IPv{local.version} local address: both must be the same family")
                        ok = False
                    elif local is not None and addr == local:
                        self.error(item, ikey, f"remote {str(addr)!r} is the local address itself")
                        ok = False
                    elif addr in seen:
                        self.error(item, ikey, f"remote {str(addr)!r} is listed twice "
                                   f"(first as remotes[{seen[addr]}])")
                        ok = False
                    else:
                        seen[addr] = i
                        remotes.append(addr)
        vni = None
        if "vni" in entries:
            vni = self.integer(entries["vni"][1], f"{key}.vni", MIN_VNI, MAX_VNI)
        udp_port: int | None = DEFAULT_VXLAN_PORT
        if "udp_port" in entries:
            udp_port = self.integer(entries["udp_port"][1], f"{key}.udp_port", MIN_PORT, MAX_PORT)
        mtu: int | None = None
        if "mtu" in entries:
            mtu = self.integer(entries["mtu"][1], f"{key}.mtu", MIN_MTU, MAX_MTU)
            ok = ok and mtu is not None
        policies = self.port_policies(name, entries, key, mtu, uses)
        ok = self.hold_needs_a_ring(policies, entries, key) and ok
        if not ok or local is None or not remotes or vni is None or udp_port is None or policies is None:
            return None
        # Two ports cannot bind the same address and port (one would get EADDRINUSE).
        uses.endpoints.append(_Use(name, f"{local}:{udp_port}" if local.version == 4 else f"[{local}]:{udp_port}",
                                   entries["local"][1], f"{key}.local", derived=False))
        return VxlanPortConfig(name=name, local=str(local), remotes=tuple(str(r) for r in remotes),
                               vni=vni, udp_port=udp_port, mtu=mtu, **policies)

    def check_conflicts(self, uses: list[_Use], what: str, normalize) -> None:
        """Report every value (socket path, MAC, ...) used by more than one
        port, on each of those ports."""
        by_value: dict[Any, list[_Use]] = {}
        for use in uses:
            by_value.setdefault(normalize(use), []).append(use)
        for group in by_value.values():
            if len(group) < 2:
                continue
            for use in group:
                others = [repr(o.port) for o in group if o is not use]
                label = f"default {what}" if use.derived else what
                ports = "port" if len(others) == 1 else "ports"
                self.error(use.node, use.key,
                           f"{label} {use.value!r} is also used by {ports} {', '.join(others)}")

    def datapath(self, node: Node) -> DatapathConfig | None:
        entries = self.mapping(node, "datapath")
        if entries is None:
            return None
        self.check_keys(entries, _DATAPATH_KEYS, "datapath", node)
        workers: int | None = DEFAULT_WORKERS
        if "workers" in entries:
            workers = self.integer(entries["workers"][1], "datapath.workers", MIN_WORKERS, MAX_WORKERS)
        mode: str | None = DEFAULT_DATAPATH_MODE
        if "mode" in entries:
            mode = self.choice(entries["mode"][1], "datapath.mode", DATAPATH_MODES)
        cpus: tuple[int, ...] | None = None
        cpus_ok = True
        if "cpus" in entries:
            cpus = self.cpus(entries["cpus"][1], "datapath.cpus")
            cpus_ok = cpus is not None
        tap_io: str | None = DEFAULT_TAP_IO
        if "tap_io" in entries:
            tap_io = self.choice(entries["tap_io"][1], "datapath.tap_io", TAP_IO_METHODS)
        if workers is None or mode is None or not cpus_ok or tap_io is None:
            return None
        return DatapathConfig(workers=workers, mode=mode, cpus=cpus, tap_io=tap_io)


    # -- FDB (issue 7) -------------------------------------------------------

    def port_fdb_max(self, port: PortConfig | None, node: Node, key: str) -> PortConfig | None:
        """ports.NAME.fdb_max_entries, for any port type (read here, after the
        port's own checks, which accept the key)."""
        if not isinstance(node, MappingNode):
            return port
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == "fdb_max_entries":
                n = self.integer(value_node, f"{key}.fdb_max_entries", 0, MAX_FDB_ENTRIES)
                if n is None:
                    return None
                return dataclasses.replace(port, fdb_max_entries=n) if port is not None else None
        return port

    def fdb(self, node: Node, ports: dict[str, PortConfig], ports_given: bool) -> FdbConfig | None:
        entries = self.mapping(node, "fdb")
        if entries is None:
            return None
        self.check_keys(entries, _FDB_KEYS, "fdb", node)
        aging: int | None = DEFAULT_FDB_AGING
        if "aging_time" in entries:
            aging = self.integer(entries["aging_time"][1], "fdb.aging_time", 0, MAX_FDB_AGING)
        cap: int | None = DEFAULT_FDB_MAX_ENTRIES
        if "max_entries_per_port" in entries:
            cap = self.integer(entries["max_entries_per_port"][1], "fdb.max_entries_per_port",
                               0, MAX_FDB_ENTRIES)
        static: tuple[StaticFdbEntry, ...] | None = ()
        if "static" in entries:
            static = self.fdb_static(entries["static"][1], ports, ports_given)
        if aging is None or cap is None or static is None:
            return None
        return FdbConfig(aging_time=aging, max_entries_per_port=cap, static=static)

    def fdb_static(self, node: Node, ports: dict[str, PortConfig],
                   ports_given: bool) -> tuple[StaticFdbEntry, ...] | None:
        from .fdb import port_vlan   # the port's default VLAN (VLAN settings are not ours)

        if not isinstance(node, SequenceNode):
            self.error(node, "fdb.static", f"must be a list of {{mac, port, vlan}} entries "
                                           f"(got {self.describe(node)})")
            return None
        # (mac, vlan) -> where it is pinned already: ports' own `mac` first
        pinned: dict[tuple[str, int], str] = {
            (pc.mac, port_vlan(pc)): f"port {name!r} (its mac)"
            for name, pc in ports.items() if pc.mac}
        out: list[StaticFdbEntry] = []
        ok = True
        for index, item in enumerate(node.value):
            key = f"fdb.static[{index}]"
            entries = self.mapping(item, key)
            if entries is None:
                ok = False
                continue
            self.check_keys(entries, _FDB_STATIC_KEYS, key, item, required=("mac", "port"))
            if "mac" not in entries or "port" not in entries:
                ok = False
                continue
            mac = self.mac(entries["mac"][1], f"{key}.mac")
            port = self.string(entries["port"][1], f"{key}.port")
            vlan: int | None = None
            if "vlan" in entries:
                vlan = self.integer(entries["vlan"][1], f"{key}.vlan", MIN_FDB_VLAN, MAX_VLAN)
                if vlan is None:
                    ok = False
            if mac is None or port is None:
                ok = False
                continue
            if port not in ports:
                # An invalid port was reported where it is defined.
                names = getattr(self, "_port_names", set())
                if ports_given and port not in names:
                    known = ", ".join(sorted(names)) or "none"
                    close = difflib.get_close_matches(port, sorted(names), n=1)
                    hint = f", did you mean {close[0]!r}?" if close else ""
                    self.error(entries["port"][1], f"{key}.port",
                               f"no port named {port!r}{hint} (ports: {known})")
                ok = False
                continue
            effective = vlan if vlan is not None else port_vlan(ports[port])
            where = pinned.get((mac, effective))
            if where is not None:
                self.error(item, key, f"{mac} in VLAN {effective} is already pinned by {where}")
                ok = False
                continue
            pinned[(mac, effective)] = key
            out.append(StaticFdbEntry(mac=mac, port=port, vlan=vlan))
        return tuple(out) if ok else None


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def _cpu_list(cpus: set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5" (the kernel's cpulist format)."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
