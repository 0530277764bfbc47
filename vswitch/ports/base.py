"""What every port type shares: the `Port` protocol the daemon drives, the
result of a reconfiguration, the environment a port is created in, and the
retry and task helpers the port types had each written for themselves.

A port owns one datapath slot and what feeds it (a vhost-user socket, a TAP
device, a UDP socket). It does not own the FDB's static entries or the
mirrors that point at its slot: the switch does (vswitch/fdb.py,
vswitch/policy.py), and a port tells it when its slot changes
(`PortEnv.on_slot_changed`), so nothing has to poll for it.

Each port class declares how a change to each of its configuration fields is
applied (IN_PLACE, AT_CONNECT, RESTART); the reload planner
(vswitch/reconcile.py) reads them through the registry (vswitch/ports/__init__.py).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, TypedDict

from ..config import POLICY_KEYS, LimitsConfig

if TYPE_CHECKING:
    from .._datapath import Datapath
    from ..dpcontrol import DatapathControl
    from ..reconcile import PortChange

log = logging.getLogger("vswitch.ports")

# Forwarding policies (VLAN, port security, storm control, policing,
# mirroring): the datapath reads them from the port's slot on every frame, so
# a new value is written there with the guest connected and nothing else is
# disturbed. Any port type.
POLICY_IN_PLACE = frozenset(POLICY_KEYS)


class ChangeResult(enum.Enum):
    """What a port did with a planned change."""
    UNCHANGED = "unchanged"   # nothing to do (e.g. a pending change was withdrawn)
    APPLIED = "applied"       # in effect now
    PENDING = "pending"       # in-place part applied; the rest waits for the guest's next connection
    RESTART = "restart"       # the caller closes the port and opens it again with the new config


class QueueView(TypedDict):
    pair: int
    rx: dict[str, Any]
    tx: dict[str, Any]


class PortView(TypedDict, total=False):
    """`port show`, the metrics and `stats` read this; every port type gives
    at least the first block of keys."""
    name: str
    type: str
    mode: str
    socket: str | None
    state: str                # "connected", "listening", "connecting", "up", "down"
    queues_offered: int
    queues_enabled: int
    queues: list[QueueView]
    connections: int
    disconnects: int
    protocol_errors: int
    last_error: str | None
    alerts: dict[str, str]
    features: list[str]
    protocol_features: list[str]
    mtu: int | None
    policy: dict[str, Any]
    capture: dict[str, Any] | None
    # vhost-user
    refused: int
    memory_faults: int
    message_timeouts: int
    mac: str | None
    mtu_enforced: int | None
    dirty_log: Any
    memory_regions: list[dict[str, int]]
    memory_mapped: int
    rarps: int
    announce_drops: dict[str, int]
    features_offered: list[str]
    pending: dict[str, Any]
    # TAP
    ifname: str | None
    # VXLAN
    local: str
    vni: int
    remotes: list[dict[str, Any]]
    learn_table_full: int


@dataclass
class PortEnv:
    """What the switch gives each port it creates."""
    dp: Datapath
    ctl: DatapathControl          # every change to the datapath runs there
    ratelog: RateLimitedLog
    # Daemon-wide; the daemon replaces it on reload (a vhost-user port reads it per message).
    limits: LimitsConfig
    # Called on the control thread, in the job that gave the port a new slot,
    # so that the FDB's static entries and the mirrors follow it at once.
    on_slot_changed: Callable[[Port], None] = lambda port: None
    # `debug: true`: vhost-user ports log every request at debug level (the
    # tests compare front-ends by it); off otherwise, so that a front-end's
    # flood of messages is not a flood of log lines. Replaced on reload.
    log_requests: bool = False


class Port(Protocol):
    """A switch port as the daemon sees it."""
    IN_PLACE: ClassVar[frozenset[str]]     # applied to the running port
    AT_CONNECT: ClassVar[frozenset[str]]   # wait for the guest's next connection
    RESTART: ClassVar[frozenset[str]]      # the port is closed and opened again

    name: str
    slot: int                 # the datapath slot; -1 before start() and after stop()
    config: Any               # the running configuration (a vswitch.config port config)
    # A configuration whose at-connect fields wait for the guest to reconnect.
    pending: Any

    async def start(self) -> None:
        """Take a slot and open what feeds it; a failure is reported in
        show() and retried where it makes sense, never raised."""

    async def stop(self) -> None:
        """Close everything and free the slot."""

    async def reconfigure(self, change: PortChange, force: bool = False) -> ChangeResult:
        """Apply a change planned against this port's running config."""

    async def check_health(self) -> None:
        """Periodic (the daemon's health task): notice trouble and act on it."""

    @property
    def state(self) -> str: ...

    def show(self) -> PortView:
        """What the port is and does; reads only (a scrape never changes a port)."""


class Backoff:
    """Exponential retry delay: `first`, doubled after every failure up to
    `most`, back to `first` after a success."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, most
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self) -> None:
        """Sleep the current delay, then double it for the next failure."""
        delay = self.delay
        self.delay = min(delay * 2, self.most)
        await asyncio.sleep(delay)


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a task and wait until it has ended. The caller's own
    cancellation is not swallowed (asyncio.wait never raises the task's)."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s ended with %r", task.get_name(), task.exception())


class RateLimitedLog:
    """At most `burst` lines per `period` seconds per key; counts the rest."""

    def __init__(self, burst: int = 5, period: float = 10.0,
                 logger: logging.Logger = logging.getLogger("vswitch.port")) -> None:
        self.burst, self.period, self.log = burst, period, logger
        self.state: dict[str, tuple[float, int, int]] = {}

    def warning(self, key: str, msg: str, *args) -> None:
        self._log(logging.WARNING, key, msg, *args)

    def exception(self, key: str, msg: str, *args) -> None:
        """An error with its traceback: a bug a peer can trigger at will
        must not write a traceback per connection either."""
        self._log(logging.ERROR, key, msg, *args, exc_info=True)

    def info(self, key: str, msg: str, *args) -> None:
        # Connection lines too: a peer that connects and sends garbage in a
        # loop must not write two log lines per attempt; the port's counters
        # carry the totals.
        self._log(logging.INFO, key, msg, *args)

    def _log(self, level: int, key: str, msg: str, *args, exc_info: bool = False) -> None:
        now = time.monotonic()
        start, n, suppressed = self.state.get(key, (now, 0, 0))
        if now - start > self.period:
            if suppressed:
                self.log.log(level, "%s: %d similar messages suppressed", key, suppressed)
            start, n, suppressed = now, 0, 0
        if n < self.burst:
            self.log.log(level, msg, *args, exc_info=exc_info)
            n += 1
        else:
            suppressed += 1
        self.state[key] = (start, n, suppressed)
