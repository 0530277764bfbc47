"""VLANs and port security with real QEMU guests and the kernel's 802.1Q.

Four guests in one IP subnet, two per VLAN on access ports (so a ping across
VLANs fails only because the switch keeps the VLANs apart), and a TAP uplink
as a trunk whose kernel side has VLAN devices in two network namespaces:
up.10 and up.20. Guest a1's port allows only its own MAC.
"""

from __future__ import annotations

import os

import pytest

from tests.guests import QemuGuest, build_image, default_cache_dir
from tests.linux.netns import NetNs, link_exists
from tests.switch import Vswitchd
from tests.test_uplink import wait_for

BOOT_TIMEOUT = 300
GUESTS = {  # name: (vlan, mac, ip)
    "a1": (10, "52:54:00:00:09:01", "10.9.0.1"),
    "a2": (10, "52:54:00:00:09:02", "10.9.0.2"),
    "b1": (20, "52:54:00:00:09:03", "10.9.0.3"),
    "b2": (20, "52:54:00:00:09:04", "10.9.0.4"),
}
TRUNK_IP = {10: "10.9.0.10", 20: "10.9.0.20"}


@pytest.fixture(scope="module")
def image():
    return build_image(default_cache_dir())


@pytest.fixture(scope="module")
def lan(tmp_path_factory, image):
    work = tmp_path_factory.mktemp("vlan")
    ifname = f"vsv{os.getpid() % 100000}"
    ports: dict[str, dict] = {
        name: {"type": "vhost-user", "vlan": {"mode": "access", "id": vlan}}
        for name, (vlan, _, _) in GUESTS.items()}
    ports["a1"]["allowed_macs"] = [GUESTS["a1"][1]]
    ports["up"] = {"type": "tap", "ifname": ifname, "vlan": {"mode": "trunk", "allowed": [10, 20]}}
    sw = Vswitchd(work / "switch", ports)
    ns = {10: NetNs(f"vsv10-{os.getpid()}").create(), 20: NetNs(f"vsv20-{os.getpid()}").create()}
    guests: dict[str, QemuGuest] = {}
    try:
        sw.start()
        wait_for(lambda: link_exists(ifname), 30, "TAP created")
        ns[10].move_in(ifname)
        ns[10].ip("link", "set", ifname, "up")
        for vid in (10, 20):
            ns[10].ip("link", "add", "link", ifname, "name", f"up.{vid}", "type", "vlan", "id", str(vid))
        ns[10].ip("link", "set", "up.20", "netns", ns[20].name)
        for vid in (10, 20):
            ns[vid].ip("addr", "add", f"{TRUNK_IP[vid]}/24", "dev", f"up.{vid}")
            ns[vid].ip("link", "set", f"up.{vid}", "up")
        for name, (_, mac, ip) in GUESTS.items():
            guests[name] = QemuGuest(name, image, sw.socket(name), mac=mac, ip=f"{ip}/24",
                                     workdir=work / name)
            guests[name].start()
        for g in guests.values():
            g.wait_booted(BOOT_TIMEOUT)
        yield sw, guests, ns
    finally:
        for g in guests.values():
            g.stop()
        sw.stop()
        for n in ns.values():
            n.delete()


def ip_of(name: str) -> str:
    return GUESTS[name][2]


def test_pings_within_a_vlan_pass(lan):
    sw, g, _ = lan
    for src, dst in (("a1", "a2"), ("b2", "b1")):
        r = g[src].ping(ip_of(dst), count=10, interval=0.2)
        assert (r.sent, r.loss_pct) == (10, 0), (src, dst, r)


def test_pings_across_vlans_fail(lan):
    sw, g, _ = lan
    for src, dst in (("a1", "b1"), ("b2", "a2")):
        r = g[src].ping(ip_of(dst), count=5, interval=0.2)
        assert r.received == 0, (src, dst, r)
    # the FDB keeps each MAC in its own VLAN
    fdb = {(e["mac"], e.get("vlan", None)): e["port"] for e in sw.ctl("fdb show")}
    for name, (vlan, mac, _) in GUESTS.items():
        if (mac, vlan) in fdb:
            assert fdb[(mac, vlan)] == name
        assert not any(m == mac and v not in (vlan, None) for m, v in fdb)


def test_trunk_to_kernel_vlan_devices_carries_both_vlans(lan):
    sw, g, ns = lan
    for name, vid in (("a1", 10), ("a2", 10), ("b1", 20), ("b2", 20)):
        r = g[name].ping(TRUNK_IP[vid], count=5, interval=0.2)
        assert (r.sent, r.loss_pct) == (5, 0), (name, r)
        r = g[name].ping(TRUNK_IP[30 - vid], count=3, interval=0.2)
        assert r.received == 0, (name, r)
    # and from the kernel's side, tagged on the wire, untagged in the guests
    out = ns[20].run(["ping", "-c", "5", "-i", "0.2", "-W", "2", ip_of("b1")]).stdout
    assert " 0% packet loss" in out
    assert sw.drops("up").get("vlan_filtered", 0) == 0


def test_guest_that_changes_its_mac_loses_connectivity_others_keep_theirs(lan):
    sw, g, ns = lan
    before = sw.drops("a1").get("spoofed_source", 0)
    g["a1"].check_output("ip link set eth0 address 52:54:00:00:09:99")
    try:
        r = g["a1"].ping(ip_of("a2"), count=5, interval=0.2)
        assert r.received == 0, r
        assert sw.drops("a1").get("spoofed_source", 0) > before
        assert "52:54:00:00:09:99" not in {e["mac"] for e in sw.ctl("fdb show")}
        r = g["a2"].ping(TRUNK_IP[10], count=5, interval=0.2)
        assert r.loss_pct == 0, r
        r = g["b1"].ping(ip_of("b2"), count=5, interval=0.2)
        assert r.loss_pct == 0, r
    finally:
        g["a1"].check_output(f"ip link set eth0 address {GUESTS['a1'][1]}")
    r = g["a1"].ping(ip_of("a2"), count=5, interval=0.2)
    assert r.loss_pct == 0, r
    show = sw.port("a1")["policy"]
    assert show["vlan"] == {"mode": "access", "id": 10} and show["allowed_macs"] == [GUESTS["a1"][1]]
