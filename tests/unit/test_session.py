"""The message codec and the session state machine, without sockets.

The backend here records what the session asks of the datapath, so each test
can assert the exact effect of a message order (orders real front-ends send: kick
before enable, SET_VRING_ENABLE(0) before GET_VRING_BASE, SET_FEATURES per pair).
"""

from __future__ import annotations

import os
import struct

import pytest

from vswitch.vhost import fdkind
from vswitch.vhost import protocol as p
from vswitch.vhost import session as session_module
from vswitch.vhost.protocol import Feature as F
from vswitch.vhost.protocol import ProtocolError
from vswitch.vhost.protocol import ProtocolFeature as PF
from vswitch.vhost.protocol import Request as R
from vswitch.vhost.session import BASE_FEATURES, Offer, Session

# What QEMU acks without a vIOMMU: everything offered but ACCESS_PLATFORM
# (vhost_dev_set_features clears it), so addresses are guest addresses.
QEMU_FEATURES = BASE_FEATURES & ~(1 << p.Feature.F_ACCESS_PLATFORM)


class RecordingBackend:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.started: set[int] = set()
        self.enabled: dict[int, bool] = {}
        self.bases: dict[int, int] = {}
        self.fds: dict[tuple[str, int], int] = {}

    def _own(self, kind: str, index: int, fd: int) -> None:
        old = self.fds.pop((kind, index), -1)
        if old >= 0:
            os.close(old)
        if fd >= 0:
            self.fds[(kind, index)] = fd

    def set_features(self, features): self.calls.append(("features", features))
    def set_mem_table(self, regions):
        self.calls.append(("mem", len(regions)))
        return []
    def set_vring_num(self, i, num): self.calls.append(("num", i, num))
    def set_vring_addr(self, i, d, u, a, log=None): self.calls.append(("addr", i))
    def set_log_base(self, fd, size, offset): self.calls.append(("log", size, offset))
    def send_rarp(self, mac): self.calls.append(("rarp", mac))
    def set_vring_base(self, i, base):
        self.bases[i] = base
        self.calls.append(("base", i, base))
    def set_vring_kick(self, i, fd): self._own("kick", i, fd)
    def set_vring_call(self, i, fd): self._own("call", i, fd)
    def set_vring_err(self, i, fd): self._own("err", i, fd)
    def start_vring(self, i):
        self.started.add(i)
        self.calls.append(("start", i))
    def stop_vring(self, i):
        self.started.discard(i)
        self.calls.append(("stop", i))
        return self.bases.get(i, 0) + 7   # frames processed since the base
    def set_vring_enabled(self, i, e):
        self.enabled[i] = e
        self.calls.append(("enable", i, e))
    def reset(self):
        self.started.clear()
        for (kind, index) in list(self.fds):
            self._own(kind, index, -1)
        self.calls.append(("reset",))


def msg(request: int, payload: bytes = b"", need_reply: bool = False) -> tuple[p.Header, bytes]:
    flags = p.VERSION | (p.FLAG_NEED_REPLY if need_reply else 0)
    raw = p.HEADER.pack(request, flags, len(payload))
    return p.decode_header(raw), payload


def u64(v: int) -> bytes:
    return struct.pack("=Q", v)


def state(i: int, n: int) -> bytes:
    return struct.pack("=II", i, n)


def addr(i: int) -> bytes:
    return struct.pack("=IIQQQQ", i, 0, 0x1000, 0x3000, 0x2000, 0)


def region_table(n: int) -> bytes:
    return p.encode_mem_table([p.MemRegion(i << 30, 1 << 20, 0x7f0000000000 + (i << 30), 0) for i in range(n)])


def memfd() -> int:
    return os.memfd_create("t")


def eventfd() -> int:
    return os.eventfd(0)


def send(s: Session, request: int, payload: bytes = b"", fds=(), need_reply=False):
    h, pl = msg(request, payload, need_reply)
    return s.handle(h, pl, list(fds))


def reply_u64(reply: bytes) -> int:
    req, flags, size = p.HEADER.unpack_from(reply)
    assert flags == p.VERSION | p.FLAG_REPLY and size == 8
    return struct.unpack_from("=Q", reply, p.HEADER_SIZE)[0]


@pytest.fixture
def session():
    backend = RecordingBackend()
    s = Session(Offer(queue_pairs=2), backend)
    yield s, backend
    backend.reset()


def negotiate(s: Session, protocol_features: int = 1 << PF.REPLY_ACK | 1 << PF.MQ) -> None:
    send(s, R.GET_FEATURES)
    send(s, R.GET_PROTOCOL_FEATURES)
    send(s, R.SET_PROTOCOL_FEATURES, u64(protocol_features))
    send(s, R.SET_OWNER)


def setup_ring(s: Session, i: int, kick_first: bool = False) -> None:
    if kick_first:
        send(s, R.SET_VRING_KICK, u64(i), [eventfd()])
    send(s, R.SET_VRING_NUM, state(i, 256))
    send(s, R.SET_VRING_BASE, state(i, 0))
    send(s, R.SET_VRING_ADDR, addr(i))
    if not kick_first:
        send(s, R.SET_VRING_KICK, u64(i), [eventfd()])
    send(s, R.SET_VRING_CALL, u64(i), [eventfd()])


# --- codec -------------------------------------------------------------------

def test_header_rejects_bad_version_reply_flag_and_reserved_bits():
    for flags in (0x0, 0x2, p.VERSION | p.FLAG_REPLY, p.VERSION | 0x10):
        with pytest.raises(ProtocolError):
            p.decode_header(p.HEADER.pack(1, flags, 0))
    with pytest.raises(ProtocolError, match="exceeds"):
        p.decode_header(p.HEADER.pack(1, p.VERSION, p.MAX_PAYLOAD + 1))


def test_mem_table_codec_checks_counts_sizes_and_overflow():
    regions = [p.MemRegion(0, 1 << 30, 0x7f00_0000_0000, 0), p.MemRegion(1 << 32, 1 << 30, 0x7f40_0000_0000, 1 << 30)]
    assert p.decode_mem_table(p.encode_mem_table(regions)) == regions
    # QEMU sends all 8 slots whatever nregions says
    assert p.decode_mem_table(p.encode_mem_table(regions) + bytes(32 * 6)) == regions
    with pytest.raises(ProtocolError):
        p.decode_mem_table(struct.pack("=II", 0, 0))
    with pytest.raises(ProtocolError):
        p.decode_mem_table(struct.pack("=II", 9, 0) + bytes(32 * 9))
    with pytest.raises(ProtocolError):
        p.decode_mem_table(p.encode_mem_table(regions)[:-1])
    with pytest.raises(ProtocolError, match="overflows"):
        p.decode_mem_table(p.encode_mem_table([p.MemRegion(2**64 - 4096, 8192, 0, 0)]))


# --- negotiation -------------------------------------------------------------

def test_features_offered_include_protocol_features_mq_and_mtu(session):
    s, _ = session
    features = reply_u64(send(s, R.GET_FEATURES))
    for bit in (F.VHOST_USER_F_PROTOCOL_FEATURES, F.NET_MQ, F.NET_MTU, F.F_VERSION_1,
                F.NET_MRG_RXBUF, F.RING_F_EVENT_IDX, F.RING_F_INDIRECT_DESC):
        assert features & (1 << bit), bit.name
    proto = reply_u64(send(s, R.GET_PROTOCOL_FEATURES))
    # exactly what is implemented: never claim more (a front-end uses what is offered)
    assert proto == sum(1 << f for f in (PF.MQ, PF.REPLY_ACK, PF.NET_MTU, PF.RESET_DEVICE,
                                         PF.LOG_SHMFD, PF.RARP, PF.CONFIGURE_MEM_SLOTS,
                                         PF.BACKEND_REQ))
    assert reply_u64(send(s, R.GET_QUEUE_NUM)) == 2


def test_set_features_with_unoffered_bits_closes(session):
    s, _ = session
    with pytest.raises(ProtocolError, match="not offered"):
        send(s, R.SET_FEATURES, u64(1 << F.NET_GUEST_UFO))


def test_need_reply_is_answered_once_reply_ack_is_negotiated(session):
    s, _ = session
    assert send(s, R.SET_OWNER, need_reply=True) is None     # REPLY_ACK not yet negotiated
    negotiate(s)
    assert reply_u64(send(s, R.SET_FEATURES, u64(QEMU_FEATURES), need_reply=True)) == 0
    # a request that fails but is well formed answers non-zero instead of closing
    assert reply_u64(send(s, R.NET_SET_MTU, u64(10), need_reply=True)) != 0
    assert reply_u64(send(s, R.NET_SET_MTU, u64(9000), need_reply=True)) == 0
    assert s.mtu == 9000


def test_legacy_frontend_without_bit_30_gets_rings_enabled(session):
    s, backend = session
    send(s, R.SET_FEATURES, u64(QEMU_FEATURES & ~(1 << F.VHOST_USER_F_PROTOCOL_FEATURES)))
    assert all(backend.enabled[i] for i in range(4))


def test_set_features_repeated_per_queue_pair_is_idempotent(session):
    s, backend = session
    negotiate(s)
    send(s, R.SET_FEATURES, u64(QEMU_FEATURES))
    send(s, R.SET_MEM_TABLE, region_table(1), [memfd()])
    setup_ring(s, 0)
    setup_ring(s, 1)
    send(s, R.SET_VRING_ENABLE, state(0, 1))
    # the second pair's vhost_dev sends SET_FEATURES again while pair 0 runs
    send(s, R.SET_FEATURES, u64(QEMU_FEATURES))
    assert backend.started == {0, 1}
    assert backend.enabled == {0: True}


# --- ring ordering -----------------------------------------------------------

def test_ring_starts_when_its_last_ingredient_arrives_whatever_the_order(session):
    s, backend = session
    negotiate(s)
    send(s, R.SET_FEATURES, u64(QEMU_FEATURES))
    setup_ring(s, 0, kick_first=True)       # kick before num/addr, and before the mem table
    assert 0 not in backend.started
    send(s, R.SET_MEM_TABLE, region_table(2), [memfd(), memfd()])
    assert 0 in backend.started


def test_kick_before_enable_is_not_lost(session):
    s, backend = session
    negotiate(s)
    send(s, R.SET_FEATURES, u64(QEMU_FEATURES))
    send(s, R.SET_MEM_TABLE, region_table(1), [memfd()])
    setup_ring(s, 1)
    assert 1 in backend.started and not backend.enabled.get(1)
    send(s, R.SET_VRING_ENABLE, state(1, 1))
    assert backend.enabled[1] and 1 in backend.started


def test_disable_before_get_vring_base_then_resume_from_reported_base(session):
    s, backend = session
    negotiate(s)
    send(s, R.SET_FEATURES, u64(QEMU_FEATURES))
    send(s, R.SET_MEM_TABLE, region_table(1), [memfd()])
    setup_ring(s, 0)
    send(s, R.SET_VRING_ENABLE, state(0, 1))
    send(s, R.SET_VRING_ENABLE, state(0, 0))   # QEMU 7.2 stop order
    reply = send(s, R.GET_VRING_BASE, state(0, 0))
    req, flags, size = p.HEADER.unpack_from(reply)
    index, base = struct.unpack_from("=II", reply, p.HEADER_SIZE)
    assert (req, size, index, base) == (R.GET_VRING_BASE, 8, 0, 7)
    assert 0 not in backend.started
    # nothing was reset: the ring restarts only with fresh ADDR + KICK
    send(s, R.SET_VRING_BASE, state(0, base))
    send(s, R.SET_VRING_ADDR, addr(0))
    assert 0 not in backend.started
    send(s, R.SET_VRING_KICK, u64(0), [eventfd()])
    assert 0 in backend.started and backend.bases[0] == 7


def test_reset_device_stops_everything_but_keeps_protocol_features(session):
    s, backend = session
    negotiate(s)
    send(s, R.SET_FEATURES, u64(QEMU_FEATURES))
    send(s, R.SET_MEM_TABLE, region_table(1), [memfd()])
    setup_ring(s, 0)
    send(s, R.RESET_DEVICE)
    assert backend.started == set() and ("reset",) in backend.calls
    assert s.protocol_features & (1 << PF.REPLY_ACK)
    assert s.features == 0


# --- malformed messages ------------------------------------------------------

@pytest.mark.parametrize("request_, payload, nfds, match", [
    (999, b"", 0, "unknown request"),
    (R.SET_VRING_NUM, state(4, 256), 0, "beyond"),          # 2 pairs = vrings 0..3
    (R.SET_VRING_NUM, state(0, 100), 0, "power of 2"),
    (R.SET_VRING_NUM, b"\0" * 4, 0, "expected 8"),
    (R.SET_VRING_KICK, u64(0), 0, "fds"),                   # fd missing
    (R.SET_VRING_KICK, u64(0x100), 1, "fds"),               # fd despite the no-fd flag
    (R.SET_VRING_CALL, u64(0x200), 1, "reserved"),
    (R.SET_OWNER, b"", 1, "unexpected fds"),
    (R.SET_MEM_TABLE, region_table(2), 1, "2 regions but 1 fds"),
    (R.SET_VRING_ENABLE, state(0, 2), 0, "not 0 or 1"),
    (R.SET_VRING_BASE, state(0, 0x10000), 0, "bits above 15"),
    (R.SEND_RARP, u64(0), 0, "not a unicast MAC"),          # no MAC to announce
])
def test_malformed_messages_close_and_release_fds(session, request_, payload, nfds, match):
    s, _ = session
    fds = [eventfd() for _ in range(nfds)]
    with pytest.raises(ProtocolError, match=match):
        send(s, request_, payload, fds)
    for fd in fds:   # every fd that came with the bad message was closed
        with pytest.raises(OSError):
            os.fstat(fd)


# --- memory slots, dirty log, RARP (live migration and hot-plug) ---------------

def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def one_region(i: int) -> bytes:
    return p.encode_single_mem_region(p.MemRegion(i << 30, 1 << 20, 0x7f0000000000 + (i << 30), 0))


def test_memory_slots_are_added_and_removed_as_whole_tables(session):
    s, backend = session
    negotiate(s, 1 << PF.REPLY_ACK | 1 << PF.CONFIGURE_MEM_SLOTS)
    assert reply_u64(send(s, R.GET_MAX_MEM_SLOTS)) == 32
    before = open_fds()
    for i in range(3):
        assert reply_u64(send(s, R.ADD_MEM_REG, one_region(i), [memfd()], need_reply=True)) == 0
    # each ADD hands the datapath the whole table (it remaps everything at once)
    assert [c for c in backend.calls if c[0] == "mem"] == [("mem", 1), ("mem", 2), ("mem", 3)]
    assert s.info().mem_regions == 3 and open_fds() == before + 3   # one fd per region kept
    # REM: identified by gpa, user address and size; a stray fd is closed
    assert reply_u64(send(s, R.REM_MEM_REG, one_region(1), [memfd()], need_reply=True)) == 0
    assert backend.calls[-1] == ("mem", 2) and open_fds() == before + 2
    # QEMU 7.2 repeats ADD/REM per queue pair: a region already there (or
    # already gone) is a no-op, not an overlap
    assert reply_u64(send(s, R.ADD_MEM_REG, one_region(0), [memfd()], need_reply=True)) == 0
    assert reply_u64(send(s, R.REM_MEM_REG, one_region(1), need_reply=True)) == 0
    assert s.info().mem_regions == 2 and backend.calls[-1] == ("mem", 2) and open_fds() == before + 2
    s.close()
    assert open_fds() == before


def test_add_mem_reg_needs_exactly_one_fd_and_a_sane_region(session):
    s, _ = session
    negotiate(s)
    with pytest.raises(ProtocolError, match="1"):
        send(s, R.ADD_MEM_REG, one_region(0), [])
    bad = p.SINGLE_MEM_REGION.pack(0) + p.MEM_REGION.pack(2**64 - 4096, 1 << 20, 0, 0)
    with pytest.raises(ProtocolError, match="overflows"):
        send(s, R.ADD_MEM_REG, bad, [memfd()])


def test_log_base_is_answered_and_logging_addresses_reach_the_datapath(session):
    s, backend = session
    negotiate(s, 1 << PF.REPLY_ACK | 1 << PF.LOG_SHMFD)
    # the front-end waits for this reply (https://github.com/rust-vmm/vhost/issues/217): always sent
    assert reply_u64(send(s, R.SET_LOG_BASE, struct.pack("=QQ", 4096, 0), [memfd()])) == 0
    assert backend.calls[-1] == ("log", 4096, 0)
    with pytest.raises(ProtocolError, match="not valid"):
        send(s, R.SET_LOG_BASE, struct.pack("=QQ", 4096, 2**64 - 100), [memfd()])
    send(s, R.SET_LOG_FD, b"", [eventfd()])             # accepted, fd closed
    logged = struct.pack("=IIQQQQ", 0, p.VRING_F_LOG, 0x1000, 0x3000, 0x2000, 0x3000)
    send(s, R.SET_VRING_ADDR, logged)
    with pytest.raises(ProtocolError, match="flags"):
        send(s, R.SET_VRING_ADDR, struct.pack("=IIQQQQ", 0, 2, 0x1000, 0x3000, 0x2000, 0))
    assert F.VHOST_F_LOG_ALL in [F(b) for b in range(64) if BASE_FEATURES >> b & 1 and b in F._value2member_map_]


def test_send_rarp_announces_the_guest_mac(session):
    s, backend = session
    negotiate(s, 1 << PF.REPLY_ACK | 1 << PF.RARP)
    mac = bytes.fromhex("525400123456")
    send(s, R.SEND_RARP, mac + b"\0\0")
    assert backend.calls[-1] == ("rarp", mac) and s.rarps == 1
    with pytest.raises(ProtocolError, match="unicast"):
        send(s, R.SEND_RARP, bytes.fromhex("ffffffffffff") + b"\0\0")


# --- fds: each is stored or closed, and of the kind its message needs -----------------

def is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def disk_fd() -> int:
    """A file on a disk filesystem (not memfd, tmpfs or hugetlbfs)."""
    fd = os.open("/var/tmp", os.O_TMPFILE | os.O_RDWR, 0o600)
    os.ftruncate(fd, 1 << 20)
    if fdkind.fs_magic(fd) in fdkind.MEMORY_FILESYSTEMS:
        os.close(fd)
        pytest.skip("/var/tmp is on a memory filesystem here")
    return fd


@pytest.mark.parametrize("request_", [R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR])
def test_a_vring_fd_that_is_not_an_eventfd_is_refused_and_closed(session, request_):
    s, backend = session
    refusals: list[str] = []
    s.on_refused = refusals.append
    negotiate(s)
    r, w = os.pipe()
    try:
        assert reply_u64(send(s, request_, u64(0), [r], need_reply=True)) == 1
        assert is_closed(r) and backend.fds == {}
        assert refusals == [f"{request_.name}: the fd is not an eventfd (it is a pipe)"]
        m = memfd()
        with pytest.raises(ProtocolError, match="not an eventfd"):    # no reply asked: closed
            send(s, request_, u64(1), [m])
        assert is_closed(m)
    finally:
        os.close(w)
    # the "no fd" flag stays allowed, and an eventfd is taken
    assert reply_u64(send(s, request_, u64(0x100), need_reply=True)) == 0
    ev = eventfd()
    assert reply_u64(send(s, request_, u64(1), [ev], need_reply=True)) == 0
    assert not is_closed(ev) and ev in backend.fds.values()


def test_a_vring_fd_the_datapath_does_not_take_is_closed(session):
    s, backend = session
    negotiate(s)

    def refuse(index, fd):
        raise OSError(9, "Bad file descriptor")
    backend.set_vring_kick = refuse
    ev = eventfd()
    assert reply_u64(send(s, R.SET_VRING_KICK, u64(0), [ev], need_reply=True)) == 1
    assert is_closed(ev)
    ev = eventfd()
    with pytest.raises(ProtocolError, match="SET_VRING_KICK: .*Bad file descriptor"):
        send(s, R.SET_VRING_KICK, u64(0), [ev])
    assert is_closed(ev)


def test_guest_memory_on_a_disk_filesystem_is_refused_unless_the_port_allows_it(session):
    s, backend = session
    negotiate(s, 1 << PF.REPLY_ACK | 1 << PF.CONFIGURE_MEM_SLOTS | 1 << PF.LOG_SHMFD)
    before = open_fds()
    for request_, payload in ((R.SET_MEM_TABLE, region_table(1)), (R.ADD_MEM_REG, one_region(0))):
        fd = disk_fd()
        assert reply_u64(send(s, request_, payload, [fd], need_reply=True)) == 1
        assert is_closed(fd)
    fd = disk_fd()
    with pytest.raises(ProtocolError, match="SET_LOG_BASE: guest memory in a file on .*allow_file_memory"):
        send(s, R.SET_LOG_BASE, struct.pack("=QQ", 4096, 0), [fd])
    assert is_closed(fd)
    assert not [c for c in backend.calls if c[0] in ("mem", "log")] and open_fds() == before
    s.allow_file_memory = True
    assert reply_u64(send(s, R.SET_MEM_TABLE, region_table(1), [disk_fd()], need_reply=True)) == 0
    assert backend.calls[-1] == ("mem", 1) and open_fds() == before + 1
    s.close()
    assert open_fds() == before


def test_a_table_that_cannot_be_kept_leaves_no_fd_behind(session, monkeypatch):
    s, backend = session
    negotiate(s)
    before = open_fds()
    real_dup, calls = os.dup, []

    def dup_then_run_out(fd: int) -> int:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(24, "Too many open files")
        return real_dup(fd)
    monkeypatch.setattr(session_module.os, "dup", dup_then_run_out)
    fds = [memfd(), memfd()]
    assert reply_u64(send(s, R.SET_MEM_TABLE, region_table(2), fds, need_reply=True)) == 1
    monkeypatch.undo()
    assert all(is_closed(fd) for fd in fds) and open_fds() == before
    assert not [c for c in backend.calls if c[0] == "mem"]      # never handed to the datapath

    def refuse(regions):
        raise RuntimeError("cannot map")
    backend.set_mem_table = refuse
    assert reply_u64(send(s, R.SET_MEM_TABLE, region_table(2), [memfd(), memfd()], need_reply=True)) == 1
    assert open_fds() == before and s.info().mem_regions == 0


def test_the_table_is_released_even_if_the_datapath_reset_fails(session):
    s, backend = session
    negotiate(s)
    before = open_fds()
    send(s, R.SET_MEM_TABLE, region_table(2), [memfd(), memfd()])
    assert open_fds() == before + 2

    def broken():
        raise RuntimeError("reset failed")
    backend.reset = broken
    with pytest.raises(RuntimeError):
        s.close()
    assert open_fds() == before
    del backend.reset                   # the fixture's teardown resets for real
