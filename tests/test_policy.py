"""Per-port policy (docs/tenants.md) in the datapath, byte for byte, against the test front-end:
802.1Q push/pop/rewrite (with offload offsets), VLAN filtering and per-VLAN
flooding, port security, storm control, policing (GSO charged per segment)
and mirrors. The QEMU-level behaviour is in tests/test_vlan_guests.py.
"""

from __future__ import annotations

import struct
import time

import pytest

from tests.harness import traffic
from tests.harness.frontend import VirtioNetHdr
from tests.harness.packets import partial, tcp_frame
from tests.harness.switch import Vswitchd
from tests.harness.traffic import BCAST, FULL, MAC, OFFLOADS_RX, OFFLOADS_TX, frame


def addressed(f: bytes, dst: str, src: str) -> bytes:
    return MAC[dst] + MAC[src] + f[12:]


_open_devices: list = []


def connect(sw: Vswitchd, name: str, **kw):
    """A started test device on port `name`, closed after the test: six per
    test would otherwise pile up fds (select() cannot take fds >= 1024)."""
    dev = traffic.connect(sw, name, **kw)
    _open_devices.append(dev)
    return dev


@pytest.fixture(autouse=True)
def _close_devices():
    yield
    while _open_devices:
        try:
            _open_devices.pop().close()
        except OSError:
            pass


def tag(f: bytes, vid: int, pcp: int = 0) -> bytes:
    return f[:12] + b"\x81\x00" + struct.pack("!H", (pcp << 13) | vid) + f[12:]


def untag(f: bytes) -> bytes:
    assert f[12:14] == b"\x81\x00"
    return f[:12] + f[16:]


def drain(dev, timeout: float = 0.5) -> list[bytes]:
    """Every frame that arrives within `timeout` (buffers given back)."""
    got = []
    while True:
        frames = dev.rx(0).recv_frames(64, timeout=timeout)
        if not frames:
            return got
        dev.rx(0).post_rx(len(frames), 2048)
        got.extend(g.frame for g in frames)


def from_(frames: list[bytes], src: str) -> list[bytes]:
    return [f for f in frames if f[6:12] == MAC[src] or f[6:12] == MAC[src]]


@pytest.fixture
def vlans(tmp_path):
    """a, b: access VLAN 10; c: access VLAN 20; d: trunk 10 and 20 (no native);
    e: trunk 20 with native 10; f: no VLAN config (every VLAN, untagged = 0)."""
    ports = {
        "a": {"type": "vhost-user", "vlan": {"mode": "access", "id": 10}},
        "b": {"type": "vhost-user", "vlan": {"mode": "access", "id": 10}},
        "c": {"type": "vhost-user", "vlan": {"mode": "access", "id": 20}},
        "d": {"type": "vhost-user", "vlan": {"mode": "trunk", "allowed": [10, 20]}},
        "e": {"type": "vhost-user", "vlan": {"mode": "trunk", "allowed": ["20-21"], "native": 10}},
        "f": {"type": "vhost-user"},
    }
    with Vswitchd(tmp_path, ports) as sw:
        devs = {name: connect(sw, name) for name in ports}
        yield sw, devs


@pytest.mark.slow
def test_access_ports_switch_untagged_within_their_vlan_only(vlans):
    sw, dev = vlans
    f = frame(BCAST, "a", 1, 100)
    dev["a"].tx(0).post_tx(f)
    got = {name: drain(d) for name, d in dev.items() if name != "a"}
    assert got["b"] == [f]                       # same VLAN, untagged
    assert got["c"] == []                        # VLAN 20: nothing
    assert got["d"] == [tag(f, 10)]              # trunk: tagged 10
    assert got["e"] == [f]                       # trunk with native 10: untagged
    assert got["f"] == [tag(f, 10)]              # VLAN-unaware: carries every VLAN, tagged
    # the reply, unicast now that the FDB knows a in VLAN 10
    r = frame("a", "b", 2, 100)
    dev["b"].tx(0).post_tx(r)
    assert drain(dev["a"]) == [r]
    assert all(drain(dev[n]) == [] for n in "cdef")


def test_a_priority_tag_around_another_tag_does_not_hop_vlans(vlans):
    """A priority tag (VID 0) counts as untagged, so an access port takes the
    frame into its VLAN; popping it on the way out would uncover the tag
    inside (VID 20) at an access port of VLAN 10, or give a trunk a double
    tag. Such a frame is refused where it enters."""
    sw, dev = vlans
    f = frame(BCAST, "a", 4, 100)
    for outer in (0x8100, 0x88A8):
        hop = f[:12] + b"\x81\x00\x00\x00" + outer.to_bytes(2, "big") + b"\x00\x14" + f[12:]
        dev["a"].tx(0).post_tx(hop)
    got = {name: drain(d) for name, d in dev.items() if name != "a"}
    assert all(frames == [] for frames in got.values()), got
    assert sw.drops("a") == {"vlan_filtered": 2}
    dev["a"].tx(0).post_tx(tag(f, 0))            # a plain priority tag still passes, popped
    assert drain(dev["b"]) == [f]


@pytest.mark.slow
def test_trunk_tags_select_the_vlan_and_are_popped_for_access_ports(vlans):
    sw, dev = vlans
    f = frame(BCAST, "d", 3, 200)
    dev["d"].tx(0).post_tx(tag(f, 20, pcp=5))
    got = {name: drain(d) for name, d in dev.items() if name != "d"}
    assert got["c"] == [f]                       # popped for the access port of VLAN 20
    assert got["e"] == [tag(f, 20, pcp=5)]       # kept (priority bits too) on another trunk
    assert got["f"] == [tag(f, 20, pcp=5)]
    assert got["a"] == got["b"] == []
    # untagged from a trunk without native VLAN, a VID it does not carry, a tag on an access port
    dev["d"].tx(0).post_tx(f)
    dev["d"].tx(0).post_tx(tag(f, 30))
    dev["a"].tx(0).post_tx(tag(frame(BCAST, "a", 4), 10))
    time.sleep(0.5)
    assert all(drain(d) == [] for d in dev.values())
    assert sw.drops("d") == {"vlan_filtered": 2}
    assert sw.drops("a") == {"vlan_filtered": 1}


@pytest.mark.slow
def test_native_vlan_untagged_on_the_trunk_and_tag_rewritten_nowhere(vlans):
    sw, dev = vlans
    f = frame(BCAST, "e", 5, 64)
    dev["e"].tx(0).post_tx(f)                    # untagged on e = VLAN 10
    got = {name: drain(d) for name, d in dev.items() if name != "e"}
    assert got["a"] == got["b"] == [f]
    assert got["d"] == got["f"] == [tag(f, 10)]
    assert got["c"] == []
    # a VLAN-unaware port's tagged frame enters that VLAN
    g = frame(BCAST, "f", 6, 64)
    dev["f"].tx(0).post_tx(tag(g, 21))
    got = {name: drain(d) for name, d in dev.items() if name != "f"}
    assert got["e"] == [tag(g, 21)] and all(got[n] == [] for n in "abcd")


def test_offload_offsets_follow_the_tag(tmp_path):
    ports = {"acc": {"type": "vhost-user", "vlan": {"mode": "access", "id": 7}},
             "trk": {"type": "vhost-user", "vlan": {"mode": "trunk", "allowed": [7]}}}
    with Vswitchd(tmp_path, ports) as sw:
        acc = connect(sw, "acc", features=FULL | OFFLOADS_TX | OFFLOADS_RX)
        trk = connect(sw, "trk", features=FULL | OFFLOADS_TX | OFFLOADS_RX, rx_buffers=64)
        payload = bytes((i * 5) & 0xFF for i in range(6000))
        f = addressed(partial(tcp_frame(payload), 14, 34, False, 6, 16), "trk", "acc")
        hdr = VirtioNetHdr(flags=1, gso_type=1, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)
        acc.tx(0).post_tx(f, hdr=hdr)             # pushed: offsets + 4
        got = trk.rx(0).recv_frames(1, timeout=10)[0]
        assert got.frame == tag(f, 7)
        assert (got.hdr.gso_type, got.hdr.csum_start, got.hdr.hdr_len, got.hdr.gso_size) == (1, 38, 58, 1448)
        # popped on the way back: offsets - 4, and a receiver without TSO gets
        # correct segments cut from the untagged frame
        back = tag(addressed(partial(tcp_frame(payload), 14, 34, False, 6, 16), "acc", "trk"), 7)
        trk.tx(0).post_tx(back, hdr=VirtioNetHdr(flags=1, gso_type=1, hdr_len=58, gso_size=1448,
                                                 csum_start=38, csum_offset=16))
        got = acc.rx(0).recv_frames(1, timeout=10)[0]
        assert got.frame == untag(back)
        assert (got.hdr.csum_start, got.hdr.hdr_len) == (34, 54)
        assert sw.drops("acc") == {} and sw.drops("trk") == {}


def test_port_security_drops_other_sources_and_keeps_the_fdb_clean(tmp_path):
    ports = {"a": {"type": "vhost-user", "mac": MAC["a"].hex(":"), "allowed_macs": [MAC["c"].hex(":")]},
             "b": {"type": "vhost-user"}}
    with Vswitchd(tmp_path, ports) as sw:
        a, b = connect(sw, "a"), connect(sw, "b")
        good = [frame("b", "a", 1), frame("b", "c", 2)]      # its mac and an allowed one
        spoof = frame("b", "d", 3)
        for f in good + [spoof]:
            a.tx(0).post_tx(f)
        assert drain(b) == good
        assert sw.drops("a") == {"spoofed_source": 1}
        learned = {e["mac"] for e in sw.ctl("fdb show")}
        assert MAC["d"].hex(":") not in learned and MAC["c"].hex(":") in learned
        # the spoofer cannot steal b's address either
        b.tx(0).post_tx(frame("a", "b", 4))
        drain(a)
        a.tx(0).post_tx(frame(BCAST, "b", 5))
        time.sleep(0.3)
        assert sw.drops("a") == {"spoofed_source": 2}
        assert [e["port"] for e in sw.ctl("fdb show") if e["mac"] == MAC["b"].hex(":")] == ["b"]


@pytest.mark.slow
def test_storm_control_caps_floods_but_not_known_unicast(tmp_path):
    ports = {"a": {"type": "vhost-user", "storm_control": {"broadcast": 50, "unknown_unicast": 50}},
             "b": {"type": "vhost-user"}}
    with Vswitchd(tmp_path, ports) as sw:
        a, b = connect(sw, "a", rx_buffers=256), connect(sw, "b", rx_buffers=256)
        b.tx(0).post_tx(frame(BCAST, "b", 0))            # a learns nothing from this; b is learned
        drain(a)
        t0 = time.monotonic()
        a.tx(0).post_tx_frames([frame(BCAST, "a", i) for i in range(200)])
        got = drain(b, timeout=1.0)
        elapsed = time.monotonic() - t0
        # a burst of 5 (0.1 s worth) plus 50/s for the time it took
        assert 5 <= len(got) <= 5 + 50 * elapsed + 2, (len(got), elapsed)
        assert sw.drops("a") == {"storm_control": 200 - len(got)}
        # known unicast is not charged
        known = [frame("b", "a", 1000 + i) for i in range(100)]
        for f in known:
            a.tx(0).post_tx(f)
        assert drain(b, timeout=1.0) == known


def test_ingress_policer_charges_gso_frames_per_segment(tmp_path):
    ports = {"a": {"type": "vhost-user", "ingress_policing": {"pps": 100, "pps_burst": 50}},
             "b": {"type": "vhost-user"}}
    with Vswitchd(tmp_path, ports) as sw:
        a = connect(sw, "a", features=FULL | OFFLOADS_TX)
        b = connect(sw, "b", features=FULL | OFFLOADS_RX, rx_buffers=64)
        payload = bytes(45 * 1448)                       # 45 segments on the wire
        f = addressed(partial(tcp_frame(payload), 14, 34, False, 6, 16), "b", "a")
        a.tx(0).post_tx_frames([f] * 5, hdr=VirtioNetHdr(flags=1, gso_type=1, hdr_len=54, gso_size=1448,
                                                         csum_start=34, csum_offset=16))
        got = b.rx(0).recv_frames(5, timeout=2)
        # 50 frames of burst: the first GSO frame fits, the second is let in
        # on credit (it conforms on arrival), then the bucket owes 90 frames
        assert len(got) == 2 and all(g.frame == f for g in got)
        assert sw.drops("a") == {"rate_limited": 3}
        b.rx(0).post_rx(64, 2048)                        # the two frames used them all
        time.sleep(1.0)                                  # 100 frames/s: the debt is paid
        a.tx(0).post_tx(frame("b", "a", 7))
        got = b.rx(0).recv_frames(1, timeout=5)
        assert [g.frame for g in got] == [frame("b", "a", 7)], (sw.drops("a"), sw.drops("b"))


def test_byte_policer_on_ingress_and_egress(tmp_path):
    # 80 kbit/s = 10000 B/s of IP bytes with a 3000-byte burst: three frames of
    # 1014 bytes (1000 after the Ethernet header, which is not charged) pass at once
    ports = {"a": {"type": "vhost-user", "ingress_policing": {"rate": "80kbit", "burst": 3000}},
             "b": {"type": "vhost-user", "egress_policing": {"rate": 80000, "burst": 3000}},
             "c": {"type": "vhost-user"}}
    with Vswitchd(tmp_path, ports) as sw:
        a, b, c = (connect(sw, n) for n in "abc")
        # published at once: one burst, one clock reading, exact counts
        a.tx(0).post_tx_frames([frame("c", "a", i, 1014) for i in range(10)])
        assert len(drain(c)) == 3
        assert sw.drops("a") == {"rate_limited": 7}
        drain(b)                  # a's frames flooded to b too (c was unknown): b's bucket paid
        time.sleep(0.5)           # ... and refills (3000 bytes at 10000 B/s)
        c.tx(0).post_tx_frames([frame("b", "c", i, 1014) for i in range(10)])
        assert len(drain(b)) == 3
        assert sw.drops("b")["rate_limited"] >= 7       # counted at the egress port
        assert sw.drops("c") == {}


def test_mirror_copies_both_directions_as_the_port_saw_them(tmp_path):
    ports = {"a": {"type": "vhost-user", "vlan": {"mode": "access", "id": 5},
                   "mirror": {"to": "mon", "direction": "both"}},
             "b": {"type": "vhost-user", "vlan": {"mode": "trunk", "allowed": [5]}},
             "mon": {"type": "vhost-user", "vlan": {"mode": "access", "id": 99}}}
    with Vswitchd(tmp_path, ports) as sw:
        a, b, mon = (connect(sw, n) for n in ("a", "b", "mon"))
        out = frame("b", "a", 1)
        a.tx(0).post_tx(out)
        assert drain(b) == [tag(out, 5)]
        back = frame("a", "b", 2)
        b.tx(0).post_tx(tag(back, 5))
        assert drain(a) == [back]
        # a's frames as a sent them and as a received them: untagged
        assert drain(mon) == [out, back]
        assert all(sw.drops(n) == {} for n in ("a", "b", "mon"))


def test_mirrors_follow_ports_whose_slots_were_re_created(tmp_path):
    """A port re-creates its datapath slot when its number of queue pairs
    changes at its guest's next connection; a new slot starts without
    mirror settings, and may have another number. Both ends of a mirror
    are re-created here (the monitor onto another slot number: the slot of
    a removed port is free below it) and copies flow at once, without a
    periodic re-apply."""
    ports = {"x": {"type": "vhost-user"},
             "a": {"type": "vhost-user", "vlan": {"mode": "access", "id": 5},
                   "mirror": {"to": "mon", "direction": "both"}},
             "b": {"type": "vhost-user", "vlan": {"mode": "trunk", "allowed": [5]}},
             "mon": {"type": "vhost-user", "vlan": {"mode": "access", "id": 99}}}
    with Vswitchd(tmp_path, ports) as sw:
        a, b, mon = (connect(sw, n) for n in ("a", "b", "mon"))
        del ports["x"]
        for name in ("a", "mon"):
            ports[name] = {**ports[name], "queues": 2}
        sw.write_config(ports)
        out = sw.reload()
        assert out.returncode == 0, out.stderr
        for name, dev in (("mon", mon), ("a", a)):
            assert sw.port(name)["pending"] == {"queues": 2}
            dev.close()
            sw.wait_port(name, lambda p: p["queues_offered"] == 2 and p["state"] == "listening",
                         timeout=10, what="slot re-created")
        a, mon = connect(sw, "a"), connect(sw, "mon")
        out = frame("b", "a", 1)
        a.tx(0).post_tx(out)
        assert drain(b) == [tag(out, 5)]
        back = frame("a", "b", 2)
        b.tx(0).post_tx(tag(back, 5))
        assert drain(a) == [back]
        assert drain(mon) == [out, back]
        assert all(sw.drops(n) == {} for n in ("a", "b", "mon"))


def test_ingress_limit_with_hold_delays_frames_in_the_guest_ring_and_drops_none(tmp_path):
    ports = {"a": {"type": "vhost-user",
                   "ingress_policing": {"pps": 100, "pps_burst": 10, "action": "hold"}},
             "b": {"type": "vhost-user"}}
    with Vswitchd(tmp_path, ports) as sw:
        a, b = connect(sw, "a"), connect(sw, "b")
        sent = [frame("b", "a", i) for i in range(50)]
        t0 = time.monotonic()
        a.tx(0).post_tx_frames(sent)
        got = []
        while len(got) < 50 and time.monotonic() - t0 < 10:
            got += [g.frame for g in b.rx(0).recv_frames(50 - len(got), timeout=0.5)]
        elapsed = time.monotonic() - t0
        assert got == sent                       # all of them, in order
        assert sw.drops("a") == {} and sw.drops("b") == {}
        # at most a burst of 32 is taken at once; the rest waits in a's ring
        # until 100 frames/s (minus 10 of burst) have paid for it
        assert elapsed >= 0.2, elapsed
        assert sw.port("a")["policy"]["ingress_policing"]["action"] == "hold"
