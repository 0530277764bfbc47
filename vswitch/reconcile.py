"""Reload as a diff: what must change to go from the running config to a new one.

Pure functions over two `Config`s (and what the running ports run), no I/O:
the daemon applies the plan.

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

Each port class declares its own three sets (vswitch/ports/); the planner
reads them through the registry (`vswitch.ports.port_class`).

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
from typing import Any, Mapping, Protocol

from .config import Config, PortConfig, VhostUserPortConfig, VxlanPortConfig
from .ports import port_class

# How each field of a port changes (in place, at connect, restart) is
# declared by its port class (vswitch/ports/), next to the code that applies it.


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
    cls = port_class(new)
    unknown = set(fields) - cls.RESTART - cls.IN_PLACE - cls.AT_CONNECT
    restart = bool(set(fields) & cls.RESTART) or bool(unknown)   # unknown field: be safe
    return PortChange(name, old, new, fields, restart=restart,
                      in_place=tuple(f for f in fields if f in cls.IN_PLACE),
                      at_connect=tuple(f for f in fields if f in cls.AT_CONNECT))


class RunningPort(Protocol):
    """What the planner reads of a running port (vswitch/ports/base.py, Port)."""
    config: Any
    pending: Any


def plan(old: Config, new: Config, running: Mapping[str, RunningPort] | None = None) -> Plan:
    """The changes from `old` to `new`. With `running` (the daemon's ports),
    a port's change is planned against what it runs, not against the old
    file: a change still pending (waiting for a guest to reconnect) is
    planned again, or withdrawn (a change without fields) when the new file
    reverts it. The daemon applies each change as planned."""
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
        port = running.get(name) if running is not None else None
        current = port.config if port is not None else old.ports[name]
        change = port_change(name, current, pc)
        if change is None and port is not None and port.pending is not None:
            change = PortChange(name, current, pc, (), restart=False)    # withdraw it
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
