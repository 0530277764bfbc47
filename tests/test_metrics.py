"""The Prometheus endpoint of a real vswitchd, scraped over HTTP and parsed
with prometheus_client's parser: every counter must move when its event
happens. In particular every drop reason the datapath knows (DROP_REASONS)
has a recipe here that produces it - with our hostile front-end
(tests/harness/frontend), a disabled or broken ring, a port MTU, or a TAP whose link
is down - and the labelled counter (port, direction, reason) must move: a
drop counter nobody can move is a defect.

One daemon serves the whole module; every test connects its own front-ends
and leaves the ports listening again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import traffic
from tests.harness.frontend import Desc, Hostile, VhostUserFrontend, VirtioNetHdr, bits
from tests.harness.frontend import Feature as F
from tests.harness.switch import Vswitchd
import vswitch
from vswitch._datapath import DROP_REASONS
from vswitch.cli import request

FULL = bits(F.VERSION_1, F.MRG_RXBUF, F.INDIRECT_DESC, F.EVENT_IDX)
MAC = {name: bytes([0x02, 0, 0, 0, 0x4D, i + 1]) for i, name in enumerate(["a", "b", "c", "m", "x", "p", "q"])}
BCAST = b"\xff" * 6
HAVE_TUN = os.path.exists("/dev/net/tun") and os.geteuid() == 0
TAP_IFNAME = f"vsm{os.getpid() % 100000}"
# The VXLAN port "v" listens on loopback. Its remotes are 127.0.0.2 (a local
# address, so tests can send from it) and an address that a socket bound to
# 127.0.0.1 can never reach (the kernel refuses loopback sources off the
# loopback device), so every flood has one copy refused: vxlan_send_failed.
VXLAN_REMOTE, VXLAN_UNREACHABLE, VXLAN_VNI = "127.0.0.2", "198.51.100.254", 7


def frame(dst: str | bytes, src: str | bytes, seq: int = 0, size: int = 64) -> bytes:
    return traffic.frame(dst, src, seq, size, macs=MAC)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the daemon and scraping -----------------------------------------------------------------

class Scraper:
    def __init__(self, url: str) -> None:
        self.url = url

    def text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            return r.read().decode()

    def __call__(self) -> dict[str, dict[frozenset, float]]:
        out: dict[str, dict[frozenset, float]] = {}
        for fam in text_string_to_metric_families(self.text()):
            for s in fam.samples:
                out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
        return out


def total(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if want <= k)


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("metrics")
    port = free_tcp_port()
    ports = {
        "a": {"type": "vhost-user", "queues": 2},
        "b": {"type": "vhost-user", "queues": 2},
        "c": {"type": "vhost-user", "queues": 1},
        "m": {"type": "vhost-user", "queues": 1, "mtu": 1500},
        # per-port policy: p polices and allows only its own MAC; q is an access
        # port with a broadcast cap of one frame per second
        "p": {"type": "vhost-user", "queues": 1, "allowed_macs": [MAC["p"].hex(":")],
              "ingress_policing": {"pps": 1, "pps_burst": 1}},
        "q": {"type": "vhost-user", "queues": 1, "vlan": {"mode": "access", "id": 5},
              "storm_control": {"broadcast": 1}},
        "v": {"type": "vxlan", "local": "127.0.0.1", "udp_port": free_udp_port(),
              "remotes": [VXLAN_REMOTE, VXLAN_UNREACHABLE], "vni": VXLAN_VNI},
    }
    if HAVE_TUN:
        ports["t"] = {"type": "tap", "ifname": TAP_IFNAME, "queues": 1}
    sw = Vswitchd(work, ports, workers=1, extra={"metrics": {"listen": f"127.0.0.1:{port}"}})
    sw.start()
    try:
        scrape = Scraper(f"http://127.0.0.1:{port}/metrics")
        wait_until(lambda: _reachable(scrape), 10, "metrics endpoint up")
        if HAVE_TUN:
            sw.wait_port("t", lambda p: p["state"] == "up", timeout=20, what="TAP attached")
        yield sw, scrape
    finally:
        sw.stop()
        if HAVE_TUN:
            subprocess.run(["ip", "link", "del", TAP_IFNAME], capture_output=True)


def _reachable(scrape: Scraper) -> bool:
    try:
        scrape.text()
        return True
    except (OSError, urllib.error.URLError):
        return False


def _listening(p: dict) -> bool:
    return p["state"] == "listening"


@contextlib.contextmanager
def connected(sw: Vswitchd, port: str, pairs: int = 1, features: int = FULL, rx_buffers: int = 64,
              rx_buf_len: int = 2048, **kw):
    """A started device on `port`; closed on exit, and the port listening again."""
    sw.wait_port(port, _listening, timeout=10, what="listening before connecting")
    fe = VhostUserFrontend(sw.socket(port))
    try:
        dev = fe.setup_net_device(pairs, 256, features, **kw)
        for q in range(pairs):
            if rx_buffers:
                dev.rx(q).post_rx(rx_buffers, rx_buf_len)
        sw.wait_port(port, lambda p: p["state"] == "connected" and p["queues_enabled"] >= 1,
                     timeout=10, what="connected")
        yield dev
    finally:
        fe.close()
        sw.wait_port(port, _listening, timeout=10, what="listening after closing")


def test_endpoint_basics(env):
    sw, scrape = env
    with urllib.request.urlopen(scrape.url.replace("/metrics", "/"), timeout=10) as r:
        assert r.status == 200 and b"/metrics" in r.read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(scrape.url + "x", timeout=10)
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(scrape.url, data=b"x", method="POST"), timeout=10)
    assert e.value.code == 405
    s = scrape()
    (labels,) = s["vswitch_build_info"]
    assert dict(labels)["version"] == sw.ctl("version")["version"] == vswitch.__version__
    assert "process_resident_memory_bytes" in s
    assert set(dict(k)["port"] for k in s["vswitch_port_info"]) == set(sw.ports)


# --- traffic -------------------------------------------------------------------------------------

def test_receive_and_transmit_counters_follow_the_frames(env):
    sw, scrape = env
    n, size = 25, 300
    with connected(sw, "a", pairs=2) as a, connected(sw, "b", pairs=2, rx_buffers=128) as b:
        before = scrape()
        for q in (0, 1):
            for i in range(n):
                a.tx(q).post_tx(frame("b", "a", i, size))
            got = b.rx(q).recv_frames(n, timeout=10)
            assert len(got) == n
        # counters are read at scrape time: poll until the datapath's are visible
        after = wait_until(lambda: (s := scrape()) and total(s, "vswitch_port_transmit_packets_total",
                                                             port="b", queue="1")
                           - total(before, "vswitch_port_transmit_packets_total", port="b", queue="1") >= n
                           and s, what="transmit counters")
        for q in ("0", "1"):
            d = {name: total(after, name, port=p, queue=q) - total(before, name, port=p, queue=q)
                 for name, p in (("vswitch_port_receive_packets_total", "a"),
                                 ("vswitch_port_receive_bytes_total", "a"),
                                 ("vswitch_port_transmit_packets_total", "b"),
                                 ("vswitch_port_transmit_bytes_total", "b"))}
            assert d == {"vswitch_port_receive_packets_total": n, "vswitch_port_receive_bytes_total": n * size,
                         "vswitch_port_transmit_packets_total": n,
                         "vswitch_port_transmit_bytes_total": n * size}, q
        # and the other way round: b's receive, a's transmit
        for i in range(n):
            b.tx(0).post_tx(frame("a", "b", i, size))
        assert len(a.rx(0).recv_frames(n, timeout=10)) == n
        after2 = wait_until(lambda: (s := scrape()) and total(s, "vswitch_port_transmit_packets_total", port="a")
                            - total(after, "vswitch_port_transmit_packets_total", port="a") >= n and s,
                            what="a transmit")
        assert total(after2, "vswitch_port_receive_bytes_total", port="b") - \
            total(after, "vswitch_port_receive_bytes_total", port="b") == n * size


def test_worker_counters_move(env):
    sw, scrape = env
    before = scrape()
    with connected(sw, "a") as a, connected(sw, "b", rx_buffers=256) as b:
        for burst in range(8):
            a.tx(0).post_tx_frames([frame("b", "a", burst * 32 + i, 1500) for i in range(32)])
            assert len(b.rx(0).recv_frames(32, timeout=10)) == 32
            b.rx(0).post_rx(32, 2048)
            time.sleep(0.02)      # let the worker go idle between bursts (adaptive mode sleeps)
        time.sleep(0.5)
        after = scrape()
    for name in ("vswitch_worker_busy_seconds_total", "vswitch_worker_rounds_total",
                 "vswitch_worker_sleeps_total", "vswitch_worker_wakeups_total"):
        assert total(after, name, worker="0") > total(before, name, worker="0"), name


# --- ports and connections ---------------------------------------------------------------------

def test_port_up_queues_info_and_mtu(env):
    sw, scrape = env
    s = scrape()
    assert total(s, "vswitch_port_up", port="c") == 0
    assert total(s, "vswitch_port_queues", port="a", state="offered") == 2
    assert total(s, "vswitch_port_queues", port="a", state="enabled") == 0
    assert total(s, "vswitch_port_mtu_bytes", port="m") == 1500
    info = {dict(k)["port"]: dict(k) for k in s["vswitch_port_info"]}
    assert info["c"]["type"] == "vhost-user" and info["c"]["mode"] == "server"
    assert info["c"]["socket"] == sw.socket("c") and info["c"]["features"] == ""
    with connected(sw, "a", pairs=1):
        s = scrape()
        assert total(s, "vswitch_port_up", port="a") == 1
        assert total(s, "vswitch_port_queues", port="a", state="enabled") == 1
        info = {dict(k)["port"]: dict(k) for k in s["vswitch_port_info"]}
        assert "F_VERSION_1" in info["a"]["features"].split(",")
    s = scrape()
    assert total(s, "vswitch_port_up", port="a") == 0
    assert total(s, "vswitch_port_queues", port="a", state="enabled") == 0


def test_port_without_enabled_queues_is_not_up(env):
    sw, scrape = env
    sw.wait_port("c", _listening, timeout=10)
    fe = VhostUserFrontend(sw.socket("c"))
    try:
        fe.setup_net_device(1, 256, FULL, enable=False)
        sw.wait_port("c", lambda p: p["state"] == "connected", timeout=10)
        assert total(scrape(), "vswitch_port_up", port="c") == 0
    finally:
        fe.close()
        sw.wait_port("c", _listening, timeout=10)


def test_connection_events(env):
    sw, scrape = env

    def events(s):
        return {e: total(s, "vswitch_vhost_connections_total", port="c", event=e)
                for e in ("connect", "disconnect", "refused", "protocol_error")}

    base = events(scrape())
    with connected(sw, "c"):
        assert events(scrape()) == {**base, "connect": base["connect"] + 1}
        second = VhostUserFrontend(sw.socket("c"))          # refused while the first runs
        assert second.wait_closed(10)
        second.close()
        wait_until(lambda: events(scrape())["refused"] == base["refused"] + 1, what="refused")
    s = events(scrape())
    assert s == {**base, "connect": base["connect"] + 1, "disconnect": base["disconnect"] + 1,
                 "refused": base["refused"] + 1}
    # a malformed message: a vring index beyond the port's queue pairs ends the session
    fe = VhostUserFrontend(sw.socket("c"))
    fe.get_features()
    fe.set_vring_num(8, 256)
    assert fe.wait_closed(10)
    fe.close()
    sw.wait_port("c", _listening, timeout=10)
    s = events(scrape())
    assert s == {"connect": base["connect"] + 2, "disconnect": base["disconnect"] + 2,
                 "refused": base["refused"] + 1, "protocol_error": base["protocol_error"] + 1}


def test_fdb_entries_follow_learning_and_disconnects(env):
    sw, scrape = env
    before = total(scrape(), "vswitch_fdb_entries", port="c")
    with connected(sw, "c") as c:
        for i in range(3):
            c.tx(0).post_tx(frame(BCAST, bytes([0x02, 0, 0, 0, 0x4F, i]), i))
        wait_until(lambda: total(scrape(), "vswitch_fdb_entries", port="c") == before + 3, what="3 learned")
    # a disconnect forgets what the port taught the FDB
    assert total(scrape(), "vswitch_fdb_entries", port="c") == before


# --- TAP uplink ------------------------------------------------------------------------------------

def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.mark.skipif(not HAVE_TUN, reason="needs root and /dev/net/tun")
def test_tap_receive_and_transmit(env):
    sw, scrape = env
    ip("link", "set", "dev", TAP_IFNAME, "up")
    before = scrape()
    with connected(sw, "c", rx_buffers=128) as c:
        # the kernel transmits out of the TAP: the switch receives
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((TAP_IFNAME, 0))
            for i in range(5):
                raw.send(frame(BCAST, "x", i, 100))
        wait_until(lambda: total(scrape(), "vswitch_port_receive_packets_total", port="t")
                   >= total(before, "vswitch_port_receive_packets_total", port="t") + 5, what="tap receive")
        # a guest's broadcast is flooded to the TAP: the switch transmits to the kernel
        for i in range(5):
            c.tx(0).post_tx(frame(BCAST, "c", i, 100))
        wait_until(lambda: total(scrape(), "vswitch_port_transmit_packets_total", port="t")
                   >= total(before, "vswitch_port_transmit_packets_total", port="t") + 5, what="tap transmit")
        after = scrape()
        assert total(after, "vswitch_port_transmit_bytes_total", port="t") > \
            total(before, "vswitch_port_transmit_bytes_total", port="t")
        assert total(after, "vswitch_port_receive_bytes_total", port="t") > \
            total(before, "vswitch_port_receive_bytes_total", port="t")
    assert total(after, "vswitch_port_up", port="t") == 1


@pytest.mark.skipif(not HAVE_TUN, reason="needs root and /dev/net/tun")
def test_tap_detach_and_attach_events(env):
    sw, scrape = env
    s = scrape()
    attach = total(s, "vswitch_tap_events_total", port="t", event="attach")
    detach = total(s, "vswitch_tap_events_total", port="t", event="detach")
    ip("link", "del", TAP_IFNAME)
    wait_until(lambda: total(scrape(), "vswitch_tap_events_total", port="t", event="detach") == detach + 1,
               20, "detach counted")
    wait_until(lambda: total(scrape(), "vswitch_tap_events_total", port="t", event="attach") == attach + 1,
               20, "re-attach counted")
    wait_until(lambda: total(scrape(), "vswitch_port_up", port="t") == 1, 20, "TAP up again")


# --- every drop reason ---------------------------------------------------------------------------
# Each recipe returns (port, direction) of the counter it moves, after doing
# what makes the datapath drop a frame for that reason.

def _hostile_tx(recipe, *args, **kw):
    def run(sw, stack):
        a = stack.enter_context(connected(sw, "a"))
        getattr(Hostile(a.tx(0)), recipe)(*args, **kw)
        return "a", "receive"
    return run


def _too_many_segments(sw, stack):
    a = stack.enter_context(connected(sw, "a"))
    ring = a.tx(0)
    g = ring.mem.alloc(4096, 16)
    # 65 pieces (VS_MAX_SEGS is 64) of a valid 130-byte frame
    Hostile(ring).chain([Desc(g + 2 * i, 2, 0) for i in range(65)])
    return "a", "receive"


def _ring_disabled(sw, stack):
    a = stack.enter_context(connected(sw, "a"))
    a.frontend.set_vring_enable(a.tx(0).index, False)
    a.frontend.sync()
    a.tx(0).post_tx(frame("b", "a", 1))
    return "a", "receive"


def _to_b(b_kw: dict, before_send=None, size: int = 200):
    def run(sw, stack):
        b = stack.enter_context(connected(sw, "b", **b_kw))
        a = stack.enter_context(connected(sw, "a"))
        if before_send:
            before_send(a, b)
        a.tx(0).post_tx(frame("b", "a", 1, size))
        return "b", "transmit"
    return run


def _no_rx_queue(sw, stack):
    b = stack.enter_context(connected(sw, "b"))
    a = stack.enter_context(connected(sw, "a"))
    b.tx(0).post_tx(frame(BCAST, "b", 0))              # the FDB learns b's MAC
    wait_until(lambda: any(e["mac"] == ":".join(f"{x:02x}" for x in MAC["b"]) for e in sw.ctl("fdb show")),
               what="b's MAC learned")
    b.frontend.set_vring_enable(b.rx(0).index, False)  # b has no enabled RX queue now
    b.frontend.sync()
    a.tx(0).post_tx(frame("b", "a", 1))
    return "a", "receive"          # counted on the ingress ring: the frame never left a


def _same_port(sw, stack):
    a = stack.enter_context(connected(sw, "a"))
    a.tx(0).post_tx(frame("a", "a", 1))                # learned on a, addressed to a
    return "a", "receive"


def _ring_broken(sw, stack):
    a = stack.enter_context(connected(sw, "a"))
    Hostile(a.tx(0)).wild_avail_idx(0x8000)
    return "a", "receive"


def _bad_offload(sw, stack):
    a = stack.enter_context(connected(sw, "a"))         # CSUM not negotiated
    a.tx(0).post_tx(frame("b", "a", 1, 100), hdr=VirtioNetHdr(flags=1, csum_start=34, csum_offset=16))
    return "a", "receive"


def _over_budget(sw, stack):
    """b's RX buffers are chains of 255 one-byte descriptors (legal, and
    costly to walk): 32 frames of 1000 bytes from a need 4 chains each, more
    descriptor walks than a's frames may cost the worker in one round."""
    b = stack.enter_context(connected(sw, "b", rx_buffers=0))
    a = stack.enter_context(connected(sw, "a"))
    ring = b.rx(0)
    h = Hostile(ring)
    for _ in range(160):
        g = h._buf(255)
        table = [Desc(g + i, 1, 2 | (1 if i < 254 else 0), i + 1 if i < 254 else 0) for i in range(255)]
        h._indirect(table, publish=False, kick=False)
    ring.publish(kick=True)
    a.tx(0).post_tx_frames([frame("b", "a", i, 1000) for i in range(32)])
    return "a", "receive"


def _mtu_exceeded(sw, stack):
    m = stack.enter_context(connected(sw, "m"))         # mtu: 1500 in the config
    a = stack.enter_context(connected(sw, "a"))
    del m
    a.tx(0).post_tx(frame(BCAST, "a", 1, 2000))
    return "m", "transmit"


def _tap_write_failed(sw, stack):
    if not HAVE_TUN:
        pytest.skip("needs root and /dev/net/tun")
    ip("link", "set", "dev", TAP_IFNAME, "down")        # the kernel refuses writes: EIO
    stack.callback(ip, "link", "set", "dev", TAP_IFNAME, "up")
    sw.wait_port("t", lambda p: p["state"] == "up", timeout=20, what="TAP attached")
    a = stack.enter_context(connected(sw, "a"))
    a.tx(0).post_tx(frame(BCAST, "a", 1))
    return "t", "transmit"


def _vxlan_datagram(source: str, payload: bytes):
    def recipe(sw, stack):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.sendto(payload, ("127.0.0.1", sw.ports["v"]["udp_port"]))
        return "v", "receive"
    return recipe


def _vxlan_send_failed(sw, stack):
    a = stack.enter_context(connected(sw, "a"))
    a.tx(0).post_tx(frame(BCAST, "a", 1))                # flooded to both remotes
    return "v", "transmit"


VXLAN_OK = bytes([0x08, 0, 0, 0, 0, 0, VXLAN_VNI, 0])


def _from_port(name: str, frames: list[bytes]):
    def recipe(sw, stack):
        dev = stack.enter_context(connected(sw, name))
        dev.tx(0).post_tx_frames(frames)
        return name, "receive"
    return recipe


def _iotlb(buffers_perm: int | None):
    """Port c negotiates ACCESS_PLATFORM: its rings' IOVAs are mapped, its
    buffers' not at all (iotlb_miss) or read only (iotlb_denied); b floods."""
    def run(sw, stack):
        c = stack.enter_context(connected(sw, "c", features=FULL | bits(F.ACCESS_PLATFORM), rx_buffers=8))
        for r in c.mem.vhost_regions():
            assert c.frontend.iotlb_msg(r.uaddr, r.size, r.uaddr, 3, 2) == 0
            if buffers_perm:
                assert c.frontend.iotlb_msg(r.gpa, r.size, r.uaddr, buffers_perm, 2) == 0
        sw.wait_port("c", lambda p: p["queues"][0]["rx"]["started"], timeout=10, what="c's RX ring started")
        b = stack.enter_context(connected(sw, "b"))
        b.tx(0).post_tx(frame(BCAST, "b", 1))
        return "c", "transmit"
    return run


DROP_RECIPES = {
    "bad_head": _hostile_tx("head_out_of_range"),
    "bad_address": _hostile_tx("addr_outside_memory"),
    "bad_length": _hostile_tx("len_overflow_32"),
    "bad_chain": _hostile_tx("loop"),
    "bad_indirect": _hostile_tx("indirect_bad_len"),
    "bad_flags": _hostile_tx("wrong_direction"),
    "too_many_segments": _too_many_segments,
    "runt": _hostile_tx("short_header"),
    "ring_disabled": _ring_disabled,
    "no_rx_buffer": _to_b({"rx_buffers": 0}),
    "rx_buffer_too_small": _to_b({"features": bits(F.VERSION_1), "rx_buffers": 4, "rx_buf_len": 256}, size=1000),
    "rx_bad_chain": _to_b({"rx_buffers": 0}, lambda a, b: Hostile(b.rx(0)).addr_outside_memory()),
    "no_rx_queue": _no_rx_queue,
    "same_port": _same_port,
    "ring_broken": _ring_broken,
    "bad_offload": _bad_offload,
    "mtu_exceeded": _mtu_exceeded,
    "tap_write_failed": _tap_write_failed,
    "vxlan_bad_header": _vxlan_datagram(VXLAN_REMOTE, bytes([0, 0, 0, 0, 0, 0, VXLAN_VNI, 0]) + frame(BCAST, "x")),
    "vxlan_wrong_vni": _vxlan_datagram(VXLAN_REMOTE, bytes([0x08, 0, 0, 0, 0, 0, VXLAN_VNI + 1, 0])
                                       + frame(BCAST, "x")),
    "vxlan_unknown_remote": _vxlan_datagram("127.0.0.1", VXLAN_OK + frame(BCAST, "x")),
    "vxlan_send_failed": _vxlan_send_failed,
    "over_budget": _over_budget,
    "iotlb_miss": _iotlb(None),
    "iotlb_denied": _iotlb(1),
    "spoofed_source": _from_port("p", [frame(BCAST, "x")]),
    "rate_limited": _from_port("p", [frame(BCAST, "p", i) for i in range(3)]),
    "storm_control": _from_port("q", [frame(BCAST, "q", i) for i in range(3)]),
    "vlan_filtered": _from_port("q", [(lambda f: f[:12] + b"\x81\x00\x00\x05" + f[12:])(frame(BCAST, "q"))]),
}


def test_every_drop_reason_of_the_datapath_has_a_recipe():
    reasons = [r for r in DROP_REASONS if r]
    missing = [r for r in reasons if r not in DROP_RECIPES]
    assert not missing, f"drop reasons no test can move: {missing}"
    assert not set(DROP_RECIPES) - set(reasons), "recipes for reasons the datapath no longer has"


@pytest.mark.parametrize("reason", [r for r in DROP_REASONS if r])
def test_drop_counter_moves(env, reason):
    sw, scrape = env
    recipe = DROP_RECIPES.get(reason)
    if recipe is None:
        pytest.fail(f"no recipe produces drop reason {reason}")
    name = "vswitch_port_dropped_total"
    before = scrape()
    with contextlib.ExitStack() as stack:
        port, direction = recipe(sw, stack)
        want = dict(port=port, direction=direction, reason=reason)
        try:
            after = wait_until(lambda: (s := scrape()) and total(s, name, **want) > total(before, name, **want)
                               and s, 10, f"{reason} on {port} ({direction})")
        except TimeoutError:
            s = scrape()
            moved = {tuple(sorted(dict(k).items())): v - before.get(name, {}).get(k, 0)
                     for k, v in s.get(name, {}).items() if v != before.get(name, {}).get(k, 0)}
            pytest.fail(f"{reason}: {name}{want} did not move; what moved: {moved}")
    # the counter is labelled by queue pair too, and nothing else took the blame
    assert all(dict(k)["queue"].isdigit() for k in after[name])
    assert all(dict(k)["direction"] in ("receive", "transmit") for k in after[name])


# --- config reloads --------------------------------------------------------------------------

def test_reload_counters(env):
    sw, scrape = env
    ctl = str(sw.runtime_dir / "vswitchd.ctl")
    s = scrape()
    ok0 = total(s, "vswitch_config_reloads_total", result="success")
    bad0 = total(s, "vswitch_config_reloads_total", result="failure")
    t0 = total(s, "vswitch_config_last_reload_success_timestamp_seconds")
    assert t0 > 0
    original = sw.config_path.read_text()
    try:
        reply = request(ctl, "reload", timeout=30)
        assert reply["ok"], reply
        s = scrape()
        assert total(s, "vswitch_config_reloads_total", result="success") == ok0 + 1
        assert total(s, "vswitch_config_last_reload_successful") == 1
        assert total(s, "vswitch_config_last_reload_success_timestamp_seconds") > t0
        t1 = total(s, "vswitch_config_last_reload_success_timestamp_seconds")

        doc = yaml.safe_load(original)
        doc["ports"]["a"]["queues"] = "many"            # invalid: nothing changes
        sw.config_path.write_text(yaml.safe_dump(doc))
        reply = request(ctl, "reload", timeout=30)
        assert not reply["ok"], reply
        s = scrape()
        assert total(s, "vswitch_config_reloads_total", result="failure") == bad0 + 1
        assert total(s, "vswitch_config_last_reload_successful") == 0
        assert total(s, "vswitch_config_last_reload_success_timestamp_seconds") == t1
    finally:
        sw.config_path.write_text(original)
        assert request(ctl, "reload", timeout=30)["ok"]
    s = scrape()
    assert total(s, "vswitch_config_last_reload_successful") == 1
    assert total(s, "vswitch_config_reloads_total", result="success") == ok0 + 2
