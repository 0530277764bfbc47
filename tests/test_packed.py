"""Packed virtqueues (VIRTIO_F_RING_PACKED) through the switch.

DPDK testpmd's virtio-user with ``packed_vq=1`` as the front-end: frames
byte for byte in both socket roles and with one and two queue pairs, a ring
size that is not a power of two, a packed port and a split port switching
to each other, the switch restarted under a packed front-end, and
virtio-user's in-order paths (VIRTIO_F_IN_ORDER) on both ring kinds. QEMU
guests with ``packed=on`` (on QEMU 10 and on 7.2) next to a split one ping each
other and survive a pause (the 32-bit vring base round trip), and a packed
guest migrates live between two ports under traffic (the dirty log of a
packed ring); those are marked qemu.
The walker's corner cases (wrap in the middle of a chain, indirect tables,
batches, the vring base) are in tests/unit/test_packed_ring.py; hostile
drivers on packed rings in test_hostile_packed.py.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.peers.testpmd import TestPmd, verify_delivery, virtio_user_vdev
from tests.harness.switch import Vswitchd

dpdk = pytest.mark.dpdk

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
                seen[name + ".queues"] = info["queues"]
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
        for pair in seen[name + ".queues"]:
            assert pair["rx"]["packed"] == want and pair["tx"]["packed"] == want, (name, pair)


@dpdk
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


@dpdk
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "split"])
def test_in_order_rings_carry_every_frame_and_a_port_can_withhold_the_feature(tmp_path, packed):
    """IN_ORDER is offered (docs/architecture.md, "In-order use"): virtio-user
    with in_order=1 negotiates it and runs its in-order paths, which read
    each used entry as the buffer at the next position, whatever its id
    says, and free TX buffers by count: a frame written into a buffer out
    of order would reach testpmd as another frame's, and not cross byte for
    byte. (The order of a TX burst's used entries, which these paths do not
    read, is checked in tests/test_datapath.py.) Port b has `in_order:
    false`: its front-end asks and does not get it, and the two kinds
    switch to each other, both ways."""
    socks, ports = ports_for(tmp_path, 1)
    ports["b"]["in_order"] = False
    seen: dict = {}
    with Vswitchd(tmp_path / "switch", ports, cpus="1") as sw:
        # a's in-order TX path, then its in-order RX path
        for src, dst in (("a", "b"), ("b", "a")):
            result = verify_delivery(
                virtio_user_vdev(0, socks[src], packed_vq=packed, in_order=True),
                virtio_user_vdev(1, socks[dst], packed_vq=packed, in_order=True),
                count=600, workdir=tmp_path / f"run-{src}{dst}", cpus=(0,), ready=enabled(sw, 1, seen=seen))
            assert result.ok, (src, dst, result.describe())
            assert_ring_kinds(seen, a=packed, b=packed)
            assert "F_IN_ORDER" in seen["a"], seen["a"]
            assert "F_IN_ORDER" not in seen["b"], seen["b"]
        assert sw.drops("a") == {} and sw.drops("b") == {}


@dpdk
def test_packed_ring_of_a_size_that_is_not_a_power_of_two(tmp_path):
    """Packed rings may have any size: 48 and 176 descriptors (DPDK wants a multiple of 16), so positions
    wrap by comparison many times over 1000 frames of up to 1514 bytes. The sending ring is the smaller one,
    as `verify_delivery` explains: with equal rings a switch worker preempted on this loaded 2-core machine
    lets a whole ring pile up, and the burst after it overflows the receiving ring (once in CI: 990/1000)."""
    socks, ports = ports_for(tmp_path, 1)
    seen: dict = {}
    with Vswitchd(tmp_path / "switch", ports, cpus="1") as sw:
        result = verify_delivery(
            virtio_user_vdev(0, socks["a"], packed_vq=True, queue_size=48),
            virtio_user_vdev(1, socks["b"], packed_vq=True, queue_size=176),
            count=1000, workdir=tmp_path / "run", cpus=(0,), ready=enabled(sw, 1, seen=seen),
            ingress_queue_size=None)
        assert result.ok, (result.describe(), sw.drops("a"), sw.drops("b"))
        assert_ring_kinds(seen, a=True, b=True)
        for name, size in (("a", 48), ("b", 176)):
            for direction in ("rx", "tx"):
                ring = seen[name + ".queues"][0][direction]
                assert ring["size"] == size and ring["packed"] and ring["started"], (name, direction, ring)
        assert sw.drops("a") == {} and sw.drops("b") == {}


@dpdk
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


@dpdk
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


def _virtio_net_features(guest: QemuGuest) -> str:
    """The guest driver's negotiated feature bits of eth0, one character per
    bit from bit 0 (/sys/bus/virtio/devices/virtio*/features)."""
    return guest.check_output("cat /sys/class/net/eth0/device/features").strip()


@pytest.mark.qemu
@pytest.mark.parametrize("packed_qemu", ["10", "7.2"])
def test_packed_guest_pings_a_split_guest(tmp_path, image, qemu10, packed_qemu):
    """A guest with ``packed=on`` (two queue pairs; QEMU 10 beside a split
    QEMU 7.2 guest, then the other way round): the Linux driver of the
    packed one negotiates RING_PACKED (bit 34 in its features), the other
    does not, and they ping each other through the switch in both
    directions. Then the packed guest is paused and resumed (QMP stop/cont):
    QEMU stops its rings with GET_VRING_BASE and starts them again with
    SET_VRING_BASE carrying the 32 bits we returned, and the pings go on."""
    sw = Vswitchd(tmp_path / "switch", {
        name: {"type": "vhost-user", "mode": "server", "queues": 2} for name in ("a", "b")})
    sw.start()
    guests = []
    q10 = {"qemu": qemu10, "msix": True}
    try:
        a = QemuGuest("a", image, sw.socket("a"), mac="52:54:00:00:34:0a", ip="10.0.34.1/24",
                      queues=2, device_props={"packed": True}, workdir=tmp_path / "a",
                      **(q10 if packed_qemu == "10" else {}))
        b = QemuGuest("b", image, sw.socket("b"), mac="52:54:00:00:34:0b", ip="10.0.34.2/24",
                      queues=2, workdir=tmp_path / "b", **(q10 if packed_qemu == "7.2" else {}))
        for g in (a, b):
            g.start()
            guests.append(g)
        for g in (a, b):
            g.wait_booted(240)
        seen: dict = {}
        enabled(sw, 2, seen=seen)()
        assert_ring_kinds(seen, a=True, b=False)
        assert "packed=on" in " ".join(a.command_line())
        features_a, features_b = _virtio_net_features(a), _virtio_net_features(b)
        assert features_a[34] == "1", features_a
        assert features_b[34] == "0", features_b
        r = a.ping("10.0.34.2", count=10, interval=0.2)
        assert (r.sent, r.loss_pct) == (10, 0), r
        r = b.ping("10.0.34.1", count=10, interval=0.2)
        assert (r.sent, r.loss_pct) == (10, 0), r
        for cpu in (0, 1):      # XPS: vCPU c sends on TX queue c - both packed queue pairs
            rc, out = a.run(f"taskset -c {cpu} ping -c 5 -i 0.2 -W 2 10.0.34.2", timeout=120)
            assert rc == 0 and " 0% packet loss" in out, out
        # pause and resume: GET_VRING_BASE (all 32 bits) and SET_VRING_BASE with them
        a.qmp("stop")
        sw.wait_port("a", lambda p: not any(q[d]["started"] for q in p["queues"] for d in ("rx", "tx")),
                     timeout=30, what="rings stopped by GET_VRING_BASE")
        a.qmp("cont")
        info = sw.wait_port("a", lambda p: all(q[d]["started"] for q in p["queues"] for d in ("rx", "tx")),
                            timeout=30, what="rings started again by SET_VRING_BASE and a kick")
        assert all(q[d]["packed"] for q in info["queues"] for d in ("rx", "tx")), info["queues"]
        r = a.ping("10.0.34.2", count=10, interval=0.2)
        assert (r.sent, r.loss_pct) == (10, 0), r
        for name in ("a", "b"):
            drops = sw.drops(name)
            assert not drops.get("ring_broken") and not drops.get("rx_bad_chain"), (name, drops)
        for g in (a, b):
            g.assert_no_kernel_errors()
    finally:
        for g in guests:
            g.stop()
        sw.stop()


@pytest.mark.qemu
def test_packed_guest_migrates_between_ports_without_corruption(tmp_path, image, monkeypatch):
    """tests/test_migration.py's live migration under traffic with the
    migrating guest on packed rings (the peer stays split): the descriptor
    slots the switch writes are marked in the dirty log, and the rings'
    32-bit state goes from the source port (GET_VRING_BASE) to the
    destination's (SET_VRING_BASE); the stream arrives byte for byte."""
    from tests import test_migration as migration

    class PackedGuest(QemuGuest):
        def __init__(self, name, *args, device_props=None, **kwargs):
            props = dict(device_props or {})
            if name == "m":                 # the migrating guest, on both sides
                props["packed"] = True
            super().__init__(name, *args, device_props=props, **kwargs)

    features: dict[str, list[str]] = {}

    class RecordingSwitch(Vswitchd):
        def port(self, name):
            info = super().port(name)
            if info["features"]:
                features[name] = info["features"]
            return info

    monkeypatch.setattr(migration, "QemuGuest", PackedGuest)
    monkeypatch.setattr(migration, "Vswitchd", RecordingSwitch)
    migration.test_guest_migrates_between_ports_without_corruption(tmp_path, image, "guest_announce")
    assert RING_PACKED in features["src"] and RING_PACKED in features["dst"], features
