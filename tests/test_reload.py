"""Reload as a diff, under traffic.

Two QEMU guests keep pinging each other through ports A and B while ports C
and D (carrying DPDK testpmd's frames) are added, changed in place, changed
in a way that waits for the guest, force-restarted and removed, by
`vswitchctl reload` and by SIGHUP. The guests count every echo: zero lost,
and A and B were never reconnected. An invalid file changes nothing.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
import time

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.peers.testpmd import TestPmd, virtio_user_vdev
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.qemu

IP_A, IP_B = "10.0.1.1", "10.0.1.2"
BOOT_TIMEOUT = 240
PINGS, PING_INTERVAL = 800, 0.05
MAC_C, MAC_D = "02:00:00:00:01:0c", "02:00:00:00:01:0d"
GUEST_PORTS = {"a": {"type": "vhost-user"}, "b": {"type": "vhost-user"}}


@pytest.fixture(scope="module")
def guests(tmp_path_factory, image):
    work = tmp_path_factory.mktemp("reload")
    sw = Vswitchd(work / "switch", dict(GUEST_PORTS))
    sw.start()
    started = []
    try:
        a = QemuGuest("a", image, sw.socket("a"), server=False, mac="52:54:00:00:01:0a",
                      ip=f"{IP_A}/24", workdir=work / "a")
        b = QemuGuest("b", image, sw.socket("b"), server=False, mac="52:54:00:00:01:0b",
                      ip=f"{IP_B}/24", workdir=work / "b")
        for g in (a, b):
            g.start()
            started.append(g)
        for g in (a, b):
            g.wait_booted(BOOT_TIMEOUT)
        for name in ("a", "b"):
            sw.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                         timeout=60, what="connected")
        assert a.ping(IP_B, count=3, interval=0.2).loss_pct == 0    # ARP settled
        yield sw, a, b, work
    finally:
        for g in started:
            g.stop()
        sw.stop()


def cd_ports(work, **overrides) -> dict:
    # Static MACs: testpmd's first frames go where they belong at once, not
    # flooded into the guests' RX rings (which would make A and B drop them).
    ports = {name: {"type": "vhost-user", "socket": str(work / f"{name}.sock"), "mac": mac}
             for name, mac in (("c", MAC_C), ("d", MAC_D))}
    for name, fields in overrides.items():
        ports[name].update(fields)
    return ports


def reload_ok(sw: Vswitchd, *flags: str) -> str:
    r = sw.reload(*flags)
    assert r.returncode == 0, (r.stdout, r.stderr, sw.log_tail())
    return r.stdout


@pytest.mark.dpdk
def test_ports_come_and_go_while_two_guests_lose_no_frame(guests):
    sw, a, b, work = guests
    before = {n: sw.port(n) for n in ("a", "b")}
    result = {}
    pinger = threading.Thread(target=lambda: result.update(
        ping=a.ping(IP_B, count=PINGS, interval=PING_INTERVAL, timeout=PINGS * PING_INTERVAL + 120)))
    pinger.start()
    try:
        # 1. add C and D; a testpmd streams frames between them in a loop
        sw.write_config({**GUEST_PORTS, **cd_ports(work)})
        out = reload_ok(sw)
        assert "c: added" in out and "d: added" in out and "2 port(s) untouched" in out
        # testpmd's mac forwarding with each port's peer set to the other: the
        # switch learns both MACs, so after the first burst nothing floods to A/B.
        with TestPmd([virtio_user_vdev(0, str(work / "c.sock"), mac=MAC_C),
                      virtio_user_vdev(1, str(work / "d.sock"), mac=MAC_D)],
                     forward_mode="mac", app_args=(f"--eth-peer=0,{MAC_D}", f"--eth-peer=1,{MAC_C}"),
                     cpus=(0,), workdir=work / "tp", total_mbufs=16384) as tp:
            tp.wait_links_up([0, 1], timeout=30)
            for name in ("c", "d"):
                sw.wait_port(name, lambda p: p["queues_enabled"] == 1, timeout=30, what="enabled")
            tp.start_fwd(tx_first=2)
            # 2. change C in place (socket mode, MTU): the front-end on it stays
            sw.write_config({**GUEST_PORTS, **cd_ports(work, c={"socket_mode": 0o666, "mtu": 9000})})
            assert "c: applied" in reload_ok(sw)
            c = sw.port("c")
            assert (c["connections"], c["mtu_enforced"], c["pending"]) == (1, 9000, {})
            assert stat.S_IMODE(os.stat(work / "c.sock").st_mode) == 0o666
            assert any((e["mac"], e["port"], e["static"]) == (MAC_C, "c", True) for e in sw.ctl("fdb show"))
            # 3. change what D's front-end negotiated, by SIGHUP: pending, D untouched
            sw.write_config({**GUEST_PORTS, **cd_ports(
                work, c={"socket_mode": 0o666, "mtu": 9000}, d={"queues": 2, "mrg_rxbuf": False})})
            reloads = sw.ctl("show")["reloads"]["success"]
            sw.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while sw.ctl("show")["reloads"]["success"] == reloads:
                assert time.monotonic() < deadline, sw.log_tail()
                time.sleep(0.1)
            d = sw.port("d")
            assert d["pending"] == {"queues": 2, "mrg_rxbuf": False}, d
            assert (d["connections"], d["queues_offered"], d["state"]) == (1, 1, "connected")
            assert "NET_MRG_RXBUF" in d["features"]
            assert [p for p in sw.ctl("port list") if p["name"] == "d"][0]["pending"] is True
            time.sleep(1)
            moving = sw.port("d")["queues"][0]["tx"]["packets"]
            assert moving > d["queues"][0]["tx"]["packets"], "D stopped forwarding"
            # 4. the operator forces it: D restarts alone with the new offer
            assert "d: applied" in reload_ok(sw, "--force")
            d = sw.port("d")
            assert d["pending"] == {} and d["queues_offered"] == 2 and d["disconnects"] == 1
            assert "NET_MRG_RXBUF" not in d["features_offered"]
            tp.stop_fwd()
        # 5. remove both
        sw.write_config(dict(GUEST_PORTS))
        out = reload_ok(sw)
        assert "c: removed" in out and "d: removed" in out
        assert not (work / "c.sock").exists() and not (work / "d.sock").exists()
        assert [p["name"] for p in sw.ctl("port list")] == ["a", "b"]
    finally:
        pinger.join()
    ping = result["ping"]
    assert (ping.sent, ping.received) == (PINGS, PINGS), (ping, sw.drops("a"), sw.drops("b"))
    for name in ("a", "b"):
        after = sw.port(name)
        assert after["connections"] == before[name]["connections"] == 1, after
        assert after["disconnects"] == before[name]["disconnects"] == 0, after
    assert sw.drops("a") == {} and sw.drops("b") == {}


def test_invalid_file_changes_nothing_and_says_why(guests):
    sw, a, b, work = guests
    good = sw.config_path.read_text()
    sw.write_config({**GUEST_PORTS, "e": {"type": "vhost-user", "queues": 0}})
    try:
        before = sw.ctl("show")
        r = sw.reload()
        assert r.returncode == 1
        assert "ports.e.queues: must be 1..64 (got 0)" in r.stderr
        assert f"{sw.config_path}:" in r.stderr           # FILE:LINE:COL
        after = sw.ctl("show")
        assert [p["name"] for p in after["ports"]] == [p["name"] for p in before["ports"]]
        assert after["reloads"]["failure"] == before["reloads"]["failure"] + 1
        assert after["last_reload_ok"] is False
        assert a.ping(IP_B, count=5, interval=0.2).loss_pct == 0
    finally:
        sw.config_path.write_text(good)
    assert sw.reload().returncode == 0 and sw.ctl("show")["last_reload_ok"] is True


@pytest.mark.dpdk
def test_connected_port_applies_pending_change_when_its_guest_reconnects(guests):
    """Without force, a pending queue change applies by itself at the next connection."""
    sw, a, b, work = guests
    sw.write_config({**GUEST_PORTS, **cd_ports(work)})
    reload_ok(sw)
    try:
        with TestPmd([virtio_user_vdev(0, str(work / "c.sock"))], cpus=(0,), workdir=work / "tp2",
                     total_mbufs=8192) as tp:
            tp.wait_links_up([0], timeout=30)
            sw.wait_port("c", lambda p: p["state"] == "connected", timeout=30, what="connected")
            sw.write_config({**GUEST_PORTS, **cd_ports(work, c={"queues": 2})})
            reload_ok(sw)
            assert sw.port("c")["pending"] == {"queues": 2}
        # testpmd gone: the change applied
        c = sw.wait_port("c", lambda p: p["pending"] == {}, timeout=30, what="pending applied")
        assert c["queues_offered"] == 2
        with TestPmd([virtio_user_vdev(0, str(work / "c.sock"), queues=2)], rxq=2, cpus=(0,),
                     workdir=work / "tp3", total_mbufs=8192) as tp:
            tp.wait_links_up([0], timeout=30)
            sw.wait_port("c", lambda p: p["queues_enabled"] == 2, timeout=30, what="2 pairs enabled")
    finally:
        sw.write_config(dict(GUEST_PORTS))
        reload_ok(sw)


# Every forwarding policy at once, with limits that ping traffic stays far below,
# A and B in the same access VLAN, and A allowed only its own MAC.
POLICIES = {
    "vlan": {"mode": "access", "id": 10},
    "storm_control": {"broadcast": 1000, "multicast": 1000, "unknown_unicast": 1000},
    "ingress_policing": {"rate": "1G", "pps": 100000},
    "egress_policing": {"rate": "1G", "burst": "1MiB"},
}


def test_forwarding_policies_apply_in_place_under_connected_guests(guests):
    """vlan, allowed_macs, storm_control, policing and mirror are set and
    removed by reload while A pings B: both ports change in place, neither
    guest is disconnected, and no echo is lost."""
    sw, a, b, work = guests
    before = {n: sw.port(n) for n in ("a", "b")}
    count, interval = 200, 0.05
    result = {}
    pinger = threading.Thread(target=lambda: result.update(
        ping=a.ping(IP_B, count=count, interval=interval, timeout=count * interval + 60)))
    pinger.start()
    try:
        time.sleep(1)
        sw.write_config({
            "a": {"type": "vhost-user", **POLICIES, "allowed_macs": ["52:54:00:00:01:0a"],
                  "mirror": {"to": "m", "direction": "both"}},
            "b": {"type": "vhost-user", **POLICIES},
            "m": {"type": "vhost-user", "socket": str(work / "m.sock")},   # no guest: copies go nowhere
        })
        reply = sw.ctl("reload")
        assert reply["ports"] == {"a": "applied", "b": "applied", "m": "added"}, reply
        changed = reply["plan"]["changed"]
        assert set(changed["a"]["in_place"]) == {*POLICIES, "allowed_macs", "mirror"}, changed
        assert set(changed["b"]["in_place"]) == set(POLICIES), changed
        assert not changed["a"]["restart"] and changed["a"]["at_connect"] == [], changed
        time.sleep(3)
        sw.write_config(dict(GUEST_PORTS))
        reply = sw.ctl("reload")
        assert reply["ports"] == {"a": "applied", "b": "applied", "m": "removed"}, reply
    finally:
        pinger.join()
        sw.write_config(dict(GUEST_PORTS))
        reload_ok(sw)
    ping = result["ping"]
    assert (ping.sent, ping.received) == (count, count), (ping, sw.drops("a"), sw.drops("b"))
    for name in ("a", "b"):
        after = sw.port(name)
        assert after["connections"] == before[name]["connections"], after
        assert after["disconnects"] == before[name]["disconnects"], after
