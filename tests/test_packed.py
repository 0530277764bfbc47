"""Packed virtqueues (VIRTIO_F_RING_PACKED) through the switch.

DPDK testpmd's virtio-user with ``packed_vq=1`` as the front-end: frames
byte for byte in both socket roles and with one and two queue pairs, a ring
size that is not a power of two, a packed port and a split port switching
to each other, and the switch restarted under a packed front-end. QEMU
guests with ``packed=on`` are in test_packed_guests below (marked qemu).
The rings' corner cases (wrap in the middle of a chain, indirect tables,
hostile drivers) are driven by the test front-end in test_hostile_packed.py.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.harness.peers.testpmd import TestPmd, verify_delivery, virtio_user_vdev
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.dpdk

RING_PACKED = "F_RING_PACKED"


def enabled(sw: Vswitchd, queues: int, names=("a", "b"), seen: dict | None = None):
    """A `ready` callback for verify_delivery: every queue pair enabled; the
    negotiated features of each port go into `seen` (they are gone once the
    front-end disconnects)."""
    def ready() -> None:
        for name in names:
            info = sw.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == queues,
                                timeout=30, what=f"{queues} queue pairs enabled")
            if seen is not None:
                seen[name] = info["features"]
    return ready


def ports_for(tmp_path, queues: int, mode: str = "server"):
    socks = {name: str(tmp_path / f"{name}.sock") for name in ("a", "b")}
    ports = {name: {"type": "vhost-user", "mode": mode, "socket": socks[name], "queues": queues}
             for name in ("a", "b")}
    return socks, ports


def assert_ring_kinds(seen: dict, **packed: bool) -> None:
    """Each port negotiated the ring kind asked for."""
    for name, want in packed.items():
        assert (RING_PACKED in seen[name]) == want, (name, seen[name])


@pytest.mark.parametrize("queues", [1, 2])
@pytest.mark.parametrize("role", ["switch-listens", "switch-connects"])
def test_packed_frames_cross_byte_for_byte_on_every_queue_pair(tmp_path, role, queues):
    switch_mode = "server" if role == "switch-listens" else "client"
    socks, ports = ports_for(tmp_path, queues, switch_mode)
    seen: dict = {}
    with Vswitchd(tmp_path / "switch", ports, cpus="1") as sw:
        for run in range(2):
            result = verify_delivery(
                virtio_user_vdev(0, socks["a"], queues=queues, server=switch_mode == "client",
                                 packed_vq=True),
                virtio_user_vdev(1, socks["b"], queues=queues, server=switch_mode == "client",
                                 packed_vq=True),
                queues=queues, count=200, workdir=tmp_path / f"run{run}", cpus=(0,),
                ready=enabled(sw, queues, seen=seen))
            assert result.ok, result.describe()
            assert sum(result.sent.values()) == 200 * queues
            for q in range(queues):
                assert result.queue_map[q] == {q: 200}, result.describe()
            assert_ring_kinds(seen, a=True, b=True)
            assert sw.port("a")["connections"] == run + 1
            assert sw.drops("a") == {} and sw.drops("b") == {}


def test_packed_ring_of_a_size_that_is_not_a_power_of_two(tmp_path):
    """Packed rings may have any size: 112 descriptors (DPDK wants a multiple of 16), so positions wrap by
    comparison many times over 1000 frames of up to 1514 bytes."""
    socks, ports = ports_for(tmp_path, 1)
    seen: dict = {}
    with Vswitchd(tmp_path / "switch", ports, cpus="1") as sw:
        result = verify_delivery(
            virtio_user_vdev(0, socks["a"], packed_vq=True, queue_size=112),
            virtio_user_vdev(1, socks["b"], packed_vq=True, queue_size=112),
            count=1000, workdir=tmp_path / "run", cpus=(0,), ready=enabled(sw, 1, seen=seen),
            ingress_queue_size=None)
        assert result.ok, result.describe()
        assert_ring_kinds(seen, a=True, b=True)
        assert sw.drops("a") == {} and sw.drops("b") == {}


@pytest.mark.parametrize("packed_side", ["a", "b"])
def test_packed_and_split_ports_switch_to_each_other(tmp_path, packed_side):
    """One front-end packed, the other split: the same switching code between
    the two ring kinds, in both directions (a to b, then b to a)."""
    socks, ports = ports_for(tmp_path, 1)
    seen: dict = {}
    with Vswitchd(tmp_path / "switch", ports, cpus="1") as sw:
        vdevs = {name: virtio_user_vdev(i, socks[name], packed_vq=name == packed_side)
                 for i, name in enumerate(("a", "b"))}
        for run, (src, dst) in enumerate((("a", "b"), ("b", "a"))):
            result = verify_delivery(vdevs[src], vdevs[dst], count=300, workdir=tmp_path / f"run{run}",
                                     cpus=(0,), ready=enabled(sw, 1, seen=seen),
                                     dst_mac="02:00:00:00:00:02" if dst == "b" else "02:00:00:00:00:01",
                                     src_mac="02:00:00:00:00:01" if src == "a" else "02:00:00:00:00:02")
            assert result.ok, result.describe()
            assert_ring_kinds(seen, **{packed_side: True, ("b" if packed_side == "a" else "a"): False})
        assert sw.drops("a") == {} and sw.drops("b") == {}


def test_switch_restarted_under_a_packed_front_end_resumes(tmp_path):
    """testpmd listens (server=1) with packed rings and forwards in a loop
    through the switch; the switch is killed and started again: it
    reconnects, the rings start from the base the front-end sends, and
    frames flow again on both ports."""
    socks, ports = ports_for(tmp_path, 1, "client")
    vdevs = [virtio_user_vdev(i, socks[name], server=True, packed_vq=True)
             for i, name in enumerate(("a", "b"))]
    tp = TestPmd(vdevs, cpus=(0,), total_mbufs=16384, mem_mb=1024, workdir=tmp_path / "pmd")
    sw = Vswitchd(tmp_path / "switch", ports, cpus="1")
    try:
        tp.start(wait=False)             # blocks in EAL probe until the switch connects
        sw.start()
        tp.wait_ready(timeout=60)
        for life in range(2):
            seen: dict = {}
            tp.wait_links_up([0, 1], timeout=30)
            enabled(sw, 1, seen=seen)()
            assert_ring_kinds(seen, a=True, b=True)
            tp.start_fwd(tx_first=4)
            time.sleep(2)
            tp.stop_fwd()
            for name in ("a", "b"):
                q = sw.port(name)["queues"][0]
                assert q["tx"]["packets"] > 1000 and q["rx"]["packets"] > 1000, (life, name, q)
            if life == 0:
                sw.stop(signal.SIGKILL)
                sw.start()
        assert sw.drops("a").get("ring_broken", 0) == 0 and sw.drops("b").get("ring_broken", 0) == 0
    finally:
        sw.stop()
        tp.stop()
