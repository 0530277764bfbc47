"""File descriptors: the most a configuration can hold, against RLIMIT_NOFILE.

A guest decides how many fds its port holds (queues enabled, memory slots
used), and a daemon that runs out cannot accept the next guest, map its
memory, or re-open a TAP. So the daemon computes the worst case of its
configuration at start and at every reload, raises its soft limit towards
it (up to the hard limit, which only a privileged parent can raise), and
says so if even the hard limit is lower.

The worst case per port:

* vhost-user: three eventfds per vring (kick, call, err), two vrings per
  queue pair offered; the memory table as the session holds it (a dup of
  each region's fd, up to MEM_SLOTS) plus a second table while a new one
  replaces it (the new fds are duplicated before the old ones are closed);
  one fd in flight with a message (a region, the dirty log, a vring's new
  eventfd before the old one is closed); the socket: the listener, the
  connection and a second front-end accepted only to be refused (server
  mode), or the connection (client mode).
* TAP: one fd per queue.
* VXLAN: its UDP socket.

And the daemon's own: per worker an eventfd, an epoll set and an io_uring;
plus DAEMON_FDS for stdio, the lock, the event loop, the control and metrics
listeners and their clients, captures, and the short-lived sockets and files
of ioctls and sysfs reads.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

from .config import Config, PortConfig, TapPortConfig, VhostUserPortConfig, VxlanPortConfig
from .config.bounds import MAX_MEM_SLOTS

VRING_FDS = 3              # kick, call and err eventfds
MEM_SLOTS = MAX_MEM_SLOTS  # the memory slots the session offers
MEM_TABLE_FDS = 2 * MEM_SLOTS
FDS_IN_FLIGHT = 1
SERVER_SOCKET_FDS = 3      # listener, connection, a refused second connection
CLIENT_SOCKET_FDS = 1
WORKER_FDS = 3             # eventfd, epoll, io_uring
DAEMON_FDS = 64


def port_fds(port: PortConfig) -> int:
    """The most fds one port can hold at once."""
    if isinstance(port, VhostUserPortConfig):
        sockets = SERVER_SOCKET_FDS if port.mode == "server" else CLIENT_SOCKET_FDS
        return VRING_FDS * 2 * port.queues + MEM_TABLE_FDS + FDS_IN_FLIGHT + sockets
    if isinstance(port, TapPortConfig):
        return port.queues
    if isinstance(port, VxlanPortConfig):
        return 1
    raise TypeError(f"unknown port type {type(port).__name__}")


@dataclass(frozen=True)
class FdBudget:
    """The worst case of a configuration, by part."""

    ports: dict[str, int] = field(default_factory=dict)   # port name -> its worst case
    workers: int = 0
    daemon: int = DAEMON_FDS

    @property
    def total(self) -> int:
        return sum(self.ports.values()) + self.workers + self.daemon

    def describe(self, config: Config) -> str:
        """"2 vhost-user port(s): 148, 1 tap port(s): 2, 1 worker(s): 3, the daemon itself: 64"."""
        kinds: dict[str, list[int]] = {}
        for name, n in self.ports.items():
            kinds.setdefault(config.ports[name].type, []).append(n)
        parts = [f"{len(v)} {kind} port(s): {sum(v)}" for kind, v in kinds.items()]
        parts += [f"{config.datapath.workers} worker(s): {self.workers}",
                  f"the daemon itself: {self.daemon}"]
        return ", ".join(parts)


def fd_budget(config: Config) -> FdBudget:
    return FdBudget(ports={name: port_fds(pc) for name, pc in config.ports.items()},
                    workers=WORKER_FDS * config.datapath.workers)


@dataclass(frozen=True)
class NofileCheck:
    needed: int
    soft_before: int
    soft: int                       # after raising it (if it was raised)
    hard: int
    warning: str | None = None      # set if soft < needed

    @property
    def raised(self) -> bool:
        return self.soft != self.soft_before


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def ensure_nofile(config: Config) -> NofileCheck:
    """Raise the soft RLIMIT_NOFILE to the configuration's worst case if it
    is lower (never lowers it); at most to the hard limit. The result says
    what was done, with a warning if the limit stays below the worst case."""
    budget = fd_budget(config)
    needed = budget.total
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= needed:
        return NofileCheck(needed, soft, soft, hard)
    target = needed if hard == infinite else min(needed, hard)
    new_soft = soft
    error = ""
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new_soft = target
        except (OSError, ValueError) as exc:   # e.g. above fs.nr_open
            error = f" (raising it failed: {exc})"
    if new_soft >= needed:
        return NofileCheck(needed, soft, new_soft, hard)
    warning = (f"RLIMIT_NOFILE: this configuration can hold up to {needed} file descriptors "
               f"({budget.describe(config)}), but the limit is {new_soft} (hard limit "
               f"{_limit(hard)}){error}: a guest may fail to connect or to map its memory; "
               f"raise LimitNOFILE= of the service (or `ulimit -n` before starting vswitchd)")
    return NofileCheck(needed, soft, new_soft, hard, warning)
