"""Small waits and exchanges that daemon-level tests share."""

from __future__ import annotations

import struct
import time


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
