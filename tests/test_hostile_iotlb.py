"""A hostile front-end with ACCESS_PLATFORM: IOTLB entries and the back-end
channel are its to choose (docs/security.md, "IOTLB").

Port "a" gets the front-end under test, which negotiates ACCESS_PLATFORM and
BACKEND_REQ; its descriptors hold GPAs and its SET_VRING_ADDR front-end
addresses, both IOVAs here, mapped by `iotlb_map_memory` unless a test
leaves them out. Ports "b" and "c" are a healthy pair that must keep
switching whatever "a" does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import threading
import time

import pytest

from tests.harness import traffic
from tests.harness.frontend import VhostUserFrontend, bits
from tests.harness.frontend import Feature as F
from tests.harness.frontend import ProtocolFeature as PF
from tests.harness.frontend.vhost_frontend import DEFAULT_PROTOCOL_FEATURES
from tests.harness.switch import Vswitchd

FEATURES = bits(F.VERSION_1, F.MRG_RXBUF, F.INDIRECT_DESC, F.EVENT_IDX)
PLATFORM = FEATURES | bits(F.ACCESS_PLATFORM)
PROTO = DEFAULT_PROTOCOL_FEATURES | bits(PF.BACKEND_REQ)
RO, WO, RW = 1, 2, 3
UPDATE, INVALIDATE = 2, 3
MISS_MSG = struct.Struct("=IIIQQQBB6x")   # header + struct vhost_iotlb_msg


def frame(dst: str, src: str, seq: int = 0, size: int = 200) -> bytes:
    return traffic.frame(dst, src, seq, size)


def _listening(p: dict) -> bool:
    return p["state"] == "listening"


@pytest.fixture(scope="module")
def sw(tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile-iotlb")
    s = Vswitchd(work, {name: {"type": "vhost-user", "queues": 1} for name in ("a", "b", "c")})
    s.start()
    yield s
    s.stop()


@contextlib.contextmanager
def device(sw: Vswitchd, port: str, features: int = FEATURES, proto: int | None = None,
           rx_buffers: int = 64, wait: bool = True):
    sw.wait_port(port, _listening, timeout=10, what="listening before connecting")
    fe = VhostUserFrontend(sw.socket(port))
    try:
        dev = fe.setup_net_device(1, 256, features, protocol_features=proto)
        if rx_buffers:
            dev.rx(0).post_rx(rx_buffers, 2048)
        if wait:
            sw.wait_port(port, lambda p: p["state"] == "connected", timeout=10, what="connected")
        yield dev
    finally:
        fe.close()
        sw.wait_port(port, _listening, timeout=10, what="listening after closing")


@contextlib.contextmanager
def platform_device(sw: Vswitchd, rx_buffers: int = 64):
    """Port a's device with ACCESS_PLATFORM and a back-end channel; no entries yet."""
    with device(sw, "a", PLATFORM, PROTO, rx_buffers=0) as dev:
        channel = dev.frontend.open_backend_channel()
        try:
            port = sw.port("a")
            assert "F_ACCESS_PLATFORM" in port["features"] and port["iotlb"]["active"], port
            dev.rx_buffers = rx_buffers
            yield dev, channel
        finally:
            channel.close()


def mapped(dev, perm: int = RW) -> None:
    dev.frontend.iotlb_map_memory(dev.mem, perm)
    if dev.rx_buffers:
        dev.rx(0).post_rx(dev.rx_buffers, 2048)
        dev.rx_buffers = 0


def arrives(ring, want: bytes, timeout: float = 5.0) -> bool:
    """`want` among the frames the ring receives (floods may come first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(g.frame == want for g in ring.recv_frames(64, timeout=0.1)):
            return True
    return False


def healthy_pair_switches(sw: Vswitchd, b, c, seq: int) -> None:
    b.tx(0).post_tx(frame("c", "b", seq))
    assert arrives(c.rx(0), frame("c", "b", seq)), "the healthy pair stopped switching"
    c.tx(0).post_tx(frame("b", "c", seq))
    assert arrives(b.rx(0), frame("b", "c", seq)), "the healthy pair stopped switching"


def unmap_buffers(dev) -> None:
    """Invalidate the IOVAs the descriptors use (GPAs); the rings' stay."""
    for r in dev.mem.vhost_regions():
        assert dev.frontend.iotlb_msg(r.gpa, r.size, 0, 0, INVALIDATE) == 0


def learned_then_unmapped(sw: Vswitchd, a, b) -> None:
    """a sends once (the FDB learns it), then its buffers' entries go."""
    mapped(a)
    wait_for(lambda: a_rings_started(sw), what="a's rings started")
    a.tx(0).post_tx(frame("b", "a", 0))
    assert b.rx(0).recv_frames(1, timeout=5)
    unmap_buffers(a)


def read_misses(channel: socket.socket, timeout: float = 2.0) -> list[tuple[int, int]]:
    """(iova, perm) of the BACKEND_IOTLB_MSG MISS messages waiting on the channel."""
    channel.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = channel.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        channel.settimeout(0.2)
    out = []
    for off in range(0, len(data) - len(data) % MISS_MSG.size, MISS_MSG.size):
        request, flags, size, iova, _size, _uaddr, perm, kind = MISS_MSG.unpack_from(data, off)
        assert (request, flags & 0xB, size, kind) == (1, 1, 32, 1), (request, flags, size, kind)
        out.append((iova, perm))
    return out


def a_rings_started(sw: Vswitchd) -> bool:
    q = sw.port("a")["queues"][0]
    return q["rx"]["started"] and q["tx"]["started"]


def drops(sw: Vswitchd, port: str, ring: str) -> dict:
    return sw.port(port)["queues"][0][ring]["drops"]


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)
    return value


def test_missing_entries_are_asked_for_and_cost_only_their_port(sw):
    with device(sw, "b") as b, device(sw, "c") as c, platform_device(sw) as (a, channel):
        # no entry: the rings wait, their addresses are asked for (again
        # by the health check: the first misses came before the channel)
        misses = read_misses(channel, 3.0)
        ring_iovas = {r.desc_uaddr for r in a.rings} | {r.avail_uaddr for r in a.rings}
        assert ring_iovas & {iova for iova, _ in misses}, (misses, ring_iovas)
        assert not a_rings_started(sw)
        healthy_pair_switches(sw, b, c, 1)
        # the entries arrive: the rings start and frames flow both ways
        mapped(a)
        wait_for(lambda: a_rings_started(sw), what="a's rings started")
        a.tx(0).post_tx(frame("b", "a", 2))
        got = b.rx(0).recv_frames(1, timeout=5)
        assert got and got[0].frame == frame("b", "a", 2)
        b.tx(0).post_tx(frame("a", "b", 3))
        got = a.rx(0).recv_frames(1, timeout=5)
        assert got and got[0].frame == frame("a", "b", 3)
        iotlb = sw.port("a")["iotlb"]
        assert iotlb["hits"] > 0 and iotlb["misses"] > 0 and iotlb["miss_sent"] > 0, iotlb
        # TX buffers whose entries go away wait at the descriptor, not consumed
        unmap_buffers(a)
        a.tx(0).post_tx(frame("b", "a", 4))
        time.sleep(0.5)
        assert not b.rx(0).recv_frames(1, timeout=0.5)
        mapped(a)
        got = b.rx(0).recv_frames(1, timeout=5)
        assert got and got[0].frame == frame("b", "a", 4), "the waiting frame was lost"
        healthy_pair_switches(sw, b, c, 5)


def test_overlapping_entries_the_newest_wins(sw):
    with device(sw, "b") as b, platform_device(sw) as (a, channel):
        fe = a.frontend
        regions = a.mem.vhost_regions()
        # a wrong mapping first, then overlapping right ones in odd-sized pieces
        for r in regions:
            for iova in (r.gpa, r.uaddr):
                assert fe.iotlb_msg(iova, r.size, r.uaddr + 0x1000, RW, UPDATE) == 0
                off = 0
                while off < r.size:
                    # pieces of 256 KiB and more, each overlapping the last by 2 KiB
                    size = min(0x40000 + (off // 0x40000) % 7 * 0x1000, r.size - off)
                    assert fe.iotlb_msg(iova + off, size, r.uaddr + off, RW, UPDATE) == 0
                    off += size - 0x800 if off + size < r.size else size
        a.rx(0).post_rx(16, 2048)
        wait_for(lambda: a_rings_started(sw), what="a's rings started")
        for seq in range(20):
            a.tx(0).post_tx(frame("b", "a", seq, 1500))
        got = b.rx(0).recv_frames(20, timeout=5)
        assert [g.frame for g in got] == [frame("b", "a", seq, 1500) for seq in range(20)]


def test_wrapping_and_invalid_entries_are_refused_and_the_connection_stays(sw):
    with platform_device(sw) as (a, channel):
        fe = a.frontend
        assert fe.iotlb_msg(2**64 - 0x1000, 0x2000, 0x1000, RW, UPDATE) == 1     # iova wraps
        assert fe.iotlb_msg(0x1000, 0x2000, 2**64 - 0x1000, RW, UPDATE) == 1     # uaddr wraps
        assert fe.iotlb_msg(0x1000, 0, 0x1000, RW, UPDATE) == 1                  # size 0
        assert fe.iotlb_msg(0x1000, 0x1000, 0x1000, 5, UPDATE) == 1              # permission
        assert fe.iotlb_msg(0x1000, 0x1000, 0x1000, RW, 1) == 1                  # MISS from a front-end
        # an entry pointing outside guest memory is taken, and never used
        assert fe.iotlb_msg(0x10_0000_0000, 0x1000, 0x1234_0000_0000, RW, UPDATE) == 0
        port = sw.port("a")
        assert port["state"] == "connected" and port["iotlb"]["refused"] == 5, port["iotlb"]


def test_wrong_permission_is_refused_and_counted(sw):
    with device(sw, "b") as b, platform_device(sw, rx_buffers=0) as (a, channel):
        fe = a.frontend
        for r in a.mem.vhost_regions():
            assert fe.iotlb_msg(r.uaddr, r.size, r.uaddr, RW, UPDATE) == 0      # rings: fine
            assert fe.iotlb_msg(r.gpa, r.size, r.uaddr, RO, UPDATE) == 0        # buffers: read only
        a.rx(0).post_rx(8, 2048)
        wait_for(lambda: a_rings_started(sw), what="a's rings started")
        b.tx(0).post_tx(frame("a", "b", 1))          # flooded: a's RX buffer is read only
        wait_for(lambda: drops(sw, "a", "rx").get("iotlb_denied"), what="iotlb_denied on a's RX")
        # and a TX buffer the entry only lets the device write
        for r in a.mem.vhost_regions():
            assert fe.iotlb_msg(r.gpa, r.size, r.uaddr, WO, UPDATE) == 0
        a.tx(0).post_tx(frame("b", "a", 2))
        wait_for(lambda: drops(sw, "a", "tx").get("iotlb_denied"), what="iotlb_denied on a's TX")
        assert sw.port("a")["iotlb"]["denied"] >= 2


def test_entries_invalidated_while_frames_flow(sw):
    with device(sw, "b", rx_buffers=256) as b, device(sw, "c") as c, platform_device(sw) as (a, channel):
        healthy_pair_switches(sw, b, c, 0)        # b and c learned: a's frames go to b only
        mapped(a)
        wait_for(lambda: a_rings_started(sw), what="a's rings started")
        stop = threading.Event()
        fe = a.frontend
        regions = a.mem.vhost_regions()

        def churn():
            # The front-end's socket is used by this thread only meanwhile.
            while not stop.is_set():
                for r in regions:
                    fe.iotlb_msg(r.gpa, r.size, 0, 0, INVALIDATE)
                    fe.iotlb_msg(r.gpa, r.size, r.uaddr, RW, UPDATE)

        t = threading.Thread(target=churn)
        t.start()
        got = []
        try:
            for seq in range(200):
                a.tx(0).post_tx(frame("b", "a", seq, 600))
                got += b.rx(0).recv_frames(16, timeout=0.01)
                time.sleep(0.01)
        finally:
            stop.set()
            t.join(10)
        mapped(a)
        got += b.rx(0).recv_frames(200, timeout=3)
        # frames wait at a miss, never cross wrong memory: every one whole, none lost
        assert sorted(traffic.seq_of(g.frame) for g in got) == list(range(200))
        for g in got:
            assert g.frame == frame("b", "a", traffic.seq_of(g.frame), 600), "a corrupted frame"
        healthy_pair_switches(sw, b, c, 1)
        iotlb = sw.port("a")["iotlb"]
        assert iotlb["invalidations"] > 10 and sw.port("a")["state"] == "connected", iotlb


def test_more_entries_than_the_bound_evict(sw):
    with device(sw, "b") as b, platform_device(sw) as (a, channel):
        fe = a.frontend
        base = 0x100_0000_0000
        for i in range(2048 + 300):
            assert fe.iotlb_msg(base + i * 0x1000, 0x1000, 0x7000_0000_0000 + i * 0x1000, RO, UPDATE) == 0
        iotlb = sw.port("a")["iotlb"]
        assert iotlb["entries"] == 2048 and iotlb["evicted"] == 300, iotlb
        mapped(a)         # the real entries, evicting more of the others
        wait_for(lambda: a_rings_started(sw), what="a's rings started")
        a.tx(0).post_tx(frame("b", "a", 1))
        got = b.rx(0).recv_frames(1, timeout=5)
        assert got and got[0].frame == frame("b", "a", 1)
        assert sw.port("a")["iotlb"]["entries"] <= 2048


def test_a_miss_flood_is_bounded(sw):
    with device(sw, "b", rx_buffers=256) as b, device(sw, "c") as c, platform_device(sw) as (a, channel):
        learned_then_unmapped(sw, a, b)
        read_misses(channel, 0.5)
        t0 = time.monotonic()
        for i in range(40):
            b.tx(0).post_tx_frames([frame("a", "b", i * 32 + k) for k in range(32)])
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        misses = read_misses(channel, 1.0)
        # deduplicated by page and bounded by the rate: far fewer than the frames
        assert 0 < len(misses) <= 256 + 2000 * (elapsed + 1.5), len(misses)
        assert len(misses) < 40 * 32, len(misses)
        assert drops(sw, "a", "rx").get("iotlb_miss"), drops(sw, "a", "rx")
        healthy_pair_switches(sw, b, c, 1)


@pytest.mark.parametrize("kind", ["pipe", "eventfd", "udp"])
def test_a_backend_channel_that_is_not_a_unix_stream_socket_is_refused(sw, kind):
    with device(sw, "a", PLATFORM, PROTO, rx_buffers=0) as a:
        fe = a.frontend
        if kind == "pipe":
            fd, other = os.pipe()
        elif kind == "eventfd":
            fd, other = os.eventfd(0), -1
        else:
            fd, other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach(), -1
        try:
            assert fe.request(22 - 1, b"", [fd], need_reply=True) == 1    # SET_BACKEND_REQ_FD
        finally:
            os.close(fd)
            if other >= 0:
                os.close(other)
        port = sw.port("a")
        assert port["state"] == "connected" and port["backend_channel"] is None
        assert "SET_BACKEND_REQ_FD" in port["last_error"]


def test_a_full_blocking_backend_channel_never_stalls_the_switch(sw):
    with device(sw, "b", rx_buffers=256) as b, device(sw, "c") as c, \
            device(sw, "a", PLATFORM, PROTO, rx_buffers=0) as a:
        fe = a.frontend
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        filled = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                filled += theirs.send(b"\0" * 4096)      # fills our end's receive queue
        # the front-end clears O_NONBLOCK on the file the switch gets
        flags = fcntl.fcntl(theirs.fileno(), fcntl.F_GETFL)
        fcntl.fcntl(theirs.fileno(), fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        assert fe.request(21, b"", [theirs.fileno()], need_reply=True) == 0
        theirs.close()
        a.rx_buffers = 64
        healthy_pair_switches(sw, b, c, 0)
        learned_then_unmapped(sw, a, b)
        for i in range(20):
            b.tx(0).post_tx_frames([frame("a", "b", i * 16 + k) for k in range(16)])
            t = time.monotonic()
            healthy_pair_switches(sw, b, c, i)
            assert time.monotonic() - t < 2.0
        t = time.monotonic()
        port = sw.port("a")
        assert time.monotonic() - t < 2.0
        assert port["iotlb"]["miss_unsent"] > 0 and port["backend_channel"]["dropped"] > 0, port["iotlb"]
        ours.close()
