"""DPDK testpmd's virtio-user as an independent front-end on two switch ports.

Both socket roles (the switch listens, or the switch connects to testpmd
listening with server=1), one and two queue pairs; every frame sent into one
port must come out of the other byte for byte, on every queue pair. Each
scenario runs twice against the same switch, so the second run also proves
that the ports take a new front-end after the first went away (a client port
reconnects by itself).
"""

from __future__ import annotations

import pytest

from tests.harness.peers.testpmd import TestPmd, verify_delivery, virtio_user_vdev
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.dpdk


def enabled(sw: Vswitchd, queues: int):
    def ready() -> None:
        for name in ("a", "b"):
            sw.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == queues,
                         timeout=30, what=f"{queues} queue pairs enabled")
    return ready


@pytest.mark.parametrize("queues", [1, 2])
@pytest.mark.parametrize("role", ["switch-listens", "switch-connects"])
def test_frames_cross_byte_for_byte_on_every_queue_pair(tmp_path, role, queues):
    switch_mode = "server" if role == "switch-listens" else "client"
    socks = {name: str(tmp_path / f"{name}.sock") for name in ("a", "b")}
    ports = {name: {"type": "vhost-user", "mode": switch_mode, "socket": socks[name], "queues": queues}
             for name in ("a", "b")}
    with Vswitchd(tmp_path / "switch", ports, cpus="1") as sw:
        for run in range(2):
            result = verify_delivery(
                virtio_user_vdev(0, socks["a"], queues=queues, server=switch_mode == "client"),
                virtio_user_vdev(1, socks["b"], queues=queues, server=switch_mode == "client"),
                queues=queues, count=200, workdir=tmp_path / f"run{run}", cpus=(0,),
                ready=enabled(sw, queues))
            assert result.ok, result.describe()
            assert sum(result.sent.values()) == 200 * queues
            # every queue pair carried its frames, queue q into queue q
            for q in range(queues):
                assert result.queue_map[q] == {q: 200}, result.describe()
            port_a = sw.port("a")
            assert port_a["connections"] == run + 1
            assert sw.drops("a") == {} and sw.drops("b") == {}


def test_io_loop_keeps_both_queue_pairs_busy(tmp_path):
    """The benchmark topology as a functional check: frames circulate through
    the switch on two queue pairs for a few seconds without a drop."""
    socks = {name: str(tmp_path / f"{name}.sock") for name in ("a", "b")}
    ports = {name: {"type": "vhost-user", "socket": socks[name], "queues": 2} for name in ("a", "b")}
    with Vswitchd(tmp_path / "switch", ports, cpus="1") as sw:
        with TestPmd([virtio_user_vdev(0, socks["a"], queues=2), virtio_user_vdev(1, socks["b"], queues=2)],
                     rxq=2, cpus=(0,), total_mbufs=32768, mem_mb=1024, workdir=tmp_path) as tp:
            tp.wait_links_up([0, 1], timeout=30)
            enabled(sw, 2)()
            tp.start_fwd(tx_first=4)
            import time
            time.sleep(3)
            stats = tp.stop_fwd()
        for port in ("a", "b"):
            info = sw.port(port)
            for q in (0, 1):
                assert info["queues"][q]["tx"]["packets"] > 10_000, (port, q, info["queues"][q])
                assert info["queues"][q]["rx"]["packets"] > 10_000, (port, q, info["queues"][q])
        for q in (0, 1):
            assert stats.rx_by_queue(0).get(q, 0) > 10_000, stats
