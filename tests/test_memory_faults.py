"""A guest that takes its memory away under the switch costs only its own port.

A front-end shares its RAM as file descriptors; the switch maps them. If the
front-end then shrinks such a file (ftruncate), the next access to a page past
the new end raises SIGBUS in the thread that touches it - a datapath worker -
and without a guard the whole switch dies of one guest. QEMU's memfd backend
seals its file against that (seal=on), a file on /dev/shm or hugetlbfs cannot
be sealed, and a hostile front-end does what it likes.

The front-end written in the tests plays that guest, in each place a worker
touches guest memory: the frames of its TX ring, the RX buffers the switch
fills, and the rings themselves. Each time: vswitchd lives on, the port
reports the fault (`port show`, log, metrics event) and closes the
connection, no byte of the vanished memory reaches another port, the port
takes a new front-end afterwards, and DPDK testpmd's virtio-user pair on two
other ports loses no frame.
"""

from __future__ import annotations

import os
import struct
import time

import pytest

from tests.harness import traffic
from tests.harness.frontend import GuestMemory, RegionSpec
from tests.harness.switch import Vswitchd
from tests.harness.traffic import healthy_delivery, wait_until

PORTS = ("in", "out", "shrink", "watch")
UNKNOWN_DST = "02:00:00:00:99:99"
SHRINK_MAC, WATCH_MAC = b"\x02\x00\x00\x00\x0b\x01", b"\x02\x00\x00\x00\x0b\x02"
RING_GPA, BUF_GPA, REGION = 0, 1 << 30, 4 << 20


@pytest.fixture(scope="module")
def sw(tmp_path_factory):
    work = tmp_path_factory.mktemp("memfault")
    with Vswitchd(work / "switch", {n: {"type": "vhost-user"} for n in PORTS}, cpus="1") as sw:
        sw.work = work
        yield sw


def connect(sw: Vswitchd, port: str, rx_buffers: int = 0):
    """A front-end whose rings live in one memfd and whose buffers in another,
    so the test can take the buffers away and keep reading its rings."""
    mem = GuestMemory(regions=[RegionSpec(RING_GPA, REGION), RegionSpec(BUF_GPA, REGION)])
    return traffic.connect(sw, port, rx_buffers=rx_buffers, wait=True, mem=mem, ring_region=0, buf_region=1)


def frames(n: int, dst: bytes, src: bytes) -> list[bytes]:
    return [dst + src + b"\x88\xb5" + struct.pack("!I", i) + bytes(range(46)) for i in range(n)]


def rx_packets(sw: Vswitchd, port: str) -> int:
    return sum(q["rx"]["packets"] for q in sw.port(port)["queues"])


def shrink(dev, region: int) -> None:
    """What the hostile guest does: its memory file loses every page."""
    os.ftruncate(dev.mem.regions[region].fd, 0)


def assert_port_closed_for_the_fault(sw: Vswitchd, dev, before: dict) -> dict:
    info = sw.wait_port("shrink", lambda p: p["memory_faults"] == before["memory_faults"] + 1
                        and p["state"] == "listening", timeout=30, what="connection closed for the fault")
    assert sw.alive()
    assert "vanished" in info["last_error"]
    assert info["disconnects"] == before["disconnects"] + 1
    wait_until(lambda: not dev.frontend.connected(), 10, "the front-end sees the connection closed")
    log = sw.log_path.read_text(errors="replace")
    assert "port shrink: guest memory vanished under the switch" in log
    return info


def drain(dev) -> list[bytes]:
    """Frames waiting in dev's RX ring; each buffer is posted again."""
    got = []
    while batch := dev.rx(0).recv_frames(256, timeout=0.2):
        dev.rx(0).post_rx(len(batch), 2048)
        got += [f.frame for f in batch]
    return got


def assert_port_works_again(sw: Vswitchd, watch) -> None:
    """A new front-end on the port, with memory that stays, is switched as usual."""
    dev = connect(sw, "shrink", rx_buffers=64)
    try:
        drain(watch)                 # what earlier floods left there
        sent = frames(16, WATCH_MAC, SHRINK_MAC)
        dev.tx(0).post_tx_frames(sent)
        got = []
        deadline = time.monotonic() + 15
        while len(got) < len(sent) and time.monotonic() < deadline:
            got += [f for f in drain(watch) if f[6:12] == SHRINK_MAC]
        assert got == sent
        assert sw.port("shrink")["alerts"] == {}
    finally:
        dev.close(close_memory=True)
    sw.wait_port("shrink", lambda p: p["state"] == "listening", timeout=30, what="closed")


@pytest.fixture
def watch(sw):
    """A connected guest that would see any frame flooded from the shrinking one."""
    dev = connect(sw, "watch", rx_buffers=128)
    yield dev
    dev.close(close_memory=True)
    sw.wait_port("watch", lambda p: p["state"] == "listening", timeout=30, what="closed")


@pytest.mark.dpdk
def test_tx_frames_in_vanished_memory_go_nowhere(sw, watch):
    before = sw.port("shrink")
    dev = connect(sw, "shrink")
    try:
        tx = dev.tx(0)
        # The guest posts frames (flooded, if they went anywhere), then its
        # buffer memory goes before it kicks: the worker reads pages that are gone.
        for f in frames(8, b"\xff" * 6, SHRINK_MAC):
            tx.post_tx(f, publish=False, kick=False)
        watched = rx_packets(sw, "watch")
        shrink(dev, 1)
        tx.publish(kick=True)
        info = assert_port_closed_for_the_fault(sw, dev, before)
        # The burst that faulted is dropped whole: nothing of it, not even
        # zero-filled frames, reached the other guest.
        tx_drops = sum(q["tx"]["drops"].get("bad_address", 0) for q in info["queues"])
        before_drops = sum(q["tx"]["drops"].get("bad_address", 0) for q in before["queues"])
        assert tx_drops - before_drops == 8
        assert rx_packets(sw, "watch") == watched
        assert watch.rx(0).recv_frames(1, timeout=0.5) == []
        assert "vring1" not in info["alerts"]       # no "avail index jumped" for zero pages
    finally:
        dev.close(close_memory=True)
    assert_port_works_again(sw, watch)
    healthy_delivery(sw, "after-tx-fault", 2000)


@pytest.mark.dpdk
def test_rx_buffers_in_vanished_memory_cost_the_flood_nothing(sw, watch):
    before = sw.port("shrink")
    dev = connect(sw, "shrink", rx_buffers=128)
    try:
        shrink(dev, 1)
        # testpmd's frames go to an unknown MAC: flooded to every port, so the
        # worker writes into the vanished RX buffers while delivering them.
        healthy_delivery(sw, "rx-fault", 3000)
        assert_port_closed_for_the_fault(sw, dev, before)
        assert sw.drops("in") == {} and sw.drops("out") == {}
    finally:
        dev.close(close_memory=True)
    assert_port_works_again(sw, watch)


@pytest.mark.dpdk
def test_rings_in_vanished_memory(sw, watch):
    before = sw.port("shrink")
    dev = connect(sw, "shrink", rx_buffers=16)
    try:
        # some traffic first, so the rings' indices are not 0: zero pages then
        # read as an avail index gone backwards, which must not count as a
        # guest's wild index (a "broken ring")
        dev.tx(0).post_tx_frames(frames(4, WATCH_MAC, SHRINK_MAC))
        wait_until(lambda: dev.tx(0).pending_used() == 4, 10, "frames consumed")
        dev.tx(0).reap()
        shrink(dev, 0)       # descriptor tables, avail and used rings: gone
        dev.tx(0).kick()     # a worker looks at once, awake or asleep
        assert_port_closed_for_the_fault(sw, dev, before)
        # no broken-ring alert either: zero pages are not the guest's indices
        info = sw.port("shrink")
        assert "vring1" not in info["alerts"] and not info["queues"][0]["tx"]["broken"]
    finally:
        dev.close(close_memory=True)
    assert_port_works_again(sw, watch)
    healthy_delivery(sw, "after-ring-fault", 2000)


def test_a_fault_is_charged_to_its_own_connection_not_the_next(sw, watch):
    """The guest faults and hangs up at once, and a new front-end connects
    before the switch's next health check: the fault is reported once,
    against the connection that took it, and the new one keeps running."""
    before = sw.port("shrink")
    dev = connect(sw, "shrink")
    shrink(dev, 0)
    dev.tx(0).kick()
    time.sleep(0.05)                    # the worker takes the fault
    dev.close(close_memory=True)
    # no `port show` in between (it only reads now, but did not always): the
    # new front-end comes as soon as the switch has seen the old one go
    time.sleep(0.2)
    again = connect(sw, "shrink", rx_buffers=16)
    try:
        time.sleep(2.5)                 # more than two health checks
        info = sw.port("shrink")
        assert info["state"] == "connected" and again.frontend.connected()
        assert info["memory_faults"] == before["memory_faults"] + 1
        assert info["connections"] == before["connections"] + 2
    finally:
        again.close(close_memory=True)
    sw.wait_port("shrink", lambda p: p["state"] == "listening", timeout=30, what="closed")


def test_looking_at_a_faulted_port_does_not_end_its_connection_the_health_task_does(sw, watch):
    """`port show` and `stats` (and a metrics scrape: the same show()) only
    read. A connection whose guest memory vanished is ended by the daemon's
    health task, within its period (HEALTH_PERIOD_S, 1 s), not by whoever
    looks first. Looked at right after the fault, the connection is still
    up; should the health task happen to run within those few milliseconds,
    the attempt is made again."""
    for _attempt in range(3):
        before = sw.port("shrink")
        dev = connect(sw, "shrink")
        try:
            shrink(dev, 0)
            dev.tx(0).kick()
            time.sleep(0.05)                 # the worker takes the fault
            looks = [sw.port("shrink") for _ in range(3)]
            sw.ctl("stats")
            looks.append(sw.port("shrink"))
            if any(info["memory_faults"] != before["memory_faults"] for info in looks):
                continue                     # the periodic task ran meanwhile
            assert all(info["state"] == "connected" for info in looks)
            assert dev.frontend.connected()
            # ... and the periodic task ends it, within its period
            sw.wait_port("shrink", lambda p: p["memory_faults"] == before["memory_faults"] + 1
                         and p["state"] == "listening", timeout=3, what="closed by the health task")
            wait_until(lambda: not dev.frontend.connected(), 10, "the front-end sees it closed")
            break
        finally:
            dev.close(close_memory=True)
            sw.wait_port("shrink", lambda p: p["state"] == "listening", timeout=30, what="closed")
    else:
        pytest.fail("every look at the port found its connection already ended")
    assert_port_works_again(sw, watch)


def test_sigbus_elsewhere_still_ends_the_process(tmp_path):
    """The guard absorbs faults in guest memory only: a SIGBUS sent to the
    daemon still ends it with SIGBUS, as it would without the guard."""
    with Vswitchd(tmp_path / "sw", {"a": {"type": "vhost-user"}}) as other:
        other.proc.send_signal(7)     # SIGBUS
        other.proc.wait(20)
        assert other.proc.returncode == -7
