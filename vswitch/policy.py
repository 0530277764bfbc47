"""Per-port policy of issue 7, from config to datapath: VLAN membership, port
security, storm control, policing, mirrors.

Every setting here applies in place (reload changes it without touching a
guest's connection). A port applies its own settings whenever it gets a
datapath slot or its config changes (`apply_port_policy`), so a slot never
forwards a frame without them; mirrors name other ports, whose slots the
switch resolves after every start, reload and slot change (`apply_mirrors`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

log = logging.getLogger("vswitch.policy")


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    return getattr(cfg, name, default)


def allowed_source_macs(cfg: Any) -> list[str]:
    """Port security is on when `allowed_macs` is set; the port's `mac` is
    then allowed too. Without `allowed_macs` any source may enter."""
    macs = list(_get(cfg, "allowed_macs", ()) or ())
    if not macs:
        return []
    mac = _get(cfg, "mac")
    if mac and mac.lower() not in (m.lower() for m in macs):
        macs.append(mac)
    return macs


def policy_of(cfg: Any) -> dict:
    """The datapath policy a port config asks for, as plain comparable data."""
    vlan = _get(cfg, "vlan")
    storm = _get(cfg, "storm_control")
    pol: dict[str, Any] = {
        "vlan": (("all", 0, (), 0) if vlan is None else
                 ("access", vlan.id, (), 0) if vlan.mode == "access" else
                 ("trunk", 0, tuple(vlan.allowed), vlan.native or 0)),
        "allowed_macs": tuple(allowed_source_macs(cfg)),
        "storm": ((storm.broadcast, storm.multicast, storm.unknown_unicast) if storm else
                  (None, None, None)),
    }
    for direction in ("ingress", "egress"):
        p = _get(cfg, f"{direction}_policing")
        pol[direction] = ((p.rate_bps, p.burst_bytes, p.pps, p.pps_burst, p.action) if p else
                          (None, None, None, None, "drop"))
    return pol


def apply_port_policy(dp: Any, slot: int, cfg: Any, applied: dict | None = None) -> dict:
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


def apply_mirrors(dp: Any, ports: Mapping[str, Any]) -> None:
    """Point every port's mirrors at the current slots of their targets."""
    for name, port in ports.items():
        mirror = _get(port.config, "mirror")
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


def describe(cfg: Any) -> dict:
    """The policy part of `vswitchctl port show`."""
    vlan = _get(cfg, "vlan")
    out: dict[str, Any] = {}
    if vlan is None:
        out["vlan"] = {"mode": "all"}
    elif vlan.mode == "access":
        out["vlan"] = {"mode": "access", "id": vlan.id}
    else:
        out["vlan"] = {"mode": "trunk", "allowed": _ranges(vlan.allowed), "native": vlan.native}
    out["allowed_macs"] = allowed_source_macs(cfg)
    storm = _get(cfg, "storm_control")
    out["storm_control"] = ({k: v for k, v in (("broadcast", storm.broadcast),
                                               ("multicast", storm.multicast),
                                               ("unknown_unicast", storm.unknown_unicast)) if v}
                            if storm else {})
    for direction in ("ingress", "egress"):
        p = _get(cfg, f"{direction}_policing")
        out[f"{direction}_policing"] = ({k: v for k, v in (("rate_bps", p.rate_bps),
                                                           ("burst_bytes", p.burst_bytes),
                                                           ("pps", p.pps), ("pps_burst", p.pps_burst),
                                                           ("action", p.action))
                                         if v} if p else {})
    mirror = _get(cfg, "mirror")
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
