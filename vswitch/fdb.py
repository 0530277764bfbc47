"""The control plane's side of the FDB: static entries, caps, aging.

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
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

# port_vlan: the VLAN a port's `mac` and its fdb.static entries without a
# vlan are pinned in; a fact of the configuration, imported from there.
from .config import Config, fdb_max_entries, port_vlan, static_mac
from .policy import RunningPort

if TYPE_CHECKING:
    from ._datapath import Datapath

__all__ = ["TICK_S", "FdbControl", "entries_by_name", "port_vlan", "wanted_statics"]

log = logging.getLogger("vswitch.fdb")

TICK_S = 1.0     # the aging sweep's period: the resolution of aging_time


def wanted_statics(config: Config, ports: Mapping[str, RunningPort]) -> dict[tuple[str, int], int]:
    """(mac, vlan) -> datapath slot for every static entry of the config
    whose port is running."""
    want: dict[tuple[str, int], int] = {}
    for port in ports.values():
        mac = static_mac(port.config)   # a VXLAN port has none
        if mac:
            want[(mac, port_vlan(port.config))] = port.slot
    for entry in config.fdb.static:
        target = ports.get(entry.port)
        if target is None:
            continue
        vlan = entry.vlan if entry.vlan is not None else port_vlan(target.config)
        want[(entry.mac, vlan)] = target.slot
    return want


class FdbControl:
    """Keeps the datapath's FDB settings in line with the configuration.
    The daemon passes its current config and ports on every call, so that
    nothing here outlives a reload."""

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        self.config: Config | None = None   # the last one configured: static entries of re-created ports
        self.static_writes = 0         # entries pinned or unpinned, ever

    def configure(self, config: Config, ports: Mapping[str, RunningPort]) -> None:
        """At start and after every reload (all of it is applied in place)."""
        self.config = config
        self.dp.fdb_set_aging(config.fdb.aging_time)
        self.dp.fdb_set_default_max(config.fdb.max_entries_per_port)
        self.sync(config, ports)

    def port_slot_changed(self, port: RunningPort) -> None:
        """On the control thread, right after `port` got a new slot: its
        cap, and its static entries (its `mac`, the fdb.static entries that
        name it) on that slot. Before the first configure() nothing is known
        yet: configure() does it all."""
        if self.config is None or port.slot < 0:
            return
        self.dp.port_set_fdb_max(port.slot, fdb_max_entries(port.config))
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

    def sync(self, config: Config, ports: Mapping[str, RunningPort]) -> None:
        """Caps and static entries, wherever each port's slot is now."""
        for name, port in list(ports.items()):
            try:
                self.dp.port_set_fdb_max(port.slot, fdb_max_entries(port.config))
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


def entries_by_name(dp: Datapath, ports: Iterable[RunningPort], port: str | None = None,
                    vlan: int | None = None) -> list[dict[str, Any]]:
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
