"""The validator: a configuration's YAML node tree (yamlnodes.py) checked
against the schema and turned into the dataclasses of model.py.

Every key is checked where it is written (type, range, choice: the numeric
ranges are in bounds.py), and then the checks across keys: socket paths,
MAC addresses and TAP interface names must be unique among ports, a mirror
names another port and forms no loop, no port may send from another port's
``mac`` (allowed_macs), and
socket_owner/socket_group/socket_mode belong to server-mode ports only.
With ``check_host`` (the default) the checks that depend on the host are
made too: runtime_dir and the directories of server-mode sockets must be
creatable by this process and writable by nobody else (safefiles), and
datapath.cpus must be in its CPU affinity mask.  User and group names are
always resolved to ids.  An unquoted MAC address, which YAML 1.1 reads as a
base-60 integer, is taken as written.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..cpus import cpu_list, daemon_cpus
from ..safefiles import directory_problem
from .bounds import (
    ETH_HEADER_LEN,
    IFNAMSIZ,
    MAX_ALLOWED_MACS,
    MAX_BURST_BYTES,
    MAX_CPU,
    MAX_FDB_AGING,
    MAX_FDB_ENTRIES,
    MAX_GUEST_MEMORY,
    MAX_ID,
    MAX_MESSAGE_TIMEOUT,
    MAX_MTU,
    MAX_PORT,
    MAX_PORTS,
    MAX_PPS,
    MAX_PPS_BURST,
    MAX_QUEUES,
    MAX_RATE_BPS,
    MAX_SOCKET_MODE,
    MAX_STORM_RATE,
    MAX_VLAN,
    MAX_VNI,
    MAX_VXLAN_REMOTES,
    MAX_WORKERS,
    MIN_BURST_BYTES,
    MIN_FDB_VLAN,
    MIN_GUEST_MEMORY,
    MIN_MESSAGE_TIMEOUT,
    MIN_MTU,
    MIN_PORT,
    MIN_QUEUES,
    MIN_RATE_BPS,
    MIN_VLAN,
    MIN_VNI,
    MIN_WORKERS,
    OWNER_RW,
    UNIX_PATH_MAX,
)
from .model import (
    BURST_DEFAULT_DIVISOR,
    DATAPATH_MODES,
    DEFAULT_DATAPATH_MODE,
    DEFAULT_FDB_AGING,
    DEFAULT_FDB_MAX_ENTRIES,
    DEFAULT_GUEST_MEMORY_PER_PORT,
    DEFAULT_GUEST_MEMORY_TOTAL,
    DEFAULT_MESSAGE_TIMEOUT,
    DEFAULT_METRICS_HOST,
    DEFAULT_METRICS_PORT,
    DEFAULT_MIRROR_DIRECTION,
    DEFAULT_PORT_MODE,
    DEFAULT_QUEUES,
    DEFAULT_RUNTIME_DIR,
    DEFAULT_TAP_IO,
    DEFAULT_VERSION,
    DEFAULT_VXLAN_PORT,
    DEFAULT_WORKERS,
    FEATURE_KEYS,
    MIN_DEFAULT_BURST_BYTES,
    MIN_DEFAULT_PPS_BURST,
    MIRROR_DIRECTIONS,
    POLICER_ACTIONS,
    POLICY_KEYS,
    PORT_MODES,
    PORT_TYPES,
    PPS_BURST_DEFAULT_DIVISOR,
    SOCKET_PERMISSION_KEYS,
    SUPPORTED_VERSIONS,
    TAP_IO_METHODS,
    TRUST_KEYS,
    VLAN_MODES,
    Config,
    ControlConfig,
    DatapathConfig,
    FdbConfig,
    LimitsConfig,
    MetricsConfig,
    MirrorConfig,
    PolicerConfig,
    PortConfig,
    SecurityConfig,
    StaticFdbEntry,
    StormControlConfig,
    TapPortConfig,
    VhostUserPortConfig,
    VlanConfig,
    VxlanPortConfig,
    port_vlan,
    static_mac,
)
from .units import parse_burst, parse_rate, parse_size
from .yamlnodes import (
    BAD,
    ConfigError,
    ConfigIssue,
    Entries,
    NodeReader,
    describe_value,
    is_null,
    yaml_error_issue,
)

# The keys each mapping takes (config/vswitch.schema.json lists the same;
# tests/unit/test_config_schema.py checks that it does).
_TOP_KEYS = ("version", "runtime_dir", "control", "metrics", "datapath", "limits", "defaults",
             "ports", "fdb", "security", "debug")
_DEFAULTS_KEYS = ("mode", "queues", "mtu", *SOCKET_PERMISSION_KEYS, *FEATURE_KEYS, *TRUST_KEYS)
_VHOST_USER_KEYS = ("type", "mode", "socket", "queues", "mtu", "mac",
                    *SOCKET_PERMISSION_KEYS, *FEATURE_KEYS, *TRUST_KEYS, *POLICY_KEYS,
                    "fdb_max_entries")
_TAP_KEYS = ("type", "ifname", "queues", "mtu", "create", "mac", *POLICY_KEYS, "fdb_max_entries")
_VXLAN_KEYS = ("type", "local", "remotes", "vni", "udp_port", "mtu", *POLICY_KEYS)
_DATAPATH_KEYS = ("workers", "mode", "cpus", "tap_io")
_METRICS_KEYS = ("enabled", "listen")
_CONTROL_KEYS = ("group",)
_LIMITS_KEYS = ("message_timeout", "guest_memory_per_port", "guest_memory_total")
_VLAN_KEYS = ("mode", "id", "allowed", "native")
_STORM_CONTROL_KEYS = ("broadcast", "multicast", "unknown_unicast")
_POLICER_KEYS = ("rate", "burst", "pps", "pps_burst", "action")
_MIRROR_KEYS = ("to", "direction")
_FDB_KEYS = ("aging_time", "max_entries_per_port", "static")
_FDB_STATIC_KEYS = ("mac", "port", "vlan")
# How the daemon confines itself (vswitch/seccomp.py); `debug` (top level)
# enables the control commands meant for tests only.
_SECURITY_KEYS = ("seccomp",)

PORT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
_SOCKET_MODE_RE = re.compile(r"(?:0o?)?([0-7]{3})")


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
        raise ConfigError([yaml_error_issue(exc, text, filename)]) from None
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


# --------------------------------------------------------------------------
# Validation


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


class _PolicyChecks(NodeReader):
    """Checks of the per-port policy keys (POLICY_KEYS), the base of
    _Validator."""

    def port_policies(self, name: str, entries: Entries, key: str, mtu: int | None,
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
            node = entries["allowed_macs"][1]
            macs = self.allowed_macs(name, node, f"{key}.allowed_macs", uses)
            if macs is not None:
                # The port's own mac is allowed too (it is checked on its own key).
                own = entries["mac"][1].value if "mac" in entries else None
                extra = isinstance(own, str) and own.lower() not in macs
                if len(macs) + extra > MAX_ALLOWED_MACS:
                    with_own = " and the port's mac" if extra else ""
                    self.error(node, f"{key}.allowed_macs",
                               f"lists {len(macs)} MAC addresses{with_own}; a port may allow at "
                               f"most {MAX_ALLOWED_MACS} in all")
                    macs = None
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

    # -- MAC addresses (a port's mac, allowed_macs, fdb.static) -------------

    def mac(self, node: Node, key: str) -> str | None:
        # YAML 1.1 reads an unquoted 52:54:00:12:34:56 as a base-60 integer:
        # take the text of a plain scalar as written.
        if isinstance(node, ScalarNode) and node.style is None and MAC_RE.fullmatch(node.value) \
                and node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:str"):
            value: Any = node.value
        else:
            value = self.construct(node, key)
            if value is BAD:
                return None
        if not isinstance(value, str):
            self.error(node, key, f"must be a MAC address such as '52:54:00:12:34:56' "
                                  f"(got {describe_value(node, value)})")
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
        if value is BAD:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(node, key, f"must be a VLAN id, an integer {MIN_VLAN}..{MAX_VLAN} "
                                  f"(got {describe_value(node, value)})")
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
            if value is BAD:
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
                                           f"such as '20-30' (got {describe_value(item, value)})")
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

    def hold_needs_a_ring(self, policies: dict | None, entries: Entries, key: str) -> bool:
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
        if value is BAD:
            return None
        try:
            bps = parse_rate(value)
        except ValueError as exc:
            self.error(node, key, f"{exc} (got {describe_value(node, value)})")
            return None
        if not MIN_RATE_BPS <= bps <= MAX_RATE_BPS:
            got = f"{value!r} = {bps} bit/s" if isinstance(value, str) else f"{bps}"
            self.error(node, key, f"must be 1kbit..400Gbit, {MIN_RATE_BPS}..{MAX_RATE_BPS} "
                                  f"bits/s (got {got})")
            return None
        return bps

    def burst(self, node: Node, key: str, mtu: int | None) -> int | None:
        value = self.construct(node, key)
        if value is BAD:
            return None
        try:
            size = parse_burst(value)
        except ValueError as exc:
            self.error(node, key, f"{exc} (got {describe_value(node, value)})")
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
        static: dict[str, str] = {}
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
        super().__init__(filename)
        self.check_host = check_host
        self._port_names: set[str] = set()   # ports.*: fdb.static may name only these

    # -- values of vswitch's own kinds -----------------------------------

    def _account(self, node: Node, key: str, kind: str) -> int | None:
        """A user (kind "user") or group ("group") given by name or number;
        names are resolved in the host's databases."""
        what = "uid" if kind == "user" else "gid"
        value = self.construct(node, key)
        if value is BAD:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= MAX_ID:
                self.error(node, key, f"{what} must be 0..{MAX_ID} (got {value})")
                return None
            return value
        if not isinstance(value, str) or not value:
            got = "an empty string" if value == "" else describe_value(node, value)
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
        if value is BAD:
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
                                  f"(got {describe_value(node, value)})")
            return None
        if mode & OWNER_RW != OWNER_RW:
            self.error(node, key, f"must give the owner read and write permission (0600), "
                                  f"else nobody can connect as the owner (got 0{mode:03o})")
            return None
        return mode

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
                                           f"(allowed: {cpu_list(allowed)})")
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
        if root is None or is_null(root):
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
            if value is BAD:
                version = None
            elif not isinstance(value, int) or isinstance(value, bool):
                self.error(version_node, "version",
                           f"must be an integer (got {describe_value(version_node, value)})")
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

    def memory_size(self, node: Node, key: str) -> int | None:
        value = self.construct(node, key)
        if value is BAD:
            return None
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.error(node, key, f"{exc} (got {describe_value(node, value)})")
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
        if is_null(node):
            self.error(node, "ports",
                       "must be a mapping of port name to port (got null); "
                       "use 'ports: {}' for a switch without ports")
            return {}
        entries = self.mapping(node, "ports")
        if entries is None:
            return {}
        self._port_names = set(entries)
        if len(entries) > MAX_PORTS:
            # Every port, of any type, takes one slot of the datapath's table.
            self.error(node, "ports", f"declares {len(entries)} ports; the switch holds at most "
                                      f"{MAX_PORTS}")
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
            if value is BAD:
                return None
            if not isinstance(value, str):
                self.error(type_node, f"{key}.type",
                           f"must be one of: {', '.join(PORT_TYPES)} (got {describe_value(type_node, value)})")
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

    def tap_port(self, name: str, entries: Entries, node: Node, key: str,
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
        if value is BAD:
            return None
        if not isinstance(value, str):
            self.error(node, key, f"must be an IPv4 or IPv6 address (got {describe_value(node, value)})")
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

    def vxlan_port(self, name: str, entries: Entries, node: Node, key: str,
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

    def check_conflicts(self, uses: list[_Use], what: str,
                        normalize: Callable[[_Use], str]) -> None:
        """Report every value (socket path, MAC, ...) used by more than one
        port, on each of those ports."""
        by_value: dict[str, list[_Use]] = {}
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


    # -- FDB -----------------------------------------------------------------

    def port_fdb_max(self, port: PortConfig | None, node: Node, key: str) -> PortConfig | None:
        """ports.NAME.fdb_max_entries of a vhost-user or TAP port (read here,
        after the port's own checks, which accept the key; a VXLAN port's
        checks report it as an unknown key)."""
        if not isinstance(node, MappingNode) or isinstance(port, VxlanPortConfig):
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
        if not isinstance(node, SequenceNode):
            self.error(node, "fdb.static", f"must be a list of {{mac, port, vlan}} entries "
                                           f"(got {self.describe(node)})")
            return None
        # (mac, vlan) -> where it is pinned already: ports' own `mac` first
        pinned: dict[tuple[str, int], str] = {
            (mac, port_vlan(pc)): f"port {name!r} (its mac)"
            for name, pc in ports.items() if (mac := static_mac(pc))}
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
                names = self._port_names
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



def _allowed_cpus() -> frozenset[int] | None:
    # the daemon's own mask, not the calling thread's: vswitchd moves its
    # control plane off the workers' CPUs (vswitch/cpus.py)
    return daemon_cpus()
