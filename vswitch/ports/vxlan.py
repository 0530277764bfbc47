"""The VXLAN port: the switch's frames carried over UDP to peer VTEPs (RFC 7348).

The control plane binds one UDP socket to ``local:udp_port`` and hands it to
the datapath (cython_ext/vxlan.pxi), which reads and writes the datagrams,
checks every one it receives (source among the remotes, I flag, VNI), learns
behind which remote each inner MAC lives, and replicates floods to every
remote. docs/vxlan.md describes how switches on several hosts form one L2
segment this way.

Binding fails while the local address is not on this host (yet): the port
reports why and retries with backoff, like a TAP that cannot be opened, and
never stops the other ports.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from typing import TYPE_CHECKING, ClassVar

from .._datapath import Datapath
from ..config import VxlanPortConfig
from ..policy import apply_port_policy, describe as describe_policy
from .base import POLICY_IN_PLACE, Backoff, ChangeResult, PortEnv, PortView, cancel_and_wait

if TYPE_CHECKING:
    from ..reconcile import PortChange

log = logging.getLogger("vswitch.vxlan")

RETRY_MIN_S = 0.2
RETRY_MAX_S = 10.0
# Socket buffers: a burst of 32 frames of up to 64 KiB each way must fit, and
# a TSO guest's segments are sent back to back.
SOCKET_BUFFER = 8 << 20
# asm-generic/socket.h (the socket module does not export them)
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


class VxlanError(OSError):
    """A VXLAN socket could not be set up; ``str()`` says which endpoint and why."""


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def pack_sockaddr(address: str, port: int) -> bytes:
    """struct sockaddr_in / sockaddr_in6 for the datapath's sendmsg."""
    addr = ipaddress.ip_address(address)
    if addr.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + addr.packed + bytes(8)
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + addr.packed
            + struct.pack("=I", 0))


def open_vxlan_socket(local: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to local:port, with large buffers.
    Raises VxlanError with the reason in words."""
    family = socket.AF_INET6 if ipaddress.ip_address(local).version == 6 else socket.AF_INET
    where = _endpoint(local, port)
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for forced, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                              (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                # root (CAP_NET_ADMIN) may exceed net.core.[rw]mem_max
                sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        sock.bind((local, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            detail = f"address {local} is not configured on this host (or not usable yet)"
        elif exc.errno == errno.EADDRINUSE:
            detail = (f"UDP port {port} on {local} is already in use (another VXLAN endpoint, e.g. "
                      f"a kernel vxlan device with dstport {port} in this network namespace?)")
        elif exc.errno == errno.EACCES:
            detail = f"permission denied (UDP port {port} < 1024 needs CAP_NET_BIND_SERVICE)"
        else:
            detail = exc.strerror or str(exc)
        raise VxlanError(exc.errno, f"VXLAN {where}: cannot bind: {detail}") from exc
    return sock


class VxlanPort:
    # The peers, the VNI and the MTU are datapath settings of the bound
    # socket; the socket's own address and port re-bind it.
    IN_PLACE: ClassVar[frozenset[str]] = frozenset({"remotes", "vni", "mtu"}) | POLICY_IN_PLACE
    AT_CONNECT: ClassVar[frozenset[str]] = frozenset()
    RESTART: ClassVar[frozenset[str]] = frozenset({"type", "local", "udp_port"})
    pending: None = None        # nothing waits for a guest

    def __init__(self, config: VxlanPortConfig, env: PortEnv) -> None:
        self.config = config
        self.name = config.name
        self.env = env
        self.dp: Datapath = env.dp
        self.ctl = env.ctl          # every change to the datapath runs there
        self.slot = -1              # allocated by start()
        self._policy: dict | None = None
        self.attached = False
        self.attaches = 0
        self.last_error: str | None = None
        self._task: asyncio.Task | None = None

    def _remotes(self, cfg: VxlanPortConfig) -> list[bytes]:
        return [pack_sockaddr(r, cfg.udp_port) for r in cfg.remotes]

    async def start(self) -> None:
        await self.ctl.call(self._create_slot)
        if not await self._attach():     # reported and retried, never fatal
            self._task = asyncio.get_running_loop().create_task(self._retry(), name=f"vxlan-{self.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.ctl.call(self._remove_slot)

    def _create_slot(self) -> None:
        """On the control thread: the slot and its policy; the switch then
        points mirrors at it."""
        self.slot = self.dp.port_add(1, "vxlan")
        self._policy = apply_port_policy(self.dp, self.slot, self.config)
        self.env.on_slot_changed(self)

    def _remove_slot(self) -> None:
        self.dp.port_remove(self.slot)     # closes the socket
        self.slot = -1

    async def reconfigure(self, change: PortChange, force: bool = False) -> ChangeResult:
        """Remotes, VNI and MTU change in place; the local address or UDP port
        re-bind the socket (RESTART, done by the caller)."""
        if change.restart:
            return ChangeResult.RESTART
        if not change.fields:
            return ChangeResult.UNCHANGED
        self.config = change.new
        await self.ctl.call(self._apply_datapath_settings, change.in_place)
        log.info("port %s: %s applied", self.name, ", ".join(change.in_place))
        return ChangeResult.APPLIED

    def _apply_datapath_settings(self, fields: tuple[str, ...]) -> None:
        """On the control thread: policy, remotes, VNI, enforced MTU."""
        new = self.config
        self._policy = apply_port_policy(self.dp, self.slot, new, self._policy)
        if self.attached:
            if "remotes" in fields:
                self.dp.vxlan_set_remotes(self.slot, self._remotes(new))
            if "vni" in fields:
                self.dp.vxlan_set_vni(self.slot, new.vni)
            if "mtu" in fields:
                self.dp.port_set_mtu(self.slot, new.mtu or 0)

    async def _attach(self) -> bool:
        cfg = self.config
        try:
            sock = open_vxlan_socket(cfg.local, cfg.udp_port)
        except VxlanError as exc:
            self.last_error = str(exc)
            return False
        # From here the datapath owns the fd (it closes it on reset/remove).
        await self.ctl.call(self.dp.vxlan_attach, self.slot, sock.detach(), cfg.vni,
                            self._remotes(cfg), cfg.mtu or 0)
        self.attached = True
        self.attaches += 1
        self.last_error = None
        log.info("port %s: VXLAN %s vni %d, %d remote(s)%s", self.name,
                 _endpoint(cfg.local, cfg.udp_port), cfg.vni, len(cfg.remotes),
                 f", mtu {cfg.mtu}" if cfg.mtu else "")
        return True

    async def _retry(self) -> None:
        backoff = Backoff(RETRY_MIN_S, RETRY_MAX_S)
        while not await self._attach():
            log.warning("port %s: %s; retry in %.1fs", self.name, self.last_error, backoff.delay)
            await backoff.wait()

    async def check_health(self) -> None:
        """Nothing here: a socket that could not be bound is retried in its own task."""

    @property
    def state(self) -> str:
        return "up" if self.attached else "down"

    def show(self) -> PortView:
        cfg = self.config
        # rx: towards the network (the remotes receive), tx: from the network
        state = {"started": self.attached, "enabled": self.attached, "broken": False, "size": 0}
        queues = [{"pair": 0,
                   "rx": {**state, **self.dp.vring_counters(self.slot, 0)},
                   "tx": {**state, **self.dp.vring_counters(self.slot, 1)}}]
        learned = self.dp.vxlan_learned(self.slot) if self.attached else {"per_remote": [], "table_full": 0}
        per_remote = learned["per_remote"]
        return {
            "name": self.name,
            "type": "vxlan",
            "mode": "vxlan",
            "socket": None,
            "ifname": None,
            "local": _endpoint(cfg.local, cfg.udp_port),
            "vni": cfg.vni,
            "remotes": [{"address": r, "learned_macs": per_remote[i] if i < len(per_remote) else 0}
                        for i, r in enumerate(cfg.remotes)],
            "learn_table_full": learned["table_full"],
            "state": self.state,
            "mtu": cfg.mtu,
            "queues_offered": 1,
            "queues_enabled": 1 if self.attached else 0,
            "connections": self.attaches,
            "disconnects": 0,
            "protocol_errors": 0,
            "last_error": self.last_error,
            "alerts": {} if self.attached else {"vxlan": self.last_error or "not bound"},
            "features": [],
            "protocol_features": [],
            "queues": queues,
            "policy": describe_policy(cfg),
            "capture": self.dp.capture_info(self.slot),     # None: no live capture
        }
