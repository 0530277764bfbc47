"""An independent vhost-user *front-end* (the QEMU/guest side) for tests.

The switch under test is a vhost-user back-end.  This module plays the other
side: it owns guest memory (memfd), builds split virtqueues in it exactly as a
virtio 1.x driver would, and talks the vhost-user control protocol over an
AF_UNIX socket.  Besides the well-behaved paths it has raw primitives to build
hostile rings and malformed messages.

It deliberately shares no code with ``vswitch``: it is a second, independent
reading of the specifications, so a misunderstanding in the switch's codec is
not silently mirrored here.  Sources:

* vhost-user: QEMU ``docs/interop/vhost-user.rst`` (message header, payloads,
  ring states).
* virtio 1.x split virtqueue and virtio-net header: OASIS virtio spec
  ``split-ring.tex`` and ``device-types/net/description.tex``.

Layering (each usable on its own):

``GuestMemory``        memfd-backed regions, GPA helpers, allocator
``SplitRing``          one virtqueue: descriptor table, avail ring, used ring,
                       kick/call eventfds, TX/RX helpers and raw writers
``Hostile``            recipes for malformed descriptor chains on a SplitRing
``PackedRing``,        the same for packed virtqueues (module ``packed_ring``;
``PackedHostile``      ``setup_net_device(packed=True)``)
``VhostUserFrontend``  the control socket: one method per front-end message,
                       ``send_raw`` for malformed messages, and
                       ``setup_net_device`` which replays QEMU's start sequence

Memory ordering: the ring fields are written with ordinary stores through an
``mmap``.  CPython executes them in program order and x86 (TSO) neither
reorders stores with stores nor loads with loads, which is all the split ring
needs on the driver side ("descriptors, then avail entry, then avail idx";
"used idx, then used entries").  The 16-bit index fields are written with a
single 16-bit store (``memoryview.cast('H')``) so the device never sees a torn
index.  On weakly ordered CPUs this module would need real barriers.
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple


def readable(fd: int | socket.socket, timeout: float | None) -> bool:
    """Whether fd has data (or EOF) within timeout seconds (None: forever).
    poll(2), not select(2): a long test run may hold fds above FD_SETSIZE."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return bool(poller.poll(ms))


if TYPE_CHECKING:
    from .packed_ring import PackedRing

if sys.byteorder != "little":  # pragma: no cover - the project targets x86_64
    raise ImportError("vhost_frontend assumes a little-endian host (virtio 1.x rings are LE)")

__all__ = [
    "VHOST_USER_VERSION", "VHOST_USER_REPLY", "VHOST_USER_NEED_REPLY", "VHOST_USER_VRING_NOFD",
    "VRING_DESC_F_NEXT", "VRING_DESC_F_WRITE", "VRING_DESC_F_INDIRECT",
    "VRING_AVAIL_F_NO_INTERRUPT", "VRING_USED_F_NO_NOTIFY",
    "Req", "ProtocolFeature", "Feature", "bits",
    "DEFAULT_NET_FEATURES", "DEFAULT_PROTOCOL_FEATURES",
    "VhostUserError", "PeerClosed", "ReplyTimeout", "ProtocolError", "GuestMemoryError", "RingFull",
    "RegionSpec", "MemRegion", "VhostMemRegion", "GuestMemory",
    "Desc", "VirtioNetHdr", "UsedElem", "RxFrame", "RingDriver", "SplitRing", "Hostile",
    "Message", "VhostUserFrontend", "QueuePair", "NetDevice", "wait_for_socket",
]

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

#: Header ``flags``: "bits 0-1 version = 0x1; bit 2 (0x4) reply; bit 3 (0x8) need_reply".
VHOST_USER_VERSION = 0x1
VHOST_USER_VERSION_MASK = 0x3
VHOST_USER_REPLY = 0x4
VHOST_USER_NEED_REPLY = 0x8
#: kick/call/err u64: "bits 0-7 vring index, bit 8 set when no fd is passed".
VHOST_USER_VRING_IDX_MASK = 0xFF
VHOST_USER_VRING_NOFD = 0x100
#: QEMU/DPDK limit for SET_MEM_TABLE (``VHOST_MEMORY_MAX_NREGIONS``).
VHOST_MEMORY_MAX_NREGIONS = 8
#: SET_VRING_ADDR flags bit 0: log used-ring writes.
VHOST_VRING_F_LOG = 0x1

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

#: virtio device status bits (virtio spec 2.1) used with SET_STATUS.
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8


class Req(enum.IntEnum):
    """Front-end → back-end request ids (vhost-user.rst "Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43
    GET_SHMEM_CONFIG = 44


class ProtocolFeature(enum.IntEnum):
    """vhost-user protocol feature *bit numbers* (vhost-user.rst "Protocol features")."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17
    SHARED_OBJECT = 18
    DEVICE_STATE = 19


class Feature(enum.IntEnum):
    """virtio / virtio-net / vhost feature *bit numbers* used by a net device."""

    CSUM = 0
    GUEST_CSUM = 1
    CTRL_GUEST_OFFLOADS = 2
    MTU = 3
    MAC = 5
    GSO = 6
    GUEST_TSO4 = 7
    GUEST_TSO6 = 8
    GUEST_ECN = 9
    GUEST_UFO = 10
    HOST_TSO4 = 11
    HOST_TSO6 = 12
    HOST_ECN = 13
    HOST_UFO = 14
    MRG_RXBUF = 15
    STATUS = 16
    CTRL_VQ = 17
    CTRL_RX = 18
    CTRL_VLAN = 19
    GUEST_ANNOUNCE = 21
    MQ = 22
    CTRL_MAC_ADDR = 23
    NOTIFY_ON_EMPTY = 24
    LOG_ALL = 26  # VHOST_F_LOG_ALL
    ANY_LAYOUT = 27
    INDIRECT_DESC = 28
    EVENT_IDX = 29
    PROTOCOL_FEATURES = 30  # VHOST_USER_F_PROTOCOL_FEATURES, never offered to the guest
    VERSION_1 = 32
    ACCESS_PLATFORM = 33
    RING_PACKED = 34
    IN_ORDER = 35
    ORDER_PLATFORM = 36
    NOTIFICATION_DATA = 38
    RING_RESET = 40


def bits(*numbers: int) -> int:
    """Mask with the given bit numbers set: ``bits(Feature.VERSION_1, Feature.MRG_RXBUF)``."""
    mask = 0
    for n in numbers:
        mask |= 1 << int(n)
    return mask


#: Virtio features ``setup_net_device`` asks for by default (masked with the offer).
DEFAULT_NET_FEATURES = bits(Feature.VERSION_1)
#: Protocol features ``setup_net_device`` acks by default (masked with the offer).
#: Nothing that needs the back-end channel (BACKEND_REQ...) or shared state
#: we do not implement (INFLIGHT, PAGEFAULT, CONFIG).
DEFAULT_PROTOCOL_FEATURES = bits(
    ProtocolFeature.MQ, ProtocolFeature.LOG_SHMFD, ProtocolFeature.RARP, ProtocolFeature.REPLY_ACK,
    ProtocolFeature.NET_MTU, ProtocolFeature.RESET_DEVICE, ProtocolFeature.CONFIGURE_MEM_SLOTS,
    ProtocolFeature.STATUS,
)

# vhost-user payload codecs.  "All integers are in the host's native byte
# order" and the C structs are packed, hence "=" (native order, no padding).
_HDR = struct.Struct("=III")  # request, flags, size
_U64 = struct.Struct("=Q")
_VRING_STATE = struct.Struct("=II")  # index, num
# struct vhost_vring_addr: index, flags, desc_user_addr, used_user_addr,
# avail_user_addr, log_guest_addr -- note "used" comes before "avail".
_VRING_ADDR = struct.Struct("=IIQQQQ")
_MEM_REGION = struct.Struct("=QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
_MEM_TABLE_HDR = struct.Struct("=II")  # nregions, padding
_LOG = struct.Struct("=QQ")  # mmap_size, mmap_offset
_IOTLB = struct.Struct("=QQQBB6x")  # struct vhost_iotlb_msg: iova, size, uaddr, perm, type (+ padding)

# virtio ring codecs: virtio 1.x rings are little-endian.
_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
_USED_ELEM = struct.Struct("<II")  # id, len
_NET_HDR = struct.Struct("<BBHHHHH")  # virtio_net_hdr_v1 (12 bytes, with num_buffers)
_NET_HDR_LEGACY = struct.Struct("<BBHHHH")  # 10 bytes, legacy without MRG_RXBUF

_PAGE = mmap.PAGESIZE


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class VhostUserError(Exception):
    """Base class of control-channel errors."""


class PeerClosed(VhostUserError):
    """The back-end closed the socket (EOF or ECONNRESET)."""


class ReplyTimeout(VhostUserError):
    """No (complete) message arrived before the deadline."""


class ProtocolError(VhostUserError):
    """The back-end sent something the protocol does not allow here."""


class GuestMemoryError(Exception):
    """A GPA range is not (entirely) inside guest memory, or memory is exhausted."""


class RingFull(Exception):
    """Not enough free descriptors to post a chain."""


# ---------------------------------------------------------------------------
# Guest memory
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionSpec:
    """How to build one guest memory region.

    ``backing``: regions with the same (non-None) key share one memfd, each at
    its own ``fd_offset`` (as QEMU does for RAM split around the PCI hole:
    one memory backend, two regions, ``mmap_offset`` 0 and 3 GiB).
    ``fd_offset`` defaults to the next page-aligned free offset of that memfd.
    ``uaddr`` overrides the front-end virtual address advertised to the
    back-end; by default it is the real address of our own mapping.
    """

    gpa: int
    size: int
    backing: object | None = None
    fd_offset: int | None = None
    uaddr: int | None = None


class VhostMemRegion(NamedTuple):
    """One region exactly as sent in SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG."""

    gpa: int
    size: int
    uaddr: int
    mmap_offset: int
    fd: int

    def pack(self) -> bytes:
        return _MEM_REGION.pack(self.gpa, self.size, self.uaddr, self.mmap_offset)


class _Backing:
    """One memfd (or, with ``directory``, an unnamed file there, as QEMU's
    memory-backend-file with a directory as mem-path), mapped once in full in
    our address space."""

    def __init__(self, name: str, size: int, directory: str | None = None) -> None:
        self.size = size
        if directory is None:
            self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        else:
            self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(self.fd, size)
            self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        # Address of the mapping, for default userspace_addr values.  The
        # ctypes object pins an export of the mmap; drop it at once so that
        # the mmap can be closed later.
        anchor = ctypes.c_char.from_buffer(self.mm)
        self.address = ctypes.addressof(anchor)
        del anchor

    def close(self) -> None:
        if self.fd >= 0:
            self.mm.close()
            os.close(self.fd)
            self.fd = -1


@dataclass
class MemRegion:
    """A mapped guest memory region (GPA range → slice of a memfd)."""

    gpa: int
    size: int
    uaddr: int
    mmap_offset: int
    backing: _Backing = field(repr=False)
    # Allocator state: sorted, coalesced list of free [start, end) GPA extents.
    free: list[list[int]] = field(default_factory=list, repr=False)

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def fd(self) -> int:
        return self.backing.fd

    def vhost(self) -> VhostMemRegion:
        return VhostMemRegion(self.gpa, self.size, self.uaddr, self.mmap_offset, self.backing.fd)


class GuestMemory:
    """Guest RAM made of memfd-backed regions, addressed by GPA.

    ``GuestMemory(16 << 20)`` is one region at GPA 0.  ``regions=`` gives
    several, e.g. two regions sharing one memfd::

        GuestMemory(regions=[RegionSpec(0, 8 << 20, backing="ram"),
                             RegionSpec(1 << 32, 8 << 20, backing="ram")])

    ``alloc``/``free`` is a first-fit allocator (a bump allocator that can
    take memory back) used for rings, buffers and indirect tables.
    ``directory``: back the regions with unnamed files in that directory
    (``/dev/shm``, a disk) instead of memfds.
    """

    def __init__(self, size: int | None = None, regions: Sequence[RegionSpec] | None = None,
                 *, name: str = "vhost-frontend-guest", directory: str | None = None) -> None:
        if regions is None:
            if size is None:
                raise ValueError("give size or regions")
            regions = [RegionSpec(0, size)]
        specs = sorted(regions, key=lambda r: r.gpa)
        for a, b in zip(specs, specs[1:], strict=False):
            if a.gpa + a.size > b.gpa:
                raise ValueError(f"regions overlap: {a} {b}")
        # Lay out each backing memfd: explicit offsets first, then packed.
        layout: dict[object, list[tuple[RegionSpec, int]]] = {}
        next_off: dict[object, int] = {}
        for i, spec in enumerate(specs):
            if spec.size <= 0 or spec.size % _PAGE:
                raise ValueError(f"region size must be a positive multiple of {_PAGE}: {spec}")
            key = spec.backing if spec.backing is not None else ("__own__", i)
            off = spec.fd_offset if spec.fd_offset is not None else next_off.get(key, 0)
            if off % _PAGE:
                raise ValueError(f"fd_offset must be page aligned: {spec}")
            layout.setdefault(key, []).append((spec, off))
            next_off[key] = max(next_off.get(key, 0), _align_up(off + spec.size, _PAGE))
        self._backings: list[_Backing] = []
        self.regions: list[MemRegion] = []
        try:
            for items in layout.values():
                backing = _Backing(name, max(off + spec.size for spec, off in items), directory)
                self._backings.append(backing)
                for spec, off in items:
                    uaddr = spec.uaddr if spec.uaddr is not None else backing.address + off
                    region = MemRegion(spec.gpa, spec.size, uaddr, off, backing)
                    region.free = [[spec.gpa, spec.gpa + spec.size]]
                    self.regions.append(region)
        except BaseException:
            self.close()
            raise
        self.regions.sort(key=lambda r: r.gpa)
        self._allocs: dict[int, tuple[MemRegion, int, int]] = {}

    # -- lookup ----------------------------------------------------------------

    def region_of(self, gpa: int, length: int = 1) -> MemRegion:
        """Region that contains all of [gpa, gpa+length)."""
        for r in self.regions:
            if r.gpa <= gpa and gpa + length <= r.end:
                return r
        raise GuestMemoryError(f"GPA range {gpa:#x}+{length:#x} not inside one region")

    def contains(self, gpa: int, length: int = 1) -> bool:
        """True if every byte of [gpa, gpa+length) is guest memory (regions may be adjacent)."""
        try:
            self._spans(gpa, length)
            return True
        except GuestMemoryError:
            return False

    def fd_offset(self, gpa: int) -> tuple[int, int]:
        """(memfd, offset in that memfd) of a GPA."""
        r = self.region_of(gpa)
        return r.backing.fd, r.mmap_offset + (gpa - r.gpa)

    def uaddr(self, gpa: int) -> int:
        """Front-end virtual address of a GPA (what SET_VRING_ADDR carries)."""
        r = self.region_of(gpa)
        return r.uaddr + (gpa - r.gpa)

    def gpa_of_uaddr(self, uaddr: int) -> int:
        for r in self.regions:
            if r.uaddr <= uaddr < r.uaddr + r.size:
                return r.gpa + (uaddr - r.uaddr)
        raise GuestMemoryError(f"uaddr {uaddr:#x} not in any region")

    @property
    def end(self) -> int:
        """One past the highest guest-physical address."""
        return max(r.end for r in self.regions)

    def vhost_regions(self) -> list[VhostMemRegion]:
        return [r.vhost() for r in self.regions]

    def _spans(self, gpa: int, length: int) -> list[tuple[MemRegion, int, int]]:
        """Split [gpa, gpa+length) into (region, offset-in-backing, n) pieces."""
        if gpa < 0 or length < 0:
            raise GuestMemoryError("negative address or length")
        out: list[tuple[MemRegion, int, int]] = []
        while length > 0:
            r = next((r for r in self.regions if r.gpa <= gpa < r.end), None)
            if r is None:
                raise GuestMemoryError(f"GPA {gpa:#x} is not guest memory")
            n = min(length, r.end - gpa)
            out.append((r, r.mmap_offset + gpa - r.gpa, n))
            gpa += n
            length -= n
        return out

    # -- access ----------------------------------------------------------------

    def read(self, gpa: int, length: int) -> bytes:
        """Bytes at [gpa, gpa+length); may cross adjacent regions."""
        return b"".join(r.backing.mm[off:off + n] for r, off, n in self._spans(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data).cast("B")
        pos = 0
        for r, off, n in self._spans(gpa, len(data)):
            r.backing.mm[off:off + n] = data[pos:pos + n]
            pos += n

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.write(gpa, bytes([byte]) * length)

    def load16(self, gpa: int) -> int:
        """Single 16-bit load (for ring indices the device updates concurrently)."""
        if gpa & 1:
            raise GuestMemoryError("unaligned 16-bit access")
        r = self.region_of(gpa, 2)
        off = r.mmap_offset + gpa - r.gpa
        with memoryview(r.backing.mm) as mv, mv.cast("H") as words:
            return int(words[off >> 1])

    def store16(self, gpa: int, value: int) -> None:
        """Single 16-bit store (never a torn index as seen by the device)."""
        if gpa & 1:
            raise GuestMemoryError("unaligned 16-bit access")
        r = self.region_of(gpa, 2)
        off = r.mmap_offset + gpa - r.gpa
        with memoryview(r.backing.mm) as mv, mv.cast("H") as words:
            words[off >> 1] = value & 0xFFFF

    def load32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    # -- allocation ------------------------------------------------------------

    def alloc(self, size: int, align: int = 16, *, region: int | MemRegion | None = None,
              zero: bool = True) -> int:
        """Allocate ``size`` bytes (first fit), return the GPA.

        ``region``: index or MemRegion to allocate from (default: any,
        lowest GPA first).  Allocations never straddle regions.
        """
        if size <= 0:
            raise ValueError("size must be positive")
        if align <= 0 or align & (align - 1):
            raise ValueError("align must be a power of two")
        if region is None:
            candidates = self.regions
        elif isinstance(region, MemRegion):
            candidates = [region]
        else:
            candidates = [self.regions[region]]
        for r in candidates:
            for i, (start, end) in enumerate(r.free):
                gpa = _align_up(start, align)
                if gpa + size > end:
                    continue
                pieces = []
                if gpa > start:
                    pieces.append([start, gpa])
                if gpa + size < end:
                    pieces.append([gpa + size, end])
                r.free[i:i + 1] = pieces
                self._allocs[gpa] = (r, gpa, size)
                if zero:
                    self.fill(gpa, size)
                return gpa
        raise GuestMemoryError(f"out of guest memory allocating {size:#x} bytes")

    def free(self, gpa: int) -> None:
        """Give back an allocation made by ``alloc``."""
        r, start, size = self._allocs.pop(gpa)
        extents = r.free
        extents.append([start, start + size])
        extents.sort()
        merged: list[list[int]] = []
        for ext in extents:
            if merged and merged[-1][1] == ext[0]:
                merged[-1][1] = ext[1]
            else:
                merged.append(ext)
        r.free = merged

    def reserve(self, gpa: int, size: int) -> None:
        """Take a fixed range out of the allocator (e.g. to place rings yourself)."""
        r = self.region_of(gpa, size)
        for i, (start, end) in enumerate(r.free):
            if start <= gpa and gpa + size <= end:
                pieces = [p for p in ([start, gpa], [gpa + size, end]) if p[1] > p[0]]
                r.free[i:i + 1] = pieces
                return
        raise GuestMemoryError(f"{gpa:#x}+{size:#x} is not free")

    def close(self) -> None:
        for b in self._backings:
            b.close()
        self._backings = []

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# virtio-net header and split virtqueue
# ---------------------------------------------------------------------------


class Desc(NamedTuple):
    """A split-ring descriptor: ``le64 addr; le32 len; le16 flags; le16 next``."""

    addr: int
    len: int
    flags: int = 0
    next: int = 0

    def pack(self) -> bytes:
        # Mask so hostile callers may pass "overflowing" Python ints.
        return _DESC.pack(self.addr & (2**64 - 1), self.len & 0xFFFFFFFF,
                          self.flags & 0xFFFF, self.next & 0xFFFF)


@dataclass
class VirtioNetHdr:
    """``struct virtio_net_hdr_v1`` (12 bytes; 10 in legacy mode without MRG_RXBUF)."""

    flags: int = 0  # 1 NEEDS_CSUM, 2 DATA_VALID, 4 RSC_INFO
    gso_type: int = 0  # 0 NONE, 1 TCPV4, 3 UDP, 4 TCPV6, 5 UDP_L4, 0x80 ECN
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0

    NEEDS_CSUM = 1
    DATA_VALID = 2

    def pack(self, size: int = 12) -> bytes:
        fields = (self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset)
        if size == 10:
            return _NET_HDR_LEGACY.pack(*fields)
        if size == 12:
            return _NET_HDR.pack(*fields, self.num_buffers)
        raise ValueError("virtio-net header size is 10 or 12")

    @classmethod
    def unpack(cls, data: bytes) -> VirtioNetHdr:
        if len(data) >= 12:
            return cls(*_NET_HDR.unpack_from(data))
        return cls(*_NET_HDR_LEGACY.unpack_from(data))


@dataclass
class UsedElem:
    """One used-ring entry as reaped by the driver."""

    id: int
    len: int
    data: bytes = b""  # first ``len`` bytes of the chain's device-writable buffers
    valid: bool = True  # False: id was not an in-flight head (back-end bug)


@dataclass
class RxFrame:
    """A received frame (after num_buffers merging)."""

    hdr: VirtioNetHdr
    frame: bytes
    elems: list[UsedElem]

    @property
    def num_buffers(self) -> int:
        return len(self.elems)


@dataclass
class _Chain:
    """Driver bookkeeping for one in-flight descriptor chain."""

    descs: list[int]
    allocs: list[int]
    writable: list[tuple[int, int]]  # (gpa, len) of device-writable buffers, in order
    raw: bool = False


class RingDriver:
    """What a driver does alike on a split and a packed virtqueue: the memory
    the ring owns, its kick/call/err eventfds, and frames in and out through
    the kind's own add_chain, publish and reap (SplitRing, PackedRing)."""

    mem: GuestMemory
    num: int
    index: int
    hdr_len: int
    mrg_rxbuf: bool
    event_idx: bool
    interrupts: int
    buf_region: int | None
    desc_gpa: int
    kick_fd: int
    call_fd: int
    err_fd: int
    inflight: dict[int, _Chain]
    errors: list[str]
    _owned: list[int]
    _rx_pending: list[UsedElem]

    # Supplied by the ring kind.
    avail_gpa: int
    used_gpa: int

    # Each kind also has add_chain, publish, reap and set_used_event.

    def used_event_now(self) -> int:
        """The used_event value that asks for an interrupt at the next used entry."""
        raise NotImplementedError

    def _alloc(self, size: int, align: int, region: int | None) -> int:
        gpa = self.mem.alloc(size, align, region=region)
        self._owned.append(gpa)
        return gpa

    @property
    def desc_uaddr(self) -> int:
        return self.mem.uaddr(self.desc_gpa)

    @property
    def avail_uaddr(self) -> int:
        return self.mem.uaddr(self.avail_gpa)

    @property
    def used_uaddr(self) -> int:
        return self.mem.uaddr(self.used_gpa)

    def kick(self) -> None:
        """Notify the device (eventfd write; the value is meaningless)."""
        os.eventfd_write(self.kick_fd, 1)

    def wait_call(self, timeout: float = 1.0) -> bool:
        """Wait for the device's interrupt on the call eventfd; consume it."""
        if self.event_idx:
            self.set_used_event(self.used_event_now())
        r = readable(self.call_fd, timeout)
        if not r:
            return False
        try:
            os.eventfd_read(self.call_fd)
        except BlockingIOError:
            return False
        self.interrupts += 1
        return True

    def drain_call(self) -> int:
        """Consume pending interrupts; return the eventfd counter (0 = none)."""
        try:
            n = os.eventfd_read(self.call_fd)
        except BlockingIOError:
            return 0
        self.interrupts += 1
        return n

    def post_tx(self, frame: bytes, *, hdr: VirtioNetHdr | bytes | None = None,
                split: Sequence[int] | None = None, indirect: bool = False,
                publish: bool = True, kick: bool = True) -> int:
        """Post one TX packet: virtio-net header + ``frame``.

        ``split`` gives the sizes of all descriptors but the last (which takes
        the rest), cutting the header+frame byte string anywhere: ``None`` is
        one descriptor, ``[12]`` header and data apart, ``[5, 100]`` splits
        inside the header.  Each descriptor gets its own buffer allocation (as
        a real guest's scattered pages).  ``hdr`` defaults to all-zero.
        """
        if hdr is None:
            hdr = VirtioNetHdr()
        hbytes = hdr.pack(self.hdr_len) if isinstance(hdr, VirtioNetHdr) else bytes(hdr)
        blob = hbytes + bytes(frame)
        sizes = list(split or [])
        if sum(sizes) > len(blob):
            raise ValueError("split sizes exceed the packet")
        sizes.append(len(blob) - sum(sizes))
        segments: list[tuple[int, int, bool]] = []
        allocs: list[int] = []
        pos = 0
        for n in sizes:
            gpa = self.mem.alloc(max(n, 1), 16, region=self.buf_region, zero=False)
            allocs.append(gpa)
            self.mem.write(gpa, blob[pos:pos + n])
            segments.append((gpa, n, False))
            pos += n
        try:
            return self.add_chain(segments, indirect=indirect, allocs=allocs, publish=publish, kick=kick)
        except BaseException:
            for a in allocs:
                self.mem.free(a)
            raise

    def post_rx(self, count: int = 1, buf_len: int = 2048, *, descs_per_chain: int = 1,
                indirect: bool = False, fill: int | None = 0xA5, publish: bool = True,
                kick: bool = True, sizes: Sequence[int] | None = None) -> list[int]:
        """Post ``count`` device-writable chains of ``buf_len`` bytes each.

        ``descs_per_chain`` > 1 splits each buffer across that many
        descriptors (separate allocations); ``sizes`` gives the descriptors'
        lengths instead (e.g. ``[12, 2036]``: the header apart, as legacy
        drivers post RX buffers).  Without MRG_RXBUF a chain must
        hold header + the largest frame; with MRG_RXBUF small chains are
        merged by the device (``num_buffers``).  ``fill`` poisons the buffers
        first so that header fields the device forgot to write stand out.
        """
        heads = []
        for _ in range(count):
            if sizes is None:
                base, rem = divmod(buf_len, descs_per_chain)
                sizes = [base + (1 if i < rem else 0) for i in range(descs_per_chain)]
            allocs = [self.mem.alloc(max(n, 1), 16, region=self.buf_region, zero=False) for n in sizes]
            if fill is not None:
                for g, n in zip(allocs, sizes, strict=True):
                    self.mem.fill(g, n, fill)
            segs = [(g, n, True) for g, n in zip(allocs, sizes, strict=True)]
            heads.append(self.add_chain(segs, indirect=indirect, allocs=allocs, publish=False, kick=False))
        if publish:
            self.publish(kick=kick)
        return heads

    def post_tx_frames(self, frames: Iterable[bytes], **kw: Any) -> list[int]:
        """Post several frames (``post_tx`` options), publish once, kick once."""
        heads = [self.post_tx(f, publish=False, kick=False, **kw) for f in frames]
        self.publish(kick=True)
        return heads

    def wait_used(self, count: int = 1, timeout: float = 2.0) -> list[UsedElem]:
        """Reap until ``count`` used entries arrived or ``timeout`` passed.

        Waits on the call eventfd but re-checks the used ring every few ms:
        devices may suppress interrupts (they are hints).
        """
        deadline = time.monotonic() + timeout
        out: list[UsedElem] = []
        while True:
            out.extend(self.reap())
            now = time.monotonic()
            if len(out) >= count or now >= deadline:
                return out
            self.wait_call(min(0.01, deadline - now))

    def recv_frames(self, count: int = 1, timeout: float = 2.0, *,
                    mrg_rxbuf: bool | None = None) -> list[RxFrame]:
        """Receive up to ``count`` frames from this (RX) ring.

        With MRG_RXBUF the first buffer's header says ``num_buffers``; the
        frame continues in that many consecutive used entries, each without
        a header (virtio-net "Processing of Incoming Packets").
        """
        mrg = self.mrg_rxbuf if mrg_rxbuf is None else mrg_rxbuf
        deadline = time.monotonic() + timeout
        frames: list[RxFrame] = []
        while True:
            self._rx_pending.extend(self.reap())
            while self._rx_pending and len(frames) < count:
                first = self._rx_pending[0]
                if len(first.data) < self.hdr_len:
                    self.errors.append(f"RX used len {first.len} shorter than the header")
                    self._rx_pending.pop(0)
                    continue
                hdr = VirtioNetHdr.unpack(first.data[:self.hdr_len])
                k = hdr.num_buffers if mrg else 1
                if k == 0 or k > self.num:
                    self.errors.append(f"num_buffers {k} impossible for ring size {self.num}")
                    k = 1
                if len(self._rx_pending) < k:
                    break
                elems, self._rx_pending = self._rx_pending[:k], self._rx_pending[k:]
                payload = first.data[self.hdr_len:] + b"".join(e.data for e in elems[1:])
                frames.append(RxFrame(hdr, payload, elems))
            now = time.monotonic()
            if len(frames) >= count or now >= deadline:
                return frames
            self.wait_call(min(0.01, deadline - now))

    def _gather(self, bufs: Sequence[tuple[int, int]], length: int) -> bytes:
        parts = []
        for gpa, n in bufs:
            if length <= 0:
                break
            k = min(n, length)
            parts.append(self.mem.read(gpa, k))
            length -= k
        return b"".join(parts)

    def close(self) -> None:
        """Close the eventfds and give the ring's memory back to the allocator."""
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            if fd >= 0:
                os.close(fd)
        self.kick_fd = self.call_fd = self.err_fd = -1
        for chain in self.inflight.values():
            for a in chain.allocs:
                self.mem.free(a)
        self.inflight.clear()
        for a in self._owned:
            self.mem.free(a)
        self._owned = []


class SplitRing(RingDriver):
    """One split virtqueue laid out in guest memory (virtio 1.x §2.7).

    ::

        desc:  Q × {le64 addr; le32 len; le16 flags; le16 next}        align 16
        avail: le16 flags; le16 idx; le16 ring[Q]; le16 used_event     align 2
        used:  le16 flags; le16 idx; {le32 id; le32 len} ring[Q];
               le16 avail_event                                         align 4

    The ring owns a kick eventfd (driver → device) and a call eventfd
    (device → driver).  ``index`` is the global vring index used in
    vhost-user messages (net: RX of pair q = 2q, TX = 2q+1).
    """

    def __init__(self, mem: GuestMemory, num: int = 256, index: int = 0, *,
                 desc_gpa: int | None = None, avail_gpa: int | None = None, used_gpa: int | None = None,
                 region: int | None = None, buf_region: int | None = None,
                 hdr_len: int = 12, mrg_rxbuf: bool = False, check_num: bool = True) -> None:
        if check_num and (num <= 0 or num > 32768 or num & (num - 1)):
            raise ValueError("split ring size must be a power of 2 in 1..32768")
        self.mem = mem
        self.num = num
        self.index = index
        self.hdr_len = hdr_len
        self.mrg_rxbuf = mrg_rxbuf
        # EVENT_IDX negotiated: before waiting, ask for an interrupt at the
        # next used entry (avail->used_event), else the device may stay quiet.
        self.event_idx = False
        self.interrupts = 0  # call-eventfd wake-ups consumed by wait_call/drain_call
        self.buf_region = buf_region  # where post_tx/post_rx allocate buffers
        self._owned: list[int] = []
        self.desc_gpa = desc_gpa if desc_gpa is not None else self._alloc(16 * num, 16, region)
        self.avail_gpa = avail_gpa if avail_gpa is not None else self._alloc(6 + 2 * num, 2, region)
        self.used_gpa = used_gpa if used_gpa is not None else self._alloc(6 + 8 * num, 4, region)
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.err_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.free_descs: list[int] = list(range(num - 1, -1, -1))  # pop() hands out 0, 1, 2...
        self.avail_idx = 0  # driver's shadow of avail->idx (next slot to fill)
        self.last_used = 0  # next used-ring entry the driver will read
        self.inflight: dict[int, _Chain] = {}
        self.errors: list[str] = []  # back-end misbehaviour seen while reaping
        self._rx_pending: list[UsedElem] = []

    def used_event_now(self) -> int:
        return self.last_used

    # -- addresses for vhost-user ---------------------------------------------------

    # -- raw field access -----------------------------------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, next: int = 0) -> None:
        """Write descriptor ``i`` verbatim (any values; hostile rings welcome)."""
        self.mem.write(self.desc_gpa + 16 * (i % self.num), Desc(addr, length, flags, next).pack())

    def read_desc(self, i: int) -> Desc:
        return Desc(*_DESC.unpack(self.mem.read(self.desc_gpa + 16 * i, 16)))

    def write_avail_entry(self, slot: int, head: int) -> None:
        """``avail->ring[slot % Q] = head`` (head may be out of range on purpose)."""
        self.mem.write(self.avail_gpa + 4 + 2 * (slot % self.num), struct.pack("<H", head & 0xFFFF))

    def set_avail_idx(self, value: int) -> None:
        """Store ``avail->idx`` directly (e.g. a wild jump); also moves the shadow."""
        self.avail_idx = value & 0xFFFF
        self.mem.store16(self.avail_gpa + 2, self.avail_idx)

    def vring_base(self) -> int:
        """The ring position as SET_VRING_BASE carries it: the next avail index."""
        return self.avail_idx

    def avail_idx_in_memory(self) -> int:
        return self.mem.load16(self.avail_gpa + 2)

    def set_avail_flags(self, flags: int) -> None:
        self.mem.store16(self.avail_gpa, flags)

    def set_used_event(self, value: int) -> None:
        """``avail->used_event`` (EVENT_IDX): interrupt me when used idx passes it."""
        self.mem.store16(self.avail_gpa + 4 + 2 * self.num, value)

    def used_flags(self) -> int:
        return self.mem.load16(self.used_gpa)

    def used_idx(self) -> int:
        return self.mem.load16(self.used_gpa + 2)

    def avail_event(self) -> int:
        """``used->avail_event`` as written by the device (EVENT_IDX)."""
        return self.mem.load16(self.used_gpa + 4 + 8 * self.num)

    def used_entry(self, slot: int) -> tuple[int, int]:
        return _USED_ELEM.unpack(self.mem.read(self.used_gpa + 4 + 8 * (slot % self.num), 8))

    def take_descs(self, n: int) -> list[int]:
        """Claim ``n`` free descriptor indices (for raw chains)."""
        if n > len(self.free_descs):
            self.reap()
        if n > len(self.free_descs):
            raise RingFull(f"need {n} descriptors, {len(self.free_descs)} free")
        return [self.free_descs.pop() for _ in range(n)]

    def push_avail(self, head: int, *, publish: bool = True, kick: bool = False) -> None:
        """Put ``head`` in the next avail slot; optionally publish idx and kick."""
        self.write_avail_entry(self.avail_idx, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        if publish:
            self.publish(kick=kick)

    def publish(self, *, kick: bool = False) -> None:
        """Make all pushed entries visible: store ``avail->idx`` (after the entries)."""
        self.mem.store16(self.avail_gpa + 2, self.avail_idx)
        if kick:
            self.kick()

    def write_indirect_table(self, descs: Sequence[Desc], gpa: int | None = None) -> tuple[int, int]:
        """Write an indirect table (allocated unless ``gpa``); return (gpa, len in bytes)."""
        blob = b"".join(Desc(*d).pack() for d in descs)
        if gpa is None:
            gpa = self.mem.alloc(max(len(blob), 16), 16, region=self.buf_region)
        self.mem.write(gpa, blob)
        return gpa, len(blob)

    # -- notifications --------------------------------------------------------------

    # -- well-behaved driver operations ------------------------------------------------

    def add_chain(self, segments: Sequence[tuple[int, int, bool]], *, indirect: bool = False,
                  allocs: Sequence[int] = (), publish: bool = True, kick: bool = True) -> int:
        """Post one chain of (gpa, len, device_writable) segments; return its head.

        Device-readable segments must precede device-writable ones (spec
        2.7.4.2), which is the caller's business here.  With ``indirect`` the
        segments go into an indirect table and the ring gets a single
        descriptor with only ``INDIRECT`` set ("The device MUST ignore the
        write-only flag in the descriptor that refers to an indirect table").
        """
        if not segments:
            raise ValueError("a chain needs at least one segment")
        allocs = list(allocs)
        writable = [(g, n) for g, n, w in segments if w]
        if indirect:
            table = [Desc(g, n, (VRING_DESC_F_WRITE if w else 0)
                          | (VRING_DESC_F_NEXT if i + 1 < len(segments) else 0),
                          i + 1 if i + 1 < len(segments) else 0)
                     for i, (g, n, w) in enumerate(segments)]
            tgpa, tlen = self.write_indirect_table(table)
            allocs.append(tgpa)
            (head,) = self.take_descs(1)
            self.write_desc(head, tgpa, tlen, VRING_DESC_F_INDIRECT, 0)
            descs = [head]
        else:
            descs = self.take_descs(len(segments))
            for i, (g, n, w) in enumerate(segments):
                last = i + 1 == len(segments)
                flags = (VRING_DESC_F_WRITE if w else 0) | (0 if last else VRING_DESC_F_NEXT)
                self.write_desc(descs[i], g, n, flags, 0 if last else descs[i + 1])
            head = descs[0]
        self.inflight[head] = _Chain(descs, allocs, writable)
        self.push_avail(head, publish=publish, kick=kick)
        return head

    def pending_used(self) -> int:
        """Used entries written by the device but not reaped yet."""
        return (self.used_idx() - self.last_used) & 0xFFFF

    def reap(self) -> list[UsedElem]:
        """Consume all new used entries, free their chains, return them.

        Back-end misbehaviour (unknown id, len larger than the writable
        buffers, used idx running ahead of what was made available) is
        appended to ``self.errors`` instead of raising, so hostile tests can
        inspect it.
        """
        used = self.used_idx()
        n = (used - self.last_used) & 0xFFFF
        if n > self.num:
            # The device claims more completions than the ring can hold: the
            # ring is corrupt.  Report it once and look at the newest Q entries.
            self.errors.append(f"used idx jumped by {n} (> ring size {self.num})")
            self.last_used = (used - self.num) & 0xFFFF
            n = self.num
        out = []
        for _ in range(n):
            uid, ulen = self.used_entry(self.last_used)
            self.last_used = (self.last_used + 1) & 0xFFFF
            chain = self.inflight.pop(uid, None)
            if chain is None:
                self.errors.append(f"used id {uid} is not an in-flight head")
                out.append(UsedElem(uid, ulen, b"", False))
                continue
            cap = sum(n for _, n in chain.writable)
            if ulen > cap:
                self.errors.append(f"used len {ulen} > writable capacity {cap} (id {uid})")
            data = self._gather(chain.writable, min(ulen, cap))
            for a in chain.allocs:
                self.mem.free(a)
            self.free_descs.extend(reversed(chain.descs))
            out.append(UsedElem(uid, ulen, data))
        return out


class Hostile:
    """Recipes for malformed descriptor chains, built with SplitRing's raw API.

    Every recipe claims fresh descriptors, writes them, pushes the head to
    the avail ring, publishes and kicks (unless ``publish``/``kick`` say
    otherwise) and returns the head.  Claimed descriptors and buffers are
    registered as in flight, so a back-end that does complete them is handled
    by ``reap``.  Buffers are device-readable on TX rings and device-writable
    on RX rings (net convention: even vring index = RX), unless ``writable``
    says otherwise.  The docstrings name the virtio 1.x §2.7 (split ring)
    driver requirement being violated.
    """

    def __init__(self, ring: SplitRing, *, writable: bool | None = None) -> None:
        self.ring = ring
        self.mem = ring.mem
        self.wflag = VRING_DESC_F_WRITE if (ring.index % 2 == 0 if writable is None else writable) else 0
        self._allocs: list[int] = []

    # -- plumbing ---------------------------------------------------------------------

    def _buf(self, n: int = 64) -> int:
        gpa = self.mem.alloc(n, 16, region=self.ring.buf_region)
        self._allocs.append(gpa)
        return gpa

    def _table(self, descs: Sequence[Desc]) -> tuple[int, int]:
        gpa, length = self.ring.write_indirect_table(descs)
        self._allocs.append(gpa)
        return gpa, length

    def _post(self, descs: list[int], *, publish: bool, kick: bool) -> int:
        head = descs[0]
        self.ring.inflight[head] = _Chain(descs, self._allocs, [], raw=True)
        self._allocs = []
        self.ring.push_avail(head, publish=publish, kick=kick)
        return head

    def chain(self, descs: Sequence[Desc | tuple[int, int, int]], *, link: bool = True,
              publish: bool = True, kick: bool = True) -> int:
        """Arbitrary descriptors in fresh slots.  ``link``: add NEXT/next to chain them in order."""
        slots = self.ring.take_descs(len(descs))
        for i, raw in enumerate(descs):
            d = Desc(*raw)
            flags, nxt = d.flags, d.next
            if link and i + 1 < len(descs):
                flags |= VRING_DESC_F_NEXT
                nxt = slots[i + 1]
            self.ring.write_desc(slots[i], d.addr, d.len, flags, nxt)
        return self._post(slots, publish=publish, kick=kick)

    def _one(self, addr: int, length: int, flags: int, next_index: int, *, publish: bool, kick: bool) -> int:
        (slot,) = self.ring.take_descs(1)
        self.ring.write_desc(slot, addr, length, flags, next_index)
        return self._post([slot], publish=publish, kick=kick)

    # -- bad buffers ------------------------------------------------------------------

    def addr_outside_memory(self, *, addr: int | None = None, length: int = 64,
                            publish: bool = True, kick: bool = True) -> int:
        """Buffer beyond every region (unchecked translation, CVE-2020-10725 class)."""
        a = self.mem.end + 0x10000 if addr is None else addr
        return self._one(a, length, self.wflag, 0, publish=publish, kick=kick)

    def straddle_end_of_memory(self, *, publish: bool = True, kick: bool = True) -> int:
        """Buffer that starts inside the highest region and runs 4 KiB past its end."""
        last = max(self.mem.regions, key=lambda r: r.end)
        return self._one(last.end - 64, 64 + 4096, self.wflag, 0, publish=publish, kick=kick)

    def straddle_hole(self, *, publish: bool = True, kick: bool = True) -> int:
        """Buffer that starts in a region and runs into the unmapped GPA gap after it
        (needs guest memory with a hole between two regions)."""
        starts = {r.gpa for r in self.mem.regions}
        top = self.mem.end
        gap = next((r for r in sorted(self.mem.regions, key=lambda r: r.gpa)
                    if r.end not in starts and r.end != top), None)
        if gap is None:
            raise ValueError("guest memory has no hole between regions")
        return self._one(gap.end - 64, 128, self.wflag, 0, publish=publish, kick=kick)

    def len_overflow_64(self, *, addr: int = 2**64 - 0x100, length: int = 0x200,
                        publish: bool = True, kick: bool = True) -> int:
        """addr + len wraps past 2**64.

        The default wraps to GPA 0x100, i.e. *into* guest memory: a naive
        ``gpa >= start and gpa + len <= end`` check in 64-bit arithmetic
        accepts it.  ``length=0xFFFFFFFF`` gives the other classic variant.
        """
        return self._one(addr, length, self.wflag, 0, publish=publish, kick=kick)

    def len_overflow_32(self, *, count: int = 3, publish: bool = True, kick: bool = True) -> int:
        """Chain whose total length exceeds 2**32 (each len 0x80000000 from a valid start).

        Each descriptor also runs past the end of guest memory unless the
        memory is larger than 2 GiB; a 32-bit length accumulator wraps either way.
        """
        g = self._buf()
        return self.chain([Desc(g, 0x80000000, self.wflag)] * count, publish=publish, kick=kick)

    def zero_length(self, *, publish: bool = True, kick: bool = True) -> int:
        """A single zero-length descriptor."""
        return self._one(self._buf(), 0, self.wflag, 0, publish=publish, kick=kick)

    def short_header(self, length: int = 4, *, publish: bool = True, kick: bool = True) -> int:
        """Chain shorter than the virtio-net header (CVE-2022-2132 class)."""
        return self._one(self._buf(), length, self.wflag, 0, publish=publish, kick=kick)

    def wrong_direction(self, *, publish: bool = True, kick: bool = True) -> int:
        """Writable buffer on a TX ring / read-only buffer on an RX ring."""
        return self._one(self._buf(), 2048, self.wflag ^ VRING_DESC_F_WRITE, 0, publish=publish, kick=kick)

    def write_before_read(self, *, publish: bool = True, kick: bool = True) -> int:
        """Device-writable descriptor followed by a readable one ("readable MUST precede writable")."""
        return self.chain([Desc(self._buf(), 64, VRING_DESC_F_WRITE), Desc(self._buf(), 64, 0)],
                          publish=publish, kick=kick)

    # -- bad chains -------------------------------------------------------------------

    def loop(self, length: int = 2, *, publish: bool = True, kick: bool = True) -> int:
        """Chain d0 → d1 → … → d(length-1) → d0 (length 1 = self loop)."""
        slots = self.ring.take_descs(length)
        g = self._buf()
        for i, s in enumerate(slots):
            self.ring.write_desc(s, g, 16, self.wflag | VRING_DESC_F_NEXT, slots[(i + 1) % length])
        return self._post(slots, publish=publish, kick=kick)

    def chain_longer_than_ring(self, *, publish: bool = True, kick: bool = True) -> int:
        """All Q descriptors linked in a cycle: the walk never ends (needs a ring with all descriptors free)."""
        return self.loop(self.ring.num, publish=publish, kick=kick)

    def next_out_of_range(self, next_index: int | None = None, *, publish: bool = True, kick: bool = True) -> int:
        """Descriptor with NEXT and ``next`` ≥ Q."""
        nxt = self.ring.num if next_index is None else next_index
        return self._one(self._buf(), 64, self.wflag | VRING_DESC_F_NEXT, nxt, publish=publish, kick=kick)

    def head_out_of_range(self, head: int | None = None, *, publish: bool = True, kick: bool = True) -> int:
        """avail->ring entry ≥ Q (no descriptor claimed)."""
        h = self.ring.num + 5 if head is None else head
        self.ring.push_avail(h, publish=publish, kick=kick)
        return h

    def wild_avail_idx(self, delta: int = 0x8000, *, kick: bool = True) -> int:
        """avail->idx jumps ``delta`` past the driver's position (more than Q new entries is illegal)."""
        new = (self.ring.avail_idx + delta) & 0xFFFF
        self.ring.set_avail_idx(new)
        if kick:
            self.ring.kick()
        return new

    # -- bad indirect tables ----------------------------------------------------------

    def _good_table(self, n: int = 2) -> list[Desc]:
        return [Desc(self._buf(), 64, self.wflag | (VRING_DESC_F_NEXT if i + 1 < n else 0),
                     i + 1 if i + 1 < n else 0) for i in range(n)]

    def _indirect(self, table: Sequence[Desc], *, tlen: int | None = None, flags: int = VRING_DESC_F_INDIRECT,
                  next_index: int = 0, publish: bool, kick: bool) -> int:
        tgpa, blen = self._table(table)
        return self._one(tgpa, blen if tlen is None else tlen, flags, next_index, publish=publish, kick=kick)

    def indirect_bad_len(self, length: int = 24, *, publish: bool = True, kick: bool = True) -> int:
        """Indirect table length not a multiple of 16."""
        return self._indirect(self._good_table(2), tlen=length, publish=publish, kick=kick)

    def indirect_zero_len(self, *, publish: bool = True, kick: bool = True) -> int:
        """Indirect table of length 0."""
        return self._indirect(self._good_table(1), tlen=0, publish=publish, kick=kick)

    def indirect_outside_memory(self, *, publish: bool = True, kick: bool = True) -> int:
        """Indirect descriptor pointing outside guest memory."""
        return self._one(self.mem.end + 0x100000, 64, VRING_DESC_F_INDIRECT, 0, publish=publish, kick=kick)

    def indirect_nested(self, *, publish: bool = True, kick: bool = True) -> int:
        """Indirect table containing an INDIRECT descriptor ("MUST NOT set INDIRECT within an indirect")."""
        inner, ilen = self._table(self._good_table(1))
        return self._indirect([Desc(inner, ilen, VRING_DESC_F_INDIRECT, 0)], publish=publish, kick=kick)

    def indirect_with_next(self, *, publish: bool = True, kick: bool = True) -> int:
        """INDIRECT together with NEXT on the ring descriptor ("MUST NOT set both")."""
        (extra,) = self.ring.take_descs(1)
        self.ring.write_desc(extra, self._buf(), 64, self.wflag, 0)
        tgpa, blen = self._table(self._good_table(1))
        (slot,) = self.ring.take_descs(1)
        self.ring.write_desc(slot, tgpa, blen, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, extra)
        return self._post([slot, extra], publish=publish, kick=kick)

    def indirect_loop(self, *, publish: bool = True, kick: bool = True) -> int:
        """Indirect table whose entries loop: 0 → 1 → 0."""
        g = self._buf()
        table = [Desc(g, 16, self.wflag | VRING_DESC_F_NEXT, 1), Desc(g, 16, self.wflag | VRING_DESC_F_NEXT, 0)]
        return self._indirect(table, publish=publish, kick=kick)

    def indirect_next_out_of_table(self, *, publish: bool = True, kick: bool = True) -> int:
        """Indirect entry whose ``next`` points past the end of the table."""
        return self._indirect([Desc(self._buf(), 16, self.wflag | VRING_DESC_F_NEXT, 7)],
                              publish=publish, kick=kick)

    def indirect_too_long(self, entries: int | None = None, *, publish: bool = True, kick: bool = True) -> int:
        """Indirect table with more entries than the ring size (a chain longer than Q)."""
        n = self.ring.num + 1 if entries is None else entries
        g = self._buf()
        table = [Desc(g, 1, self.wflag | (VRING_DESC_F_NEXT if i + 1 < n else 0), i + 1 if i + 1 < n else 0)
                 for i in range(n)]
        return self._indirect(table, publish=publish, kick=kick)


# ---------------------------------------------------------------------------
# vhost-user control channel
# ---------------------------------------------------------------------------


@dataclass
class Message:
    """A decoded vhost-user message (header fields + payload + received fds)."""

    request: int
    flags: int
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)

    HEADER_SIZE = _HDR.size

    def encode(self, size: int | None = None) -> bytes:
        """Header + payload; ``size`` overrides the header's size field (lies allowed)."""
        return _HDR.pack(self.request, self.flags, len(self.payload) if size is None else size) + self.payload

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & VHOST_USER_REPLY)

    def u64(self) -> int:
        if len(self.payload) != 8:
            raise ProtocolError(f"expected a u64 payload, got {len(self.payload)} bytes (request {self.request})")
        return int(_U64.unpack(self.payload)[0])

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


@dataclass
class QueuePair:
    rx: SplitRing | PackedRing
    tx: SplitRing | PackedRing


@dataclass
class NetDevice:
    """Result of ``setup_net_device``: a started virtio-net device."""

    frontend: VhostUserFrontend
    mem: GuestMemory
    features: int
    protocol_features: int
    offered_features: int
    offered_protocol_features: int
    pairs: list[QueuePair]
    max_queue_pairs: int | None = None
    max_mem_slots: int | None = None
    owns_memory: bool = True  # guest memory was created by setup_net_device

    def rx(self, q: int = 0) -> SplitRing | PackedRing:
        return self.pairs[q].rx

    def tx(self, q: int = 0) -> SplitRing | PackedRing:
        return self.pairs[q].tx

    @property
    def rings(self) -> list[SplitRing | PackedRing]:
        return [r for p in self.pairs for r in (p.rx, p.tx)]

    def has(self, feature: int) -> bool:
        return bool(self.features >> int(feature) & 1)

    def send(self, frame: bytes, q: int = 0, **kw: Any) -> int:
        """``post_tx`` on TX ring ``q``."""
        return self.pairs[q].tx.post_tx(frame, **kw)

    @property
    def packed(self) -> bool:
        return self.has(Feature.RING_PACKED)

    def stop(self) -> dict[int, int]:
        """QEMU's ``vhost_dev_stop``: disable every ring, then GET_VRING_BASE each.

        Returns {vring index: next avail index reported by the back-end}
        (packed rings: the vring base value, see ``get_vring_base``).
        """
        fe = self.frontend
        if self.features >> Feature.PROTOCOL_FEATURES & 1:
            for r in self.rings:
                fe.set_vring_enable(r.index, False)
        return {r.index: fe.get_vring_base(r.index) for r in self.rings}

    def close(self, *, close_memory: bool | None = None) -> None:
        """Close the socket and the rings' eventfds; close guest memory if
        ``close_memory`` (default: if setup_net_device created it)."""
        self.frontend.close()
        for r in self.rings:
            r.close()
        if self.owns_memory if close_memory is None else close_memory:
            self.mem.close()


class VhostUserFrontend:
    """vhost-user front-end control channel over an AF_UNIX stream socket.

    ``server=False`` connects to a listening back-end (retrying until
    ``connect_timeout`` while the socket does not exist yet); ``server=True``
    listens on ``path`` and accepts one back-end (``accept_timeout``; None:
    only listen now, call ``accept`` later, e.g. after starting a back-end
    in client mode).  ``timeout`` bounds every wait for a reply.
    """

    MAX_FDS = 32  # how many fds we accept in one received message
    MAX_REPLY = 0x1000  # bound on a reply payload we are willing to read

    def __init__(self, path: str, server: bool = False, *, timeout: float = 5.0,
                 connect_timeout: float = 10.0, accept_timeout: float | None = 10.0) -> None:
        self.path = path
        self.server = server
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.listener: socket.socket | None = None
        self.trace: list[tuple[str, int, int, int]] = []  # ("tx"/"rx", request, flags, size)
        self.acked_protocol_features = 0
        if server:
            self.listen()
            if accept_timeout is not None:
                try:
                    self.accept(accept_timeout)
                except BaseException:
                    self.close()
                    raise
        else:
            self.connect(connect_timeout)

    # -- connection management --------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """(Re)connect to the back-end's socket."""
        self._close_sock()
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(self.path)
                self.sock = s
                return
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def listen(self) -> None:
        if self.listener is not None:
            return
        try:
            os.unlink(self.path)  # a stale socket file would make bind fail
        except FileNotFoundError:
            pass
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        ls.bind(self.path)
        ls.listen(1)
        self.listener = ls

    def accept(self, timeout: float = 10.0) -> None:
        """(Re)accept a back-end on the listening socket."""
        assert self.listener is not None
        self._close_sock()
        r = readable(self.listener, timeout)
        if not r:
            raise ReplyTimeout(f"no back-end connected to {self.path} within {timeout}s")
        s, _ = self.listener.accept()
        s.setblocking(True)
        self.sock = s

    def reconnect(self, timeout: float = 10.0) -> None:
        """Connect again (client) or accept again (server)."""
        self.acked_protocol_features = 0
        if self.server:
            self.accept(timeout)
        else:
            self.connect(timeout)

    def _close_sock(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        self._close_sock()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> VhostUserFrontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connected(self) -> bool:
        """False once the back-end closed the connection (EOF/reset), without blocking.

        Unread messages from the back-end are left in place.
        """
        if self.sock is None:
            return False
        r = readable(self.sock, 0)
        if not r:
            return True
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return data != b""

    def wait_closed(self, timeout: float = 2.0) -> bool:
        """Wait until the back-end closes the connection; discards what it sends meanwhile."""
        if self.sock is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return not self.connected()
            r = readable(self.sock, left)
            if not r:
                continue
            try:
                msg, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(self.MAX_FDS * 4))
            except BlockingIOError:
                continue
            except OSError:
                return True
            for fd in _fds_from_ancillary(anc):
                os.close(fd)
            if msg == b"":
                return True

    # -- raw send/receive -------------------------------------------------------

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send arbitrary bytes (and fds via SCM_RIGHTS) in one sendmsg."""
        if self.sock is None:
            raise PeerClosed("not connected")
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        try:
            sent = self.sock.sendmsg([data], anc)
            view = memoryview(data)[sent:]
            while view:  # rest without fds (they went with the first byte)
                n = self.sock.send(view)
                view = view[n:]
        except (BrokenPipeError, ConnectionResetError) as e:
            raise PeerClosed(str(e)) from e
        if len(data) >= _HDR.size:
            req, flags, size = _HDR.unpack_from(data)
            self.trace.append(("tx", req, flags, size))

    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *,
             need_reply: bool = False, flags: int | None = None) -> None:
        """Send one message.  ``flags`` overrides the header flags entirely."""
        if flags is None:
            flags = VHOST_USER_VERSION | (VHOST_USER_NEED_REPLY if need_reply else 0)
        self.send_raw(Message(int(request), flags, payload).encode(), fds)

    def recv_msg(self, timeout: float | None = None) -> Message:
        """Read one complete message (header, payload, fds)."""
        if self.sock is None:
            raise PeerClosed("not connected")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        fds: list[int] = []
        try:
            head = self._recv_exact(_HDR.size, deadline, fds)
            request, flags, size = _HDR.unpack(head)
            if size > self.MAX_REPLY:
                raise ProtocolError(f"reply payload size {size} too large (request {request})")
            payload = self._recv_exact(size, deadline, fds) if size else b""
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.trace.append(("rx", request, flags, size))
        return Message(request, flags, payload, fds)

    def _recv_exact(self, n: int, deadline: float, fds: list[int]) -> bytes:
        assert self.sock is not None
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplyTimeout(f"timed out reading {n} bytes (got {len(buf)})")
            r = readable(self.sock, left)
            if not r:
                continue
            try:
                data, anc, mflags, _ = self.sock.recvmsg(n - len(buf), socket.CMSG_SPACE(self.MAX_FDS * 4))
            except BlockingIOError:
                continue
            except ConnectionResetError as e:
                raise PeerClosed(str(e)) from e
            fds.extend(_fds_from_ancillary(anc))
            if mflags & socket.MSG_CTRUNC:
                raise ProtocolError("control data truncated (too many fds from back-end)")
            if not data:
                raise PeerClosed("back-end closed the connection")
            buf += data
        return bytes(buf)

    def recv_reply(self, request: int, timeout: float | None = None) -> Message:
        """Read the reply to ``request`` and check its header."""
        msg = self.recv_msg(timeout)
        if msg.request != int(request):
            msg.close_fds()
            raise ProtocolError(f"reply for request {msg.request}, expected {int(request)}")
        if msg.flags & VHOST_USER_VERSION_MASK != VHOST_USER_VERSION or not msg.flags & VHOST_USER_REPLY:
            msg.close_fds()
            raise ProtocolError(f"bad reply flags {msg.flags:#x} for request {int(request)}")
        return msg

    def request(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *,
                need_reply: bool = False) -> int | None:
        """Send a message that has no natural reply.

        ``need_reply`` sets NEED_REPLY (REPLY_ACK) and returns the back-end's
        ack u64 ("0 = success, non-zero = failure"); otherwise returns None
        as soon as the message is sent (the back-end may not have acted yet,
        see ``sync``).
        """
        self.send(request, payload, fds, need_reply=need_reply)
        if need_reply:
            return self.recv_reply(request).u64()
        return None

    def query(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *,
              need_reply: bool = False) -> Message:
        """Send a message that has a natural reply (GET_*) and return the reply.

        The caller owns any fds in the reply.  NEED_REPLY on such a message
        changes nothing ("messages that already reply are unchanged").
        """
        self.send(request, payload, fds, need_reply=need_reply)
        return self.recv_reply(request)

    # -- typed messages -----------------------------------------------------------

    def _get_u64(self, request: Req, need_reply: bool = False) -> int:
        msg = self.query(request, need_reply=need_reply)
        msg.close_fds()
        return msg.u64()

    def _set_u64(self, request: Req, value: int, need_reply: bool, fds: Sequence[int] = ()) -> int | None:
        return self.request(request, _U64.pack(value & 2**64 - 1), fds, need_reply=need_reply)

    def _set_state(self, request: Req, index: int, num: int, need_reply: bool) -> int | None:
        return self.request(request, _VRING_STATE.pack(index & 0xFFFFFFFF, num & 0xFFFFFFFF),
                            need_reply=need_reply)

    def get_features(self) -> int:
        return self._get_u64(Req.GET_FEATURES)

    def set_features(self, features: int, *, need_reply: bool = False) -> int | None:
        return self._set_u64(Req.SET_FEATURES, features, need_reply)

    def get_protocol_features(self) -> int:
        return self._get_u64(Req.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int, *, need_reply: bool = False) -> int | None:
        self.acked_protocol_features = features
        return self._set_u64(Req.SET_PROTOCOL_FEATURES, features, need_reply)

    def set_owner(self, *, need_reply: bool = False) -> int | None:
        return self.request(Req.SET_OWNER, need_reply=need_reply)

    def reset_owner(self, *, need_reply: bool = False) -> int | None:
        return self.request(Req.RESET_OWNER, need_reply=need_reply)

    def reset_device(self, *, need_reply: bool = False) -> int | None:
        return self.request(Req.RESET_DEVICE, need_reply=need_reply)

    def get_queue_num(self) -> int:
        """Max queue *pairs* for a net back-end (needs protocol feature MQ)."""
        return self._get_u64(Req.GET_QUEUE_NUM)

    def get_max_mem_slots(self) -> int:
        return self._get_u64(Req.GET_MAX_MEM_SLOTS)

    def set_mem_table(self, regions: GuestMemory | Sequence[VhostMemRegion | MemRegion], *,
                      need_reply: bool = False, fds: Sequence[int] | None = None,
                      nregions: int | None = None) -> int | None:
        """SET_MEM_TABLE: ``u32 nregions; u32 padding; region[nregions]`` + one fd per region.

        Sends exactly the regions given (QEMU sends ``8 + 32·n`` bytes, not
        the whole 8-slot array).  ``fds``/``nregions`` override what is sent,
        for malformed variants.
        """
        regs = regions.vhost_regions() if isinstance(regions, GuestMemory) else \
            [r.vhost() if isinstance(r, MemRegion) else r for r in regions]
        payload = _MEM_TABLE_HDR.pack(len(regs) if nregions is None else nregions, 0) + \
            b"".join(r.pack() for r in regs)
        return self.request(Req.SET_MEM_TABLE, payload, [r.fd for r in regs] if fds is None else fds,
                            need_reply=need_reply)

    def add_mem_reg(self, region: VhostMemRegion | MemRegion, *, need_reply: bool = False,
                    fd: int | None = None) -> int | None:
        """ADD_MEM_REG: ``u64 padding; region`` + exactly one fd."""
        r = region.vhost() if isinstance(region, MemRegion) else region
        return self.request(Req.ADD_MEM_REG, _U64.pack(0) + r.pack(), [r.fd if fd is None else fd],
                            need_reply=need_reply)

    def rem_mem_reg(self, region: VhostMemRegion | MemRegion, *, need_reply: bool = False,
                    fd: int | None = None) -> int | None:
        """REM_MEM_REG: ``u64 padding; region``; no fd unless ``fd`` (back-end MAY accept one)."""
        r = region.vhost() if isinstance(region, MemRegion) else region
        return self.request(Req.REM_MEM_REG, _U64.pack(0) + r.pack(), [] if fd is None else [fd],
                            need_reply=need_reply)

    def set_vring_num(self, index: int, num: int, *, need_reply: bool = False) -> int | None:
        return self._set_state(Req.SET_VRING_NUM, index, num, need_reply)

    def set_vring_base(self, index: int, base: int, *, need_reply: bool = False) -> int | None:
        """Split ring: ``num`` = next avail index the device should process.
        Packed ring: 32 bits (``packed_ring.packed_vring_base``): avail index,
        avail wrap counter, used index, used wrap counter."""
        return self._set_state(Req.SET_VRING_BASE, index, base, need_reply)

    def get_vring_base(self, index: int) -> int:
        """Stops the ring; returns the back-end's next avail index (packed rings:
        the 32-bit value as SET_VRING_BASE, or only its low 16 bits from back-ends
        that report just the avail side, as DPDK 22.11)."""
        msg = self.query(Req.GET_VRING_BASE, _VRING_STATE.pack(index, 0))
        msg.close_fds()
        if len(msg.payload) != _VRING_STATE.size:
            raise ProtocolError(f"GET_VRING_BASE reply of {len(msg.payload)} bytes")
        ridx, num = _VRING_STATE.unpack(msg.payload)
        if ridx != index:
            raise ProtocolError(f"GET_VRING_BASE reply for vring {ridx}, asked {index}")
        return int(num)

    # -- ACCESS_PLATFORM: the back-end channel and the IOTLB --------------------

    def open_backend_channel(self) -> socket.socket:
        """SET_BACKEND_REQ_FD with one end of a new socketpair (REPLY_ACK if
        acked); returns our end, where the back-end sends IOTLB misses."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            res = self.request(Req.SET_BACKEND_REQ_FD, b"", [theirs.fileno()],
                               need_reply=bool(self.acked_protocol_features >> ProtocolFeature.REPLY_ACK & 1))
        finally:
            theirs.close()
        if res:
            ours.close()
            raise VhostUserError(f"SET_BACKEND_REQ_FD nacked ({res})")
        return ours

    def iotlb_msg(self, iova: int, size: int, uaddr: int, perm: int, kind: int) -> int:
        """IOTLB_MSG (struct vhost_iotlb_msg, 32 bytes as QEMU sends it), with
        NEED_REPLY; kind 2 UPDATE, 3 INVALIDATE; perm 1 RO, 2 WO, 3 RW.
        Returns the back-end's u64 (always sent: 0 success)."""
        self.send(Req.IOTLB_MSG, _IOTLB.pack(iova, size, uaddr, perm, kind), need_reply=True)
        return self.recv_reply(Req.IOTLB_MSG).u64()

    def iotlb_map_memory(self, mem: GuestMemory, perm: int = 3) -> None:
        """Entries for the setup_net_device addresses: descriptors hold GPAs
        and SET_VRING_ADDR front-end addresses, so both are mapped as IOVAs
        (they do not overlap), each to the region's front-end address."""
        for r in mem.vhost_regions():
            for iova in (r.gpa, r.uaddr):
                res = self.iotlb_msg(iova, r.size, r.uaddr, perm, 2)
                if res:
                    raise VhostUserError(f"IOTLB UPDATE {iova:#x} nacked ({res})")

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int, *, flags: int = 0,
                       log: int = 0, need_reply: bool = False) -> int | None:
        """Ring addresses are *front-end virtual addresses* (uaddr), not GPAs."""
        payload = _VRING_ADDR.pack(index, flags, desc, used, avail, log)
        return self.request(Req.SET_VRING_ADDR, payload, need_reply=need_reply)

    def set_vring_addr_of(self, ring: SplitRing | PackedRing, *, need_reply: bool = False, flags: int = 0,
                          log: int = 0) -> int | None:
        return self.set_vring_addr(ring.index, ring.desc_uaddr, ring.used_uaddr, ring.avail_uaddr,
                                   flags=flags, log=log, need_reply=need_reply)

    def _set_vring_fd(self, request: Req, index: int, fd: int | None, need_reply: bool) -> int | None:
        value = (index & VHOST_USER_VRING_IDX_MASK) | (VHOST_USER_VRING_NOFD if fd is None else 0)
        return self._set_u64(request, value, need_reply, [] if fd is None else [fd])

    def set_vring_kick(self, index: int, fd: int | None, *, need_reply: bool = False) -> int | None:
        """``fd=None`` sends the 0x100 "no fd" flag (back-end must poll)."""
        return self._set_vring_fd(Req.SET_VRING_KICK, index, fd, need_reply)

    def set_vring_call(self, index: int, fd: int | None, *, need_reply: bool = False) -> int | None:
        return self._set_vring_fd(Req.SET_VRING_CALL, index, fd, need_reply)

    def set_vring_err(self, index: int, fd: int | None, *, need_reply: bool = False) -> int | None:
        return self._set_vring_fd(Req.SET_VRING_ERR, index, fd, need_reply)

    def set_vring_enable(self, index: int, enable: bool = True, *, need_reply: bool = False) -> int | None:
        return self._set_state(Req.SET_VRING_ENABLE, index, int(enable), need_reply)

    def net_set_mtu(self, mtu: int, *, need_reply: bool = False) -> int | None:
        return self._set_u64(Req.NET_SET_MTU, mtu, need_reply)

    def send_rarp(self, mac: bytes | str, *, need_reply: bool = False) -> int | None:
        """SEND_RARP: u64 whose first 6 bytes (memory order) are the guest MAC."""
        if isinstance(mac, str):
            mac = bytes.fromhex(mac.replace(":", ""))
        if len(mac) != 6:
            raise ValueError("MAC must be 6 bytes")
        return self.request(Req.SEND_RARP, bytes(mac) + b"\0\0", need_reply=need_reply)

    def set_status(self, status: int, *, need_reply: bool = False) -> int | None:
        return self._set_u64(Req.SET_STATUS, status, need_reply)

    def get_status(self) -> int:
        return self._get_u64(Req.GET_STATUS)

    def set_log_base(self, fd: int, size: int, offset: int = 0) -> Message:
        """SET_LOG_BASE (LOG_SHMFD): always answered; the payload of the reply is unspecified."""
        return self.query(Req.SET_LOG_BASE, _LOG.pack(size, offset), [fd])

    def set_log_fd(self, fd: int, *, need_reply: bool = False) -> int | None:
        return self.request(Req.SET_LOG_FD, b"", [fd], need_reply=need_reply)

    def sync(self) -> None:
        """Round trip that proves the back-end handled every earlier message.

        Most messages have no reply, so ``send`` returns long before the
        back-end acted on them (DPDK declares the device ready, and starts
        forwarding, only after handling the last of them).  Back-ends read a
        connection's messages in order, so once the answer to a GET_FEATURES
        arrives, all earlier messages were processed.  QEMU does the same
        (``enforce_reply`` in hw/virtio/vhost-user.c) when REPLY_ACK is absent.
        """
        self.get_features()

    # -- the QEMU start sequence ------------------------------------------------

    def setup_net_device(self, queue_pairs: int = 1, ring_size: int = 256, features: int | None = None, *,
                         mem: GuestMemory | None = None, mem_size: int = 32 << 20,
                         protocol_features: int | None = None, mask_with_offer: bool = True,
                         use_protocol_features: bool = True, ring_region: int | None = None,
                         buf_region: int | None = None, mtu: int | None = None, enable: bool = True,
                         send_err_fd: bool = True, set_features_per_pair: bool = True,
                         status: bool = True, sync: bool = True, rx_buffers: int = 0,
                         rx_buf_len: int = 2048, packed: bool = False) -> NetDevice:
        """Negotiate and start a virtio-net device in the order QEMU's vhost-user-net
        sends the messages.

        Sequence: GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES,
        GET_QUEUE_NUM (if MQ), GET_MAX_MEM_SLOTS (if CONFIGURE_MEM_SLOTS),
        SET_OWNER; then per queue pair: SET_FEATURES (QEMU repeats it for each
        pair's vhost_dev), SET_MEM_TABLE (once, NEED_REPLY if REPLY_ACK),
        per vring NUM, BASE, ADDR, KICK, CALL (+ERR); finally SET_VRING_ENABLE
        1 for every vring, NET_SET_MTU if ``mtu``, SET_STATUS(DRIVER_OK) if the
        STATUS protocol feature was acked, then (``sync``) one GET_FEATURES
        round trip so that the back-end has finished handling all of the above
        before we return (see ``sync``).

        ``features``: wanted virtio feature bits (default VERSION_1); masked
        with the back-end's offer unless ``mask_with_offer=False``.  Bit 30
        (PROTOCOL_FEATURES) is added when offered and ``use_protocol_features``.

        ``packed``: ask for VIRTIO_F_RING_PACKED and build packed rings
        (``packed_ring.PackedRing``, any ring size 1..32768).  An offer without
        the bit is an error, unless ``mask_with_offer=False`` (hostile: packed
        rings the back-end never agreed to).
        """
        offered = self.get_features()
        want = DEFAULT_NET_FEATURES if features is None else features
        want &= ~bits(Feature.PROTOCOL_FEATURES)
        proto_offered = 0
        proto = 0
        use_proto = use_protocol_features and bool(offered >> Feature.PROTOCOL_FEATURES & 1)
        max_pairs: int | None = None
        max_slots: int | None = None
        if use_proto:
            proto_offered = self.get_protocol_features()
            proto = DEFAULT_PROTOCOL_FEATURES if protocol_features is None else protocol_features
            if mask_with_offer:
                proto &= proto_offered
            self.set_protocol_features(proto)
            if proto >> ProtocolFeature.MQ & 1:
                max_pairs = self.get_queue_num()
            if proto >> ProtocolFeature.CONFIGURE_MEM_SLOTS & 1:
                max_slots = self.get_max_mem_slots()
        if queue_pairs > (max_pairs or 1):
            raise VhostUserError(f"back-end supports {max_pairs or 1} queue pairs, asked {queue_pairs}")
        self.set_owner()
        if packed:
            want |= bits(Feature.RING_PACKED)
            if mask_with_offer and not offered >> Feature.RING_PACKED & 1:
                raise VhostUserError(f"back-end does not offer RING_PACKED (features {offered:#x})")
        final = (want & offered) if mask_with_offer else want
        if use_proto:
            final |= bits(Feature.PROTOCOL_FEATURES)
        if queue_pairs > 1 and mask_with_offer:
            final |= bits(Feature.MQ) & offered
        version_1 = bool(final >> Feature.VERSION_1 & 1)
        mrg = bool(final >> Feature.MRG_RXBUF & 1)
        hdr_len = 12 if (version_1 or mrg) else 10  # virtio-net "Device Operation"
        own_mem = mem is None
        if mem is None:
            mem = GuestMemory(mem_size)
        pairs: list[QueuePair] = []
        ring_kind: Any = SplitRing
        if final >> Feature.RING_PACKED & 1:
            # Imported here: packed_ring builds on this module's classes.
            from .packed_ring import PackedRing
            ring_kind = PackedRing
        try:
            for q in range(queue_pairs):
                pairs.append(QueuePair(
                    ring_kind(mem, ring_size, 2 * q, region=ring_region, buf_region=buf_region,
                              hdr_len=hdr_len, mrg_rxbuf=mrg),
                    ring_kind(mem, ring_size, 2 * q + 1, region=ring_region, buf_region=buf_region,
                              hdr_len=hdr_len, mrg_rxbuf=mrg)))
            for pair in pairs:
                pair.rx.event_idx = pair.tx.event_idx = bool(final >> Feature.EVENT_IDX & 1)
            ack = bool(proto >> ProtocolFeature.REPLY_ACK & 1)
            for q, pair in enumerate(pairs):
                if q == 0 or set_features_per_pair:
                    self.set_features(final)
                if q == 0:
                    res = self.set_mem_table(mem, need_reply=ack)
                    if ack and res != 0:
                        raise VhostUserError(f"SET_MEM_TABLE nacked ({res})")
                for ring in (pair.rx, pair.tx):
                    self.set_vring_num(ring.index, ring.num)
                    self.set_vring_base(ring.index, ring.vring_base())
                    self.set_vring_addr_of(ring)
                    self.set_vring_kick(ring.index, ring.kick_fd)
                    self.set_vring_call(ring.index, ring.call_fd)
                    if send_err_fd:
                        self.set_vring_err(ring.index, ring.err_fd)
            if enable and use_proto:
                for pair in pairs:
                    for ring in (pair.rx, pair.tx):
                        self.set_vring_enable(ring.index, True)
            if mtu is not None:
                res = self.net_set_mtu(mtu, need_reply=ack)
                if ack and res != 0:
                    raise VhostUserError(f"NET_SET_MTU nacked ({res})")
            if status and proto >> ProtocolFeature.STATUS & 1:
                self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
            if sync:
                self.sync()
            if rx_buffers:
                for pair in pairs:
                    pair.rx.post_rx(rx_buffers, rx_buf_len)
        except BaseException:
            for pair in pairs:
                pair.rx.close()
                pair.tx.close()
            if own_mem:
                mem.close()
            raise
        return NetDevice(self, mem, final, proto, offered, proto_offered, pairs, max_pairs, max_slots, own_mem)


def _fds_from_ancillary(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
    return fds


def wait_for_socket(path: str, timeout: float = 30.0) -> bool:
    """Wait until the socket file ``path`` exists (does not connect: a probe
    connection would look like a front-end to the back-end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.05)
    return False

