"""Two real QEMU guests switched by vswitchd, over two queue pairs.

Guest A's port is a server port (QEMU connects with reconnect=1); guest B's is
a client port (QEMU listens with server=on, the switch connects), so both
socket roles carry real traffic. The guests are booted once for the module.
"""

from __future__ import annotations

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.qemu

IP_A, IP_B = "10.0.0.1", "10.0.0.2"
MAC_A, MAC_B = "52:54:00:00:00:0a", "52:54:00:00:00:0b"
BOOT_TIMEOUT = 240


@pytest.fixture(scope="module")
def topology(tmp_path_factory, image):
    work = tmp_path_factory.mktemp("qemu")
    sock_b = str(work / "qemu-b.sock")       # QEMU B listens here
    sw = Vswitchd(work / "switch", {
        "a": {"type": "vhost-user", "mode": "server", "queues": 2},
        "b": {"type": "vhost-user", "mode": "client", "socket": sock_b, "queues": 2},
        "c": {"type": "vhost-user", "mode": "server", "queues": 1},
    })
    sw.start()
    guests = []
    try:
        a = QemuGuest("a", image, sw.socket("a"), server=False, mac=MAC_A, ip=f"{IP_A}/24",
                      queues=2, smp=2, workdir=work / "a")
        b = QemuGuest("b", image, sock_b, server=True, mac=MAC_B, ip=f"{IP_B}/24",
                      queues=2, smp=2, workdir=work / "b")
        for g in (a, b):
            g.start()
            guests.append(g)
        for g in (a, b):
            g.wait_booted(BOOT_TIMEOUT)
        # the guest's init enabled both pairs (ethtool -L eth0 combined 2)
        for name in ("a", "b"):
            sw.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == 2,
                         timeout=60, what="connected with 2 queue pairs enabled")
        yield sw, a, b
    finally:
        for g in guests:
            g.stop()
        sw.stop()


def test_negotiation_offers_mq_mtu_and_protocol_features(topology):
    sw, a, b = topology
    for name in ("a", "b"):
        port = sw.port(name)
        for feature in ("NET_MQ", "F_VERSION_1", "NET_MRG_RXBUF", "RING_F_EVENT_IDX",
                        "RING_F_INDIRECT_DESC", "VHOST_USER_F_PROTOCOL_FEATURES"):
            assert feature in port["features"], (name, feature)
        assert {"MQ", "REPLY_ACK"} <= set(port["protocol_features"])
    # QEMU exposes multiqueue to the guest only if the back-end offered MQ
    assert "Combined:\t2" in a.check_output("ethtool -l eth0").replace(" ", "")


def test_ping_both_ways_without_loss(topology):
    sw, a, b = topology
    r = a.ping(IP_B, count=20, interval=0.2)
    assert (r.sent, r.loss_pct) == (20, 0), r
    r = b.ping(IP_A, count=20, interval=0.2)
    assert (r.sent, r.loss_pct) == (20, 0), r
    fdb = {e["mac"]: e["port"] for e in sw.ctl("fdb show")}
    assert fdb[MAC_A] == "a" and fdb[MAC_B] == "b"


def test_both_queue_pairs_carry_traffic(topology):
    """XPS maps vCPU c to TX queue c: a ping pinned to each vCPU sends on each
    TX queue; the switch delivers TX queue q into RX queue q of the peer."""
    sw, a, b = topology
    before_a, before_b = a.ethtool_stats(), b.ethtool_stats()
    for cpu in (0, 1):
        rc, out = a.run(f"taskset -c {cpu} ping -c 10 -i 0.2 -W 2 {IP_B}", timeout=120)
        assert rc == 0 and " 0% packet loss" in out, out
    after_a, after_b = a.ethtool_stats(), b.ethtool_stats()
    for q in (0, 1):
        assert after_a[f"tx_queue_{q}_packets"] - before_a.get(f"tx_queue_{q}_packets", 0) >= 10, q
        assert after_b[f"rx_queue_{q}_packets"] - before_b.get(f"rx_queue_{q}_packets", 0) >= 10, q
    port_a, port_b = sw.port("a"), sw.port("b")
    for q in (0, 1):
        assert port_a["queues"][q]["tx"]["packets"] >= 10
        assert port_b["queues"][q]["rx"]["packets"] >= 10


def test_iperf3_tcp_both_directions(topology):
    sw, a, b = topology
    b.iperf3_server()
    forward = a.iperf3_client(IP_B, seconds=5)
    reverse = a.iperf3_client(IP_B, seconds=5, reverse=True)
    assert forward.received_bps > 10e6, forward
    assert reverse.received_bps > 10e6, reverse
    print(f"iperf3 A->B {forward.gbps:.2f} Gbit/s, B->A {reverse.gbps:.2f} Gbit/s")
    for name in ("a", "b"):
        drops = sw.drops(name)
        # a busy receiver may run out of RX buffers (TCP recovers); nothing else
        assert set(drops) <= {"no_rx_buffer"}, (name, drops)
    for g in (a, b):
        g.assert_no_kernel_errors()


@pytest.mark.parametrize("ring", ["split", "packed"])
def test_guest_memory_not_shared_is_reported_and_others_keep_forwarding(topology, image, tmp_path, ring):
    """A split ring shows unshared memory by an avail index that stays 0, a
    packed one by a first descriptor that stays all zero."""
    sw, a, b = topology
    with QemuGuest("c", image, sw.socket("c"), server=False, mac="52:54:00:00:00:0c",
                   ip="10.0.0.3/24", queues=1, share=False, workdir=tmp_path / "c",
                   device_props={"packed": True} if ring == "packed" else None) as c:
        c.wait_booted(BOOT_TIMEOUT)
        c.run(f"ping -c 3 -W 1 {IP_A}", timeout=60)      # frames the switch will never see
        port = sw.wait_port("c", lambda p: "memory" in p["alerts"], timeout=60,
                            what="the unshared-memory alert")
        assert "share=on" in port["alerts"]["memory"]
        assert ("F_RING_PACKED" in port["features"]) == (ring == "packed"), port["features"]
        r = a.ping(IP_B, count=5, interval=0.2)
        assert r.loss_pct == 0, r
