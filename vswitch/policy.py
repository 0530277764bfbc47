"""Per-port forwarding policy, from config to datapath: VLAN membership,
port security, storm control, policing, mirrors.

Every setting here applies in place (reload changes it without touching a
guest's connection). A port applies its own settings whenever it gets a
datapath slot or its config changes (`apply_port_policy`), so a slot never
forwards a frame without them; mirrors name other ports, whose slots the
switch resolves after every start, reload and slot change (`apply_mirrors`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .config import PolicerConfig, PortConfig, static_mac

if TYPE_CHECKING:
    from ._datapath import Datapath

log = logging.getLogger("vswitch.policy")

# A policer's settings as the datapath takes them: rate_bps, burst_bytes,
# pps, pps_burst, action.
PolicerTuple = tuple[int | None, int | None, int | None, int | None, str]


class RunningPort(Protocol):
    """What the policy and FDB code read of a running port (vhost-user,
    TAP or VXLAN): its name, its datapath slot and its configuration."""

    @property
    def name(self) -> str: ...

    @property
    def slot(self) -> int: ...

    @property
    def config(self) -> PortConfig: ...


def allowed_source_macs(cfg: PortConfig) -> list[str]:
    """Port security is on when `allowed_macs` is set; the port's `mac` is
    then allowed too. Without `allowed_macs` any source may enter."""
    macs = list(cfg.allowed_macs)
    if not macs:
        return []
    mac = static_mac(cfg)
    if mac and mac.lower() not in (m.lower() for m in macs):
        macs.append(mac)
    return macs


def _policer(p: PolicerConfig | None) -> PolicerTuple:
    if p is None:
        return (None, None, None, None, "drop")
    return (p.rate_bps, p.burst_bytes, p.pps, p.pps_burst, p.action)


def policy_of(cfg: PortConfig) -> dict[str, Any]:
    """The datapath policy a port config asks for, as plain comparable data."""
    vlan = cfg.vlan
    storm = cfg.storm_control
    pol: dict[str, Any] = {
        "vlan": (("all", 0, (), 0) if vlan is None else
                 ("access", vlan.id, (), 0) if vlan.mode == "access" else
                 ("trunk", 0, tuple(vlan.allowed), vlan.native or 0)),
        "allowed_macs": tuple(allowed_source_macs(cfg)),
        "storm": ((storm.broadcast, storm.multicast, storm.unknown_unicast) if storm else
                  (None, None, None)),
        "ingress": _policer(cfg.ingress_policing),
        "egress": _policer(cfg.egress_policing),
    }
    return pol


def apply_port_policy(dp: Datapath, slot: int, cfg: PortConfig,
                      applied: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set the port's policy on its datapath slot; `applied` is what the slot
    already has (None: a new slot), so unchanged parts are left alone (the
    allowed-MAC list waits for worker quiescence when it changes)."""
    want = policy_of(cfg)
    have = applied or {}
    if have.get("vlan") != want["vlan"]:
        mode, vid, allowed, native = want["vlan"]
        dp.port_set_vlan(slot, mode, vid, allowed, native)
    if have.get("allowed_macs") != want["allowed_macs"]:
        dp.port_set_allowed_macs(slot, want["allowed_macs"])
    if have.get("storm") != want["storm"]:
        dp.port_set_storm_control(slot, *want["storm"])
    for direction in ("ingress", "egress"):
        if have.get(direction) != want[direction]:
            dp.port_set_policer(slot, direction, *want[direction])
    return want


def apply_mirrors(dp: Datapath, ports: Mapping[str, RunningPort]) -> None:
    """Point every port's mirrors at the current slots of their targets."""
    for name, port in ports.items():
        mirror = port.config.mirror
        ingress_to = egress_to = -1
        if mirror is not None:
            target = ports.get(mirror.to)
            if target is None:
                log.error("port %s: mirror target %s does not exist", name, mirror.to)
            else:
                if mirror.direction in ("ingress", "both"):
                    ingress_to = target.slot
                if mirror.direction in ("egress", "both"):
                    egress_to = target.slot
        dp.port_set_mirror(port.slot, ingress_to, egress_to)


def describe(cfg: PortConfig) -> dict[str, Any]:
    """The policy part of `vswitchctl port show`."""
    vlan = cfg.vlan
    out: dict[str, Any] = {}
    if vlan is None:
        out["vlan"] = {"mode": "all"}
    elif vlan.mode == "access":
        out["vlan"] = {"mode": "access", "id": vlan.id}
    else:
        out["vlan"] = {"mode": "trunk", "allowed": _ranges(vlan.allowed), "native": vlan.native}
    out["allowed_macs"] = allowed_source_macs(cfg)
    storm = cfg.storm_control
    out["storm_control"] = ({k: v for k, v in (("broadcast", storm.broadcast),
                                               ("multicast", storm.multicast),
                                               ("unknown_unicast", storm.unknown_unicast)) if v}
                            if storm else {})
    for direction, p in (("ingress", cfg.ingress_policing), ("egress", cfg.egress_policing)):
        out[f"{direction}_policing"] = ({k: v for k, v in (("rate_bps", p.rate_bps),
                                                           ("burst_bytes", p.burst_bytes),
                                                           ("pps", p.pps), ("pps_burst", p.pps_burst),
                                                           ("action", p.action))
                                         if v} if p else {})
    mirror = cfg.mirror
    out["mirror"] = {"to": mirror.to, "direction": mirror.direction} if mirror else {}
    return out


def _ranges(ids: Iterable[int]) -> list[str]:
    """[10, 20, 21, 22] -> ["10", "20-22"]: how an operator wrote them."""
    out: list[str] = []
    ids = sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return out
