"""One vhost-user connection as a state machine: messages in, replies out.

The session owns the protocol state (negotiated features, the per-vring
configuration gathered from NUM/ADDR/BASE/KICK/CALL/ENABLE) and tells the
datapath what to do through the small `Backend` interface. It does no socket
I/O, so tests can feed it any message order.

Rules kept here, from vhost-user.rst and from bugs other back-ends had:
* State is created lazily and never depends on message order: a ring starts
  once it has a size, addresses, a kick and a memory table, whichever comes
  last. A kick is never lost, because a started ring is polled.
* GET_VRING_BASE stops the ring and reports the next avail index (a packed
  ring: both positions and wrap counters in 32 bits); it resets
  nothing else (vhost-user.rst, "Ring states"; a back-end that reset it
  returned 0 and broke suspend/resume: https://github.com/rust-vmm/vhost/pull/154
  and /pull/161).
* SET_FEATURES may arrive once per queue pair (QEMU net): it is idempotent.
  Without VHOST_USER_F_PROTOCOL_FEATURES the rings start enabled.
* NEED_REPLY is honoured whenever REPLY_ACK was negotiated.
* A request we do not implement (protocol.Request names every one of the
  spec; an unknown number is one too) is answered with a failure when the
  front-end waits for a reply - NEED_REPLY with REPLY_ACK, or a request the
  spec always answers (protocol.FAILURE_REPLIES) - and closes the
  connection otherwise: going on as if it had been done could leave the
  guest with a device that silently does not do what it was told.
* What we offer depends only on the port configuration, never on runtime
  state, so it is identical across reconnects.
* Every fd that comes with a message is either stored (by the datapath, or
  here for the memory table) or closed, on every path; kick/call/err fds
  must be eventfds and memory fds files on memfd/tmpfs/hugetlbfs
  (vhost/fdkind.py), checked before the datapath sees them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config.bounds import MAX_MEM_SLOTS, MAX_MTU, MAX_RING_SIZE, MIN_MTU
from . import fdkind
from .channel import BackendChannel, ChannelRefused
from .iotlb import Iotlb, IotlbRefused
from . import protocol as p
from .protocol import Feature as F
from .protocol import ProtocolError
from .protocol import ProtocolFeature as PF
from .protocol import Request as R


class RequestFailed(Exception):
    """A well-formed request we cannot honour: answered with a failure when
    the front-end asked for a reply, otherwise the connection is closed."""


class Unsupported(RequestFailed):
    """A request this back-end does not implement (a named one whose feature
    we never offer, or an unknown number). Answered like RequestFailed, and
    also when the spec demands a reply without NEED_REPLY
    (protocol.FAILURE_REPLIES): the front-end blocks on that reply, and an
    answer lets it fail the one request instead of hanging."""


class Backend(Protocol):
    """What a session needs from the datapath, for one port.

    set_vring_kick/call/err take ownership of the fd only when they return;
    if they raise, the fd is still the caller's (and is closed)."""

    def set_features(self, features: int) -> None: ...
    def set_mem_table(self, regions: list[tuple[int, int, int, int, int]]) -> list[int]: ...
    def set_vring_num(self, index: int, num: int) -> None: ...
    def set_vring_addr(self, index: int, desc: int, used: int, avail: int,
                       log: int | None = None) -> None: ...
    def set_vring_base(self, index: int, base: int) -> None: ...
    def set_vring_kick(self, index: int, fd: int) -> None: ...
    def set_vring_call(self, index: int, fd: int) -> None: ...
    def set_vring_err(self, index: int, fd: int) -> None: ...
    def start_vring(self, index: int) -> bool | None: ...
    def stop_vring(self, index: int) -> int: ...
    def set_vring_enabled(self, index: int, enabled: bool) -> None: ...
    def reset(self) -> None: ...
    def set_log_base(self, fd: int, size: int, offset: int) -> None: ...
    def send_rarp(self, mac: bytes) -> None: ...
    def set_iotlb(self, entries: list[tuple[int, int, int, int]], sync: bool = True) -> list[int]: ...


# Feature offer for a net port (virtio spec, "Network Device", "Feature
# bits"). Checksum and TCP segmentation offloads are offered both ways: the
# datapath hands them on to guests that negotiated the receive side and
# finishes them in software for the others. UFO/USO are not offered (Linux
# guests no longer send UFO).
# VHOST_F_LOG_ALL with LOG_SHMFD: dirty logging for live migration (without
# them QEMU blocks migration). GUEST_ANNOUNCE: QEMU's virtio-net makes the
# guest announce itself after migration (the control queue stays in QEMU);
# without it QEMU sends SEND_RARP and the switch announces for the guest.
OFFLOAD_FEATURES = p.bits(
    F.NET_CSUM, F.NET_GUEST_CSUM, F.NET_HOST_TSO4, F.NET_HOST_TSO6, F.NET_HOST_ECN,
    F.NET_GUEST_TSO4, F.NET_GUEST_TSO6, F.NET_GUEST_ECN,
)
BASE_FEATURES = p.bits(
    F.F_VERSION_1, F.NET_MRG_RXBUF, F.RING_F_EVENT_IDX, F.RING_F_INDIRECT_DESC,
    F.F_ANY_LAYOUT, F.NET_MQ, F.NET_MTU, F.VHOST_USER_F_PROTOCOL_FEATURES,
    F.VHOST_F_LOG_ALL, F.NET_GUEST_ANNOUNCE, F.F_RING_PACKED, F.F_ACCESS_PLATFORM, F.F_IN_ORDER,
) | OFFLOAD_FEATURES
# RING_PACKED: packed virtqueues beside split ones (cython_ext/packed.pxi); a
# ring is split until SET_FEATURES acks the bit, so its size and base are
# checked as a split ring's before that (QEMU and DPDK send SET_FEATURES
# before any ring message).
# IN_ORDER (bit 35): "all buffers are used by the device in the same order
# in which they have been made available" (virtio 1.2, 6 Reserved Feature
# Bits). The datapath always does: a queue's chains are taken in avail
# order by one worker at a time (a TX burst gives them back in that order
# when it ends, dropped ones included, with length 0; an RX delivery holds
# the ring's lock and returns each frame's buffers as it fills them), and a
# chain that cannot be taken yet (an IOTLB miss, a shaper's hold, a spent
# budget) stops the queue there. An invalid RX buffer goes back with length
# 0 after those already reserved for the same frame, in order too. Only a
# driver that broke its ring (a head beyond the ring, which cannot be
# returned) sees a gap. A driver that knows the order frees its buffers by
# count instead of by each used entry's id (DPDK's virtio PMD has in-order
# RX and TX paths; with them a DPDK front-end spends fewer cycles a frame).
# STATUS (bit 16) is not offered. With it, QEMU sends GET_STATUS and
# SET_STATUS (ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK) when the device
# starts and SET_STATUS 0 when it stops, besides the ring messages that
# already say all of it: rings start on their kick and stop on
# GET_VRING_BASE, and RESET_DEVICE resets. The status byte would add no
# information the datapath needs, and offering the bit changes what every
# QEMU (7.2 on) sends at start and stop, which only QEMU runs can prove.
# Without the bit QEMU never sends them; a front-end that does anyway gets
# GET_STATUS answered with 0 and SET_STATUS refused (Unsupported below).
# ACCESS_PLATFORM (bit 33) with BACKEND_REQ: QEMU refuses to start an
# iommu_platform=on device (what confidential guests use) unless the
# back-end offers the bit, and then requires REPLY_ACK and BACKEND_REQ.
# Without a vIOMMU QEMU clears the bit from SET_FEATURES and the addresses
# stay guest physical; with one, they are IOVAs (docs/architecture.md, "IOTLB").
BASE_PROTOCOL_FEATURES = p.bits(PF.MQ, PF.REPLY_ACK, PF.NET_MTU, PF.RESET_DEVICE,
                                PF.LOG_SHMFD, PF.RARP, PF.CONFIGURE_MEM_SLOTS, PF.BACKEND_REQ)


@dataclass(frozen=True)
class Offer:
    """What a port offers; a function of its configuration only."""

    queue_pairs: int
    features: int = BASE_FEATURES
    protocol_features: int = BASE_PROTOCOL_FEATURES


@dataclass
class VringConfig:
    num: int | None = None
    addr_set: bool = False
    kicked: bool = False
    enabled: bool = False
    started: bool = False


@dataclass
class SessionInfo:
    """What `port show` reports about a connection."""

    features: int = 0
    protocol_features: int = 0
    mtu: int | None = None
    owner: bool = False
    mem_regions: int = 0
    vrings: list[VringConfig] = field(default_factory=list)


# Requests whose payload is the u64 of SET_VRING_KICK/CALL/ERR.
_FD_VRING_REQUESTS = (R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR)
# Requests that already have a reply: NEED_REPLY adds nothing to them.
_REPLYING = (R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_VRING_BASE, R.GET_QUEUE_NUM,
             R.SET_LOG_BASE, R.GET_MAX_MEM_SLOTS)
# Requests that carry exactly one fd (REM_MEM_REG: zero or one, tolerated).
_ONE_FD = (R.SET_MEM_TABLE, R.SET_LOG_BASE, R.SET_LOG_FD, R.ADD_MEM_REG, R.REM_MEM_REG,
           R.SET_BACKEND_REQ_FD, *_FD_VRING_REQUESTS)


class Session:
    def __init__(self, offer: Offer, backend: Backend, *, allow_file_memory: bool = False,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.offer = offer
        self.backend = backend
        # Guest memory in files outside memfd/tmpfs/hugetlbfs (the port's
        # allow_file_memory; read at each memory message, so a reload applies).
        self.allow_file_memory = allow_file_memory
        # Told why, each time a request is answered with a failure (the
        # front-end asked for a reply): the connection stays, the port logs it.
        self.on_refused = on_refused
        self.features = 0
        self.features_set = False
        self.protocol_features = 0
        self.mtu: int | None = None
        self.owner = False
        self.has_mem = False
        self.mem_regions = 0
        # The memory table as regions with our own dup of each fd, so that
        # ADD/REM_MEM_REG can hand the datapath a whole new table.
        self.regions: list[tuple[p.MemRegion, int]] = []
        self.rarps = 0
        self.vrings = [VringConfig() for _ in range(2 * offer.queue_pairs)]
        # SET_BACKEND_REQ_FD: where IOTLB misses are sent (vhost/channel.py).
        self.channel: BackendChannel | None = None
        # ACCESS_PLATFORM with a vIOMMU: IOVA -> front-end address (vhost/iotlb.py)
        self.iotlb = Iotlb()
        self.iotlb_refused = 0

    # --- entry point -----------------------------------------------------

    def handle(self, header: p.Header, payload: bytes, fds: list[int]) -> bytes | None:
        """Handle one message; return the reply bytes, if any.

        Takes ownership of `fds`: those not handed to the datapath are closed,
        also on error. Raises ProtocolError when the connection must close."""
        fds = list(fds)
        try:
            reply = self._dispatch(header, payload, fds)
            if reply is None and header.need_reply and self._reply_ack:
                reply = p.encode_u64_reply(header.request, 0)
            return reply
        except Unsupported as exc:
            failure = p.FAILURE_REPLIES.get(header.request)  # type: ignore[call-overload]
            if failure is None and header.need_reply and self._reply_ack:
                failure = p.U64.pack(1)
            if failure is None:
                raise ProtocolError(str(exc)) from exc
            if self.on_refused is not None:
                self.on_refused(str(exc))
            return p.encode_reply(header.request, failure)
        except RequestFailed as exc:
            if header.need_reply and self._reply_ack and header.request not in _REPLYING:
                if self.on_refused is not None:
                    self.on_refused(str(exc))
                return p.encode_u64_reply(header.request, 1)
            raise ProtocolError(str(exc)) from exc
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        """The connection is gone: stop everything, release memory and fds.
        The region fds are ours and closed whatever happens; if the back-end
        cannot reset (its error propagates), what it maps stays its own."""
        for vr in self.vrings:
            vr.started = False
        try:
            self.backend.reset()
        finally:
            self._drop_regions()
            if self.channel is not None:
                self.channel.close()
                self.channel = None

    def _drop_regions(self) -> None:
        for _, fd in self.regions:
            os.close(fd)
        self.regions = []

    @property
    def _packed(self) -> bool:
        """SET_FEATURES acked RING_PACKED: the rings are packed rings."""
        return bool(self.features & (1 << F.F_RING_PACKED))

    @property
    def _reply_ack(self) -> bool:
        return bool(self.protocol_features & (1 << PF.REPLY_ACK))

    def info(self) -> SessionInfo:
        return SessionInfo(self.features, self.protocol_features, self.mtu, self.owner,
                           self.mem_regions, [VringConfig(**vars(v)) for v in self.vrings])

    # --- dispatch ----------------------------------------------------------

    def _dispatch(self, h: p.Header, payload: bytes, fds: list[int]) -> bytes | None:
        try:
            request = R(h.request)
        except ValueError:
            raise Unsupported(f"unknown request {h.request}") from None
        handler = self._HANDLERS.get(request)
        if handler is None:
            # Its fds, if any, are closed by handle().
            raise Unsupported(f"unsupported request {request.name} ({int(request)})")
        if request not in _ONE_FD and fds:
            raise ProtocolError(f"{request.name} carries {len(fds)} unexpected fds")
        return handler(self, h, payload, fds)

    def _vring_index(self, index: int, what: str) -> VringConfig:
        if not 0 <= index < len(self.vrings):
            raise ProtocolError(
                f"{what}: vring index {index} beyond the {len(self.vrings)} vrings "
                f"of {self.offer.queue_pairs} queue pairs")
        return self.vrings[index]

    def _maybe_start(self, index: int) -> None:
        vr = self.vrings[index]
        if vr.started or not (vr.kicked and vr.addr_set and vr.num and self.has_mem):
            return
        try:
            started = self.backend.start_vring(index)
        except Exception as exc:  # DatapathError: addresses outside memory
            raise RequestFailed(f"vring {index}: {exc}") from exc
        if started is False:
            # ACCESS_PLATFORM: its IOVAs are not in the IOTLB yet; the datapath
            # asked for them and the ring starts at the update (_iotlb_msg).
            return
        vr.started = True

    # --- handlers ------------------------------------------------------------

    def _get_features(self, h, payload, fds):
        return p.encode_u64_reply(h.request, self.offer.features)

    def _set_features(self, h, payload, fds):
        features = p.decode_u64(payload, "SET_FEATURES")
        unknown = features & ~self.offer.features
        if unknown:
            raise ProtocolError(f"SET_FEATURES acks bits not offered: {unknown:#x}")
        platform = 1 << F.F_ACCESS_PLATFORM
        if (features ^ self.features) & platform and any(vr.started for vr in self.vrings):
            # Running rings' addresses were translated one way: the other
            # would read and write the wrong memory.
            raise RequestFailed("SET_FEATURES: ACCESS_PLATFORM changed while rings run")
        self.features = features
        self.backend.set_features(features)
        if not self.features_set and not features & (1 << F.VHOST_USER_F_PROTOCOL_FEATURES):
            # vhost-user.rst: "If VHOST_USER_F_PROTOCOL_FEATURES has not been
            # negotiated, the ring starts directly in the enabled state."
            for index, vr in enumerate(self.vrings):
                vr.enabled = True
                self.backend.set_vring_enabled(index, True)
        self.features_set = True
        # The ring kind (RING_PACKED) decides what a ring's size, base and
        # addresses must be: one that could not start as the other kind may
        # start now (and stays waiting otherwise).
        for index in range(len(self.vrings)):
            try:
                self._maybe_start(index)
            except RequestFailed:
                pass
        return None

    def _set_owner(self, h, payload, fds):
        self._expect_empty(h, payload)
        self.owner = True
        return None

    def _reset_owner(self, h, payload, fds):
        # Deprecated; QEMU still sends it on some paths. Never treat it as
        # "forget the connection" (vhost-user.rst, VHOST_USER_RESET_OWNER).
        return None

    def _get_protocol_features(self, h, payload, fds):
        return p.encode_u64_reply(h.request, self.offer.protocol_features)

    def _set_protocol_features(self, h, payload, fds):
        value = p.decode_u64(payload, "SET_PROTOCOL_FEATURES")
        unknown = value & ~self.offer.protocol_features
        if unknown:
            raise ProtocolError(f"SET_PROTOCOL_FEATURES acks bits not offered: {unknown:#x}")
        self.protocol_features = value
        return None

    def _set_mem_table(self, h, payload, fds):
        regions = p.decode_mem_table(payload)
        if len(fds) != len(regions):
            raise ProtocolError(f"SET_MEM_TABLE: {len(regions)} regions but {len(fds)} fds")
        self._check_memory_fds(fds, "SET_MEM_TABLE")
        self._install_regions(list(zip(regions, fds)), "SET_MEM_TABLE")
        return None

    def _check_memory_fds(self, fds: list[int], what: str) -> None:
        for fd in fds:
            try:
                fdkind.check_memory_fd(fd, self.allow_file_memory)
            except fdkind.FdRefused as exc:
                raise RequestFailed(f"{what}: {exc}") from None

    def _install_regions(self, table: list[tuple[p.MemRegion, int]], what: str) -> None:
        """Hand the datapath a complete table; keep a dup of every fd that
        backs it (the caller's fds are closed by handle()). Taken before the
        datapath maps anything, so that running out of fds refuses the table
        instead of leaving dups behind."""
        kept: list[tuple[p.MemRegion, int]] = []
        try:
            for r, fd in table:
                kept.append((r, os.dup(fd)))
            dropped = self.backend.set_mem_table(
                [(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset, fd)
                 for r, fd in table])
        except BaseException as exc:
            for _, fd in kept:
                os.close(fd)
            if isinstance(exc, Exception):
                raise RequestFailed(f"{what}: {exc}") from exc
            raise
        self._drop_regions()
        self.regions = kept
        self.has_mem = bool(table)
        self.mem_regions = len(table)
        for index in dropped:
            # A running ring whose addresses the new table no longer maps.
            self.vrings[index].started = False
        for index in range(len(self.vrings)):
            try:
                self._maybe_start(index)
            except RequestFailed:
                # Its addresses are outside this table: it waits for memory
                # (or new addresses); the other rings start regardless.
                pass

    def _get_max_mem_slots(self, h, payload, fds):
        return p.encode_u64_reply(h.request, MAX_MEM_SLOTS)

    def _add_mem_reg(self, h, payload, fds):
        region = p.decode_single_mem_region(payload, "ADD_MEM_REG")
        if len(fds) != 1:
            raise ProtocolError(f"ADD_MEM_REG: {len(fds)} fds, expected 1")
        self._check_memory_fds(fds, "ADD_MEM_REG")
        key = (region.guest_phys_addr, region.userspace_addr, region.memory_size)
        if any((r.guest_phys_addr, r.userspace_addr, r.memory_size) == key for r, _ in self.regions):
            # QEMU before ADD/REM_MEM_REG became per-device requests sends them
            # once per queue pair: the same region again is a no-op, not an overlap.
            return None
        if len(self.regions) >= MAX_MEM_SLOTS:
            raise RequestFailed(f"ADD_MEM_REG: all {MAX_MEM_SLOTS} memory slots are in use")
        self._install_regions([*self.regions, (region, fds[0])], "ADD_MEM_REG")
        return None

    def _rem_mem_reg(self, h, payload, fds):
        # vhost-user.rst: the region is identified by its guest address, user
        # address and size; an fd, if sent, means nothing and is closed.
        region = p.decode_single_mem_region(payload, "REM_MEM_REG")
        if len(fds) > 1:
            raise ProtocolError(f"REM_MEM_REG: {len(fds)} fds")
        keep = [(r, fd) for r, fd in self.regions
                if (r.guest_phys_addr, r.userspace_addr, r.memory_size)
                != (region.guest_phys_addr, region.userspace_addr, region.memory_size)]
        if len(keep) == len(self.regions):
            # Already removed (QEMU repeats it per queue pair, see ADD_MEM_REG).
            return None
        # Even the last region: QEMU removes before it adds when memory
        # changes, so rings stop but keep their configuration, and start
        # again when a region arrives (their addresses are translated anew).
        self._install_regions(keep, "REM_MEM_REG")
        return None

    def _set_log_base(self, h, payload, fds):
        size, offset = p.decode_log(payload)
        if len(fds) != 1:
            raise ProtocolError(f"SET_LOG_BASE: {len(fds)} fds, expected 1")
        self._check_memory_fds(fds, "SET_LOG_BASE")
        try:
            self.backend.set_log_base(fds[0], size, offset)
        except Exception as exc:
            raise RequestFailed(f"SET_LOG_BASE: {exc}") from exc
        # vhost-user.rst: with LOG_SHMFD "the back-end must reply with a zero
        # u64 once the log is in use" (the front-end waits for it).
        return p.encode_u64_reply(h.request, 0)

    def _set_log_fd(self, h, payload, fds):
        # An eventfd to signal log updates: we never need to (QEMU syncs the
        # bitmap itself). Accepted and closed by handle().
        if len(fds) != 1:
            raise ProtocolError(f"SET_LOG_FD: {len(fds)} fds, expected 1")
        return None

    def _send_rarp(self, h, payload, fds):
        value = p.decode_u64(payload, "SEND_RARP")
        mac = value.to_bytes(8, "little")[:6]
        if mac[0] & 1 or not any(mac):
            raise RequestFailed(f"SEND_RARP: {mac.hex(':')} is not a unicast MAC")
        self.backend.send_rarp(mac)
        self.rarps += 1
        return None

    def _set_vring_num(self, h, payload, fds):
        st = p.decode_vring_state(payload, "SET_VRING_NUM")
        vr = self._vring_index(st.index, "SET_VRING_NUM")
        if vr.started:
            raise ProtocolError(f"SET_VRING_NUM on running vring {st.index}")
        if self._packed:
            # virtio spec "Packed Virtqueues": any size up to 32768
            if not 1 <= st.num <= MAX_RING_SIZE:
                raise ProtocolError(f"SET_VRING_NUM: size {st.num} of a packed ring is not in 1..{MAX_RING_SIZE}")
        elif not (1 <= st.num <= MAX_RING_SIZE and st.num & (st.num - 1) == 0):
            raise ProtocolError(f"SET_VRING_NUM: size {st.num} is not a power of 2 in 1..{MAX_RING_SIZE}")
        self.backend.set_vring_num(st.index, st.num)
        vr.num = st.num
        self._maybe_start(st.index)      # the size may be the last ingredient
        return None

    def _set_vring_addr(self, h, payload, fds):
        addr = p.decode_vring_addr(payload)
        vr = self._vring_index(addr.index, "SET_VRING_ADDR")
        if addr.flags & ~p.VRING_F_LOG:
            raise ProtocolError(f"SET_VRING_ADDR: flags {addr.flags:#x} not supported")
        log = addr.log if addr.flags & p.VRING_F_LOG else None
        if log is not None and log > p.U64_MAX - 0x80000:
            raise ProtocolError(f"SET_VRING_ADDR: log address {log:#x} overflows")
        try:
            self.backend.set_vring_addr(addr.index, addr.desc, addr.used, addr.avail, log)
        except Exception as exc:
            # The datapath stopped the ring to re-point it and could not map
            # the new addresses: it is stopped until a good SET_VRING_ADDR.
            vr.started = False
            vr.addr_set = False
            raise RequestFailed(f"SET_VRING_ADDR: {exc}") from exc
        vr.addr_set = True
        self._maybe_start(addr.index)
        return None

    def _set_vring_base(self, h, payload, fds):
        st = p.decode_vring_state(payload, "SET_VRING_BASE")
        vr = self._vring_index(st.index, "SET_VRING_BASE")
        if vr.started:
            raise ProtocolError(f"SET_VRING_BASE on running vring {st.index}")
        if self._packed:
            # vhost-user.rst: bits 0-14 last avail index, 15 avail wrap
            # counter, 16-30 last used index, 31 used wrap counter. The size
            # may come later (the datapath checks again at start).
            for what, value in (("avail", st.num & 0x7FFF), ("used", (st.num >> 16) & 0x7FFF)):
                if vr.num is not None and value >= vr.num:
                    raise ProtocolError(f"SET_VRING_BASE: {what} index {value} of base {st.num:#x} "
                                        f"is not below the ring size {vr.num}")
        elif st.num > 0xFFFF:
            # Split rings: "bits 16-31 zero".
            raise ProtocolError(f"SET_VRING_BASE: base {st.num:#x} has bits above 15")
        self.backend.set_vring_base(st.index, st.num)
        try:
            # a packed ring refused at start for its base may start with this one
            self._maybe_start(st.index)
        except RequestFailed:
            pass
        return None

    def _get_vring_base(self, h, payload, fds):
        st = p.decode_vring_state(payload, "GET_VRING_BASE")
        vr = self._vring_index(st.index, "GET_VRING_BASE")
        base = self.backend.stop_vring(st.index)
        # The ring needs fresh addresses and a fresh kick before it runs again
        # (as DPDK's vq_is_ready does: addresses left from before a guest reboot
        # are stale).
        vr.started = False
        vr.kicked = False
        vr.addr_set = False
        self.backend.set_vring_kick(st.index, -1)
        return p.encode_reply(h.request, p.encode_vring_state(st.index, base))

    def _set_vring_fd(self, h, payload, fds):
        request = R(h.request)
        value = p.decode_u64(payload, request.name)
        index = value & p.VRING_IDX_MASK
        nofd = bool(value & p.VRING_NOFD_MASK)
        if value & ~(p.VRING_IDX_MASK | p.VRING_NOFD_MASK):
            raise ProtocolError(f"{request.name}: reserved bits set in {value:#x}")
        vr = self._vring_index(index, request.name)
        if len(fds) != (0 if nofd else 1):
            raise ProtocolError(f"{request.name}: {len(fds)} fds with no-fd flag {nofd}")
        fd = -1
        if not nofd:
            # vhost-user.rst: "an event file descriptor"; the no-fd flag
            # (a polled ring, no call/err notifications) stays allowed.
            try:
                fdkind.check_eventfd(fds[0])
            except fdkind.FdRefused as exc:
                raise RequestFailed(f"{request.name}: {exc}") from None
            fd = fds[0]
        setter = {R.SET_VRING_KICK: self.backend.set_vring_kick,
                  R.SET_VRING_CALL: self.backend.set_vring_call,
                  R.SET_VRING_ERR: self.backend.set_vring_err}[request]
        try:
            setter(index, fd)
        except Exception as exc:
            # not taken: the fd is still in fds, and handle() closes it
            raise RequestFailed(f"{request.name}: {exc}") from exc
        fds.clear()                      # the datapath owns it now
        if request == R.SET_VRING_KICK:
            # vhost-user.rst: the ring starts on a kick; with no fd we poll.
            vr.kicked = True
            self._maybe_start(index)
        return None

    def _set_backend_req_fd(self, h, payload, fds):
        if not self.protocol_features & (1 << PF.BACKEND_REQ):
            raise Unsupported("SET_BACKEND_REQ_FD without the BACKEND_REQ protocol feature")
        if len(fds) != 1:
            raise ProtocolError(f"SET_BACKEND_REQ_FD: {len(fds)} fds, expected 1")
        try:
            channel = BackendChannel(fds[0])
        except (ChannelRefused, OSError) as exc:
            raise RequestFailed(f"SET_BACKEND_REQ_FD: {exc}") from None
        fds.clear()                      # the channel owns it now
        if self.channel is not None:
            self.channel.close()
        self.channel = channel
        return None

    def _iotlb_msg(self, h, payload, fds):
        # vhost-user.rst: IOTLB_MSG is always answered, u64 0 on success,
        # whatever the flags (QEMU sets NEED_REPLY anyway).
        msg = p.decode_iotlb(payload)
        try:
            self._apply_iotlb(msg)
        except RequestFailed as exc:
            if self.on_refused is not None:
                self.on_refused(str(exc))
            return p.encode_u64_reply(h.request, 1)
        return p.encode_u64_reply(h.request, 0)

    def _apply_iotlb(self, msg: p.IotlbMsg) -> None:
        if not self.features & (1 << F.F_ACCESS_PLATFORM):
            raise RequestFailed("IOTLB_MSG: VIRTIO_F_ACCESS_PLATFORM is not negotiated")
        try:
            if msg.type == p.IOTLB_UPDATE:
                # a new entry alone needs no wait: nothing a worker uses changed
                sync = self.iotlb.update(msg.iova, msg.size, msg.uaddr, msg.perm)
            elif msg.type == p.IOTLB_INVALIDATE:
                sync = True
                if not self.iotlb.invalidate(msg.iova, msg.size):
                    return                   # nothing a worker could be using
            else:
                raise IotlbRefused(f"type {msg.type} is not UPDATE or INVALIDATE")
        except IotlbRefused as exc:
            self.iotlb_refused += 1
            raise RequestFailed(f"IOTLB_MSG: {exc}") from None
        self._publish_iotlb(sync)

    def retry_waiting_rings(self) -> None:
        """Rings waiting for IOTLB entries try to start again: their misses
        are asked for anew (a MISS may have found no channel, or no answer)."""
        for index in range(len(self.vrings)):
            try:
                self._maybe_start(index)
            except RequestFailed:
                pass

    def _publish_iotlb(self, sync: bool) -> None:
        """The datapath's table becomes ours; with `sync`, when this returns
        no worker uses an entry that is gone (the reply, if any, follows).
        Rings whose addresses changed stop, and every ring that now
        translates starts."""
        try:
            stopped = self.backend.set_iotlb(self.iotlb.entries(), sync)
        except Exception as exc:     # DatapathError: the workers did not finish a round
            raise RequestFailed(f"IOTLB_MSG: {exc}") from exc
        for index in stopped:
            self.vrings[index].started = False
        self.retry_waiting_rings()

    def _get_queue_num(self, h, payload, fds):
        return p.encode_u64_reply(h.request, self.offer.queue_pairs)

    def _set_vring_enable(self, h, payload, fds):
        st = p.decode_vring_state(payload, "SET_VRING_ENABLE")
        vr = self._vring_index(st.index, "SET_VRING_ENABLE")
        if st.num not in (0, 1):
            raise ProtocolError(f"SET_VRING_ENABLE: state {st.num} is not 0 or 1")
        vr.enabled = bool(st.num)
        self.backend.set_vring_enabled(st.index, vr.enabled)
        return None

    def _net_set_mtu(self, h, payload, fds):
        mtu = p.decode_u64(payload, "NET_SET_MTU")
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise RequestFailed(f"NET_SET_MTU: {mtu} outside {MIN_MTU}..{MAX_MTU}")
        self.mtu = mtu
        return None

    def _reset_device(self, h, payload, fds):
        # vhost-user.rst RESET_DEVICE: "the back-end must ... reset all its
        # internal state to the initial state (disable all vrings, ...)".
        # Ownership and the negotiated protocol features survive.
        self._expect_empty(h, payload)
        try:
            self.backend.reset()
        finally:
            self._drop_regions()
        self.features = 0
        self.features_set = False
        self.iotlb.clear()
        self.has_mem = False
        self.mem_regions = 0
        self.mtu = None
        self.vrings = [VringConfig() for _ in self.vrings]
        return None

    @staticmethod
    def _expect_empty(h: p.Header, payload: bytes) -> None:
        # QEMU sends SET_OWNER/RESET_DEVICE with size 0; tolerate a u64 of padding.
        if len(payload) not in (0, 8):
            raise ProtocolError(f"{p.request_name(h.request)}: unexpected {len(payload)}-byte payload")

    _HANDLERS = {
        R.GET_FEATURES: _get_features,
        R.SET_FEATURES: _set_features,
        R.SET_OWNER: _set_owner,
        R.RESET_OWNER: _reset_owner,
        R.GET_PROTOCOL_FEATURES: _get_protocol_features,
        R.SET_PROTOCOL_FEATURES: _set_protocol_features,
        R.SET_MEM_TABLE: _set_mem_table,
        R.SET_VRING_NUM: _set_vring_num,
        R.SET_VRING_ADDR: _set_vring_addr,
        R.SET_VRING_BASE: _set_vring_base,
        R.GET_VRING_BASE: _get_vring_base,
        R.SET_VRING_KICK: _set_vring_fd,
        R.SET_VRING_CALL: _set_vring_fd,
        R.SET_VRING_ERR: _set_vring_fd,
        R.GET_QUEUE_NUM: _get_queue_num,
        R.SET_VRING_ENABLE: _set_vring_enable,
        R.NET_SET_MTU: _net_set_mtu,
        R.RESET_DEVICE: _reset_device,
        R.GET_MAX_MEM_SLOTS: _get_max_mem_slots,
        R.ADD_MEM_REG: _add_mem_reg,
        R.REM_MEM_REG: _rem_mem_reg,
        R.SET_LOG_BASE: _set_log_base,
        R.SET_LOG_FD: _set_log_fd,
        R.SEND_RARP: _send_rarp,
        R.SET_BACKEND_REQ_FD: _set_backend_req_fd,
        R.IOTLB_MSG: _iotlb_msg,
    }
