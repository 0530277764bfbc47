"""The VXLAN port against the Linux kernel's vxlan device.

Two network namespaces joined by a veth pair with MTU 1500, addresses only on
that veth: the switch runs in one ("host", 192.0.2.1), a kernel VTEP in the
other ("peer", 192.0.2.2: `ip link add vx type vxlan id 100 ...`, inner
address 10.78.0.2, MTU 1450). The switch has a VXLAN port to the peer, a
QEMU guest on a vhost-user port whose MTU (1450) reaches the guest through
host_mtu / VIRTIO_NET_F_MTU, and a TAP port into the host namespace
(10.78.0.3, MTU 1500: the one sender that can make frames too large for the
tunnel). The switch runs in a namespace of its own so that nothing here
depends on, or disturbs, the addresses of the machine the tests run on.
The peer's veth has its TX offloads off, as a wire between hosts would
(see `net`).

Workers run in event mode: a datagram must wake a sleeping worker (the UDP
socket is in its epoll set), or pings from the peer would take a second.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.linux.netns import NetNs, link_exists, snmp
from tests.harness.switch import VENV_BIN, Vswitchd
from tests.harness.traffic import wait_until

pytestmark = pytest.mark.root

BOOT_TIMEOUT = 240
GUEST_IP, PEER_IP, TAP_IP, PEER2_IP = "10.78.0.1", "10.78.0.2", "10.78.0.3", "10.78.0.4"
HOST_UNDERLAY, PEER_UNDERLAY, STRANGER_UNDERLAY = "192.0.2.1", "192.0.2.2", "192.0.2.9"
PEER2_UNDERLAY = "192.0.2.3"
GUEST_MAC, PEER_MAC, PEER2_MAC = "52:54:00:00:78:01", "02:00:00:00:78:02", "02:00:00:00:78:04"
VNI = 100


def vxlan_ports(vni: int = VNI, remotes: list[str] | None = None) -> dict[str, dict]:
    return {
        "vx": {"type": "vxlan", "local": HOST_UNDERLAY, "remotes": remotes or [PEER_UNDERLAY, PEER2_UNDERLAY],
               "vni": vni, "mtu": 1450},
        "vm": {"type": "vhost-user", "mtu": 1450},
        "up": {"type": "tap", "ifname": TAP_IFNAME, "mtu": 1500},
        # an address this host does not have: reported, retried, harmless to the others
        "vxbad": {"type": "vxlan", "local": "192.0.2.77", "remotes": [PEER_UNDERLAY],
                  "vni": 200, "udp_port": 4790},
    }


TAP_IFNAME = f"vxt{os.getpid() % 100000}"


def add_kernel_vtep(host: NetNs, peer: NetNs, hv: str, pv: str, underlay: str, mac: str,
                    inner: str, host_addr: str | None) -> None:
    """A veth host<->peer and a kernel vxlan device in `peer` whose remote is the switch."""
    host.ip("link", "add", hv, "mtu", "1500", "type", "veth", "peer", "name", pv,
            "mtu", "1500", "netns", peer.name)
    if host_addr:
        host.ip("addr", "add", host_addr, "dev", hv)
    host.ip("link", "set", hv, "up")
    if not host_addr:   # a second link to another host: a route to that one peer
        host.ip("route", "replace", f"{underlay}/32", "dev", hv)
    peer.ip("addr", "add", f"{underlay}/24", "dev", pv)
    peer.ip("link", "set", pv, "up")
    # The peer's veth is its wire: it must carry finished packets (see `net`).
    peer.run(["ethtool", "-K", pv, "tx", "off"])
    peer.ip("link", "add", "vx", "address", mac, "mtu", "1450", "type", "vxlan",
            "id", str(VNI), "local", underlay, "remote", HOST_UNDERLAY, "dstport", "4789", "dev", pv)
    peer.ip("addr", "add", f"{inner}/24", "dev", "vx")
    peer.ip("link", "set", "vx", "up")


@pytest.fixture(scope="module")
def net():
    """The host namespace (the switch's), the peer namespace with the kernel
    VTEP, and a second peer (another host) with one of its own."""
    pid = os.getpid()
    host, peer = NetNs(f"vxh{pid}").create(), NetNs(f"vxp{pid}").create()
    peer2 = NetNs(f"vxq{pid}").create()
    hv, pv = f"vxh{pid % 100000}", f"vxp{pid % 100000}"
    try:
        add_kernel_vtep(host, peer2, f"vxi{pid % 100000}", f"vxq{pid % 100000}", PEER2_UNDERLAY,
                        PEER2_MAC, PEER2_IP, None)
        host.ip("link", "add", hv, "mtu", "1500", "type", "veth", "peer", "name", pv,
                "mtu", "1500", "netns", peer.name)
        host.ip("addr", "add", f"{HOST_UNDERLAY}/24", "dev", hv)
        host.ip("link", "set", hv, "up")
        peer.ip("addr", "add", f"{PEER_UNDERLAY}/24", "dev", pv)
        peer.ip("addr", "add", f"{STRANGER_UNDERLAY}/24", "dev", pv)   # a second source, not a remote
        peer.ip("link", "set", pv, "up")
        # The peer's veth is its wire: it must carry finished packets. veth
        # hands checksum-partial and GSO skbs across namespaces as they are,
        # and a UDP socket receiving them gets inner TCP checksums that were
        # never computed (no socket option reports it), and 64 KiB datagrams.
        # A NIC puts only finished packets on a wire; so does a veth without
        # TX offloads.
        peer.run(["ethtool", "-K", pv, "tx", "off"])
        peer.ip("link", "add", "vx", "address", PEER_MAC, "mtu", "1450", "type", "vxlan",
                "id", str(VNI), "local", PEER_UNDERLAY, "remote", HOST_UNDERLAY, "dstport", "4789",
                "dev", pv)
        peer.ip("addr", "add", f"{PEER_IP}/24", "dev", "vx")
        peer.ip("link", "set", "vx", "up")
        yield host, peer, peer2
    finally:
        host.delete()
        peer.delete()
        peer2.delete()


@pytest.fixture(scope="module")
def vxlan(tmp_path_factory, image, net):
    host, peer, peer2 = net
    work = tmp_path_factory.mktemp("vxlan")
    sw = Vswitchd(work / "switch", vxlan_ports(), extra={"datapath": {"workers": 1, "mode": "event"}},
                  wrapper=["ip", "netns", "exec", host.name])
    guest = None
    try:
        sw.start()
        wait_until(lambda: link_exists(TAP_IFNAME, host.name), 30, "TAP created")
        host.ip("addr", "add", f"{TAP_IP}/24", "dev", TAP_IFNAME)
        host.ip("link", "set", TAP_IFNAME, "up")
        guest = QemuGuest("vx", image, sw.socket("vm"), mac=GUEST_MAC, ip=f"{GUEST_IP}/24",
                          device_props={"host_mtu": 1450}, workdir=work / "g")
        guest.start()
        guest.wait_booted(BOOT_TIMEOUT)
        sw.wait_port("vm", lambda p: p["queues_enabled"] == 1, timeout=60, what="guest queue enabled")
        yield sw, host, peer, guest
    finally:
        if guest:
            guest.stop()
        sw.stop()


def send_udp(ns: NetNs, source: str, payloads: list[bytes], port: int = 4789) -> None:
    """Datagrams from `source` in namespace `ns` to the switch's VXLAN socket."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(({source!r}, 0))\n"
        f"for p in {payloads!r}:\n"
        f"    s.sendto(p, ({HOST_UNDERLAY!r}, {port}))\n"
    )
    ns.run([sys.executable, "-c", code])


def vxlan_header(vni: int, flags: int = 0x08) -> bytes:
    return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"


def arp_request(src_mac: str, src_ip: str, dst_ip: str) -> bytes:
    mac = bytes.fromhex(src_mac.replace(":", ""))
    ip = lambda a: bytes(int(x) for x in a.split("."))  # noqa: E731
    return (b"\xff" * 6 + mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01"
            + mac + ip(src_ip) + b"\0" * 6 + ip(dst_ip) + b"\0" * 18)


@pytest.mark.qemu
def test_guest_gets_the_tunnel_mtu_and_the_bad_port_is_reported(vxlan):
    sw, host, peer, guest = vxlan
    assert guest.check_output("cat /sys/class/net/eth0/mtu").strip() == "1450"
    vx = sw.port("vx")
    assert vx["state"] == "up" and vx["vni"] == VNI and vx["local"] == f"{HOST_UNDERLAY}:4789"
    bad = sw.port("vxbad")
    assert bad["state"] == "down"
    assert "192.0.2.77 is not configured on this host" in bad["last_error"], bad


@pytest.mark.qemu
def test_guest_and_kernel_vtep_ping_both_ways(vxlan):
    sw, host, peer, guest = vxlan
    r = guest.ping(PEER_IP, count=20, interval=0.2)
    assert (r.sent, r.loss_pct) == (20, 0), r
    out = peer.run(["ping", "-c", "20", "-i", "0.2", "-W", "2", GUEST_IP]).stdout
    assert " 0% packet loss" in out, out
    # event mode: the datagram woke the sleeping worker (else ~1 s per echo)
    avg = float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))
    assert avg < 300, out
    vx = sw.port("vx")
    assert vx["remotes"][0] == {"address": PEER_UNDERLAY, "learned_macs": 1}, vx
    shown = subprocess.run([str(VENV_BIN / "vswitchctl"), "--runtime-dir", str(sw.runtime_dir),
                            "port", "show", "vx"], capture_output=True, text=True, check=True).stdout
    assert f"vni {VNI}, mtu 1450, remotes: {PEER_UNDERLAY} (1 MACs)" in shown, shown
    assert any((e["mac"], e["vlan"], e["port"], e["static"]) == (PEER_MAC, 0, "vx", False)
               for e in sw.ctl("fdb show"))
    assert "vxlan_send_failed" not in sw.drops("vx")


@pytest.mark.qemu
def test_full_size_packets_with_df_pass_both_ways(vxlan):
    sw, host, peer, guest = vxlan
    # 1422 bytes of ICMP payload + 28 = a 1450-byte IP packet: 1500 on the underlay
    r = guest.ping(PEER_IP, count=5, interval=0.2, size=1422)
    assert r.loss_pct == 0, r
    out = peer.run(["ping", "-c", "5", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1422", GUEST_IP]).stdout
    assert " 0% packet loss" in out, out
    # and one byte more does not leave the peer (its vxlan device has MTU 1450)
    p = peer.run(["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1423", GUEST_IP], check=False)
    assert p.returncode != 0


@pytest.mark.qemu
def test_frames_over_the_tunnel_mtu_are_dropped_and_counted(vxlan):
    sw, host, peer, guest = vxlan
    before = sw.drops("vx").get("mtu_exceeded", 0)
    # The TAP's MTU is 1500: 1472 + 28 = a 1500-byte packet (DF, not fragmented) > 1450
    out = host.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1472", PEER_IP],
                   check=False).stdout
    assert " 100% packet loss" in out, out
    assert sw.drops("vx").get("mtu_exceeded", 0) - before >= 3
    out = host.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "-s", "1422", PEER_IP]).stdout
    assert " 0% packet loss" in out, out      # 1450 still passes from the TAP


@pytest.mark.qemu
def test_tcp_with_guest_tso_over_vxlan_without_checksum_errors(vxlan):
    sw, host, peer, guest = vxlan
    assert re.search(r"tcp-segmentation-offload: on", guest.check_output("ethtool -k eth0"))
    peer_before = peer.run(["cat", "/proc/net/snmp"]).stdout
    guest_before = guest.check_output("cat /proc/net/snmp")
    gso_before = sw.port("vx")["queues"][0]["rx"]["offload"]["sw_gso"]
    peer.run(["iperf3", "-s", "-D", "-1", "-B", PEER_IP])
    time.sleep(0.5)
    up = guest.iperf3_client(PEER_IP, seconds=5)
    peer.run(["iperf3", "-s", "-D", "-1", "-B", PEER_IP])
    time.sleep(0.5)
    down = guest.iperf3_client(PEER_IP, seconds=5, reverse=True)
    print(f"\nguest->kernel VTEP {up.gbps:.2f} Gbit/s, kernel VTEP->guest {down.gbps:.2f} Gbit/s")
    assert up.received_bps > 10e6 and down.received_bps > 10e6, (up, down)
    peer_after = peer.run(["cat", "/proc/net/snmp"]).stdout
    guest_after = guest.check_output("cat /proc/net/snmp")
    for before, after in ((peer_before, peer_after), (guest_before, guest_after)):
        assert snmp(after, "Tcp", "InCsumErrors") == snmp(before, "Tcp", "InCsumErrors")
    # the guest's TSO super-frames were cut into MSS-sized datagrams by the switch
    assert sw.port("vx")["queues"][0]["rx"]["offload"]["sw_gso"] > gso_before
    assert "mtu_exceeded" not in sw.drops("vm")


@pytest.mark.qemu
def test_hostile_datagrams_are_dropped_with_their_reason(vxlan):
    sw, host, peer, guest = vxlan
    before = sw.drops("vx")
    spoof = "02:00:00:00:66:66"
    frame = arp_request(spoof, "10.78.0.66", GUEST_IP)
    send_udp(peer, PEER_UNDERLAY, [
        vxlan_header(VNI + 1) + frame,        # another VNI
        vxlan_header(VNI, flags=0) + frame,   # no I flag
        b"\x08\0\0",                          # shorter than the header
        vxlan_header(VNI) + frame[:10],       # no room for an Ethernet header
    ])
    send_udp(peer, STRANGER_UNDERLAY, [vxlan_header(VNI) + frame] * 2)   # not a remote

    def grew(reason: str, by: int) -> bool:
        return sw.drops("vx").get(reason, 0) - before.get(reason, 0) >= by
    wait_until(lambda: grew("vxlan_unknown_remote", 2), 10, "unknown-remote drops counted")
    assert grew("vxlan_wrong_vni", 1) and grew("vxlan_bad_header", 2) and grew("runt", 1), sw.drops("vx")
    # none of them reached the FDB or the guest's ARP table
    assert not [e for e in sw.ctl("fdb show") if e["mac"] == spoof]
    assert "10.78.0.66" not in guest.check_output("cat /proc/net/arp")
    # and everything else keeps forwarding
    assert guest.ping(PEER_IP, count=5, interval=0.2).loss_pct == 0
    assert guest.ping(TAP_IP, count=5, interval=0.2).loss_pct == 0


@pytest.mark.qemu
def test_reload_changes_remotes_and_vni_in_place(vxlan):
    sw, host, peer, guest = vxlan
    connections = sw.port("vx")["connections"]
    try:
        # a wrong VNI on our side: the peer's frames are refused, ours ignored by it
        sw.write_config(vxlan_ports(vni=VNI + 7, remotes=[PEER_UNDERLAY, "192.0.2.5"]),
                        extra={"datapath": {"workers": 1, "mode": "event"}})
        r = sw.reload()
        assert r.returncode == 0, r.stderr
        assert re.search(r"^vx: applied", r.stdout, re.M), r.stdout
        vx = sw.port("vx")
        assert [x["address"] for x in vx["remotes"]] == [PEER_UNDERLAY, "192.0.2.5"]
        assert vx["connections"] == connections          # not re-bound
        before = sw.drops("vx").get("vxlan_wrong_vni", 0)
        out = peer.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", GUEST_IP], check=False).stdout
        assert " 100% packet loss" in out, out
        assert sw.drops("vx").get("vxlan_wrong_vni", 0) - before >= 3
    finally:
        sw.write_config(vxlan_ports(), extra={"datapath": {"workers": 1, "mode": "event"}})
        r = sw.reload()
        assert r.returncode == 0, r.stderr
    assert guest.ping(PEER_IP, count=5, interval=0.2).loss_pct == 0


@pytest.mark.qemu
def test_floods_reach_every_remote_and_unicast_only_its_own(vxlan, net):
    sw, host, peer, guest = vxlan
    peer2 = net[2]

    def rx(ns: NetNs) -> int:
        return int(ns.run(["cat", "/sys/class/net/vx/statistics/rx_packets"]).stdout)
    # the second host answers: its ARP request reached it as one of the flood's copies
    assert guest.ping(PEER2_IP, count=5, interval=0.2).loss_pct == 0
    remotes = {r["address"]: r["learned_macs"] for r in sw.port("vx")["remotes"]}
    assert remotes == {PEER_UNDERLAY: 1, PEER2_UNDERLAY: 1}, remotes
    # 30 echoes to the first host: none of them is copied to the second
    before1, before2 = rx(peer), rx(peer2)
    assert guest.ping(PEER_IP, count=30, interval=0.05).loss_pct == 0
    assert rx(peer) - before1 >= 30
    assert rx(peer2) - before2 < 5      # at most a stray flood (ARP refresh, IPv6 ND)


# --- IPv6 underlay, no guest: the host namespace's kernel through a TAP port ---

V6_HOST, V6_PEER, V6_STRANGER = "2001:db8:78::1", "2001:db8:78::2", "2001:db8:78::9"


@pytest.fixture
def v6(tmp_path):
    pid = os.getpid()
    host, peer = NetNs(f"vx6h{pid}").create(), NetNs(f"vx6p{pid}").create()
    hv, pv, tap = f"vx6h{pid % 100000}", f"vx6p{pid % 100000}", f"vx6t{pid % 100000}"
    sw = Vswitchd(tmp_path / "switch", {
        "vx6": {"type": "vxlan", "local": V6_HOST, "remotes": [V6_PEER], "vni": 300},
        "up": {"type": "tap", "ifname": tap},
    }, wrapper=["ip", "netns", "exec", host.name])
    try:
        host.ip("link", "add", hv, "type", "veth", "peer", "name", pv, "netns", peer.name)
        # no nodad on our side: the address is tentative for a while, the port
        # must report it and bind once it is usable
        host.ip("addr", "add", f"{V6_HOST}/64", "dev", hv)
        host.ip("link", "set", hv, "up")
        for a in (V6_PEER, V6_STRANGER):
            peer.ip("addr", "add", f"{a}/64", "dev", pv, "nodad")
        peer.ip("link", "set", pv, "up")
        peer.run(["ethtool", "-K", pv, "tx", "off"])
        peer.ip("link", "add", "vx", "type", "vxlan", "id", "300", "local", V6_PEER,
                "remote", V6_HOST, "dstport", "4789", "dev", pv)
        peer.ip("addr", "add", "10.79.0.2/24", "dev", "vx")
        peer.ip("link", "set", "vx", "up")
        sw.start()
        wait_until(lambda: link_exists(tap, host.name), 30, "TAP created")
        host.ip("addr", "add", "10.79.0.1/24", "dev", tap)
        host.ip("link", "set", tap, "mtu", "1400", "up")
        yield sw, host, peer
    finally:
        sw.stop()
        host.delete()
        peer.delete()


def test_ipv6_underlay(v6):
    sw, host, peer = v6
    sw.wait_port("vx6", lambda p: p["state"] == "up", timeout=30, what="bound once DAD is done")
    out = host.run(["ping", "-c", "10", "-i", "0.1", "-W", "2", "10.79.0.2"]).stdout
    assert " 0% packet loss" in out, out
    out = peer.run(["ping", "-c", "10", "-i", "0.1", "-W", "2", "10.79.0.1"]).stdout
    assert " 0% packet loss" in out, out
    assert sw.port("vx6")["remotes"] == [{"address": V6_PEER, "learned_macs": 1}]
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        f"s.bind(({V6_STRANGER!r}, 0))\n"
        f"s.sendto(bytes([8, 0, 0, 0, 0, 1, 44, 0]) + bytes(60), ({V6_HOST!r}, 4789))\n"
    )
    peer.run([sys.executable, "-c", code])
    wait_until(lambda: sw.drops("vx6").get("vxlan_unknown_remote", 0) == 1, 10, "v6 stranger counted")
