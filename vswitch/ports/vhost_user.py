"""A vhost-user port: its socket (either role), its session and its datapath slot.

One port's trouble never reaches another: every failure of a connection -
malformed message, datapath refusal, peer gone - ends in `_disconnect`, which
resets this port's datapath slot only, and the port goes back to listening
(server) or reconnecting with backoff (client).

Every change to the datapath - each message's effect (`Session.handle`), the
slot's creation, reset and removal - runs on the datapath's control thread
(`DatapathControl`), awaited here: those changes wait for the workers, and
the event loop that serves every other port must not wait with them.

`show()` only reads: the checks that may end a connection (memory that
vanished, broken rings) run in `check_health`, from the daemon's periodic
health task, never because someone looked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from .._datapath import DROP_REASONS, Datapath, DatapathError
from ..config import VhostUserPortConfig
from ..policy import apply_port_policy, describe as describe_policy
from ..safefiles import NotOurSocket, SocketFile, check_directory
from ..vhost import protocol as p
from ..vhost.session import BASE_FEATURES, BASE_PROTOCOL_FEATURES, OFFLOAD_FEATURES, Offer, Session
from ..vhost.transport import Connection, MessageTimeout, PeerClosed, bind_listener
from .base import POLICY_IN_PLACE, Backoff, ChangeResult, PortEnv, PortView, cancel_and_wait

if TYPE_CHECKING:
    from ..reconcile import PortChange

log = logging.getLogger("vswitch.port")

RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
# After a failed accept (e.g. out of fds): retry, without spinning.
ACCEPT_RETRY_S = 0.1
# A started ring whose guest kicked but whose avail index never moved for
# this long is looking at memory the guest does not share with us.
UNSHARED_MEMORY_AFTER_S = 3.0
# A notification write still in flight after this long: the front-end's call
# eventfd does not take writes (its counter is full and it cleared O_NONBLOCK,
# or it never reads). Its interrupts are merged until it does.
NOTIFY_BLOCKED_AFTER_S = 2.0
# How long a retried release waits for the workers (the first one waits the
# datapath's full quiescence timeout).
RELEASE_RETRY_WAIT_S = 0.05
# IOTLB misses (ACCESS_PLATFORM with a vIOMMU): the same page and permission
# is asked for again only after this long (a worker that missed it stops at
# it until an update arrives), and a port sends at most MISS_RATE a second
# (bursts of MISS_BURST): a guest that makes us miss cannot make us flood
# its front-end, nor spend the event loop.
MISS_RESEND_S = 0.01
MISS_RATE = 2000.0
MISS_BURST = 256.0
MISS_MEMORY = 4096


def offer_for(config: VhostUserPortConfig) -> Offer:
    """What a port offers: a function of its configuration only, so it is the
    same at every connection. The per-port switches exist for front-ends that
    mishandle a feature (some guests' drivers misuse one); turning one off only
    removes the bit."""
    features = BASE_FEATURES
    if not config.mrg_rxbuf:
        features &= ~p.bits(p.Feature.NET_MRG_RXBUF)
    if not config.event_idx:
        features &= ~p.bits(p.Feature.RING_F_EVENT_IDX)
    if not config.indirect_desc:
        features &= ~p.bits(p.Feature.RING_F_INDIRECT_DESC)
    if not config.in_order:
        features &= ~p.bits(p.Feature.F_IN_ORDER)
    if not config.offloads:
        features &= ~OFFLOAD_FEATURES
    protocol_features = BASE_PROTOCOL_FEATURES
    if not config.memory_slots:
        protocol_features &= ~p.bits(p.ProtocolFeature.CONFIGURE_MEM_SLOTS)
    return Offer(queue_pairs=config.queues, features=features, protocol_features=protocol_features)


# Alerts about the port itself, which outlive a connection (the others are
# about the running connection, and are cleared when a new one begins).
PORT_ALERTS = ("socket",)


class PortBackend:
    """The session's view of the datapath: one port slot."""

    def __init__(self, dp: Datapath, slot: int, announce_drops: dict[str, int] | None = None) -> None:
        self.dp, self.slot = dp, slot
        self.announce_drops = announce_drops if announce_drops is not None else {}

    def set_features(self, features: int) -> None:
        self.dp.port_set_features(self.slot, features)

    def set_mem_table(self, regions):
        return self.dp.set_mem_table(self.slot, regions)

    def set_vring_num(self, index, num):
        self.dp.vring_set_num(self.slot, index, num)

    def set_vring_addr(self, index, desc, used, avail, log=None):
        self.dp.vring_set_addr(self.slot, index, desc, used, avail, log)

    def set_vring_base(self, index, base):
        self.dp.vring_set_base(self.slot, index, base)

    def set_vring_kick(self, index, fd):
        self.dp.vring_set_kick(self.slot, index, fd)

    def set_vring_call(self, index, fd):
        self.dp.vring_set_call(self.slot, index, fd)

    def set_vring_err(self, index, fd):
        self.dp.vring_set_err(self.slot, index, fd)

    def start_vring(self, index):
        return self.dp.vring_start(self.slot, index)

    def stop_vring(self, index):
        return self.dp.vring_stop(self.slot, index)

    def set_vring_enabled(self, index, enabled):
        self.dp.vring_set_enabled(self.slot, index, enabled)

    def reset(self):
        self.dp.port_reset(self.slot)

    def set_log_base(self, fd, size, offset):
        self.dp.set_log_base(self.slot, fd, size, offset)

    def send_rarp(self, mac):
        # The RARP is judged as a frame of the guest's (port security, storm
        # control): a front-end announces only what its guest could send.
        reason = self.dp.inject_rarp(self.slot, mac)
        if reason is not None:
            self.announce_drops[reason] = self.announce_drops.get(reason, 0) + 1

    def set_iotlb(self, entries, sync=True):
        return self.dp.iotlb_set(self.slot, entries, sync)


@dataclass
class PortStatus:
    connections: int = 0
    disconnects: int = 0
    refused: int = 0           # second connections refused while one is active
    protocol_errors: int = 0
    memory_faults: int = 0     # connections ended because the guest's memory vanished (SIGBUS)
    message_timeouts: int = 0  # connections ended because a message was not completed in time
    last_error: str | None = None
    connected_since: float | None = None
    # Problems seen on the running connection, e.g. "guest memory not shared",
    # and those of the port (PORT_ALERTS), e.g. its socket file was replaced.
    alerts: dict[str, str] = field(default_factory=dict)


class VhostUserPort:
    # How a change to each field is applied (vswitch/reconcile.py plans with these):
    # in place without disturbing a connected guest; MAC, MTU and the FDB cap
    # are datapath settings of the slot; the memory policy is judged at each
    # memory message (the guest's next table).
    IN_PLACE: ClassVar[frozenset[str]] = frozenset({
        "socket_owner", "socket_group", "socket_mode", "mac", "mtu", "allow_file_memory",
        "fdb_max_entries"}) | POLICY_IN_PLACE
    # What the guest negotiated when it connected: changing it under a running
    # driver would break the guest's NIC, so it waits for its next connection.
    AT_CONNECT: ClassVar[frozenset[str]] = frozenset({
        "queues", "mrg_rxbuf", "event_idx", "indirect_desc", "in_order", "offloads", "memory_slots"})
    # The port's identity: closed and opened again, alone.
    RESTART: ClassVar[frozenset[str]] = frozenset({"type", "mode", "socket"})

    def __init__(self, config: VhostUserPortConfig, env: PortEnv) -> None:
        self.config = config
        self.name = config.name
        self.env = env
        self.dp: Datapath = env.dp
        self.ctl = env.ctl
        self.slot = -1                  # allocated by start()
        self.offer = offer_for(config)
        # A new config whose connect-time fields wait for the guest to reconnect.
        self.pending: VhostUserPortConfig | None = None
        self._policy: dict | None = None
        self.session: Session | None = None
        self.status = PortStatus()
        self.ratelog = env.ratelog
        self._task: asyncio.Task | None = None
        self._conn_task: asyncio.Task | None = None
        self._listener: socket.socket | None = None
        self._socket_file: SocketFile | None = None     # what bind(2) made at config.socket
        self._conn: Connection | None = None
        self._ring_seen: dict[int, float] = {}
        self._notify_busy_since: dict[int, tuple[float, int]] = {}   # ring -> (since, writes claimed)
        self._end_reason: str | None = None     # why we cancelled the connection task
        self._faults_seen = 0
        self._ending = False                    # the connection is being released
        self._conn_faulted = False              # the running connection's fault is reported
        self._release_pending = False           # a reset failed: the slot still holds a guest's memory
        # IOTLB misses the workers queue reach us through this eventfd (ours,
        # non-blocking; created with the slot, kept for the port's life).
        self._miss_efd = -1
        self._miss_sent: dict[tuple[int, int], float] = {}
        self._miss_tokens = MISS_BURST
        self._miss_refill = 0.0
        self.iotlb_counts = {"miss_sent": 0, "miss_suppressed": 0, "miss_unsent": 0,
                             "miss_queue_full": 0}
        # Frames the switch sent for the front-end (SEND_RARP) and dropped, by
        # reason: they are on no queue pair, so they are counted here.
        self.announce_drops: dict[str, int] = {}

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """The slot, then the socket; a socket that cannot be made is reported
        (`last_error`), never raised: one port's trouble never stops another."""
        try:
            await self._start()
        except OSError as exc:
            log.error("port %s: cannot listen on %s: %s", self.name, self.config.socket,
                      exc.strerror or exc)
            self.status.last_error = str(exc)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._miss_efd < 0:
            self._miss_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            loop.add_reader(self._miss_efd, self._on_iotlb_miss)
        if self.slot < 0:
            await self.ctl.call(self._create_slot)
        if self.config.mode == "server":
            # The config check refused such a directory already; this is for
            # one that changed since (or was made) before the start.
            directory = os.path.dirname(self.config.socket)
            check_directory(directory)
            os.makedirs(directory, mode=0o755, exist_ok=True)
            # Owner, group and mode of a server socket (connect(2) needs write
            # permission on it): how a QEMU run by libvirt as another user gets in.
            self._listener, self._socket_file = bind_listener(
                self.config.socket, self.config.socket_mode, self.config.socket_owner,
                self.config.socket_group)
            self._task = loop.create_task(self._serve(), name=f"port-{self.name}")
        else:
            self._task = loop.create_task(self._connect_loop(), name=f"port-{self.name}")
        log.info("port %s: vhost-user %s on %s, %d queue pair(s)",
                 self.name, self.config.mode, self.config.socket, self.config.queues)

    async def stop(self) -> None:
        self.pending = None            # nothing to apply to a port that goes away
        for task in (self._task, self._conn_task):
            await cancel_and_wait(task)
        if self._conn:
            await self._disconnect("port stopped")
        if self._listener:
            self._listener.close()
        if self._socket_file is not None:
            now = self._socket_file.remove()     # only if the path still names our socket
            if now is not None:
                log.warning("port %s: %s is no longer its socket (it is now %s): left in place",
                            self.name, self.config.socket, now)
        await self.ctl.call(self._remove_slot)
        if self._miss_efd >= 0:
            asyncio.get_running_loop().remove_reader(self._miss_efd)
            os.close(self._miss_efd)
            self._miss_efd = -1

    def _create_slot(self) -> None:
        """On the control thread: a datapath slot with this config's settings;
        the switch then points its FDB entries and mirrors at it."""
        self.slot = self.dp.port_add(self.config.queues)
        self.dp.iotlb_set_event_fd(self.slot, self._miss_efd)
        self._faults_seen = self.dp.memory_faults(self.slot)
        self._apply_datapath_settings(None)
        self.env.on_slot_changed(self)

    def _remove_slot(self) -> None:
        """On the control thread: the slot freed (and with it every FDB entry on it)."""
        self.dp.iotlb_set_event_fd(self.slot, -1)
        self.dp.port_remove(self.slot)
        self.slot = -1

    # --- reconfiguration (reload) ------------------------------------------------

    def _apply_datapath_settings(self, old: VhostUserPortConfig | None) -> None:
        """The in-place settings the slot holds: enforced MTU, VLAN membership,
        security, storm control, policers. old None: a new slot. (Its static
        MAC, FDB cap and mirror are the switch's: vswitch/fdb.py, policy.py.)"""
        cfg = self.config
        self._policy = apply_port_policy(self.dp, self.slot, cfg,
                                         self._policy if old is not None else None)
        self.dp.port_set_mtu(self.slot, cfg.mtu or 0)

    async def reconfigure(self, change: PortChange, force: bool = False) -> ChangeResult:
        """Apply a change planned against the running config (vswitch/reconcile.py):
        APPLIED, RESTART (the identity changed: the caller closes and reopens
        the port) or PENDING when connect-time fields wait for the guest's
        next connection; with force, the guest is disconnected so that they
        apply now (its driver sees a link flap and QEMU reconnects). A change
        without fields withdraws what was pending (UNCHANGED)."""
        if change.restart:
            return ChangeResult.RESTART
        if not change.fields:
            self.pending = None
            return ChangeResult.UNCHANGED
        old, new = self.config, change.new
        in_place, at_connect = change.in_place, change.at_connect
        if at_connect and self.connected:
            # In-place fields now, the rest when the guest reconnects.
            self.config = dataclasses.replace(old, **{f: getattr(new, f) for f in in_place})
            self.pending = new
            await self._apply_in_place(old, in_place)
            if not force:
                log.info("port %s: %s applied; %s pending until the guest reconnects", self.name,
                         ", ".join(in_place) or "nothing", ", ".join(at_connect))
                return ChangeResult.PENDING
            # Forced: end the connection; _disconnect applies what is pending.
            log.info("port %s: disconnecting the guest to apply %s (forced)", self.name,
                     ", ".join(at_connect))
            await cancel_and_wait(self._conn_task)
            return ChangeResult.APPLIED
        self.pending = None
        self.config = new
        await self._apply_in_place(old, in_place)
        if at_connect:
            await self._apply_connect_time(old)
        log.info("port %s: %s applied", self.name, ", ".join(in_place + at_connect))
        return ChangeResult.APPLIED

    async def _apply_in_place(self, old: VhostUserPortConfig, fields: tuple[str, ...]) -> None:
        socket_fields = {"socket_owner", "socket_group", "socket_mode"} & set(fields)
        if socket_fields and self._socket_file is not None:
            self._apply_socket_permissions()
        if self.session is not None:
            # memory already mapped stays; the next memory table is judged anew
            self.session.allow_file_memory = self.config.allow_file_memory
        await self.ctl.call(self._apply_datapath_settings, old)

    def _apply_socket_permissions(self) -> None:
        """The configured owner, group and mode, to our socket file only: if
        its path names something else now (the socket's owner may rename it
        in a sticky directory and put a link there), nothing is changed and
        the port says why, in an alert that stays until a reload succeeds."""
        assert self._socket_file is not None
        try:
            self._socket_file.set_permissions(self.config.socket_mode, self.config.socket_owner,
                                              self.config.socket_group)
        except NotOurSocket as exc:
            msg = exc.strerror
            self.status.alerts["socket"] = msg
            self.status.last_error = msg
            log.error("port %s: %s", self.name, msg)
            return
        self.status.alerts.pop("socket", None)

    async def _apply_connect_time(self, old: VhostUserPortConfig) -> None:
        """Only while no guest is connected: a new offer, a new slot for a new
        number of queue pairs (slots are sized at creation)."""
        self.offer = offer_for(self.config)
        if self.config.queues != old.queues:
            await self.ctl.call(self._recreate_slot)

    def _recreate_slot(self) -> None:
        """On the control thread, in one job: nothing runs between the old
        slot's removal and the new one's settings (FDB entries, mirrors)."""
        self._remove_slot()
        self._create_slot()

    # --- socket roles ----------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError as exc:
                # EMFILE/ENFILE (out of fds), ENOBUFS/ENOMEM, ECONNABORTED: the
                # listener is fine and the connection waits in the backlog.
                # Without this the task died and the port never accepted a
                # front-end again, silently (tests/test_overload.py).
                self.ratelog.warning(f"{self.name}:accept", "port %s: accept failed: %s; retrying",
                                     self.name, exc.strerror or exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if self._conn is not None and self._ending and self._conn_task is not None:
                # The last connection is being released (its guest went away a
                # moment ago): this is likely its successor; wait for the release.
                await asyncio.wait({self._conn_task})
            if self._conn is not None:
                # One front-end per port: a second one is refused at once,
                # the first keeps running undisturbed.
                self.status.refused += 1
                self.ratelog.warning(f"{self.name}:second", "port %s: refusing a second connection "
                                     "while one is active", self.name)
                sock.close()
                continue
            if not await self.retry_release():
                self.status.refused += 1
                self.ratelog.warning(f"{self.name}:release", "port %s: refusing a connection: "
                                     "the last one's resources are not released yet", self.name)
                sock.close()
                continue
            self._conn = Connection(sock, loop)
            self._conn_task = loop.create_task(self._run_connection(), name=f"conn-{self.name}")

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
        while True:
            sock = None
            try:
                # Created inside the try: out of fds (EMFILE) is one more
                # reason to retry, not the end of the reconnect loop.
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                await loop.sock_connect(sock, self.config.socket)
            except OSError as exc:
                if sock is not None:
                    sock.close()
                reason = exc.strerror or str(exc)
                if exc.errno == errno.EACCES:
                    reason += (" (connecting needs write permission on the socket and search "
                               "permission on its directories: run the daemon in QEMU's group, "
                               "or give it CAP_DAC_OVERRIDE)")
                self.ratelog.warning(f"{self.name}:connect", "port %s: connect to %s failed: %s; retry in %.1fs",
                                     self.name, self.config.socket, reason, backoff.delay)
                await backoff.wait()
                continue
            if not await self.retry_release():
                sock.close()
                await asyncio.sleep(backoff.delay)
                continue
            backoff.reset()
            self._conn = Connection(sock, loop)
            # A task of its own, so that a forced reconfiguration can end this
            # connection (cancel it) without ending the reconnect loop.
            self._conn_task = loop.create_task(self._run_connection(), name=f"conn-{self.name}")
            await asyncio.wait({self._conn_task})
            await asyncio.sleep(RECONNECT_MIN_S)

    async def _run_connection(self) -> None:
        assert self._conn is not None
        self.session = Session(self.offer, PortBackend(self.dp, self.slot, self.announce_drops),
                               allow_file_memory=self.config.allow_file_memory,
                               on_refused=self._refused)
        self.status.connections += 1
        self.status.connected_since = time.time()
        self.status.alerts = {k: v for k, v in self.status.alerts.items() if k in PORT_ALERTS}
        self._ring_seen.clear()
        self._notify_busy_since.clear()
        self._conn_faulted = False
        self._faults_seen = self.dp.memory_faults(self.slot)   # nothing is mapped yet
        self.ratelog.info(f"{self.name}:connected", "port %s: front-end connected", self.name)
        reason = "front-end closed the connection"
        first = True
        try:
            while True:
                header, payload, fds = await self._conn.read_message(self.env.limits.message_timeout, first)
                first = False
                # The request sequence (docs/testing.md compares what QEMU
                # versions send): only with `debug: true` and debug logging.
                if self.env.log_requests and log.isEnabledFor(logging.DEBUG):
                    log.debug("port %s: vhost-user %s flags=%#x payload=%s fds=%d", self.name,
                              p.request_name(header.request), header.flags,
                              payload.hex() if len(payload) <= 64 else f"{payload[:8].hex()}+{len(payload) - 8}B",
                              len(fds))
                # The message's effect on the datapath may wait for the workers:
                # on the control thread, never on this loop.
                reply = await self.ctl.call(self.session.handle, header, payload, fds)
                if reply is not None:
                    self._conn.send(reply)
        except PeerClosed:
            pass
        except MessageTimeout as exc:
            # It held the port (one front-end at a time) and what it sent so far.
            self.status.message_timeouts += 1
            reason = f"incomplete message: {exc}"
            self.status.last_error = reason
            self.ratelog.warning(f"{self.name}:timeout", "port %s: %s; closing the connection",
                                 self.name, reason)
        except p.ProtocolError as exc:
            self.status.protocol_errors += 1
            reason = f"protocol error: {exc}"
            self.status.last_error = reason
            self.ratelog.warning(f"{self.name}:protocol", "port %s: %s; closing the connection",
                                 self.name, reason)
        except asyncio.CancelledError:
            reason = self._end_reason or "port stopped"
            raise
        except Exception as exc:  # a bug must cost this connection, not the daemon
            self.status.protocol_errors += 1
            reason = f"internal error: {exc!r}"
            self.status.last_error = reason
            self.ratelog.exception(f"{self.name}:internal", "port %s: closing the connection",
                                   self.name)
        finally:
            self._end_reason = None
            if self._conn is not None:
                await self._disconnect(reason)

    def _on_iotlb_miss(self) -> None:
        """Workers queued IOTLB misses: ask the front-end for each on the
        back-end channel (BACKEND_IOTLB_MSG, type MISS, no reply asked),
        deduplicated and rate bounded; the UPDATE comes back as IOTLB_MSG."""
        try:
            os.eventfd_read(self._miss_efd)
        except BlockingIOError:
            pass
        if self.slot < 0:
            return
        misses, overflow = self.dp.iotlb_take_misses(self.slot)
        self.iotlb_counts["miss_queue_full"] += overflow
        session = self.session if self.connected else None
        channel = session.channel if session is not None else None
        now = time.monotonic()
        self._miss_tokens = min(MISS_BURST, self._miss_tokens + (now - self._miss_refill) * MISS_RATE)
        self._miss_refill = now
        if len(self._miss_sent) > MISS_MEMORY:
            self._miss_sent = {k: t for k, t in self._miss_sent.items() if now - t < MISS_RESEND_S}
        table = session.iotlb if session is not None else None
        for iova, perm in misses:
            if table is not None and table.covers(iova, perm):
                # Answered since a worker queued it (another miss of the same
                # page): asking again would have the front-end translate an
                # IOVA the guest may have unmapped by now, as it does with a
                # buffer we gave back - a DMA fault its kernel logs.
                self.iotlb_counts["miss_suppressed"] += 1
                continue
            key = (iova >> 12, perm)
            last = self._miss_sent.get(key)
            if (last is not None and now - last < MISS_RESEND_S) or self._miss_tokens < 1:
                self.iotlb_counts["miss_suppressed"] += 1
                continue
            self._miss_tokens -= 1
            message = p.encode_backend_request(
                p.BackendRequest.IOTLB_MSG,
                p.encode_iotlb(p.IotlbMsg(iova, 0, 0, perm, p.IOTLB_MISS)))
            if channel is not None and channel.send(message):
                self.iotlb_counts["miss_sent"] += 1
                self._miss_sent[key] = now
                if self.env.log_requests and log.isEnabledFor(logging.DEBUG):
                    log.debug("port %s: IOTLB miss iova=%#x perm=%d sent", self.name, iova, perm)
            else:
                self.iotlb_counts["miss_unsent"] += 1   # no channel, or it is full or broken

    def _iotlb_retry(self) -> None:
        """On the control thread: TX rings stopped at a miss, and rings whose
        addresses did not translate, try again (and miss again, if still)."""
        self.dp.iotlb_retry(self.slot)
        if self.session is not None:
            self.session.retry_waiting_rings()

    def _refused(self, reason: str) -> None:
        """A request answered with a failure (the front-end asked for a
        reply): the connection stays; the reason goes to the log and
        `port show`, for the operator whose guest cannot get its memory in."""
        self.status.last_error = reason
        self.ratelog.warning(f"{self.name}:refused", "port %s: refused %s", self.name, reason)

    async def _disconnect(self, reason: str) -> None:
        self._ending = True
        try:
            await self._release_connection(reason)
        finally:
            self._ending = False

    async def _release_connection(self, reason: str) -> None:
        if self.session is not None:
            try:
                await self.ctl.call(self.session.close)
            except DatapathError as exc:
                self._release_failed(exc)
        if self._conn is not None:
            self._conn.close()
        # the guest's memory is unmapped now: a fault it took is its own, reported
        # before the slot may be re-created below
        self._check_memory_faults(ending=True)
        self._conn = None
        self.status.disconnects += 1
        self.status.connected_since = None
        self.ratelog.info(f"{self.name}:disconnected", "port %s: disconnected (%s)", self.name, reason)
        if self.pending is not None:
            # The guest is gone: what waited for its next connection applies now.
            old, self.config, self.pending = self.config, self.pending, None
            await self._apply_connect_time(old)
            log.info("port %s: pending configuration applied", self.name)

    def _release_failed(self, exc: Exception) -> None:
        """The workers did not finish their round in time, so the guest's
        memory and fds cannot be released yet (a worker may still use them).
        The connection ends anyway; the port takes no new front-end until the
        release succeeds (retried by the daemon every second and at each accept)."""
        self._release_pending = True
        msg = f"datapath resources of the last connection not released yet: {exc}"
        self.status.alerts["release"] = msg
        self.status.last_error = msg
        log.error("port %s: %s; retrying", self.name, msg)

    async def retry_release(self) -> bool:
        """True when nothing of an earlier connection is held any more."""
        if not self._release_pending:
            return True
        try:
            # a short wait: it holds up the port's accept and every other change
            await self.ctl.call(self.dp.port_reset, self.slot, timeout_s=RELEASE_RETRY_WAIT_S)
        except DatapathError:
            return False
        self._release_pending = False
        self.status.alerts.pop("release", None)
        log.info("port %s: datapath resources of the last connection released", self.name)
        return True

    # --- observation -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _check_memory_faults(self, *, ending: bool = False) -> None:
        """A SIGBUS in the guest's memory (its file shrank under us, or
        hugetlbfs had no page) was absorbed by the datapath, which put zero
        pages in place of that mapping (cython_ext/vs_memguard.h): what the
        port maps is no longer the guest's memory, so its connection ends.
        The front-end may connect again with memory that stays. `ending`:
        called as the connection ends anyway (its fault is reported against
        it, never against the next one)."""
        faults = self.dp.memory_faults(self.slot)
        if faults == self._faults_seen:
            return
        self._faults_seen = faults
        if self._conn_faulted:
            return                      # this connection's fault is reported already
        self._conn_faulted = True
        self.status.memory_faults += 1
        msg = ("guest memory vanished under the switch (SIGBUS: the front-end shrank a memory "
               "file it had shared)")
        self.status.alerts["memory_fault"] = msg
        self.status.last_error = msg
        task = self._conn_task
        if not ending and self.connected and task is not None and not task.done():
            log.error("port %s: %s; closing the connection", self.name, msg)
            self._end_reason = "guest memory vanished"
            task.cancel()
        else:
            log.error("port %s: %s", self.name, msg)

    async def check_health(self) -> None:
        """Periodic (the daemon's health task, never `show`): retry a failed
        release, end a connection whose guest memory vanished, report broken
        rings, memory the guest does not share and call eventfds that take
        no writes."""
        await self.retry_release()
        self._check_rings()
        if self.connected and self.session is not None and self.session.features >> p.Feature.F_ACCESS_PLATFORM & 1:
            # a MISS the front-end never answered (or we could not send):
            # rings stopped at it try, and miss, again
            await self.ctl.call(self._iotlb_retry)

    def _check_rings(self) -> None:
        self._check_memory_faults()
        if self.session is None or not self.connected:
            return
        now = time.monotonic()
        for index, vr in enumerate(self.session.vrings):
            if not vr.started:
                self._ring_seen.pop(index, None)
                continue
            info = self.dp.vring_info(self.slot, index)
            self._check_notifications(index, info, now)
            if info["broken"] and f"vring{index}" not in self.status.alerts:
                msg = (f"vring {index} stopped: the guest's avail index jumped by more than the "
                       "ring size; it stays stopped until RESET_DEVICE or a reconnect")
                self.status.alerts[f"vring{index}"] = msg
                self.status.last_error = msg
                log.error("port %s: %s", self.name, msg)
            first = self._ring_seen.setdefault(index, now)
            # A guest kicks only after publishing buffers, so a kicked ring
            # whose avail index still reads 0 is not the guest's ring: we see
            # the memory file, the guest writes private copy-on-write pages.
            # Only enabled RX rings (even index): the driver fills them as the
            # interface comes up, and kicks. A TX ring stays at 0 until the
            # guest sends on it, and QEMU hands over every kick eventfd
            # already signalled (event_notifier_init(.., 1) in
            # virtio_bus_set_host_notifier), so an idle TX queue (pair 1 of a freshly
            # booted guest that has sent nothing from vCPU 1) was reported as
            # unshared memory 3 s after every boot (tests/test_restarts.py).
            # A split ring shows it by an avail index still 0; a packed ring
            # by a first descriptor still all zero.
            untouched = (info.get("first_desc_written") is False if info.get("packed")
                         else info.get("avail_idx") == 0 and info["start_avail"] == 0)
            if (index % 2 == 0 and info["enabled"]
                    and now - first > UNSHARED_MEMORY_AFTER_S and not info["avail_moved"]
                    and untouched
                    and info["kick_fd"] >= 0
                    # a sleeping worker drains kicks (and counts them); a polling one leaves them
                    and (self.dp.vring_counters(self.slot, index)["kicks"] > 0 or _readable(info["kick_fd"]))
                    and "memory" not in self.status.alerts):
                msg = ("guest memory is not shared with the switch: the guest kicks but its rings "
                       "never change (start QEMU with a memory backend with share=on)")
                self.status.alerts["memory"] = msg
                self.status.last_error = msg
                log.error("port %s: %s", self.name, msg)

    def _check_notifications(self, index: int, info: dict, now: float) -> None:
        """Alert once when a ring's call eventfd stops taking writes: the
        workers merge its interrupts (counted as notify_merged) and go on."""
        if not info["notify_busy"]:
            self._notify_busy_since.pop(index, None)
            return
        # Under steady traffic a write is in flight at almost every look, one
        # after another: blocked means no new write was claimed since the
        # first look (a write is claimed per notification not merged).
        counters = self.dp.vring_counters(self.slot, index)
        claimed = counters["notifications"] - counters["notify_merged"]
        since, seen = self._notify_busy_since.get(index, (now, claimed))
        if claimed != seen:
            since = now
        self._notify_busy_since[index] = (since, claimed)
        key = f"notify{index}"
        if now - since >= NOTIFY_BLOCKED_AFTER_S and key not in self.status.alerts:
            msg = (f"vring {index}: the front-end's call eventfd does not take writes (a full "
                   "counter, O_NONBLOCK cleared); its interrupts are held until it reads")
            self.status.alerts[key] = msg
            self.status.last_error = msg
            self.ratelog.warning(f"{self.name}:notify", "port %s: %s", self.name, msg)

    @property
    def state(self) -> str:
        if self.connected:
            return "connected"
        return "listening" if self.config.mode == "server" else "connecting"

    def show(self) -> PortView:
        """Reads only: what `check_health` found shows within its period."""
        info = self.session.info() if self.session and self.connected else None
        queues = []
        slot = self.slot
        for q in range(self.config.queues):
            entry = {"pair": q}
            try:
                for direction, index in (("rx", 2 * q), ("tx", 2 * q + 1)):
                    ring = self.dp.vring_info(slot, index)
                    entry[direction] = {
                        "started": ring["started"], "enabled": ring["enabled"],
                        "broken": ring["broken"], "size": ring["num"], "packed": ring.get("packed", False),
                        # starts that took the base from the used index (a front-end
                        # that resumed its rings with base 0, as DPDK's virtio-user does)
                        "base_resyncs": ring["base_resyncs"],
                        **self.dp.vring_counters(slot, index),
                    }
            except DatapathError:
                # A reload that changes the number of queue pairs sets the new
                # config before the control thread re-creates the slot: until
                # then the slot has fewer rings (or none, mid re-creation).
                break
            queues.append(entry)
        return {
            "name": self.name,
            "type": "vhost-user",
            "mode": self.config.mode,
            "socket": self.config.socket,
            "queues_offered": self.config.queues,
            "state": self.state,
            "connections": self.status.connections,
            "disconnects": self.status.disconnects,
            "refused": self.status.refused,
            "protocol_errors": self.status.protocol_errors,
            "memory_faults": self.status.memory_faults,
            "message_timeouts": self.status.message_timeouts,
            "last_error": self.status.last_error,
            "alerts": dict(self.status.alerts),
            "features": p.decode_bits(info.features, p.Feature) if info else [],
            "protocol_features": p.decode_bits(info.protocol_features, p.ProtocolFeature) if info else [],
            "mtu": info.mtu if info else None,
            "queues_enabled": sum(1 for q in queues if q["rx"]["enabled"]) if info else 0,
            "queues": queues,
            "mac": self.config.mac,
            "mtu_enforced": self.config.mtu,
            "policy": describe_policy(self.config),
            "dirty_log": self.dp.log_info(self.slot),
            "memory_regions": [{"gpa": gpa, "size": size} for gpa, size, _ in self.dp.memory_regions(self.slot)],
            "memory_mapped": self.dp.mapped_bytes(self.slot),      # bytes, dirty log included
            "rarps": self.session.rarps if self.session is not None else 0,
            "announce_drops": dict(self.announce_drops),
            "iotlb": self._iotlb_view(),
            # SET_BACKEND_REQ_FD: IOTLB misses sent and dropped (None: no channel)
            "backend_channel": (self.session.channel.info()
                                if self.session is not None and self.session.channel is not None
                                and self.connected else None),
            "capture": self.dp.capture_info(self.slot),     # None: no live capture
            "features_offered": p.decode_bits(self.offer.features, p.Feature),
            "pending": ({f.name: getattr(self.pending, f.name) for f in dataclasses.fields(self.config)
                         if getattr(self.pending, f.name) != getattr(self.config, f.name)}
                        if self.pending else {}),
        }

    def _iotlb_view(self) -> dict:
        """ACCESS_PLATFORM: the datapath's lookups (hits, misses, denied), the
        table (entries, updates, invalidations, evicted, refused) and the
        misses asked for on the back-end channel."""
        view = {**self.dp.iotlb_info(self.slot), **self.iotlb_counts}
        table = self.session.iotlb if self.session is not None else None
        view.update({"updates": table.updates if table else 0,
                     "invalidations": table.invalidations if table else 0,
                     "evicted": table.evicted if table else 0,
                     "refused": self.session.iotlb_refused if self.session is not None else 0})
        return view

    def drop_totals(self) -> dict[str, int]:
        totals = {reason: 0 for reason in DROP_REASONS if reason}
        slot = self.slot
        for index in range(2 * self.config.queues):
            try:
                drops = self.dp.vring_counters(slot, index)["drops"]
            except DatapathError:
                break           # the slot is being re-created (show() says why)
            for reason, n in drops.items():
                totals[reason] += n
        for reason, n in self.announce_drops.items():
            totals[reason] += n
        return {k: v for k, v in totals.items() if v}


def _readable(fd: int) -> bool:
    try:
        r, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(r)
