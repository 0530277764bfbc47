"""Hostile vhost-user front-ends, for hypothesis and atheris alike.

* ``Chooser``: where the random choices come from (``HypothesisChooser`` wraps
  hypothesis' ``data``, ``FdpChooser`` an atheris ``FuzzedDataProvider``), so
  the same generators serve property tests and coverage-guided fuzzing.
* ``gen_message``: one message of a random type from the protocol's own
  ``Request`` enum (so handlers added later are fuzzed too), with a payload of
  the shape that request expects most of the time - vring indices that
  truncate in 8/16 bits, ring sizes 0/1/huge/not a power of two, addresses
  at and beyond region edges, memory tables with 0..9 overlapping or
  overflowing regions, log offsets that overflow (CVE-2020-10722 class),
  kick/call fds with and without the no-fd bit - and a random one otherwise.
  The fds to attach are described, not opened: ``open_fds`` makes real ones,
  of every kind and state a hostile front-end can pass (``FD_KINDS``): an
  eventfd in blocking mode whose counter is one below its maximum (a write
  would block), a full pipe's write end (blocking) or read end, an O_PATH fd,
  a regular file on a disk filesystem (/var/tmp) or on tmpfs, a memfd, a
  socket, /dev/null - in the slots that expect an eventfd and in those that
  expect memory.
* ``ModelBackend``: a ``Backend`` that behaves like the Cython datapath
  (same refusals) and checks what the session asks of it: a ring is started
  only with a size, fresh addresses and a memory table; no SET_VRING_NUM or
  BASE on a running ring; every fd it is handed is open and handed once.
* ``Runner``: feeds messages to a ``Session`` the way ``port.py`` does (a
  ProtocolError closes the connection and a new session starts on the same
  backend) and checks after every message that only ProtocolError escaped,
  the reply is well formed, every fd of the message is closed or owned by the
  backend, and session and backend agree on which rings run.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field

from vswitch.vhost import protocol as p
from vswitch.vhost.protocol import ProtocolError
from vswitch.vhost.session import Offer, Session

R = p.Request
PF = p.ProtocolFeature
F = p.Feature

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
U32_EDGES = [0, 1, 2, 3, 7, 8, 0xFF, 0x100, 0x101, 0x1FF, 0x7FFF, 0x8000, 0x8001, 0xFFFF,
             0x10000, 0x10001, 0x7FFFFFFF, 0x80000000, U32]
U64_EDGES = U32_EDGES + [1 << 32, (1 << 32) + 1, 1 << 48, 1 << 63, U64, U64 - 0xFFF, U64 - 0xFF, U64 - 7]

# The fake front-end's memory: regions sit at these virtual addresses.
UBASE = 0x7F12_0000_0000
USTEP = 1 << 26
REGION_SIZES = [0x1000, 0x10000, 1 << 20]
RING_SIZES_OK = [1, 2, 8, 256]
RING_SIZES = RING_SIZES_OK + [0, 3, 100, 255, 32768, 32769, 65536, 0x10100, U32]
MAX_FILE = 64 << 20       # memfds are sparse; never larger than this


class Chooser:
    """Source of random choices."""

    def int(self, lo: int, hi: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def bytes(self, max_len: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def exhausted(self) -> bool:
        return False

    def choice(self, seq):
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, percent: int) -> bool:
        return self.int(0, 99) < percent


class HypothesisChooser(Chooser):
    def __init__(self, data) -> None:
        from hypothesis import strategies as st
        self.data, self.st = data, st

    def int(self, lo, hi):
        return self.data.draw(self.st.integers(lo, hi))

    def bytes(self, max_len):
        return self.data.draw(self.st.binary(max_size=max_len))


class FdpChooser(Chooser):
    def __init__(self, fdp) -> None:
        self.fdp = fdp

    def int(self, lo, hi):
        return self.fdp.ConsumeIntInRange(lo, hi)

    def bytes(self, max_len):
        return self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, max_len))

    def exhausted(self):
        return self.fdp.remaining_bytes() == 0


# --- messages -----------------------------------------------------------------------------

@dataclass
class FdSpec:
    kind: str            # one of FD_KINDS
    size: int = 0        # memfd, shm_file, disk_file, opath_file: file size


# What open_fds can make. A session must take any of them in any fd slot of
# any message without leaking it, blocking on it or raising anything but
# ProtocolError: whether it refuses a kind (kick/call/err must be eventfds,
# memory must be shared memory) or lets the datapath fail on it is its call.
FD_KINDS = [
    "eventfd",          # O_NONBLOCK, counter 0: what QEMU sends
    "eventfd_full",     # blocking, counter 0xfffffffffffffffe: a write of 1 blocks
    "pipe",             # read end, write end closed
    "pipe_full_w",      # write end of a full pipe, blocking, reader kept open: a write blocks
    "pipe_full_r",      # read end of a full pipe whose writer stays open
    "devnull",
    "socket",           # one end of a stream socketpair, the other closed
    "udp",              # an unbound UDP socket
    "opath",            # O_PATH on a directory
    "opath_file",       # O_PATH on a regular file of `size` bytes: fstat works, mmap does not
    "memfd",            # of `size` bytes
    "shm_file",         # unnamed regular file on tmpfs (/dev/shm) of `size` bytes
    "disk_file",        # unnamed regular file on a disk filesystem (/var/tmp) of `size` bytes
]
# fds for slots that expect an eventfd (kick/call/err/log fd): mostly eventfds
VRING_FD_KINDS = ["eventfd"] * 10 + [k for k in FD_KINDS if k != "eventfd"]
# fds for slots that expect guest memory or a log: mostly memfds
MEM_FD_KINDS = ["memfd"] * 12 + [k for k in FD_KINDS if k != "memfd"]
DISK_DIR = "/var/tmp"
SHM_DIR = "/dev/shm"


def gen_vring_fd(ch: Chooser, hostile_percent: int = 100) -> FdSpec:
    if not ch.chance(hostile_percent):
        return FdSpec("eventfd")
    return FdSpec(ch.choice(VRING_FD_KINDS), 0x1000)


def gen_mem_fd(ch: Chooser, size: int, hostile_percent: int = 100) -> FdSpec:
    if not ch.chance(hostile_percent):
        return FdSpec("memfd", size)
    return FdSpec(ch.choice(MEM_FD_KINDS), size)


@dataclass
class MsgSpec:
    request: int
    flags: int
    payload: bytes
    fds: list[FdSpec] = field(default_factory=list)

    def header_bytes(self, size: int | None = None) -> bytes:
        return p.HEADER.pack(self.request, self.flags, len(self.payload) if size is None else size)

    def __repr__(self) -> str:
        return (f"MsgSpec({p.request_name(self.request)}, flags={self.flags:#x}, "
                f"payload={self.payload.hex()}, fds={[f.kind + (str(f.size) if f.size else '') for f in self.fds]})")


def _u64(v: int) -> bytes:
    return struct.pack("=Q", v & U64)


def _state(i: int, n: int) -> bytes:
    return struct.pack("=II", i & U32, n & U32)


def gen_u32(ch: Chooser, pool: list[int]) -> int:
    r = ch.int(0, 9)
    if r < 6:
        return ch.choice(pool)
    if r < 9:
        return ch.choice(U32_EDGES)
    return ch.int(0, U32)


def gen_u64(ch: Chooser, pool: list[int]) -> int:
    r = ch.int(0, 9)
    if r < 6:
        return ch.choice(pool)
    if r < 9:
        return ch.choice(U64_EDGES)
    return ch.int(0, U64)


def gen_vring_index(ch: Chooser, nvrings: int) -> int:
    # Values that become a valid index once truncated to 8 or 16 bits.
    return gen_u32(ch, list(range(nvrings)) * 3 + [nvrings, 0x100, 0x101, 0x10000, 0x10001, 0xFF])


def gen_region(ch: Chooser) -> tuple[tuple[int, int, int, int], FdSpec]:
    k = ch.int(0, 3)
    if ch.chance(50):
        # the regions the prologue and ADD_MEM_REG install: removable, re-addable
        size = ch.choice([1 << 20, 1 << 20, 0x10000])
        return (k << 32, size, UBASE + k * USTEP, 0), gen_mem_fd(ch, size, 30)
    size = gen_u64(ch, REGION_SIZES * 3)
    gpa = gen_u64(ch, [0, k << 32, 1 << 20, k * USTEP, U64 - 0xFFF])
    uaddr = gen_u64(ch, [UBASE + k * USTEP] * 4 + [UBASE])   # same uaddr twice: overlap
    off = gen_u64(ch, [0, 0, 0x1000, 1 << 20])
    need = off + size
    fsize = ch.choice([need, need, need - 0x1000, 0, 0x1000])
    fsize = fsize if 0 <= fsize <= MAX_FILE else 1 << 20
    return (gpa, size, uaddr, off), gen_mem_fd(ch, fsize)


def gen_ring_addr(ch: Chooser, num: int) -> int:
    k = ch.int(0, 3)
    base = UBASE + k * USTEP
    size = ch.choice(REGION_SIZES)
    return gen_u64(ch, [base, base + 0x1000, base + 0x4000, base + 0x8000, base + 0xFF00,
                        base + size - 16 * num, base + size - 6 - 8 * num,   # ends at the region end
                        base + size - 8, base + size, base - 0x10])


def gen_features(ch: Chooser, offer: Offer) -> int:
    pool = [offer.features, offer.features & ~(1 << F.F_RING_PACKED),
            offer.features & ~(1 << F.VHOST_USER_F_PROTOCOL_FEATURES),
            offer.features | (1 << F.VHOST_F_LOG_ALL), 1 << F.F_VERSION_1,
            (1 << F.F_VERSION_1) | (1 << F.VHOST_USER_F_PROTOCOL_FEATURES)]
    v = gen_u64(ch, pool)
    if ch.chance(20):
        v &= ch.int(0, U64)
    return v


def gen_protocol_features(ch: Chooser, offer: Offer) -> int:
    pool = [offer.protocol_features, offer.protocol_features, 1 << PF.REPLY_ACK,
            offer.protocol_features & ~(1 << PF.REPLY_ACK), (1 << 17) - 1]
    v = gen_u64(ch, pool)
    if ch.chance(20):
        v &= ch.int(0, U64)
    return v


def _fd_for_vring(ch: Chooser, value: int) -> list[FdSpec]:
    if value & p.VRING_NOFD_MASK:
        return []
    return [gen_vring_fd(ch)]


def _natural(ch: Chooser, req: int, offer: Offer, nvrings: int) -> tuple[bytes, list[FdSpec]]:
    """Payload and fds shaped like what request ``req`` carries."""
    name = p.request_name(req)
    if name in ("SET_FEATURES",):
        return _u64(gen_features(ch, offer)), []
    if name in ("SET_PROTOCOL_FEATURES",):
        return _u64(gen_protocol_features(ch, offer)), []
    if name == "NET_SET_MTU":
        return _u64(gen_u64(ch, [1500, 9000, 68, 67, 65535, 65536, 0])), []
    if name in ("SET_STATUS",):
        return _u64(gen_u64(ch, [0, 1, 3, 7, 15, 0x40, 0x80])), []
    if name == "SEND_RARP":
        return bytes([2, 0, 0, 0, ch.int(0, 255), ch.int(0, 255)]) + ch.choice([b"\0\0", b"\xff\xff"]), []
    if name in ("SET_VRING_NUM",):
        return _state(gen_vring_index(ch, nvrings), gen_u32(ch, RING_SIZES)), []
    if name in ("SET_VRING_BASE",):
        return _state(gen_vring_index(ch, nvrings), gen_u32(ch, [0, 7, 255, 256, 0xFFFF, 0x10000, 0x10007])), []
    if name in ("GET_VRING_BASE", "SET_VRING_ENDIAN"):
        return _state(gen_vring_index(ch, nvrings), gen_u32(ch, [0, 0, 1])), []
    if name == "SET_VRING_ENABLE":
        return _state(gen_vring_index(ch, nvrings), gen_u32(ch, [0, 1, 1, 2])), []
    if name == "SET_VRING_ADDR":
        num = ch.choice(RING_SIZES_OK)
        flags = gen_u32(ch, [0, 0, 0, p.VRING_F_LOG, 2])
        log = gen_u64(ch, [0, 0x1000, 1 << 32, U64 - 7])
        payload = struct.pack("=IIQQQQ", gen_vring_index(ch, nvrings), flags, gen_ring_addr(ch, num),
                              gen_ring_addr(ch, num), gen_ring_addr(ch, num), log)
        return payload, []
    if name in ("SET_VRING_KICK", "SET_VRING_CALL", "SET_VRING_ERR", "VRING_KICK"):
        value = gen_vring_index(ch, nvrings) & ch.choice([0xFF, 0xFF, 0xFF, U64])
        if ch.chance(30):
            value |= p.VRING_NOFD_MASK
        if ch.chance(5):
            value |= 1 << ch.int(9, 63)
        return _u64(value), _fd_for_vring(ch, value)
    if name == "SET_MEM_TABLE":
        n = ch.choice([1, 1, 1, 2, 2, 3, 8, 0, 9])
        regions, fds = [], []
        for _ in range(n):
            r, f = gen_region(ch)
            regions.append(r)
            fds.append(f)
        payload = struct.pack("=II", n, 0) + b"".join(struct.pack("=QQQQ", *r) for r in regions)
        if ch.chance(20):
            payload += bytes(32 * (8 - min(n, 8)))        # QEMU's full 8-slot array
        return payload, fds
    if name in ("ADD_MEM_REG", "REM_MEM_REG"):
        r, f = gen_region(ch)
        return _u64(0) + struct.pack("=QQQQ", *r), [f] if name == "ADD_MEM_REG" or ch.chance(20) else []
    if name == "SET_LOG_BASE":
        size = gen_u64(ch, [0x1000, 0x2000, 1 << 20, 0])
        off = gen_u64(ch, [0, 0x1000, U64 - 0xFFF, U64 - size + 1])
        fsize = size + off if 0 <= size + off <= MAX_FILE else 0x1000
        return struct.pack("=QQ", size & U64, off & U64), [gen_mem_fd(ch, fsize)]
    if name == "SET_LOG_FD":
        return b"", [gen_vring_fd(ch)]
    if name in ("SET_BACKEND_REQ_FD", "SET_INFLIGHT_FD", "GPU_SET_SOCKET"):
        return _u64(0) if ch.chance(50) else b"", [FdSpec(ch.choice(FD_KINDS), 0x1000)]
    if name.startswith("GET_") or name in ("SET_OWNER", "RESET_OWNER", "RESET_DEVICE", "POSTCOPY_ADVISE",
                                           "POSTCOPY_LISTEN", "POSTCOPY_END"):
        return ch.choice([b"", b"", b"", _u64(0)]), []
    return ch.bytes(64), []


REQUESTS = [int(r) for r in R]


def handled_requests() -> list[int]:
    """Requests the session has a handler for (read at call time: handlers land later)."""
    from vswitch.vhost.session import Session
    handlers = getattr(Session, "_HANDLERS", None) or {}
    return [int(r) for r in handlers] or REQUESTS


def gen_message(ch: Chooser, offer: Offer, nvrings: int, hostility: int = 2) -> MsgSpec:
    """hostility 0: plausible messages of handled types; 1: some mutations; 2: anything."""
    m = (0, 1, 3)[hostility]
    roll = ch.int(0, 99)
    if roll < 97 - 30 * m:
        request = ch.choice(handled_requests())
    elif roll < 100 - m:
        request = ch.choice(REQUESTS)
    else:
        request = ch.choice([0, max(REQUESTS) + 1, 0x7FFF, U32])
    flags = p.VERSION | (p.FLAG_NEED_REPLY if ch.chance(40) else 0)
    if ch.chance(m):
        flags = ch.choice([0, 2, 3, p.VERSION | p.FLAG_REPLY, p.VERSION | 0x10, U32])
    payload, fds = _natural(ch, request, offer, nvrings)
    roll = ch.int(0, 99)
    if roll < 2 * m:
        payload = payload[:ch.int(0, max(0, len(payload) - 1))]      # too short
    elif roll < 3 * m:
        payload = payload + ch.bytes(16) + b"\0"                      # too long
    elif roll < 4 * m:
        payload = ch.bytes(300)                                       # anything
    roll = ch.int(0, 99)
    if roll < 2 * m:
        fds = fds + [FdSpec(ch.choice(FD_KINDS), 0x1000)
                     for _ in range(ch.int(1, 9 - min(len(fds), 8)))]   # surplus fds
    elif roll < 3 * m and fds:
        fds = fds[:ch.int(0, len(fds) - 1)]                           # missing fds
    return MsgSpec(request, flags, payload, fds)


def gen_sequence(ch: Chooser, offer: Offer, max_len: int = 40) -> list[MsgSpec]:
    nvrings = 2 * offer.queue_pairs
    n = ch.int(1, max_len)
    hostility = ch.int(0, 2)
    out: list[MsgSpec] = []
    # Most sequences start like QEMU does, so that deep states are reached.
    if ch.chance(80):
        out += _prologue(ch, offer)
    while len(out) < n and not ch.exhausted():
        roll = ch.int(0, 99)
        if roll < 12:
            out += _prologue(ch, offer)         # a front-end reconnecting after a close
        elif roll < 45:
            out += _ring_setup(ch, offer, nvrings)
        elif roll < 50 and hasattr(R, "ADD_MEM_REG"):
            # memory hot-plug as QEMU does it: removals first, then additions
            k = 0 if ch.chance(70) else ch.int(0, 3)
            size = ch.choice([1 << 20, 0x10000])
            reg = _u64(0) + struct.pack("=QQQQ", k << 32, size, UBASE + k * USTEP, 0)
            ops = [_msg(R.REM_MEM_REG, reg, need_reply=ch.chance(50)),
                   _msg(R.ADD_MEM_REG, reg, [gen_mem_fd(ch, size, 15)], need_reply=ch.chance(50))]
            out += ops if ch.chance(70) else ops[::-1]
        else:
            out.append(gen_message(ch, offer, nvrings, hostility))
    return out


def _msg(request: int, payload: bytes = b"", fds=(), need_reply: bool = False) -> MsgSpec:
    return MsgSpec(int(request), p.VERSION | (p.FLAG_NEED_REPLY if need_reply else 0), payload, list(fds))


def _prologue(ch: Chooser, offer: Offer) -> list[MsgSpec]:
    out = [_msg(R.GET_FEATURES), _msg(R.GET_PROTOCOL_FEATURES),
           _msg(R.SET_PROTOCOL_FEATURES, _u64(gen_protocol_features(ch, offer) if ch.chance(20)
                                              else offer.protocol_features)),
           _msg(R.SET_OWNER), _msg(R.SET_FEATURES, _u64(gen_features(ch, offer) if ch.chance(30) else offer.features))]
    k = 0 if ch.chance(80) else ch.int(0, 3)
    size = 1 << 20 if ch.chance(80) else ch.choice(REGION_SIZES)
    out.append(_msg(R.SET_MEM_TABLE, struct.pack("=IIQQQQ", 1, 0, k << 32, size, UBASE + k * USTEP, 0),
                    [gen_mem_fd(ch, size, 15)], need_reply=ch.chance(50)))
    return out


def _ring_setup(ch: Chooser, offer: Offer, nvrings: int) -> list[MsgSpec]:
    """A whole ring's NUM/BASE/ADDR/KICK/CALL, in a random order, mostly valid."""
    i = ch.int(0, nvrings - 1) if ch.chance(90) else gen_vring_index(ch, nvrings)
    num = ch.choice(RING_SIZES_OK) if ch.chance(85) else ch.choice(RING_SIZES)
    k = 0 if ch.chance(80) else ch.int(0, 3)
    base = UBASE + k * USTEP
    if ch.chance(80):
        desc, avail, used = base, base + 16 * num, base + 0x8000     # fits in 64 KiB for num <= 256
    else:
        desc, avail, used = (gen_ring_addr(ch, num) for _ in range(3))
    msgs = [_msg(R.SET_VRING_NUM, _state(i, num)), _msg(R.SET_VRING_BASE, _state(i, ch.choice([0, 0, 5, 0xFFFF]))),
            _msg(R.SET_VRING_ADDR, struct.pack("=IIQQQQ", i, 0, desc, used, avail, 0), need_reply=ch.chance(50)),
            _msg(R.SET_VRING_KICK, _u64(i), [gen_vring_fd(ch, 15)]),
            _msg(R.SET_VRING_CALL, _u64(i), [gen_vring_fd(ch, 15)])]
    if ch.chance(50):
        msgs.append(_msg(R.SET_VRING_ENABLE, _state(i, 1)))
    # a random permutation
    out = []
    while msgs:
        out.append(msgs.pop(ch.int(0, len(msgs) - 1)))
    return out


def _fill(fd: int) -> None:
    """Write into a non-blocking pipe until it is full."""
    chunk = bytes(65536)
    while True:
        try:
            os.write(fd, chunk)
        except BlockingIOError:
            try:                    # the last page may still take a byte or a few
                while True:
                    os.write(fd, b"x")
            except BlockingIOError:
                return


def _unnamed_file(directory: str, size: int) -> int:
    """A regular file without a name (O_TMPFILE) in `directory`, `size` bytes (sparse)."""
    fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_fd(spec: FdSpec, partners: list[int]) -> int:
    """A real fd of kind spec.kind. Fds that must stay open for it to keep its
    state (the reader of a full pipe, the writer of a full pipe) go to `partners`."""
    k = spec.kind
    if k == "eventfd":
        return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    if k == "eventfd_full":
        fd = os.eventfd(0, os.EFD_CLOEXEC)              # blocking
        os.eventfd_write(fd, 0xFFFF_FFFF_FFFF_FFFE)      # the largest count: any write blocks
        return fd
    if k in ("pipe", "pipe_full_w", "pipe_full_r"):
        r, w = os.pipe2(os.O_CLOEXEC | (os.O_NONBLOCK if k != "pipe" else 0))
        if k == "pipe":
            os.close(w)
            return r
        _fill(w)
        os.set_blocking(w, True)
        os.set_blocking(r, True)
        if k == "pipe_full_w":
            partners.append(r)
            return w
        partners.append(w)
        return r
    if k == "memfd":
        fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, spec.size)
        except BaseException:
            os.close(fd)
            raise
        return fd
    if k == "shm_file":
        if not os.path.isdir(SHM_DIR):
            return open_fd(FdSpec("memfd", spec.size), partners)
        return _unnamed_file(SHM_DIR, spec.size)
    if k == "disk_file":
        return _unnamed_file(DISK_DIR, spec.size)
    if k == "opath_file":
        tmp = _unnamed_file(DISK_DIR, spec.size)
        try:
            return os.open(f"/proc/self/fd/{tmp}", os.O_PATH | os.O_CLOEXEC)
        finally:
            os.close(tmp)
    if k == "opath":
        return os.open(DISK_DIR, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if k == "devnull":
        return os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    if k == "socket":
        a, b = socket.socketpair()
        b.close()
        return a.detach()
    if k == "udp":
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()
    raise ValueError(k)  # pragma: no cover


def open_fds(specs: list[FdSpec], partners: list[int] | None = None) -> list[int]:
    """Real fds for `specs`. `partners` collects the fds that keep them in
    their state (close them when done); without it they are closed at once
    (a full pipe then has no reader or no writer any more)."""
    fds: list[int] = []
    keep: list[int] = []
    try:
        for s in specs:
            fds.append(open_fd(s, keep))
    except BaseException:
        for fd in fds + keep:
            os.close(fd)
        raise
    if partners is None:
        for fd in keep:
            os.close(fd)
    else:
        partners.extend(keep)
    return fds


def is_opath(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH)


class Hang(AssertionError):
    """The session (or the datapath under it) blocked on a message."""


@contextmanager
def no_hang(seconds: float, what: str = ""):
    """Raise Hang in this (main) thread if the block takes longer than `seconds`:
    a blocking write on a hostile fd is interrupted (EINTR) and fails the test
    instead of hanging it."""
    def on_alarm(signum, frame):
        raise Hang(f"blocked for {seconds}s {what}")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- a datapath model that checks what the session asks ------------------------------------

class DatapathError(Exception):
    """The model's refusal, as vswitch._datapath.DatapathError."""


class Violation(AssertionError):
    """The session asked the backend for something it must never ask."""


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class _Ring:
    num: int = 0
    addrs: tuple[int, int, int] | None = None
    fresh_addr: bool = False       # set since the last stop
    started: bool = False
    enabled: bool = False
    base: int | None = None        # SET_VRING_BASE since the last start


class ModelBackend:
    """The datapath's behaviour, with the session's obligations asserted."""

    def __init__(self, nvrings: int) -> None:
        self.nvrings = nvrings
        self.rings = [_Ring() for _ in range(nvrings)]
        self.features = 0
        self.mem: list[tuple[int, int, int]] = []      # (gpa, size, uaddr)
        self.owned: dict[tuple[str, int], int] = {}     # (kind, index) -> fd
        self.extra_owned: set[int] = set()              # fds handed to methods this model does not know
        self.seen_unknown: list[int] = []
        self.calls: list[tuple] = []

    # -- fds --------------------------------------------------------------------------------
    def _take(self, kind: str, index: int, fd: int) -> None:
        self._check_index(index)
        if fd >= 0:
            if _identity(fd) is None:
                raise Violation(f"{kind}[{index}]: fd {fd} handed over already closed")
            if fd in self.owned.values() or fd in self.extra_owned:
                raise Violation(f"{kind}[{index}]: fd {fd} handed over twice")
        old = self.owned.pop((kind, index), -1)
        if old >= 0:
            os.close(old)
        if fd >= 0:
            self.owned[(kind, index)] = fd

    def owns(self, fd: int) -> bool:
        return fd in self.owned.values() or fd in self.extra_owned

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.nvrings:
            raise Violation(f"vring index {index} reached the backend ({self.nvrings} vrings)")

    # -- memory -----------------------------------------------------------------------------
    def _translate(self, ua: int, length: int) -> bool:
        for gpa, size, uaddr in self.mem:
            if uaddr <= ua < uaddr + size:
                return length <= size - (ua - uaddr)
        return False

    def translatable(self, i: int) -> bool:
        r = self.rings[i]
        if not self.mem or not r.num or r.addrs is None:
            return False
        d, u, a = r.addrs
        if self.packed:    # a packed ring: descriptor ring and two 4-byte event areas
            return self._translate(d, 16 * r.num) and self._translate(a, 4) and self._translate(u, 4)
        return (self._translate(d, 16 * r.num) and self._translate(a, 6 + 2 * r.num)
                and self._translate(u, 6 + 8 * r.num))

    def startable(self, i: int) -> bool:
        """What start_vring accepts: addresses inside memory and, for the ring
        kind the features say, a size and a base that fit it."""
        r = self.rings[i]
        if not self.translatable(i):
            return False
        if not self.packed:
            return r.num & (r.num - 1) == 0
        return r.base is None or ((r.base & 0x7FFF) < r.num and (r.base >> 16 & 0x7FFF) < r.num)

    @property
    def packed(self) -> bool:
        return bool(self.features >> F.F_RING_PACKED & 1)

    # -- Backend ----------------------------------------------------------------------------
    def set_features(self, features):
        self.features = features
        self.calls.append(("features", features))

    def set_mem_table(self, regions):
        if not 1 <= len(regions) <= 8:
            raise DatapathError(f"{len(regions)} regions")
        new = []
        for gpa, size, uaddr, off, fd in regions:
            if _identity(fd) is None:
                raise Violation(f"SET_MEM_TABLE: fd {fd} is closed")
            if size == 0 or gpa + size > U64 or uaddr + size > U64 or off + size > U64:
                raise DatapathError("region overflows")
            if os.fstat(fd).st_size < off + size:
                raise DatapathError("file too small")
            if is_opath(fd):
                raise DatapathError("mmap: EBADF (O_PATH)")
            for g, s, _ in new:
                if gpa < g + s and g < gpa + size:
                    raise DatapathError("overlap")
            new.append((gpa, size, uaddr))
        self.mem = new
        dropped = []
        for i, r in enumerate(self.rings):
            if r.started and not self.translatable(i):
                r.started = False
                dropped.append(i)
        return dropped

    def set_vring_num(self, index, num):
        self._check_index(index)
        if not (1 <= num <= 32768 and (self.packed or num & (num - 1) == 0)):
            raise Violation(f"SET_VRING_NUM {num} reached the backend")
        if self.rings[index].started:
            raise Violation(f"SET_VRING_NUM on running vring {index} reached the backend")
        self.rings[index].num = num

    def set_vring_addr(self, index, desc, used, avail, log=None):
        self._check_index(index)
        r = self.rings[index]
        r.addrs = (desc, used, avail)
        r.fresh_addr = True
        if r.started and not self.translatable(index):
            r.started = False          # as the datapath: stopped, then refused
            raise DatapathError("ring addresses are not inside guest memory")

    def set_log_base(self, fd, size, offset):
        if _identity(fd) is None:
            raise Violation(f"SET_LOG_BASE: fd {fd} is closed")
        # what the datapath checks (CVE-2020-10722: size + offset must not wrap)
        if size == 0 or size > 1 << 40 or offset > U64 - size:
            raise DatapathError("log size/offset")
        if os.fstat(fd).st_size < offset + size:
            raise DatapathError("log file too small")
        if is_opath(fd):
            raise DatapathError("mmap: EBADF (O_PATH)")
        self.calls.append(("log", size, offset))

    def send_rarp(self, mac):
        if len(mac) != 6:
            raise Violation(f"SEND_RARP: {mac!r}")
        self.calls.append(("rarp", mac))

    def set_vring_base(self, index, base):
        self._check_index(index)
        if self.rings[index].started:
            raise Violation(f"SET_VRING_BASE on running vring {index} reached the backend")
        r = self.rings[index]
        if self.packed:
            if r.num and ((base & 0x7FFF) >= r.num or (base >> 16 & 0x7FFF) >= r.num):
                raise Violation(f"SET_VRING_BASE {base:#x} beyond ring size {r.num} reached the backend")
        elif base > 0xFFFF:
            raise Violation(f"SET_VRING_BASE {base:#x} reached the backend")
        r.base = base

    def set_vring_kick(self, index, fd):
        self._take("kick", index, fd)

    def set_vring_call(self, index, fd):
        self._take("call", index, fd)

    def set_vring_err(self, index, fd):
        self._take("err", index, fd)

    def start_vring(self, index):
        self._check_index(index)
        r = self.rings[index]
        if r.started:
            return
        if not r.fresh_addr:
            raise Violation(f"vring {index} started without fresh addresses since GET_VRING_BASE")
        if not r.num:
            raise DatapathError("ring size not set")
        if not self.mem:
            raise DatapathError("no memory table")
        if not self.packed and r.num & (r.num - 1):
            raise DatapathError("ring size is not a power of 2 (split ring)")
        if self.packed and r.base is not None and \
                ((r.base & 0x7FFF) >= r.num or (r.base >> 16 & 0x7FFF) >= r.num):
            raise DatapathError("vring base beyond the ring size")
        if not self.translatable(index):
            raise DatapathError("ring addresses are not inside guest memory")
        r.started = True
        r.base = None

    def stop_vring(self, index):
        self._check_index(index)
        r = self.rings[index]
        r.started = False
        r.fresh_addr = False
        return 0

    def set_vring_enabled(self, index, enabled):
        self._check_index(index)
        self.rings[index].enabled = bool(enabled)

    def reset(self):
        for fd in list(self.owned.values()) + list(self.extra_owned):
            try:
                os.close(fd)
            except OSError:
                pass
        self.owned.clear()
        self.extra_owned.clear()
        self.rings = [_Ring() for _ in range(self.nvrings)]
        self.features &= ~(1 << F.F_RING_PACKED)    # as Datapath.port_reset
        self.mem = []

    def __getattr__(self, name):
        # Backend methods added after this model was written (dirty log,
        # ADD/REM_MEM_REG, RARP...): accept, remember the fds they saw.
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args):
            self.calls.append((name, *args))
            for a in _flatten(args):
                if isinstance(a, int) and not isinstance(a, bool) and 0 <= a < 1 << 20:
                    self.seen_unknown.append(a)
            return [] if "mem" in name else None
        return method


def _flatten(x):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flatten(y)
    else:
        yield x


# --- running sequences ----------------------------------------------------------------------

# Bugs the fuzzers found that are not fixed yet, each shown by an xfail(strict)
# test in tests/unit/test_fuzz_session.py. When a message trips one of them
# the runner drops the connection (as a front-end that gives up would) instead
# of failing, so that the fuzzers keep looking for new ones. Remove an entry
# once its fix lands.
#   request that trips it -> what goes wrong
KNOWN_BUGS: dict[str, str] = {
    # found and fixed (regression tests in tests/unit/test_fuzz_session.py):
    # "num_start": SET_VRING_NUM arriving last never started the ring
    # "memtable_abort": a new memory table stopped starting rings at the first it could not map
    # "readdr": a refused SET_VRING_ADDR on a running ring left session and datapath disagreeing
    # "rem_last": REM_MEM_REG of the last region reset the whole datapath slot
}


class _Known(Exception):
    pass


def _known(name: str, cond: bool, active) -> None:
    if cond and name in active:
        raise _Known(name)

@dataclass
class Stats:
    messages: int = 0
    closes: int = 0
    replies: int = 0
    started: int = 0


class Runner:
    """Feeds messages to sessions on one backend, as port.py does, checking invariants."""

    def __init__(self, offer: Offer, backend, model: ModelBackend | None = None,
                 vring_info=None, known=None) -> None:
        self.offer = offer
        self.backend = backend
        self.model = model
        # callable(index) -> Datapath.vring_info dict (the real datapath)
        self.vring_info = vring_info
        self.session = Session(offer, backend)
        self.stats = Stats()
        self.known = set(KNOWN_BUGS) if known is None else set(known)
        self.tripped: dict[str, int] = {}
        # the other ends of full pipes: open until finish(), so those pipes stay full
        self.partners: list[int] = []

    def _reconnect(self) -> None:
        self.session.close()
        self.stats.closes += 1
        if self.model is not None:
            if self.model.owned or self.model.extra_owned:
                raise Violation(f"fds still owned after close: {self.model.owned}")
            if any(r.started for r in self.model.rings):
                raise Violation("rings still running after close")
        self.session = Session(self.offer, self.backend)

    def feed(self, m: MsgSpec) -> bytes | None:
        self.stats.messages += 1
        fds = open_fds(m.fds, self.partners)
        ids = [_identity(fd) for fd in fds]
        try:
            header = p.decode_header(m.header_bytes())
        except ProtocolError:
            for fd in fds:          # the transport closes them (transport.read_message)
                os.close(fd)
            self._reconnect()
            return None
        if self.model is not None:
            self.model.seen_unknown = []
        reply = None
        closed = False
        try:
            reply = self.session.handle(header, m.payload, fds)
        except ProtocolError:
            closed = True
        # anything else propagates: a bug (port.py would log "internal error")
        self._check_fds(m, fds, ids)
        if reply is not None:
            self._check_reply(header, reply)
        elif (not closed and header.need_reply and self.session.protocol_features & (1 << PF.REPLY_ACK)):
            raise AssertionError(f"{m}: NEED_REPLY with REPLY_ACK negotiated but no reply")
        if closed:
            self._reconnect()
        else:
            try:
                self._check_state(m, reply)
            except _Known as k:
                self.tripped[str(k)] = self.tripped.get(str(k), 0) + 1
                self._reconnect()
        return reply

    def _check_fds(self, m: MsgSpec, fds: list[int], ids) -> None:
        for fd, ident in zip(fds, ids):
            if _identity(fd) != ident:
                continue                        # closed (or the number was reused: not ours)
            if self.model is None:
                continue                        # the real datapath: counted at the end
            if self.model.owns(fd):
                continue
            if fd in self.model.seen_unknown:
                self.model.extra_owned.add(fd)  # kept by a backend method the model does not know
                continue
            raise AssertionError(f"{m}: fd {fd} is neither closed nor handed to the backend")

    def _check_reply(self, header: p.Header, reply: bytes) -> None:
        self.stats.replies += 1
        if len(reply) < p.HEADER_SIZE:
            raise AssertionError(f"short reply {reply!r}")
        request, flags, size = p.HEADER.unpack_from(reply)
        assert request == header.request, (request, header)
        assert flags == p.VERSION | p.FLAG_REPLY, hex(flags)
        assert size == len(reply) - p.HEADER_SIZE and size <= p.MAX_PAYLOAD, (size, len(reply))

    def _check_state(self, m: MsgSpec, reply: bytes | None) -> None:
        s = self.session
        failed = reply is not None and reply[p.HEADER_SIZE:] == b"\1" + bytes(7)
        for i, vr in enumerate(s.vrings):
            if self.model is not None:
                ring = self.model.rings[i]
                started, num, enabled = ring.started, ring.num, ring.enabled
                ready = self.model.translatable(i)
            elif self.vring_info is not None:
                info = self.vring_info(i)
                started, num, enabled, ready = info["started"], info["num"], info["enabled"], None
            else:
                continue
            diverged = (vr.num or 0) != num or vr.enabled != enabled or vr.started != started
            _known("rem_last", diverged and m.request == R.REM_MEM_REG, self.known)
            _known("readdr", diverged and m.request == R.SET_VRING_ADDR and failed, self.known)
            unstarted = (ready and vr.kicked and vr.addr_set and vr.num and getattr(s, "has_mem", True)
                         and not started)
            _known("num_start", unstarted and m.request == R.SET_VRING_NUM, self.known)
            _known("memtable_abort", unstarted and failed and m.request in (
                R.SET_MEM_TABLE, getattr(R, "ADD_MEM_REG", -1), getattr(R, "REM_MEM_REG", -1)), self.known)
        for i, vr in enumerate(s.vrings):
            if self.model is not None:
                ring = self.model.rings[i]
                if (vr.num or 0) != ring.num or vr.enabled != ring.enabled:
                    raise AssertionError(f"after {m}: session has vring {i} num={vr.num} enabled={vr.enabled}, "
                                         f"the datapath num={ring.num} enabled={ring.enabled}")
                if vr.started != ring.started:
                    raise AssertionError(f"after {m}: session says vring {i} started={vr.started}, "
                                         f"the datapath says {ring.started}")
                # The ring starts once its last ingredient arrives (session.py docstring).
                if (vr.kicked and vr.addr_set and vr.num and getattr(s, "has_mem", True)
                        and self.model.startable(i) and not ring.started):
                    raise AssertionError(f"after {m}: vring {i} has size, addresses inside memory, "
                                         "a kick and a memory table, but was not started")
            elif self.vring_info is not None:
                info = self.vring_info(i)
                if (vr.num or 0) != info["num"] or vr.enabled != info["enabled"]:
                    raise AssertionError(f"after {m}: session has vring {i} num={vr.num} enabled={vr.enabled}, "
                                         f"the datapath num={info['num']} enabled={info['enabled']}")
                actual = info["started"]
                if vr.started != actual:
                    raise AssertionError(f"after {m}: session says vring {i} started={vr.started}, "
                                         f"the datapath says {actual}")
        self.stats.started += sum(1 for vr in s.vrings if vr.started)

    def finish(self) -> None:
        try:
            self.session.close()
        finally:
            for fd in self.partners:
                os.close(fd)
            self.partners = []
        if self.model is not None and (self.model.owned or self.model.extra_owned):
            raise Violation(f"fds still owned after close: {self.model.owned} {self.model.extra_owned}")
