"""The TAP uplink against the Linux kernel: a TAP created by the switch is moved
into a network namespace with an address; a QEMU guest (two queue pairs)
pings it both ways and runs iperf3 to and from it; DPDK testpmd's virtio-user
exchanges frames with the kernel; oversized frames are dropped with their
reason; a deleted TAP is re-created by the switch.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.guests import QemuGuest, build_image, default_cache_dir
from tests.linux.netns import NetNs, link_exists
from tests.peers.testpmd import TestPmd, virtio_user_vdev
from tests.switch import Vswitchd

BOOT_TIMEOUT = 240
GUEST_IP, HOST_IP = "10.8.0.1", "10.8.0.254"


def snmp(text: str, proto: str, field: str) -> int:
    lines = [line.split() for line in text.splitlines() if line.startswith(f"{proto}:")]
    return int(lines[1][lines[0].index(field)])


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)
    return value


@pytest.fixture(scope="module")
def image():
    return build_image(default_cache_dir())


@pytest.fixture(scope="module")
def uplink(tmp_path_factory, image):
    work = tmp_path_factory.mktemp("uplink")
    ifname = f"vsu{os.getpid() % 100000}"
    ns = NetNs(f"vsu{os.getpid()}").create()
    sw = Vswitchd(work / "switch", {
        "up": {"type": "tap", "ifname": ifname, "queues": 2, "mtu": 1500},
        "vm": {"type": "vhost-user", "queues": 2},
        "pmd": {"type": "vhost-user", "queues": 1},
    })
    guest = None
    try:
        sw.start()
        wait_for(lambda: link_exists(ifname), 30, "TAP created")

        def plug() -> None:
            ns.move_in(ifname)
            # a fixed MAC: after a re-creation the guest's ARP entry stays right
            ns.ip("link", "set", ifname, "address", "02:00:00:00:08:fe")
            ns.ip("addr", "add", f"{HOST_IP}/24", "dev", ifname)
            ns.ip("link", "set", ifname, "up")
        plug()
        guest = QemuGuest("g", image, sw.socket("vm"), mac="52:54:00:00:08:01", ip=f"{GUEST_IP}/24",
                          queues=2, smp=2, workdir=work / "g")
        guest.start()
        guest.wait_booted(BOOT_TIMEOUT)
        sw.wait_port("vm", lambda p: p["queues_enabled"] == 2, timeout=60, what="2 queue pairs")
        yield sw, ns, guest, ifname, plug
    finally:
        if guest:
            guest.stop()
        sw.stop()
        ns.delete()


def test_guest_and_kernel_ping_both_ways(uplink):
    sw, ns, guest, ifname, _ = uplink
    r = guest.ping(HOST_IP, count=20, interval=0.2)
    assert (r.sent, r.loss_pct) == (20, 0), r
    out = ns.run(["ping", "-c", "20", "-i", "0.2", "-W", "2", GUEST_IP]).stdout
    assert " 0% packet loss" in out, out


def test_iperf3_to_and_from_the_kernel_with_offloads_and_no_checksum_errors(uplink):
    sw, ns, guest, ifname, _ = uplink
    ns_before = ns.run(["cat", "/proc/net/snmp"]).stdout
    guest_before = guest.check_output("cat /proc/net/snmp")
    ns.run(["iperf3", "-s", "-D", "-1"])
    time.sleep(0.5)
    up = guest.iperf3_client(HOST_IP, seconds=5)
    ns.run(["iperf3", "-s", "-D", "-1"])
    time.sleep(0.5)
    down = guest.iperf3_client(HOST_IP, seconds=5, reverse=True)
    print(f"\nguest->kernel {up.gbps:.2f} Gbit/s, kernel->guest {down.gbps:.2f} Gbit/s")
    assert up.received_bps > 10e6 and down.received_bps > 10e6
    ns_after = ns.run(["cat", "/proc/net/snmp"]).stdout
    guest_after = guest.check_output("cat /proc/net/snmp")
    for before, after in ((ns_before, ns_after), (guest_before, guest_after)):
        assert snmp(after, "Tcp", "InCsumErrors") == snmp(before, "Tcp", "InCsumErrors")
    port = sw.port("up")
    # GSO frames of the guest's TSO reached the kernel whole (judged by their
    # segment size against the MTU, not their length) and the kernel's came back
    assert sum(q["rx"]["offload"]["gso_passthrough"] for q in port["queues"]) > 0
    assert sum(q["rx"]["packets"] for q in port["queues"]) > 1000
    assert sum(q["tx"]["packets"] for q in port["queues"]) > 1000
    assert "mtu_exceeded" not in sw.drops("up")


def test_frames_over_the_mtu_are_dropped_with_their_reason(uplink):
    sw, ns, guest, ifname, _ = uplink
    before = sw.drops("up").get("mtu_exceeded", 0)
    guest.check_output("ip link set eth0 mtu 4000")
    try:
        rc, out = guest.run(f"ping -c 3 -W 1 -s 3000 {HOST_IP}", timeout=60)
        assert rc != 0 and " 100% packet loss" in out, out
    finally:
        guest.check_output("ip link set eth0 mtu 1500")
    assert sw.drops("up").get("mtu_exceeded", 0) - before >= 3
    r = guest.ping(HOST_IP, count=3, interval=0.2)       # normal frames still pass
    assert r.loss_pct == 0


def test_testpmd_virtio_user_exchanges_frames_with_the_kernel(uplink, tmp_path):
    sw, ns, guest, ifname, _ = uplink

    def kernel_rx() -> int:
        return int(ns.run(["cat", f"/sys/class/net/{ifname}/statistics/rx_packets"]).stdout)

    with TestPmd([virtio_user_vdev(0, sw.socket("pmd"))], cpus=(0,), total_mbufs=8192,
                 forward_mode="rxonly", workdir=tmp_path) as tp:
        tp.wait_links_up([0], timeout=30)
        sw.wait_port("pmd", lambda p: p["queues_enabled"] == 1, timeout=30, what="pmd enabled")
        tp.start_fwd()
        # kernel -> testpmd: ARP requests for an absent host are broadcast to every port
        # (the kernel sends one ARP request a second)
        ns.run(["ping", "-c", "4", "-i", "1", "-W", "1", "10.8.0.77"], check=False)
        received = tp.port_stats()[0].rx_packets
        assert received >= 2, received
        # testpmd -> kernel: txonly frames (to an unknown MAC: flooded to the uplink too)
        before = kernel_rx()
        tp.stop_fwd()
        tp.set_fwd("txonly")
        tp.start_fwd()
        time.sleep(1)
        tp.stop_fwd()
        sent = tp.port_stats()[0].tx_packets
    delivered = kernel_rx() - before
    assert sent > 1000 and delivered > 1000, (sent, delivered)
    print(f"\ntestpmd sent {sent}, the kernel received {delivered}")


def test_deleted_tap_is_reported_and_recreated(uplink):
    sw, ns, guest, ifname, plug = uplink
    before = sw.port("up")
    ns.ip("link", "del", ifname)
    port = sw.wait_port("up", lambda p: p["disconnects"] == before["disconnects"] + 1
                        and p["connections"] == before["connections"] + 1, timeout=30,
                        what="TAP loss seen and the device re-created")
    assert "disappeared" in port["last_error"]
    assert sw.port("vm")["disconnects"] == 0          # the guest's port never noticed
    wait_for(lambda: link_exists(ifname), 30, "TAP re-created in the switch's namespace")
    plug()
    r = guest.ping(HOST_IP, count=10, interval=0.3)
    assert r.received >= 8, r                        # ARP settles within the first replies
