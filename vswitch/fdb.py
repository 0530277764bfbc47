"""The control plane's side of the FDB (issue 7): static entries, caps, aging.

The table itself lives in the datapath (cython_ext/fdb.pxi); this module
decides what it should hold from the configuration, and puts it there:

* static entries: every port's own `mac` and `fdb.static`, each in a VLAN
  (given, or the port's default one: see port_vlan);
* the per-port caps on learned MACs (port `fdb_max_entries`, else
  `fdb.max_entries_per_port`) and the aging time;
* the periodic aging sweep (FdbControl.tick, every second from the daemon).

FdbControl is the one writer of static entries and caps: ports never pin
anything. Static entries are compared with what the datapath really holds,
not with what was last pinned. A port that gets a new datapath slot (a
restart by a reload, a new number of queue pairs at the guest's
reconnection) tells the switch, which calls `port_slot_changed` in the same
control-thread job: removing the old slot unpinned everything on it, so the
port's entries and cap are put on the new slot at once. Nothing is re-pinned
periodically.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

log = logging.getLogger("vswitch.fdb")

TICK_S = 1.0     # the aging sweep's period: the resolution of aging_time


def port_vlan(pc: Any) -> int:
    """The VLAN a port's untagged frames belong to, where its `mac` and
    fdb.static entries without a vlan are pinned: an access port's id, a
    trunk's native VLAN, else 0 (a port without VLAN settings). Read
    defensively: the VLAN settings are another part of the configuration."""
    vlan = getattr(pc, "vlan", None)
    if vlan is None:
        return 0
    mode = getattr(vlan, "mode", None)
    if mode == "access":
        return int(getattr(vlan, "id", 0) or 0)
    return int(getattr(vlan, "native", 0) or 0)


def wanted_statics(config: Any, ports: Mapping[str, Any]) -> dict[tuple[str, int], int]:
    """(mac, vlan) -> datapath slot for every static entry of the config
    whose port is running."""
    want: dict[tuple[str, int], int] = {}
    for name, port in ports.items():
        pc = port.config
        if getattr(pc, "mac", None):   # a VXLAN port has none
            want[(pc.mac, port_vlan(pc))] = port.slot
    for entry in config.fdb.static:
        port = ports.get(entry.port)
        if port is None:
            continue
        vlan = entry.vlan if entry.vlan is not None else port_vlan(port.config)
        want[(entry.mac, vlan)] = port.slot
    return want


class FdbControl:
    """Keeps the datapath's FDB settings in line with the configuration.
    The daemon passes its current config and ports on every call, so that
    nothing here outlives a reload."""

    def __init__(self, dp: Any) -> None:
        self.dp = dp
        self.config: Any = None        # the last one configured: static entries of re-created ports
        self.static_writes = 0         # entries pinned or unpinned, ever

    def configure(self, config: Any, ports: Mapping[str, Any]) -> None:
        """At start and after every reload (all of it is applied in place)."""
        self.config = config
        self.dp.fdb_set_aging(config.fdb.aging_time)
        self.dp.fdb_set_default_max(config.fdb.max_entries_per_port)
        self.sync(config, ports)

    def port_slot_changed(self, port: Any) -> None:
        """On the control thread, right after `port` got a new slot: its
        cap, and its static entries (its `mac`, the fdb.static entries that
        name it) on that slot. Before the first configure() nothing is known
        yet: configure() does it all."""
        if self.config is None or port.slot < 0:
            return
        self.dp.port_set_fdb_max(port.slot, getattr(port.config, "fdb_max_entries", None))
        have = {(e["mac"], e["vlan"]): e["port"] for e in self.dp.fdb_entries(static_only=True)}
        for (mac, vlan), slot in wanted_statics(self.config, {port.name: port}).items():
            if have.get((mac, vlan)) != slot:
                self._pin(mac, vlan, slot)

    def _pin(self, mac: str, vlan: int, slot: int) -> None:
        """Pin (slot >= 0) or unpin (-1) one static entry, logged for `debug`."""
        try:
            self.dp.fdb_set_static(mac, slot, vlan)
        except Exception as exc:   # table full, or a slot that just went away
            log.error("fdb: cannot pin %s in VLAN %d: %s", mac, vlan, exc)
            return
        self.static_writes += 1
        log.debug("fdb: static %s in VLAN %d %s", mac, vlan,
                  "unpinned" if slot < 0 else f"pinned on slot {slot}")

    def sync(self, config: Any, ports: Mapping[str, Any]) -> None:
        """Caps and static entries, wherever each port's slot is now."""
        for name, port in list(ports.items()):
            try:
                self.dp.port_set_fdb_max(port.slot, getattr(port.config, "fdb_max_entries", None))
            except Exception as exc:   # a port between two slots (being re-created)
                log.debug("fdb: port %s: cap not set: %s", name, exc)
        want = wanted_statics(config, ports)
        have = {(e["mac"], e["vlan"]): e["port"] for e in self.dp.fdb_entries(static_only=True)}
        for (mac, vlan), slot in have.items():
            if (mac, vlan) not in want:
                self._pin(mac, vlan, -1)
        for (mac, vlan), slot in want.items():
            if have.get((mac, vlan)) != slot:
                self._pin(mac, vlan, slot)

    def tick(self) -> None:
        """Every TICK_S: the aging sweep (static entries are not touched)."""
        aged = self.dp.fdb_age()
        if aged:
            log.debug("fdb: %d learned entries aged out", aged)


def entries_by_name(dp: Any, ports: Iterable[Any], port: str | None = None,
                    vlan: int | None = None) -> list[dict]:
    """`fdb show`: the table with port names, sorted by VLAN then MAC."""
    by_slot = {p.slot: p.name for p in ports}
    slot = None
    if port is not None:
        slot = next((s for s, n in by_slot.items() if n == port), None)
        if slot is None:
            raise KeyError(port)
    rows = []
    for e in dp.fdb_entries(port=slot, vlan=vlan):
        rows.append({"mac": e["mac"], "vlan": e["vlan"], "port": by_slot.get(e["port"], f"#{e['port']}"),
                     "static": e["static"], "type": "static" if e["static"] else "learned",
                     "age_s": e["age_s"]})
    rows.sort(key=lambda r: (r["vlan"], r["mac"]))
    return rows
