"""Frames, test devices and exchanges that daemon-level tests share.

A test device is the test front-end (tests.harness.frontend) set up as a
virtio-net device on one port of a running `Vswitchd`. Frames are addressed by
station name ("a", "b", ...) through a MAC table, or by MAC bytes.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping

from tests.harness.frontend import Feature as F
from tests.harness.frontend import NetDevice, VhostUserFrontend, bits
from tests.harness.switch import Vswitchd

# What a Linux guest negotiates without offloads.
FULL = bits(F.VERSION_1, F.MRG_RXBUF, F.INDIRECT_DESC, F.EVENT_IDX)
OFFLOADS_TX = bits(F.CSUM, F.HOST_TSO4, F.HOST_TSO6)
OFFLOADS_RX = bits(F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6)

BCAST = b"\xff" * 6
ETHERTYPE = b"\x88\xb5"      # IEEE local experimental

# Station name -> MAC: one per port of the tests' switches (02:00:00:00:00:01...).
MAC: dict[str, bytes] = {name: bytes([0x02, 0, 0, 0, 0, i + 1])
                         for i, name in enumerate(["a", "b", "c", "d", "e", "f", "mon", "acc", "trk"])}


def frame(dst: str | bytes, src: str | bytes, seq: int = 0, size: int = 64,
          macs: Mapping[str, bytes] = MAC) -> bytes:
    """A frame of `size` bytes from src to dst (names in `macs`, or MAC bytes):
    the experimental EtherType, `seq` as 4 bytes, then bytes counting up from seq."""
    dst_mac = macs[dst] if isinstance(dst, str) else dst
    src_mac = macs[src] if isinstance(src, str) else src
    head = dst_mac + src_mac + ETHERTYPE + struct.pack("!I", seq)
    return head + bytes((seq + i) & 0xFF for i in range(max(0, size - len(head))))


def seq_of(f: bytes) -> int:
    """The sequence number `frame` put in f."""
    return struct.unpack("!I", f[14:18])[0]


def connect(sw: Vswitchd, port: str, pairs: int = 1, *, features: int | None = FULL,
            rx_buffers: int = 128, rx_buf_len: int = 2048, ring: int = 256, wait: bool = False,
            **kw) -> NetDevice:
    """A started test device on `port` with `pairs` queue pairs of `ring`
    entries, `rx_buffers` buffers of `rx_buf_len` bytes posted on every RX
    queue. With `wait`, return only once the switch reports the port connected
    and every pair enabled. Other keywords go to setup_net_device."""
    dev = VhostUserFrontend(sw.socket(port)).setup_net_device(pairs, ring, features, **kw)
    for q in range(pairs):
        if rx_buffers:
            dev.rx(q).post_rx(rx_buffers, rx_buf_len)
    if wait:
        sw.wait_port(port, lambda p: p["state"] == "connected" and p["queues_enabled"] == pairs,
                     timeout=30, what=f"{port} connected")
    return dev


def exchange_by_name(src, dst, src_name: str, dst_name: str, n: int = 8, q: int = 0, size: int = 200,
                     timeout: float = 10.0) -> None:
    """Send n frames src->dst on queue q and check they arrive intact, in order
    (names in MAC; frames from other sources are skipped)."""
    sent = [frame(dst_name, src_name, 1000 + i, size) for i in range(n)]
    for f in sent:
        src.tx(q).post_tx(f)
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for g in dst.rx(q).recv_frames(n - len(got), timeout=0.2):
            dst.rx(q).post_rx(1, 2048)           # give the buffer back
            # frames flooded before the FDB learned everyone may be waiting
            if g.frame[6:12] == MAC[src_name]:
                got.append(g.frame)
    assert got == sent


def wait_until(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.05):
    """The first true value of predicate(), polled until timeout (then fail)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
    return value


def exchange(src, dst, src_mac: bytes, dst_mac: bytes, n: int = 16) -> None:
    """n numbered frames from the test front-end device src to dst, which
    must receive exactly those, in order (frames from others are skipped)."""
    sent = [dst_mac + src_mac + b"\x88\xb5" + struct.pack("!I", i) + bytes(range(46)) for i in range(n)]
    src.tx(0).post_tx_frames(sent)
    got = []
    deadline = time.monotonic() + 15
    while len(got) < n and time.monotonic() < deadline:
        for f in dst.rx(0).recv_frames(n - len(got), timeout=0.2):
            dst.rx(0).post_rx(1, 2048)
            if f.frame[6:12] == src_mac:
                got.append(f.frame)
    src.tx(0).reap()
    assert got == sent


# Frames of the healthy pair go to a MAC nobody has: the switch floods them
# to every other connected port too (the attacker's included).
UNKNOWN_DST = "02:00:00:00:99:99"


def healthy_delivery(sw, name: str, count: int, timeout: float = 120.0):
    """DPDK testpmd's virtio-user pair on the daemon's ports "in" -> "out":
    every one of `count` frames must come out byte for byte, in order."""
    from tests.harness.peers.testpmd import verify_delivery, virtio_user_vdev

    def ready() -> None:
        for port in ("in", "out"):
            sw.wait_port(port, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                         timeout=30, what="enabled")
    result = verify_delivery(virtio_user_vdev(0, sw.socket("in")), virtio_user_vdev(1, sw.socket("out")),
                             count=count, dst_mac=UNKNOWN_DST, workdir=sw.work / name, cpus=(0,),
                             timeout=timeout, ready=ready, name=name)
    assert result.ok, result.describe()
    assert sum(result.sent.values()) == count and sum(result.received.values()) == count
    return result
