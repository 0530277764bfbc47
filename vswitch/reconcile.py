"""Reload as a diff: what must change to go from the running config to a new one.

Pure functions over two `Config`s, no I/O: the daemon applies the plan.

Ports are compared by name. A port whose configuration is equal is not
touched at all. For a changed port every differing field falls in one class:

* in place: applied to the running port without disturbing a connected guest
  (socket ownership and mode, the static MAC, the MTU the switch enforces,
  and the forwarding policies: vlan, allowed_macs, storm_control,
  ingress_policing, egress_policing, mirror);
* at connect: what a guest negotiated when it connected (queue pairs offered,
  the virtio features offered). Changing it under a running driver would
  break the guest's NIC, so it waits for the guest's next connection and is
  shown as pending in `port show` -- unless the operator forces a restart;
* restart: the port's identity (type, socket path, socket role, TAP device):
  the port is closed and opened again, alone.

Daemon-wide settings: `datapath.mode` and `datapath.cpus`, `metrics`, the
control socket's group and `limits` apply in place (`limits` to what comes
next: memory mapped already stays mapped); `datapath.workers` takes effect at
the next start of the daemon (reported as a warning), and so does
`security.seccomp` (a filter, once installed, stays for the life of the
process); `debug` is read by each control command, so it applies at once;
`runtime_dir` cannot change
under a running daemon, which holds its lock and control socket there (the
reload is refused and nothing changes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config import POLICY_KEYS, Config, PortConfig, VhostUserPortConfig, VxlanPortConfig

# Fields of a vhost-user port, by how a change is applied.
VHOST_IN_PLACE = frozenset({"socket_owner", "socket_group", "socket_mode", "mac", "mtu",
                            # judged at each memory message: the guest's next table
                            "allow_file_memory"})
VHOST_AT_CONNECT = frozenset({"queues", "mrg_rxbuf", "event_idx", "indirect_desc", "offloads",
                              "memory_slots"})
VHOST_RESTART = frozenset({"type", "mode", "socket"})
# A TAP has no negotiation with a guest: re-opening it is the only disruption.
TAP_IN_PLACE = frozenset({"mac", "mtu"})
TAP_RESTART = frozenset({"type", "ifname", "queues", "create"})
# Forwarding policies (VLAN, port security, storm control, policing,
# mirroring): the datapath reads them from the port's slot on every frame, so
# a new value is written there with the guest connected and nothing else is
# disturbed.  Any port type.
POLICY_IN_PLACE = frozenset(POLICY_KEYS)
VHOST_IN_PLACE = VHOST_IN_PLACE | POLICY_IN_PLACE
TAP_IN_PLACE = TAP_IN_PLACE | POLICY_IN_PLACE
# VXLAN: the peers, the VNI and the MTU are datapath settings of the bound
# socket; the socket's own address and port re-bind it.
VXLAN_IN_PLACE = frozenset({"remotes", "vni", "mtu"}) | POLICY_IN_PLACE
VXLAN_RESTART = frozenset({"type", "local", "udp_port"})
# FDB: a port's cap on learned MACs changes in place. The top-level
# `fdb` section (aging, default cap, static entries) is applied in place after
# every reload (vswitch/fdb.py), whatever changed.
VHOST_IN_PLACE |= {"fdb_max_entries"}
TAP_IN_PLACE |= {"fdb_max_entries"}


@dataclass(frozen=True)
class PortChange:
    name: str
    old: PortConfig
    new: PortConfig
    fields: tuple[str, ...]          # every field that differs
    restart: bool                    # identity changed: close and reopen the port
    in_place: tuple[str, ...] = ()   # applied to the running port
    at_connect: tuple[str, ...] = () # wait for the guest's next connection (unless forced)


@dataclass
class Plan:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[PortChange] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    datapath_in_place: tuple[str, ...] = ()
    metrics_changed: bool = False
    control_changed: bool = False
    fdb_changed: bool = False
    limits_changed: bool = False
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.datapath_in_place
                    or self.metrics_changed or self.control_changed or self.fdb_changed
                    or self.limits_changed)

    def summary(self) -> dict:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": {c.name: {"fields": list(c.fields), "restart": c.restart,
                                 "in_place": list(c.in_place), "at_connect": list(c.at_connect)}
                        for c in self.changed},
            "unchanged": self.unchanged,
            "datapath": list(self.datapath_in_place),
            "fdb": self.fdb_changed,
            "limits": self.limits_changed,
            "warnings": self.warnings,
        }


def _differing(old: PortConfig, new: PortConfig) -> tuple[str, ...]:
    """The fields of two ports of the same type that differ (a dataclass
    walk, so that a new field is never missed: unknown ones restart)."""
    return tuple(f.name for f in dataclasses.fields(old)
                 if f.name != "name" and getattr(old, f.name) != getattr(new, f.name))


def port_change(name: str, old: PortConfig, new: PortConfig) -> PortChange | None:
    if old == new:
        return None
    if type(old) is not type(new):
        return PortChange(name, old, new, ("type",), restart=True)
    fields = _differing(old, new)
    if isinstance(new, VhostUserPortConfig):
        restart_set, in_place_set, at_connect_set = VHOST_RESTART, VHOST_IN_PLACE, VHOST_AT_CONNECT
    elif isinstance(new, VxlanPortConfig):
        restart_set, in_place_set, at_connect_set = VXLAN_RESTART, VXLAN_IN_PLACE, frozenset()
    else:
        restart_set, in_place_set, at_connect_set = TAP_RESTART, TAP_IN_PLACE, frozenset()
    unknown = set(fields) - restart_set - in_place_set - at_connect_set
    restart = bool(set(fields) & restart_set) or bool(unknown)   # unknown field: be safe
    return PortChange(name, old, new, fields, restart=restart,
                      in_place=tuple(f for f in fields if f in in_place_set),
                      at_connect=tuple(f for f in fields if f in at_connect_set))


def plan(old: Config, new: Config) -> Plan:
    result = Plan()
    if old.runtime_dir != new.runtime_dir:
        result.errors.append(
            f"runtime_dir: cannot change from {old.runtime_dir} to {new.runtime_dir} while the "
            "daemon runs (it holds its lock and control socket there); restart the service")
        return result
    for name, pc in new.ports.items():
        if name not in old.ports:
            result.added.append(name)
            continue
        change = port_change(name, old.ports[name], pc)
        if change is None:
            result.unchanged.append(name)
        else:
            result.changed.append(change)
    result.removed = [name for name in old.ports if name not in new.ports]
    for setting, before, after in (("workers", old.datapath.workers, new.datapath.workers),
                                   ("tap_io", old.datapath.tap_io, new.datapath.tap_io)):
        if before != after:
            result.warnings.append(
                f"datapath.{setting}: {before} -> {after} takes effect at the next start of the daemon")
    if old.security.seccomp != new.security.seccomp:
        result.warnings.append(
            f"security.seccomp: {str(old.security.seccomp).lower()} -> "
            f"{str(new.security.seccomp).lower()} takes effect at the next start of the daemon")
    result.datapath_in_place = tuple(
        f for f, changed in (("mode", old.datapath.mode != new.datapath.mode),
                             ("cpus", old.datapath.cpus != new.datapath.cpus)) if changed)
    result.metrics_changed = old.metrics != new.metrics
    result.control_changed = old.control != new.control
    result.fdb_changed = old.fdb != new.fdb
    result.limits_changed = old.limits != new.limits
    return result
