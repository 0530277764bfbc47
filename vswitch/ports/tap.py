"""The TAP uplink port: the host kernel as a multiqueue switch port.

The device is opened once per queue (IFF_MULTI_QUEUE | IFF_VNET_HDR) and the
fds are handed to the datapath, which reads and writes frames with their
virtio_net_hdr. A TAP that disappears (someone ran `ip link del`) is seen by
the workers as EBADFD; the port reports and counts it, the other ports keep
forwarding, and the device is re-created or re-attached with backoff.
The device helpers (open, MTU, link state) are in vswitch/ports/tapdev.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import TYPE_CHECKING, ClassVar

from .._datapath import Datapath
from ..config import TapPortConfig
from ..policy import apply_port_policy, describe as describe_policy
from .base import POLICY_IN_PLACE, Backoff, ChangeResult, PortEnv, PortView, cancel_and_wait
from .tapdev import TapError, open_tap_queues, set_tap_mtu, tap_fd_ifname, tap_link_state

if TYPE_CHECKING:
    from ..reconcile import PortChange

log = logging.getLogger("vswitch.uplink")

RETRY_MIN_S = 0.2
RETRY_MAX_S = 10.0
CHECK_PERIOD_S = 0.5


class TapPort:
    # A TAP has no negotiation with a guest: re-opening it is the only disruption.
    IN_PLACE: ClassVar[frozenset[str]] = frozenset({"mac", "mtu", "fdb_max_entries"}) | POLICY_IN_PLACE
    AT_CONNECT: ClassVar[frozenset[str]] = frozenset()
    RESTART: ClassVar[frozenset[str]] = frozenset({"type", "ifname", "queues", "create"})
    pending: None = None        # nothing waits for a guest

    def __init__(self, config: TapPortConfig, env: PortEnv) -> None:
        self.config = config
        self.name = config.name
        self.env = env
        self.dp: Datapath = env.dp
        self.ctl = env.ctl          # every change to the datapath runs there
        self.slot = -1              # allocated by start()
        self._policy: dict | None = None
        self.attached = False
        self.attaches = 0
        self.losses = 0
        self.last_error: str | None = None
        self.mtu = 0
        self._fd0 = -1
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.ctl.call(self._create_slot)
        await self._attach()        # a failure here is reported and retried, never fatal
        self._task = asyncio.get_running_loop().create_task(self._watch(), name=f"tap-{self.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.ctl.call(self._remove_slot)

    def _create_slot(self) -> None:
        """On the control thread: the slot and its policy; the switch then
        pins its static MAC and points mirrors at it."""
        self.slot = self.dp.port_add(self.config.queues, "tap")
        self._policy = apply_port_policy(self.dp, self.slot, self.config)
        self.env.on_slot_changed(self)

    def _remove_slot(self) -> None:
        self.dp.port_remove(self.slot)     # closes the queue fds, unpins its entries
        self.slot = -1

    async def reconfigure(self, change: PortChange, force: bool = False) -> ChangeResult:
        """MTU, MAC and policies change in place; anything else re-opens the
        TAP (RESTART, done by the caller)."""
        if change.restart:
            return ChangeResult.RESTART
        if not change.fields:
            return ChangeResult.UNCHANGED
        new = self.config = change.new
        if "mtu" in change.in_place and new.mtu is not None and self.attached:
            try:
                set_tap_mtu(new.ifname, new.mtu)
            except TapError as exc:
                self.last_error = str(exc)
                log.error("port %s: %s", self.name, exc)
        if self.attached:
            self.mtu = new.mtu or tap_link_state(new.ifname).get("mtu") or 1500
        await self.ctl.call(self._apply_datapath_settings)
        log.info("port %s: %s applied", self.name, ", ".join(change.in_place))
        return ChangeResult.APPLIED

    def _apply_datapath_settings(self) -> None:
        """On the control thread: policy and enforced MTU (the static MAC and
        FDB cap are the switch's: vswitch/fdb.py)."""
        self._policy = apply_port_policy(self.dp, self.slot, self.config, self._policy)
        if self.attached:
            self.dp.port_set_mtu(self.slot, self.mtu)

    async def _attach(self) -> bool:
        cfg = self.config
        try:
            fds = open_tap_queues(cfg.ifname, cfg.queues, create=cfg.create, mtu=cfg.mtu)
        except (TapError, OSError) as exc:
            self.last_error = str(exc)
            return False
        # MTU enforced on frames towards the kernel: the configured one, or the device's.
        self.mtu = cfg.mtu or tap_link_state(cfg.ifname).get("mtu") or 1500
        await self.ctl.call(self.dp.tap_attach, self.slot, fds, self.mtu)
        self._fd0 = fds[0]
        self.attached = True
        self.attaches += 1
        log.info("port %s: TAP %s attached, %d queue(s), mtu %d", self.name, cfg.ifname, cfg.queues, self.mtu)
        return True

    def _lost(self) -> bool:
        if self.dp.tap_errno(self.slot) == errno.EBADFD:
            return True
        # A device moved to another namespace keeps working through our fds;
        # only a deleted one stops answering TUNGETIFF.
        return tap_fd_ifname(self._fd0) is None

    async def _watch(self) -> None:
        backoff = Backoff(RETRY_MIN_S, RETRY_MAX_S)
        while True:
            if self.attached:
                await asyncio.sleep(CHECK_PERIOD_S)
                if self._lost():
                    self.losses += 1
                    self.attached = False
                    self.last_error = f"TAP {self.config.ifname} disappeared"
                    log.error("port %s: %s; re-creating it", self.name, self.last_error)
                    await self.ctl.call(self.dp.port_reset, self.slot)  # stops forwarding to it, closes the fds
                    self._fd0 = -1
                    backoff.reset()
            else:
                if await self._attach():
                    backoff.reset()
                    continue
                log.warning("port %s: cannot open TAP %s: %s; retry in %.1fs",
                            self.name, self.config.ifname, self.last_error, backoff.delay)
                await backoff.wait()

    async def check_health(self) -> None:
        """Nothing here: the port watches its device in its own task (every
        CHECK_PERIOD_S, re-attaching with backoff)."""

    @property
    def state(self) -> str:
        return "up" if self.attached else "down"

    def show(self) -> PortView:
        queues = []
        for q in range(self.config.queues):
            # rx: towards the kernel (the kernel receives), tx: from the kernel
            state = {"started": self.attached, "enabled": self.attached, "broken": False, "size": 0}
            queues.append({"pair": q,
                           "rx": {**state, **self.dp.vring_counters(self.slot, 2 * q)},
                           "tx": {**state, **self.dp.vring_counters(self.slot, 2 * q + 1)}})
        return {
            "name": self.name,
            "type": "tap",
            "ifname": self.config.ifname,
            "mode": "create" if self.config.create else "attach",
            "socket": None,
            "state": self.state,
            "mtu": self.mtu,
            "queues_offered": self.config.queues,
            "queues_enabled": self.config.queues if self.attached else 0,
            "connections": self.attaches,
            "disconnects": self.losses,
            "protocol_errors": 0,
            "last_error": self.last_error,
            "alerts": {} if self.attached else {"tap": self.last_error or "not attached"},
            "features": [],
            "protocol_features": [],
            "queues": queues,
            "policy": describe_policy(self.config),
            "capture": self.dp.capture_info(self.slot),     # None: no live capture
        }
