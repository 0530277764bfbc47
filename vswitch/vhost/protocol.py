"""vhost-user wire format: message ids, flags, feature bits and payload codecs.

Source: QEMU docs/interop/vhost-user.rst ("Message Specification"). All
integers are in the host's native byte order (the protocol is only spoken
between processes on one host), and the header is 12 packed bytes:
``u32 request, u32 flags, u32 size``. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct("=III")
HEADER_SIZE = HEADER.size  # 12

# Flags (header word 2). "bits 0-1: version (0x1); bit 2: reply; bit 3: need_reply".
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
KNOWN_FLAGS = VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY

# The largest payload we accept: SET_MEM_TABLE with 8 regions is 264 bytes;
# rust-vmm bounds messages at 4 KiB. Anything larger is hostile.
MAX_PAYLOAD = 4096
# QEMU, DPDK and VPP send at most VHOST_MEMORY_MAX_NREGIONS = 8 fds.
MAX_FDS = 8
MAX_MEM_REGIONS = 8
# u64 payload of SET_VRING_KICK/CALL/ERR: "Bits (0-7) of the payload contain
# the vring index. Bit 8 is the invalid FD flag."
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 0x100


class Request(enum.IntEnum):
    """Front-end message ids (vhost-user.rst "Front-end message types"), all of
    them, so that logs and `port show` print a name even for the ones the
    session does not implement (vhost/session.py answers or refuses those)."""

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


class BackendRequest(enum.IntEnum):
    """Back-end message ids (vhost-user.rst "Back-end message types"): sent on
    the channel of SET_BACKEND_REQ_FD (vhost/channel.py). The switch sends
    IOTLB_MSG (misses) only; the others are named for logs."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8


def request_name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return f"UNKNOWN({request})"


# Front-end requests whose reply the spec demands whatever the flags say, and
# the reply that says "failed" (or "nothing") in each one's own reply layout.
# A back-end that does not implement one of them must still answer it: the
# front-end blocks reading that reply. vhost-user.rst, per message:
# u64 replies are "0 success, non-zero error"; GET_CONFIG: "zero length of
# payload to indicate an error"; SET_DEVICE_STATE_FD: bits 0-7 the error,
# bit 8 "no fd returned"; GET_STATUS has no error value, and 0 is the honest
# status of a back-end that does not track one. The struct replies
# (CREATE_CRYPTO_SESSION, POSTCOPY_ADVISE, GET_INFLIGHT_FD) get an empty
# payload and no fd: the front-end's size check fails the request.
# GET_FEATURES, GET_PROTOCOL_FEATURES, GET_VRING_BASE, GET_QUEUE_NUM,
# GET_MAX_MEM_SLOTS, SET_LOG_BASE and IOTLB_MSG also always reply but are implemented.
FAILURE_REPLIES: dict[Request, bytes] = {
    Request.GET_CONFIG: b"",
    Request.CREATE_CRYPTO_SESSION: b"",
    Request.POSTCOPY_ADVISE: b"",
    Request.POSTCOPY_END: struct.pack("=Q", 1),
    Request.GET_INFLIGHT_FD: b"",
    Request.GET_STATUS: struct.pack("=Q", 0),
    Request.GET_SHARED_OBJECT: struct.pack("=Q", 1),
    Request.SET_DEVICE_STATE_FD: struct.pack("=Q", 0x101),
    Request.CHECK_DEVICE_STATE: struct.pack("=Q", 1),
}


class ProtocolFeature(enum.IntEnum):
    """VHOST_USER_PROTOCOL_F_* bit numbers (vhost-user.rst "Protocol features"),
    all of them; bits a later spec adds print as ``bitN`` (decode_bits)."""

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
    """virtio / virtio-net / vhost feature bit numbers (virtio spec, vhost-user.rst)."""

    NET_CSUM = 0
    NET_GUEST_CSUM = 1
    NET_MTU = 3
    NET_MAC = 5
    NET_GUEST_TSO4 = 7
    NET_GUEST_TSO6 = 8
    NET_GUEST_ECN = 9
    NET_GUEST_UFO = 10
    NET_HOST_TSO4 = 11
    NET_HOST_TSO6 = 12
    NET_HOST_ECN = 13
    NET_HOST_UFO = 14
    NET_MRG_RXBUF = 15
    NET_STATUS = 16
    NET_CTRL_VQ = 17
    NET_GUEST_ANNOUNCE = 21
    NET_MQ = 22
    F_NOTIFY_ON_EMPTY = 24
    VHOST_F_LOG_ALL = 26
    F_ANY_LAYOUT = 27
    RING_F_INDIRECT_DESC = 28
    RING_F_EVENT_IDX = 29
    VHOST_USER_F_PROTOCOL_FEATURES = 30
    F_VERSION_1 = 32
    F_ACCESS_PLATFORM = 33
    F_RING_PACKED = 34
    F_IN_ORDER = 35


def bits(*names: enum.IntEnum) -> int:
    mask = 0
    for name in names:
        mask |= 1 << int(name)
    return mask


def decode_bits(mask: int, enum_type: type[enum.IntEnum]) -> list[str]:
    """Names of the set bits, unknown bits as ``bitN`` (for `port show`)."""
    names = []
    for bit in range(64):
        if mask & (1 << bit):
            try:
                names.append(enum_type(bit).name)
            except ValueError:
                names.append(f"bit{bit}")
    return names


class ProtocolError(Exception):
    """A malformed or impossible message: the connection is closed."""


@dataclass(frozen=True)
class Header:
    request: int
    flags: int
    size: int

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


def decode_header(data: bytes) -> Header:
    request, flags, size = HEADER.unpack(data)
    if flags & VERSION_MASK != VERSION:
        raise ProtocolError(f"bad protocol version in flags {flags:#x}")
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError(f"reserved flag bits set: {flags:#x}")
    if flags & FLAG_REPLY:
        raise ProtocolError("front-end sent a message flagged as reply")
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"payload size {size} exceeds {MAX_PAYLOAD}")
    return Header(request, flags, size)


def encode_reply(request: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(request, VERSION | FLAG_REPLY, len(payload)) + payload


def encode_u64_reply(request: int, value: int) -> bytes:
    return encode_reply(request, U64.pack(value))


# --- payloads --------------------------------------------------------------

U64 = struct.Struct("=Q")
VRING_STATE = struct.Struct("=II")
VRING_ADDR = struct.Struct("=IIQQQQ")
MEM_REGION = struct.Struct("=QQQQ")
MEM_TABLE_HEAD = struct.Struct("=II")
SINGLE_MEM_REGION = struct.Struct("=Q") # padding before one region (ADD/REM_MEM_REG)


def _expect_size(payload: bytes, size: int, what: str) -> None:
    if len(payload) != size:
        raise ProtocolError(f"{what}: payload is {len(payload)} bytes, expected {size}")


def decode_u64(payload: bytes, what: str) -> int:
    _expect_size(payload, U64.size, what)
    return U64.unpack(payload)[0]


@dataclass(frozen=True)
class VringState:
    index: int
    num: int


def decode_vring_state(payload: bytes, what: str) -> VringState:
    _expect_size(payload, VRING_STATE.size, what)
    return VringState(*VRING_STATE.unpack(payload))


@dataclass(frozen=True)
class VringAddr:
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


VRING_F_LOG = 0x1


def decode_vring_addr(payload: bytes) -> VringAddr:
    _expect_size(payload, VRING_ADDR.size, "SET_VRING_ADDR")
    return VringAddr(*VRING_ADDR.unpack(payload))


@dataclass(frozen=True)
class MemRegion:
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int


U64_MAX = (1 << 64) - 1


def _check_region(region: MemRegion, what: str) -> None:
    if region.memory_size == 0:
        raise ProtocolError(f"{what}: region of size 0")
    for name, base in (("guest_phys_addr", region.guest_phys_addr),
                       ("userspace_addr", region.userspace_addr),
                       ("mmap_offset", region.mmap_offset)):
        if base > U64_MAX - region.memory_size:
            raise ProtocolError(f"{what}: {name} {base:#x} + size {region.memory_size:#x} overflows")


def decode_mem_table(payload: bytes) -> list[MemRegion]:
    if len(payload) < MEM_TABLE_HEAD.size:
        raise ProtocolError(f"SET_MEM_TABLE: payload is {len(payload)} bytes")
    nregions, _padding = MEM_TABLE_HEAD.unpack_from(payload)
    if not 1 <= nregions <= MAX_MEM_REGIONS:
        raise ProtocolError(f"SET_MEM_TABLE: {nregions} regions (1..{MAX_MEM_REGIONS})")
    # QEMU always sends the full 8-slot array; DPDK's virtio-user only the used
    # slots. Accept both, but never fewer bytes than the regions announced.
    need = MEM_TABLE_HEAD.size + nregions * MEM_REGION.size
    if len(payload) < need or len(payload) > MEM_TABLE_HEAD.size + MAX_MEM_REGIONS * MEM_REGION.size:
        raise ProtocolError(f"SET_MEM_TABLE: payload is {len(payload)} bytes for {nregions} regions")
    regions = []
    for i in range(nregions):
        region = MemRegion(*MEM_REGION.unpack_from(payload, MEM_TABLE_HEAD.size + i * MEM_REGION.size))
        _check_region(region, "SET_MEM_TABLE")
        regions.append(region)
    return regions


def decode_single_mem_region(payload: bytes, what: str) -> MemRegion:
    """ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region."""
    _expect_size(payload, SINGLE_MEM_REGION.size + MEM_REGION.size, what)
    region = MemRegion(*MEM_REGION.unpack_from(payload, SINGLE_MEM_REGION.size))
    _check_region(region, what)
    return region


def encode_single_mem_region(region: MemRegion) -> bytes:
    return SINGLE_MEM_REGION.pack(0) + MEM_REGION.pack(
        region.guest_phys_addr, region.memory_size, region.userspace_addr, region.mmap_offset)


LOG = struct.Struct("=QQ")   # mmap_size, mmap_offset (SET_LOG_BASE)


def decode_log(payload: bytes) -> tuple[int, int]:
    _expect_size(payload, LOG.size, "SET_LOG_BASE")
    size, offset = LOG.unpack(payload)
    if size == 0 or offset > U64_MAX - size:
        raise ProtocolError(f"SET_LOG_BASE: size {size:#x} at offset {offset:#x} is not valid")
    return size, offset


def encode_mem_table(regions: list[MemRegion]) -> bytes:
    out = MEM_TABLE_HEAD.pack(len(regions), 0)
    for r in regions:
        out += MEM_REGION.pack(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)
    return out


def encode_vring_state(index: int, num: int) -> bytes:
    return VRING_STATE.pack(index, num)


# struct vhost_iotlb_msg (IOTLB_MSG both ways): iova, size, uaddr, perm, type,
# padded to 8 bytes as in QEMU's VhostUserMsg payload union (32 bytes).
IOTLB = struct.Struct("=QQQBB6x")
IOTLB_PERM_RO, IOTLB_PERM_WO, IOTLB_PERM_RW = 1, 2, 3
IOTLB_MISS, IOTLB_UPDATE, IOTLB_INVALIDATE, IOTLB_ACCESS_FAIL = 1, 2, 3, 4


@dataclass(frozen=True)
class IotlbMsg:
    iova: int
    size: int
    uaddr: int
    perm: int
    type: int


def decode_iotlb(payload: bytes) -> IotlbMsg:
    # QEMU sends the 32 bytes of the struct; the packed 26 are tolerated.
    if len(payload) not in (IOTLB.size, IOTLB.size - 6):
        raise ProtocolError(f"IOTLB_MSG: payload is {len(payload)} bytes, expected {IOTLB.size}")
    return IotlbMsg(*IOTLB.unpack(payload.ljust(IOTLB.size, b"\0")))


def encode_iotlb(msg: IotlbMsg) -> bytes:
    return IOTLB.pack(msg.iova, msg.size, msg.uaddr, msg.perm, msg.type)


def encode_backend_request(request: int, payload: bytes) -> bytes:
    """A back-end channel message: no reply asked (NEED_REPLY clear)."""
    return HEADER.pack(request, VERSION, len(payload)) + payload
