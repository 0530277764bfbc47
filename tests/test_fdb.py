"""The FDB through a running vswitchd: frames from our test front-end
(tests/harness/frontend), the table as `vswitchctl fdb show` prints it, flushes,
per-port caps, aging and static entries from the config (docs/configuration.md, "fdb").

The table's own corner cases (VLAN keys, counts, clock wrap, slot reuse over
more MACs than the table holds) are in tests/unit/test_fdb.py.
"""

from __future__ import annotations

import struct
import subprocess
import time

import pytest

from tests.harness import traffic
from tests.harness.switch import VENV_BIN, Vswitchd

BCAST = "ff:ff:ff:ff:ff:ff"
MAC_A, MAC_B, MAC_C = "02:00:00:00:0a:01", "02:00:00:00:0b:01", "02:00:00:00:0c:01"
STATIC = "02:00:00:00:5c:01"          # fdb.static: pinned to port c
ETHERTYPE = b"\x88\xb5"


def mb(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def many(i: int) -> str:
    """The i-th of many source MACs a guest may send from."""
    return f"02:77:00:{(i >> 16) & 0xff:02x}:{(i >> 8) & 0xff:02x}:{i & 0xff:02x}"


def frame(dst: str, src: str, seq: int = 0) -> bytes:
    return mb(dst) + mb(src) + ETHERTYPE + struct.pack("!I", seq) + bytes(46)


def config(aging: int = 300, cap_a: int | None = None) -> tuple[dict, dict]:
    ports = {name: {"type": "vhost-user", "queues": 1} for name in ("a", "b", "c")}
    ports["b"]["mac"] = MAC_B
    if cap_a is not None:
        ports["a"]["fdb_max_entries"] = cap_a
    extra = {"fdb": {"aging_time": aging, "static": [{"mac": STATIC, "port": "c"}]}}
    return ports, extra


@pytest.fixture
def make_switch(tmp_path):
    started = []

    def make(**kw) -> Vswitchd:
        ports, extra = config(**kw)
        sw = Vswitchd(tmp_path, ports, workers=1, extra=extra).start()
        started.append(sw)
        return sw
    yield make
    for sw in started:
        sw.stop()


def connect(sw: Vswitchd, port: str):
    return traffic.connect(sw, port, rx_buffers=200, wait=True)


def send(dev, frames: list[bytes]) -> None:
    """Post frames on TX queue 0 in batches the ring can hold, reaping as the switch completes them."""
    for i in range(0, len(frames), 100):
        dev.tx(0).post_tx_frames(frames[i:i + 100])
        dev.tx(0).wait_used(len(frames[i:i + 100]), timeout=10)


def receive(dev, n: int, timeout: float = 10.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for g in dev.rx(0).recv_frames(n - len(got), timeout=0.2):
            dev.rx(0).post_rx(1, 2048)
            got.append(g.frame)
    return got


def drain(dev) -> None:
    """Take whatever was flooded to dev, giving the buffers back."""
    while got := dev.rx(0).recv_frames(256, timeout=0.2):
        dev.rx(0).post_rx(sum(len(g.elems) for g in got), 2048)


def table(sw: Vswitchd, **args) -> dict[tuple[int, str], dict]:
    return {(e["vlan"], e["mac"]): e for e in sw.ctl("fdb show", **args)}


def ctl(sw: Vswitchd, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "vswitchctl"), "--runtime-dir", str(sw.runtime_dir), *words],
                          capture_output=True, text=True, timeout=30)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


# --- moves and static entries ------------------------------------------------------------

def test_a_learned_mac_moves_with_its_frames_and_a_static_one_does_not(make_switch):
    sw = make_switch()
    a, b, c = connect(sw, "a"), connect(sw, "b"), connect(sw, "c")
    mover = "02:00:00:00:99:01"
    send(a, [frame(BCAST, mover, 1)])
    wait_for(lambda: table(sw).get((0, mover), {}).get("port") == "a", 5, "learned on a")
    assert table(sw)[(0, mover)]["type"] == "learned"
    # the guest shows up behind b: the entry follows, and so do frames to it
    send(b, [frame(BCAST, mover, 2)])
    wait_for(lambda: table(sw).get((0, mover), {}).get("port") == "b", 5, "moved to b")
    drain(a), drain(b)
    send(c, [frame(mover, MAC_C, 3)])
    assert [f[:6] for f in receive(b, 1)] == [mb(mover)]
    assert receive(a, 1, timeout=0.5) == []
    # a frame from the pinned MAC on a does not take the entry from c
    before = sw.ctl("stats")["fdb"]["static_moves"]
    send(a, [frame(BCAST, STATIC, 4)])
    drain(b), drain(c)
    send(b, [frame(STATIC, MAC_B, 5)])
    assert [f[:6] for f in receive(c, 1)] == [mb(STATIC)]
    entry = table(sw)[(0, STATIC)]
    assert (entry["port"], entry["type"], entry["static"]) == ("c", "static", True)
    assert sw.ctl("stats")["fdb"]["static_moves"] == before + 1


# --- per-port cap ------------------------------------------------------------------------

def test_a_port_at_its_cap_learns_no_more_but_its_frames_still_pass(make_switch):
    sw = make_switch(cap_a=1000)
    a, b = connect(sw, "a"), connect(sw, "b")
    frames = [frame(MAC_B, many(i), i) for i in range(2000)]
    got = []
    for i in range(0, 2000, 100):              # b's RX ring holds 200 buffers: receive as we go
        send(a, frames[i:i + 100])
        got += receive(b, 100)
    assert got == frames                       # every frame delivered, in order
    fdb = sw.port("a")["fdb"]
    assert fdb == {"learned": 1000, "max": 1000, "limit_refused": 1000}
    assert len(sw.ctl("fdb show", port="a")) == 1000
    stats = sw.ctl("stats")["fdb"]
    assert stats["ports"]["a"]["limit_refused"] == 1000 and stats["full"] == 0
    out = ctl(sw, "port", "show", "a")
    assert out.returncode == 0 and "fdb: 1000 learned MACs (cap 1000), 1000 refused at the cap" in out.stdout
    # MACs already learned are refreshed, not refused
    send(a, frames[:10])
    receive(b, 10)
    assert sw.port("a")["fdb"]["limit_refused"] == 1000


# --- flush and the CLI -------------------------------------------------------------------

def test_fdb_show_and_flush_from_the_command_line(make_switch):
    sw = make_switch()
    a, b = connect(sw, "a"), connect(sw, "b")
    send(a, [frame(BCAST, many(i), i) for i in range(3)])
    send(b, [frame(BCAST, MAC_B, 9), frame(BCAST, "02:00:00:00:0b:02", 10)])
    wait_for(lambda: len(table(sw)) == 6, 5, "3 + 2 learned + 1 static (b's mac is pinned too)")

    out = ctl(sw, "fdb", "show")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["VLAN", "MAC", "PORT", "TYPE", "AGE"]
    rows = {line.split()[1]: line.split() for line in lines[1:-1]}
    assert rows[many(0)][0] == "0" and rows[many(0)][2:4] == ["a", "learned"]
    assert rows[many(0)][4].endswith("s")
    assert rows[STATIC][2:] == ["c", "static", "-"]
    assert rows[MAC_B][2:] == ["b", "static", "-"]   # its config `mac` stays pinned
    assert lines[-1] == "6 entries"

    out = ctl(sw, "fdb", "show", "--port", "a")
    assert sorted(line.split()[1] for line in out.stdout.splitlines()[1:-1]) == [many(i) for i in range(3)]
    assert ctl(sw, "fdb", "show", "--vlan", "7").stdout.splitlines()[-1] == "0 entries"

    out = ctl(sw, "fdb", "flush", "--port", "a")
    assert (out.returncode, out.stdout.strip()) == (0, "3 learned entries forgotten")
    assert ctl(sw, "fdb", "flush", "--vlan", "7").stdout.strip() == "0 learned entries forgotten"
    assert ctl(sw, "fdb", "flush", "--vlan", "0").stdout.strip() == "1 learned entry forgotten"
    assert set(table(sw)) == {(0, STATIC), (0, MAC_B)}         # static entries stay
    assert sw.port("a")["fdb"]["learned"] == 0

    bad = ctl(sw, "fdb", "flush", "--port", "nope")
    assert bad.returncode == 1 and "no port named 'nope'" in bad.stderr
    assert ctl(sw, "fdb", "show", "--vlan", "5000").returncode == 2
    assert ctl(sw, "stats", "--port", "a").returncode == 2
    # and the table learns again after a flush
    send(a, [frame(BCAST, many(0), 0)])
    wait_for(lambda: table(sw).get((0, many(0)), {}).get("port") == "a", 5, "learned again")


# --- aging -------------------------------------------------------------------------------

def test_learned_entries_age_out_and_static_ones_stay(make_switch):
    sw = make_switch(aging=2)
    a = connect(sw, "a")
    send(a, [frame(BCAST, MAC_A, 1)])
    seen = time.monotonic()
    wait_for(lambda: (0, MAC_A) in table(sw), 5, "learned")
    assert table(sw)[(0, MAC_A)]["age_s"] <= 2
    time.sleep(max(0.0, seen + 1.5 - time.monotonic()))
    assert (0, MAC_A) in table(sw), "forgotten before aging_time"
    wait_for(lambda: (0, MAC_A) not in table(sw), 6, "aged out")
    assert time.monotonic() - seen >= 2.0
    assert MAC_A not in ctl(sw, "fdb", "show").stdout
    assert (0, STATIC) in table(sw) and (0, MAC_B) in table(sw)
    stats = sw.ctl("stats")["fdb"]
    assert stats["aged"] >= 1 and sw.port("a")["fdb"]["learned"] == 0


@pytest.mark.slow
def test_traffic_keeps_an_entry_alive(make_switch):
    sw = make_switch(aging=2)
    a = connect(sw, "a")
    # longer than an unrefreshed entry can live (aging_time + 3 s)
    end = time.monotonic() + 7
    while time.monotonic() < end:              # a frame every half second for 7 s
        send(a, [frame(BCAST, MAC_A, 1)])
        time.sleep(0.5)
        assert (0, MAC_A) in table(sw)


def test_aged_slots_are_reused(make_switch):
    sw = make_switch(aging=2, cap_a=0)
    a = connect(sw, "a")
    send(a, [frame(BCAST, many(i), i) for i in range(3000)])
    wait_for(lambda: sw.port("a")["fdb"]["learned"] == 3000, 5, "3000 learned")
    wait_for(lambda: sw.port("a")["fdb"]["learned"] == 0, 8, "all aged")
    send(a, [frame(BCAST, many(100_000 + i), i) for i in range(3000)])
    wait_for(lambda: sw.port("a")["fdb"]["learned"] == 3000, 5, "3000 new learned")
    stats = sw.ctl("stats")["fdb"]
    assert stats["full"] == 0 and stats["aged"] >= 3000 and stats["learned"] == 3000


# --- configuration: reload ---------------------------------------------------------------

def test_reload_applies_aging_caps_and_static_entries_in_place(make_switch):
    sw = make_switch()
    a, c = connect(sw, "a"), connect(sw, "c")
    ports, extra = config(cap_a=5)
    extra["fdb"]["static"] = [{"mac": "02:00:00:00:5c:02", "port": "a", "vlan": 12}]
    extra["fdb"]["aging_time"] = 0
    sw.write_config(ports, extra)
    out = sw.reload()
    assert out.returncode == 0, out.stderr
    t = table(sw)
    assert (0, STATIC) not in t                                 # dropped from the config
    assert t[(12, "02:00:00:00:5c:02")]["port"] == "a" and t[(12, "02:00:00:00:5c:02")]["static"]
    assert sw.port("a")["fdb"]["max"] == 5 and sw.port("c")["fdb"]["max"] == 1024
    assert sw.port("a")["connections"] == 1                     # applied in place
    assert sw.ctl("stats")["fdb"]["aging_time"] == 0
    send(a, [frame(BCAST, many(i), i) for i in range(20)])
    wait_for(lambda: sw.port("a")["fdb"]["limit_refused"] == 15, 5, "cap of 5 applied")


# --- one owner: static entries follow a port's new slot, nothing re-pins them periodically ----

def static_writes(sw: Vswitchd) -> int:
    """Static entries pinned or unpinned so far (FdbControl logs each at debug level)."""
    return sw.log_path.read_text(errors="replace").count("fdb: static ")


def test_static_entries_follow_a_re_created_slot_and_are_not_rewritten_every_second(make_switch):
    sw = make_switch()
    c = connect(sw, "c")
    assert table(sw)[(0, STATIC)]["port"] == "c"
    pinned = static_writes(sw)
    assert pinned >= 2                         # STATIC on c, b's `mac`
    time.sleep(3)                              # three aging sweeps
    assert static_writes(sw) == pinned, "static entries written again while nothing changed"
    # c gets a new slot: a new number of queue pairs, at its guest's next connection
    ports, extra = config()
    ports["c"]["queues"] = 2
    sw.write_config(ports, extra)
    out = sw.reload()
    assert out.returncode == 0, out.stderr
    assert sw.port("c")["pending"] == {"queues": 2}
    c.close()
    sw.wait_port("c", lambda p: p["queues_offered"] == 2 and p["state"] == "listening", timeout=10,
                 what="slot re-created")
    # in the same step as the new slot: c's entry on it, no other entry rewritten
    wait_for(lambda: table(sw).get((0, STATIC), {}).get("port") == "c", 1, "STATIC pinned on c's new slot")
    assert table(sw)[(0, STATIC)]["static"] and table(sw)[(0, MAC_B)]["port"] == "b"
    assert static_writes(sw) == pinned + 1
    time.sleep(2.5)
    assert static_writes(sw) == pinned + 1
    # and it is the slot c's frames come from: a frame to STATIC reaches c's new guest only
    c2 = connect(sw, "c")
    b = connect(sw, "b")
    drain(c2)
    send(b, [frame(STATIC, MAC_B, 1)])
    assert [f[:6] for f in receive(c2, 1)] == [mb(STATIC)]
