"""Live capture (vswitchctl capture): what an operator sees in the pcap.

Two parts: the datapath against the test front-end (exact bytes, snaplen,
a full ring counted as lost, ownership by the control connection), then two
real QEMU guests pinging each other while vswitchctl captures, read back
with tshark.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.linux.netns import NetNs, link_exists, wait_for
from tests.harness.switch import VENV_BIN, Vswitchd
from tests.harness.traffic import BCAST, MAC, connect, frame
from vswitch.capture_client import _Conn

VSWITCHCTL = str(VENV_BIN / "vswitchctl")


def ctl_conn(sw: Vswitchd) -> _Conn:
    return _Conn(str(sw.runtime_dir / "vswitchd.ctl"))


def ok(reply: dict) -> dict:
    assert reply["ok"], reply
    return reply["result"]


def read_frames(conn: _Conn, want: int, timeout: float = 10.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += ok(conn.request("capture read"))["frames"]
        time.sleep(0.05)
    return got


# --- datapath, test front-end ------------------------------------------------------------

@pytest.fixture
def switch2(tmp_path):
    ports = {name: {"type": "vhost-user", "queues": 1} for name in ("a", "b")}
    with Vswitchd(tmp_path, ports, workers=2) as sw:
        yield sw


def test_full_ring_counts_lost_and_snaplen_keeps_the_original_length(switch2):
    a = connect(switch2, "a")
    b = connect(switch2, "b")
    conn = ctl_conn(switch2)
    # smallest ring: two halves of 4 KiB; a record is 20 bytes + snaplen 100
    ok(conn.request("capture start", {"port": "a", "direction": "in", "snaplen": 100,
                                      "ring_bytes": 8192}))
    sent = [frame("b", "a", i, 1000) for i in range(60)]
    for f in sent:
        a.tx(0).post_tx(f)
    assert len(b.rx(0).recv_frames(60, timeout=10)) == 60    # forwarding is not slowed down
    fits = 4096 // (20 + 100)
    port = switch2.port("a")
    assert port["capture"] == {"direction": "in", "snaplen": 100, "ring_bytes": 8192,
                               "captured": fits, "lost": 60 - fits}
    result = ok(conn.request("capture read"))
    assert (result["captured"], result["lost"]) == (fits, 60 - fits)
    frames = result["frames"]
    assert [(d, n) for _, d, n, _ in frames] == [("in", 1000)] * fits
    assert [base64.b64decode(data) for *_, data in frames] == [f[:100] for f in sent[:fits]]
    timestamps = [ts for ts, *_ in frames]
    assert timestamps == sorted(timestamps) and abs(timestamps[0] / 1e9 - time.time()) < 60
    # drained: room again
    a.tx(0).post_tx(frame("b", "a", 99, 60))
    assert [base64.b64decode(x[3]) for x in read_frames(conn, 1)] == [frame("b", "a", 99, 60)]
    result = ok(conn.request("capture stop"))
    assert (result["captured"], result["lost"]) == (fits + 1, 60 - fits)
    assert switch2.port("a")["capture"] is None
    conn.close()


def test_directions_and_the_frame_as_the_guest_gets_it(switch2):
    a = connect(switch2, "a")
    b = connect(switch2, "b")
    conn = ctl_conn(switch2)
    ok(conn.request("capture start", {"port": "a", "direction": "out"}))
    to_a = [frame("a", "b", i, 300 + i) for i in range(5)]
    for f in to_a:
        b.tx(0).post_tx(f)
    a.tx(0).post_tx(frame("b", "a", 50, 64))               # not captured: direction out
    assert [g.frame for g in a.rx(0).recv_frames(5, timeout=10)] == to_a
    b.rx(0).recv_frames(1, timeout=10)
    frames = read_frames(conn, 5)
    assert [(d, n, base64.b64decode(x)) for _, d, n, x in frames] == [("out", len(f), f) for f in to_a]
    time.sleep(0.2)
    assert ok(conn.request("capture read"))["frames"] == []
    ok(conn.request("capture stop"))
    ok(conn.request("capture start", {"port": "a", "direction": "both"}))
    a.tx(0).post_tx(frame("b", "a", 60, 64))
    b.tx(0).post_tx(frame("a", "b", 61, 64))
    frames = read_frames(conn, 2)
    assert sorted((d, base64.b64decode(x)[6:12]) for _, d, _, x in frames) == \
        [("in", MAC["a"]), ("out", MAC["b"])]
    conn.close()


def test_a_capture_belongs_to_its_connection(switch2):
    connect(switch2, "a")
    first, second = ctl_conn(switch2), ctl_conn(switch2)
    ok(first.request("capture start", {"port": "a"}))
    refused = second.request("capture start", {"port": "a"})
    assert not refused["ok"] and "already being captured" in refused["error"]
    assert not second.request("capture read")["ok"]          # nothing of its own to read
    assert not first.request("capture start", {"port": "b"})["ok"]   # one per connection
    bad = second.request("capture start", {"port": "b", "direction": "sideways"})
    assert not bad["ok"] and "direction" in bad["error"]
    assert not second.request("capture start", {"port": "nope"})["ok"]
    first.close()                                            # vswitchctl went away
    deadline = time.monotonic() + 10
    while switch2.port("a")["capture"] is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert switch2.port("a")["capture"] is None
    ok(second.request("capture start", {"port": "a"}))
    second.close()


def test_removing_a_captured_port_ends_the_capture(switch2):
    """A reload that removes the port frees its capture with the slot; the
    capturing vswitchctl is told, and the switch runs on."""
    a = connect(switch2, "a")
    b = connect(switch2, "b")
    conn = ctl_conn(switch2)
    ok(conn.request("capture start", {"port": "b"}))
    a.tx(0).post_tx(frame(BCAST, "a", 1, 64))             # flooded to b: captured out
    assert len(read_frames(conn, 1)) == 1
    assert len(b.rx(0).recv_frames(1, timeout=5)) == 1
    switch2.write_config({"a": switch2.ports["a"]})
    assert switch2.reload().returncode == 0
    reply = conn.request("capture read")
    assert not reply["ok"] and "removed" in reply["error"]
    a.tx(0).post_tx(frame(BCAST, "a", 2, 64))
    time.sleep(0.2)
    assert switch2.alive() and switch2.port("a")["capture"] is None
    ok(conn.request("capture start", {"port": "a"}))       # the connection may start another
    conn.close()


def test_daemon_stopping_during_a_capture(tmp_path):
    """vswitchctl says so and leaves a valid file; the daemon stops cleanly."""
    sw = Vswitchd(tmp_path, {"a": {"type": "vhost-user", "queues": 1}}).start()
    try:
        pcap = tmp_path / "s.pcap"
        proc = subprocess.Popen([VSWITCHCTL, "--runtime-dir", str(sw.runtime_dir), "capture", "a",
                                 "-w", str(pcap)], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while sw.port("a")["capture"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        assert sw.stop() == 0
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "lost vswitchd" in err
    assert subprocess.run(["tshark", "-r", str(pcap)], capture_output=True).returncode == 0
    log = sw.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_duration_ends_the_capture_with_a_valid_file(switch2, tmp_path):
    a = connect(switch2, "a")
    b = connect(switch2, "b")     # kept: a dropped front-end disconnects
    pcap = tmp_path / "d.pcap"
    proc = subprocess.Popen([VSWITCHCTL, "--runtime-dir", str(switch2.runtime_dir), "capture", "a",
                             "--duration", "1.5", "--snaplen", "64", "-w", str(pcap)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while switch2.port("a")["capture"] is None and time.monotonic() < deadline:
        time.sleep(0.02)
    sent = [frame("b", "a", i, 200) for i in range(3)]
    for f in sent:
        a.tx(0).post_tx(f)
    start = time.monotonic()
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert time.monotonic() - start < 3
    assert "3 frames captured, 0 lost" in err
    data = pcap.read_bytes()
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, snaplen, linktype) == (0xA1B23C4D, 2, 4, 64, 1)
    off, records = 24, []
    while off < len(data):
        _, nsec, caplen, orig = struct.unpack_from("<IIII", data, off)
        assert nsec < 1_000_000_000
        records.append((orig, data[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    assert records == [(200, f[:64]) for f in sent]
    assert switch2.port("a")["capture"] is None


@pytest.mark.root
def test_tap_port_capture_sees_what_the_kernel_gets_and_sends(tmp_path):
    """Both TAP hooks: an ARP request given to the kernel (out) and the
    kernel's reply read from the TAP (in)."""
    ifname = f"vsc{os.getpid() % 100000}"
    kernel_mac = bytes.fromhex("02000000097e")
    with NetNs(f"vsc{os.getpid()}") as ns, \
            Vswitchd(tmp_path, {"up": {"type": "tap", "ifname": ifname, "queues": 1},
                                "a": {"type": "vhost-user", "queues": 1}}) as sw:
        assert wait_for(lambda: link_exists(ifname), 30)
        ns.move_in(ifname)
        ns.ip("link", "set", ifname, "address", kernel_mac.hex(":"))
        ns.ip("addr", "add", "10.9.0.254/24", "dev", ifname)
        ns.ip("link", "set", ifname, "up")
        sw.wait_port("up", lambda p: p["state"] == "up", timeout=30, what="TAP attached")
        a = connect(sw, "a")
        conn = ctl_conn(sw)
        ok(conn.request("capture start", {"port": "up"}))
        request = (b"\xff" * 6 + MAC["a"] + b"\x08\x06" + bytes([0, 1, 8, 0, 6, 4, 0, 1]) + MAC["a"]
                   + bytes([10, 9, 0, 1]) + b"\x00" * 6 + bytes([10, 9, 0, 254])).ljust(60, b"\x00")
        a.tx(0).post_tx(request)
        deadline = time.monotonic() + 10
        frames: list = []
        while time.monotonic() < deadline and not any(
                d == "in" and base64.b64decode(x)[12:14] == b"\x08\x06" for _, d, _, x in frames):
            frames += read_frames(conn, 1, timeout=0.5)
        given = [base64.b64decode(x) for _, d, _, x in frames if d == "out"]
        assert request in given
        replies = [base64.b64decode(x) for _, d, _, x in frames
                   if d == "in" and base64.b64decode(x)[12:14] == b"\x08\x06"]
        assert replies and replies[0][:12] == MAC["a"] + kernel_mac and replies[0][20:22] == b"\x00\x02"
        ok(conn.request("capture stop"))
        conn.close()


# --- two QEMU guests, vswitchctl and tshark ---------------------------------------------

IP_A, IP_B = "10.0.7.1", "10.0.7.2"
MAC_A, MAC_B = "52:54:00:00:07:0a", "52:54:00:00:07:0b"
BOOT_TIMEOUT = 240


@pytest.fixture(scope="module")
def guests(tmp_path_factory, image):
    work = tmp_path_factory.mktemp("capture")
    sw = Vswitchd(work / "switch", {name: {"type": "vhost-user", "mode": "server", "queues": 1}
                                    for name in ("a", "b")})
    sw.start()
    started = []
    try:
        a = QemuGuest("a", image, sw.socket("a"), server=False, mac=MAC_A, ip=f"{IP_A}/24",
                      queues=1, workdir=work / "a")
        b = QemuGuest("b", image, sw.socket("b"), server=False, mac=MAC_B, ip=f"{IP_B}/24",
                      queues=1, workdir=work / "b")
        for g in (a, b):
            g.start()
            started.append(g)
        for g in (a, b):
            g.wait_booted(BOOT_TIMEOUT)
        for name in ("a", "b"):
            sw.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                         timeout=60, what="connected")
        yield sw, a, b
    finally:
        for g in started:
            g.stop()
        sw.stop()


class Pinger:
    """A ping from guest a to b in a thread, for the duration of a capture."""

    def __init__(self, guest: QemuGuest, count: int) -> None:
        self.result = None
        self.thread = threading.Thread(
            target=lambda: setattr(self, "result", guest.ping(IP_B, count=count, interval=0.1)))
        self.thread.start()

    def join(self):
        self.thread.join(timeout=300)
        return self.result


def vswitchctl(sw: Vswitchd, *args: str, **kw) -> list[str]:
    return [VSWITCHCTL, "--runtime-dir", str(sw.runtime_dir), *args]


def tshark_fields(pcap: Path | str, *fields: str, filter: str | None = None) -> list[list[str]]:
    cmd = ["tshark", "-r", str(pcap), "-T", "fields", *sum((["-e", f] for f in fields), [])]
    if filter:
        cmd += ["-Y", filter]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def wait_capture(sw: Vswitchd, running: bool, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        port = sw.port("a")
        if (port["capture"] is not None) == running or time.monotonic() > deadline:
            return port
        time.sleep(0.05)


@pytest.mark.qemu
def test_capture_of_a_ping_shows_requests_and_replies(guests, tmp_path):
    sw, a, b = guests
    a.ping(IP_B, count=2, interval=0.2)                   # ARP settled: the capture sees ICMP
    pinger = Pinger(a, 60)
    time.sleep(1)
    pcap = tmp_path / "a.pcap"
    run = subprocess.run(vswitchctl(sw, "capture", "a", "--count", "20", "-w", str(pcap)),
                         capture_output=True, text=True, timeout=120)
    r = pinger.join()
    assert run.returncode == 0, run.stderr
    assert "20 frames captured, 0 lost" in run.stderr
    assert (r.sent, r.loss_pct) == (60, 0), r            # forwarding went on during the capture
    assert pcap.read_bytes()[:4] == struct.pack("<I", 0xA1B23C4D)
    rows = tshark_fields(pcap, "eth.src", "eth.dst", "ip.src", "ip.dst", "icmp.type")
    assert len(rows) == 20
    icmp = {tuple(row) for row in rows if row[4]}
    assert (MAC_A, MAC_B, IP_A, IP_B, "8") in icmp          # echo request, in from a
    assert (MAC_B, MAC_A, IP_B, IP_A, "0") in icmp          # echo reply, out to a
    assert wait_capture(sw, running=False)["capture"] is None


@pytest.mark.qemu
def test_direction_in_to_stdout_through_tshark(guests, tmp_path):
    sw, a, b = guests
    pinger = Pinger(a, 30)
    time.sleep(0.5)
    cmd = " ".join(vswitchctl(sw, "capture", "a", "--direction", "in", "--count", "10", "-w", "-"))
    run = subprocess.run(f"{cmd} | tshark -r - -T fields -e eth.src -e ip.src -e icmp.type",
                         shell=True, capture_output=True, text=True, timeout=120)
    r = pinger.join()
    assert "10 frames captured" in run.stderr, run.stderr
    rows = [line.split("\t") for line in run.stdout.splitlines()]
    assert len(rows) == 10
    assert all(row[0] == MAC_A for row in rows), rows      # only what a sent
    assert ["52:54:00:00:07:0a", IP_A, "8"] in rows
    assert r.loss_pct == 0, r


@pytest.mark.qemu
def test_killed_vswitchctl_ends_its_capture(guests, tmp_path):
    sw, a, b = guests
    proc = subprocess.Popen(vswitchctl(sw, "capture", "a", "-w", str(tmp_path / "k.pcap")),
                            stderr=subprocess.PIPE)
    try:
        assert wait_capture(sw, running=True)["capture"] is not None
        a.ping(IP_B, count=3, interval=0.2)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert wait_capture(sw, running=False)["capture"] is None
    assert sw.alive()
    r = a.ping(IP_B, count=5, interval=0.2)
    assert r.loss_pct == 0, r


@pytest.mark.qemu
def test_second_capture_is_refused_and_sigint_leaves_a_valid_file(guests, tmp_path):
    sw, a, b = guests
    first_pcap = tmp_path / "first.pcap"
    first = subprocess.Popen(vswitchctl(sw, "capture", "a", "-w", str(first_pcap)),
                             stderr=subprocess.PIPE, text=True)
    try:
        assert wait_capture(sw, running=True)["capture"] is not None
        second = subprocess.run(vswitchctl(sw, "capture", "a", "--count", "1", "-w",
                                           str(tmp_path / "second.pcap")),
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "already being captured" in second.stderr
        r = a.ping(IP_B, count=5, interval=0.2)
        assert r.loss_pct == 0, r
        time.sleep(0.3)
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=20)
    assert first.returncode == 0, err
    n = int(err.split(" frames captured")[0].split()[-1])
    assert n >= 10                                         # 5 requests + 5 replies at least
    rows = tshark_fields(first_pcap, "icmp.type", filter="icmp")
    assert sorted({row[0] for row in rows}) == ["0", "8"]
    assert len(tshark_fields(first_pcap, "frame.number")) == n
    assert wait_capture(sw, running=False)["capture"] is None


@pytest.mark.qemu
def test_capture_under_tcp_load_with_gso_frames(guests, tmp_path):
    """iperf3 a -> b while b's port is captured with a short snaplen: the
    stream goes on, TSO super-frames appear with their full length, and
    whatever did not fit is counted, not hidden."""
    sw, a, b = guests
    b.iperf3_server()
    pcap = tmp_path / "load.pcap"
    result: dict = {}
    client = threading.Thread(target=lambda: result.update(r=a.iperf3_client(IP_B, seconds=4)))
    client.start()
    time.sleep(1)
    run = subprocess.run(vswitchctl(sw, "capture", "b", "--duration", "2", "--snaplen", "96",
                                    "-w", str(pcap)), capture_output=True, text=True, timeout=60)
    client.join(timeout=120)
    assert run.returncode == 0, run.stderr
    assert result["r"].received_bps > 10e6, result["r"]
    captured, lost = (int(x) for x in re.search(r"(\d+) frames captured, (\d+) lost", run.stderr).groups())
    rows = tshark_fields(pcap, "frame.len", "frame.cap_len", "tcp.dstport", filter="tcp")
    assert len(tshark_fields(pcap, "frame.number")) == captured
    assert len(rows) > 100
    assert all(int(cap) <= 96 for _, cap, _ in rows)
    assert any(int(length) > 1514 for length, _, _ in rows)     # GSO frames handed on whole
    assert any(port == "5201" for *_, port in rows)
    print(f"captured {captured}, lost {lost} in 2 s of iperf3 at {result['r'].gbps:.2f} Gbit/s")
    assert wait_capture(sw, running=False)["capture"] is None
