"""QEMU 10 guests on the switch, beside the system's QEMU 7.2.

QEMU 10 comes from Debian's bookworm-backports, unpacked into the guest cache
(the ``qemu10`` fixture, image.py's fetch_qemu10). Two QEMU 10 guests with two
queue pairs, one in each socket role: A on a server port (the switch listens,
QEMU connects with ``reconnect-ms``: 9.2 deprecated ``reconnect``), B on a
client port (QEMU listens with server=on, the switch connects). A QEMU 7.2
guest booted beside them on a server port is the reference for what each
version negotiates and which vhost-user requests it sends, in which order
(the switch logs every request at debug level). The QEMU 10 guests run with
MSI-X under TCG (no ``vectors=0``), which QEMU 7.2 cannot do with vhost-user.

The guests are booted once for the module and the tests run in file order:
negotiation, ping and iperf3 over both queue pairs, a restart of the switch
with the guests running, and last a live migration of A to a second QEMU 10
on another port.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.switch import Vswitchd
from tests.test_migration import CHUNKS, PACE_US, free_port
from tests.test_restarts import MAX_DUPLICATES, OUTAGE_SLACK_S, assert_every_ring_moves, uptime, wait_connected

pytestmark = pytest.mark.qemu

IP_A, IP_B, IP_REF = "10.0.10.1", "10.0.10.2", "10.0.10.3"
MAC_A, MAC_B, MAC_REF = "52:54:00:00:10:0a", "52:54:00:00:10:0b", "52:54:00:00:10:0c"
BOOT_TIMEOUT = 240
QUEUES = 2
# A verifies TCP checksums itself, so that the migration test sees corruption
# as checksum errors (as in test_migration.py)
PROPS_A = {"guest_csum": "off"}

_REQUEST_RE = re.compile(r"port (\S+): vhost-user (\S+) flags=(\S+) payload=(\S*) fds=(\d+)")


class Topology:
    def __init__(self, sw: Vswitchd, a: QemuGuest, b: QemuGuest, ports: dict, work: Path) -> None:
        self.sw, self.a, self.b, self.ports, self.work = sw, a, b, ports, work
        self.guests = [a, b]
        self.ref_sequence: list[str] = []     # QEMU 7.2: connect to quit
        self.a_sequence: list[str] = []       # QEMU 10: connect to running


def _up(port: dict) -> bool:
    return port["state"] == "connected" and port["queues_enabled"] == QUEUES


def log_offset(sw: Vswitchd) -> int:
    return sw.log_path.stat().st_size


def requests(sw: Vswitchd, port: str, since: int = 0) -> list[str]:
    """The vhost-user requests the port received after byte `since` of the
    switch's log: "NAME", "NAME(ring)" for per-ring requests,
    "SET_VRING_ENABLE(ring)=0|1", and "+R" when the front-end asked for a
    reply (NEED_REPLY)."""
    with open(sw.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    out = []
    for m in _REQUEST_RE.finditer(text):
        if m.group(1) != port:
            continue
        name, flags, payload = m.group(2), int(m.group(3), 16), m.group(4)
        if name.startswith(("SET_VRING_", "GET_VRING_")) and len(payload) >= 16:
            # the ring index: the low byte of the first u32 (vring state or
            # address) or of the u64 (kick/call/err)
            name += f"({int(payload[:2], 16)})"
            if m.group(2) == "SET_VRING_ENABLE":
                name += f"={int.from_bytes(bytes.fromhex(payload[8:16]), 'little')}"
        if flags & 0x8:
            name += "+R"
        out.append(name)
    return out


def compact(seq: list[str]) -> str:
    """Runs of one request folded: "SET_FEATURES x2"."""
    parts: list[str] = []
    for name in seq:
        if parts and parts[-1].split(" x")[0] == name:
            head, _, n = parts[-1].partition(" x")
            parts[-1] = f"{head} x{int(n or 1) + 1}"
        else:
            parts.append(name)
    return " ".join(parts)


@pytest.fixture(scope="module")
def topology(tmp_path_factory, image, qemu10):
    work = tmp_path_factory.mktemp("qemu10")
    sock_b = str(work / "qemu-b.sock")       # QEMU 10 B listens here
    sw = Vswitchd(work / "switch", {
        "a": {"type": "vhost-user", "mode": "server", "queues": QUEUES},
        "b": {"type": "vhost-user", "mode": "client", "socket": sock_b, "queues": QUEUES},
        "ref": {"type": "vhost-user", "mode": "server", "queues": QUEUES},
        "dst": {"type": "vhost-user", "mode": "server", "queues": QUEUES},   # A migrates here
    }, extra={"debug": True})     # the switch logs every vhost-user request
    sw.start()
    a = QemuGuest("a", image, sw.socket("a"), server=False, mac=MAC_A, ip=f"{IP_A}/24",
                  queues=QUEUES, qemu=qemu10, msix=True, device_props=PROPS_A, workdir=work / "a")
    b = QemuGuest("b", image, sock_b, server=True, mac=MAC_B, ip=f"{IP_B}/24", queues=QUEUES,
                  qemu=qemu10, msix=True, workdir=work / "b")
    # the system's QEMU 7.2 with the same NIC: the reference negotiation
    ref = QemuGuest("ref", image, sw.socket("ref"), mac=MAC_REF, ip=f"{IP_REF}/24",
                    queues=QUEUES, workdir=work / "ref")
    t = Topology(sw, a, b, {}, work)
    t.guests.append(ref)
    try:
        for g in (a, b, ref):
            g.start()
        for g in (a, b, ref):
            g.wait_booted(BOOT_TIMEOUT)
        t.ports = {name: sw.wait_port(name, _up, timeout=60, what="connected with 2 queue pairs")
                   for name in ("a", "b", "ref")}
        t.a_sequence = requests(sw, "a")
        ref.stop()   # only its negotiation is needed: give the CPU back
        sw.wait_port("ref", lambda p: p["state"] != "connected", timeout=30, what="7.2 gone")
        t.ref_sequence = requests(sw, "ref")
        yield t
    finally:
        for g in t.guests:
            g.stop()
        sw.stop()


def test_qemu10_runs_with_its_own_options(topology, qemu10):
    assert qemu10.version[0] == 10, qemu10.version
    argv = " ".join(topology.a.command_line())
    assert "reconnect-ms=1000" in argv and "reconnect=1" not in argv
    assert "vectors=0" not in argv
    assert "server=on" in " ".join(topology.b.command_line())


def test_negotiation_against_qemu72(topology):
    """QEMU 10.0.2 negotiates exactly what QEMU 7.2 does with vswitch
    (measured here under TCG): the same virtio features (everything vswitch
    offers except F_ANY_LAYOUT, NET_MTU without host_mtu, and VHOST_F_LOG_ALL,
    which is set only while migrating, F_RING_PACKED, which needs packed=on,
    F_ACCESS_PLATFORM, which needs iommu_platform=on, and F_IN_ORDER, which
    QEMU's virtio-net leaves off by default) and the same vhost-user protocol
    features (all eight vswitch offers: MQ LOG_SHMFD RARP REPLY_ACK NET_MTU
    BACKEND_REQ RESET_DEVICE CONFIGURE_MEM_SLOTS). The newer protocol features QEMU 10's
    front-end knows (e.g. STATUS, SHARED_OBJECT, DEVICE_STATE) are not offered, so
    nothing more is agreed. The one difference: QEMU 10 runs
    vhost-user with MSI-X under TCG, where 7.2 needs vectors=0."""
    a, ports = topology.a, topology.ports
    new, old = ports["a"], ports["ref"]
    for name, port in (("QEMU 10", new), ("QEMU 7.2", old)):
        print(f"{name} features: {' '.join(port['features'])}")
        print(f"{name} protocol features: {' '.join(port['protocol_features'])}")
    print("offered, not taken by QEMU 10:",
          sorted(set(new["features_offered"]) - set(new["features"])))
    # A's guest_csum=off takes the guest offloads away, nothing else
    assert set(new["features"]) <= set(ports["b"]["features"])
    assert all(f.startswith("NET_GUEST_") for f in set(ports["b"]["features"]) - set(new["features"]))
    assert set(ports["b"]["features"]) == set(old["features"])
    assert set(new["protocol_features"]) == set(old["protocol_features"]) \
        == set(ports["b"]["protocol_features"])
    assert set(ports["b"]["features_offered"]) - set(ports["b"]["features"]) <= {
        "F_ANY_LAYOUT", "NET_MTU", "VHOST_F_LOG_ALL", "F_RING_PACKED",   # packed=off by default
        "F_ACCESS_PLATFORM",   # iommu_platform=off by default
        "F_IN_ORDER"}          # off in QEMU's virtio-net by default
    for feature in ("NET_MQ", "F_VERSION_1", "NET_MRG_RXBUF", "RING_F_EVENT_IDX",
                    "RING_F_INDIRECT_DESC", "VHOST_USER_F_PROTOCOL_FEATURES"):
        assert feature in new["features"], feature
    assert {"MQ", "REPLY_ACK"} <= set(new["protocol_features"])
    assert "STATUS" not in new["protocol_features"]
    # MSI-X (also under TCG): the guest's virtio interrupts are message-signalled
    assert "PCI-MSI" in a.check_output("grep virtio /proc/interrupts")
    ref = topology.guests[2]
    if ref.accel == "tcg":
        assert "vectors=0" in " ".join(ref.command_line())


def test_request_sequence_against_qemu72(topology):
    """The vhost-user requests each version sends, from the switch's debug
    log (docs/testing.md lists them). Both open with the same requests, up to
    the call and error fds of every ring. Then QEMU 10 sends RESET_DEVICE on
    every reset of the virtio device (the guest driver probing it) and sets
    NEED_REPLY on SET_VRING_ENABLE; 7.2 does neither (RESET_DEVICE is
    negotiated with both). 7.2 sends the memory table (ADD_MEM_REG) again
    for the second queue pair, QEMU 10 once per device. Neither sends
    SET_STATUS or GET_STATUS (STATUS is not offered). Stopping, QEMU asks
    GET_VRING_BASE for every ring, with no SET_VRING_ENABLE 0 before
    (QEMU 10's quit: the migration test)."""
    new, old = topology.a_sequence, topology.ref_sequence
    print(f"QEMU 10 (A) from connect to running:\n  {' '.join(new)}")
    print(f"QEMU 7.2 (ref) from connect to quit:\n  {' '.join(old)}")
    rings = range(2 * QUEUES)
    opening = new.index("SET_VRING_ERR(3)") + 1
    assert new[:opening] == old[:opening] and new[0] == "GET_FEATURES", (new, old)
    for seq in (new, old):
        assert not any(r.startswith(("SET_STATUS", "GET_STATUS")) for r in seq), seq
        for ring in rings:
            for request in ("SET_VRING_NUM", "SET_VRING_BASE", "SET_VRING_ADDR", "SET_VRING_KICK",
                            "SET_VRING_CALL"):
                assert f"{request}({ring})" in seq, (request, ring, seq)
            assert f"SET_VRING_ENABLE({ring})=1" in [r.removesuffix("+R") for r in seq], (ring, seq)
    assert "RESET_DEVICE" in new and "RESET_DEVICE" not in old
    enables = [r for r in new if r.startswith("SET_VRING_ENABLE")]
    assert enables and all(r.endswith("+R") for r in enables), enables
    assert not any(r.endswith("+R") for r in old if r.startswith("SET_VRING_ENABLE")), old
    assert [r.removesuffix("+R") for r in new].count("ADD_MEM_REG") == 1, new
    assert [r.removesuffix("+R") for r in old].count("ADD_MEM_REG") == QUEUES, old
    assert "SET_MEM_TABLE" not in new + old          # CONFIGURE_MEM_SLOTS: regions one by one
    # 7.2's quit: the rings' bases, nothing else
    assert old[-2 * QUEUES:] == [f"GET_VRING_BASE({ring})" for ring in rings], old


def test_ping_both_ways_over_both_queue_pairs(topology):
    sw, a, b = topology.sw, topology.a, topology.b
    r = a.ping(IP_B, count=10, interval=0.2)
    assert (r.sent, r.loss_pct) == (10, 0), r
    r = b.ping(IP_A, count=10, interval=0.2)
    assert (r.sent, r.loss_pct) == (10, 0), r
    # XPS maps vCPU c to TX queue c: a ping pinned to each vCPU uses each pair
    before = a.ethtool_stats()
    for cpu in (0, 1):
        rc, out = a.run(f"taskset -c {cpu} ping -c 5 -i 0.2 -W 2 {IP_B}", timeout=120)
        assert rc == 0 and " 0% packet loss" in out, out
    after = a.ethtool_stats()
    for q in (0, 1):
        assert after[f"tx_queue_{q}_packets"] - before.get(f"tx_queue_{q}_packets", 0) >= 5, q
    fdb = {e["mac"]: e["port"] for e in sw.ctl("fdb show")}
    assert fdb[MAC_A] == "a" and fdb[MAC_B] == "b"
    for g in (a, b):
        g.assert_no_kernel_errors()


def _queue_bytes(sw: Vswitchd, name: str, direction: str) -> list[int]:
    return [q[direction]["bytes"] for q in sw.port(name)["queues"]]


def _two_streams(src: QemuGuest, dst_ip: str) -> list[float]:
    """Two TCP streams at once from src to dst_ip, one pinned to each vCPU (so
    one on each TX queue, XPS); their received rates in bit/s."""
    src.check_output(
        f"taskset -c 0 iperf3 -c {dst_ip} -p 5201 -t 4 -J -i 0 > /tmp/q0.json 2>&1 & "
        f"taskset -c 1 iperf3 -c {dst_ip} -p 5202 -t 4 -J -i 0 > /tmp/q1.json 2>&1 & wait", timeout=180)
    rates = []
    for q in (0, 1):
        out = src.check_output(f"cat /tmp/q{q}.json")
        m = re.search(r'"sum_received":\s*\{[^}]*?"bits_per_second":\s*([\d.e+]+)', out)
        assert m, out[-2000:]
        rates.append(float(m.group(1)))
    return rates


def test_iperf3_on_both_queue_pairs(topology):
    """Two TCP streams at once from A to B, one pinned to each vCPU: each
    leaves A on its own TX queue and the switch puts it into B's RX queue of
    the same number; then the same from B to A. The switch's per-queue
    counters of both ports (both socket roles) grow on both pairs, both ways."""
    sw, a, b = topology.sw, topology.a, topology.b
    for g in (a, b):
        for port in (5201, 5202):
            g.iperf3_server(port)
    for src, dst, dst_ip in ((a, b, IP_B), (b, a, IP_A)):
        tx, rx = _queue_bytes(sw, src.name, "tx"), _queue_bytes(sw, dst.name, "rx")
        rates = _two_streams(src, dst_ip)
        tx2, rx2 = _queue_bytes(sw, src.name, "tx"), _queue_bytes(sw, dst.name, "rx")
        print(f"iperf3 {src.name}->{dst.name}: {[f'{r / 1e6:.0f}' for r in rates]} Mbit/s on vCPU/queue 0, 1; "
              f"switch: {src.name} TX bytes per queue +{[y - x for x, y in zip(tx, tx2)]}, "
              f"{dst.name} RX bytes per queue +{[y - x for x, y in zip(rx, rx2)]}")
        for q in (0, 1):
            # each stream ran 4 s at over 5 Mbit/s: over 2.5 MB crossed its queue pair
            assert rates[q] > 5e6, (src.name, q, rates)
            assert tx2[q] - tx[q] >= 2_000_000, (src.name, q, tx, tx2)
            assert rx2[q] - rx[q] >= 2_000_000, (dst.name, q, rx, rx2)
    for name in ("a", "b"):
        drops = sw.drops(name)
        # a busy receiver may run out of RX buffers (TCP recovers); nothing else
        assert set(drops) <= {"no_rx_buffer"}, (name, drops)
    for g in (a, b):
        g.assert_no_kernel_errors()


def test_switch_restart_with_guests_running(topology):
    """vswitchd is killed (SIGKILL) while A pings B, and started again on the
    same config: QEMU 10 A reconnects by itself (reconnect-ms), the switch
    reconnects to QEMU 10 B; both replay their whole device state on the new
    connection, the guests are not rebooted, and echoes are lost only during
    the outage (bounds of test_restarts.py)."""
    sw, a, b = topology.sw, topology.a, topology.b
    up_a, up_b = uptime(a), uptime(b)
    t0 = time.monotonic()
    pings, interval = 150, 0.1
    a.check_output(f"setsid sh -c 'ping -c {pings} -i {interval} -W 5 {IP_B} > /tmp/restart-ping.log "
                   "2>&1' </dev/null >/dev/null 2>&1 &")
    time.sleep(3)
    sw.stop(signal.SIGKILL)
    t_kill = time.monotonic()
    time.sleep(1)                                  # a real outage, not a race
    since = log_offset(sw)
    sw.start()
    wait_connected(sw, ("a", "b"))
    outage = time.monotonic() - t_kill
    a.check_output("i=0; while ! grep -q 'packet loss' /tmp/restart-ping.log; do i=$((i+1)); "
                   "[ $i -gt 600 ] && exit 1; usleep 100000; done", timeout=120)
    out = a.check_output("cat /tmp/restart-ping.log")
    got = {int(m.group(1)) for m in re.finditer(r"seq=(\d+) ttl=\d+ time=[\d.]+ ms(?! \(DUP!\))", out)}
    missing = sorted(set(range(pings)) - got)
    duplicates = out.count("(DUP!)")
    bound = int((outage + OUTAGE_SLACK_S) / interval) + 1
    print(f"outage {outage:.1f} s: {len(missing)} of {pings} echoes lost (bound {bound}), "
          f"{duplicates} duplicate(s)")
    for name in ("a", "b"):
        print(f"QEMU 10 {name} after the restart: {compact(requests(sw, name, since))}")
    assert len(missing) <= bound, (outage, missing)
    if missing:
        assert missing[-1] - missing[0] < bound, (outage, missing)
    assert duplicates <= MAX_DUPLICATES, out
    elapsed = time.monotonic() - t0
    assert uptime(a) > up_a + elapsed / 2 and uptime(b) > up_b + elapsed / 2   # not rebooted
    # traffic resumed on every ring of both ports
    r = a.ping(IP_B, count=10, interval=0.1)
    assert (r.sent, r.loss_pct) == (10, 0), r
    assert_every_ring_moves(sw, a, b, {"a": IP_B, "b": IP_A})
    fresh = a.iperf3_client(IP_B, seconds=3, port=5201)
    assert fresh.received_bps > 1e6, fresh
    for name in ("a", "b"):
        assert set(sw.drops(name)) <= {"no_rx_buffer"}, (name, sw.drops(name))
        # the new daemon's first connection on each port, re-negotiated in full
        port = sw.port(name)
        assert (port["connections"], port["disconnects"]) == (1, 0), port
        assert "GET_FEATURES" in requests(sw, name, since)


def test_live_migration_on_qemu10(topology, image, qemu10):
    """A migrates (QEMU 10 to QEMU 10, over loopback TCP) from port a to port
    dst while B streams a file into it and pings it, as test_migration.py does
    on QEMU 7.2: the stream arrives byte for byte with no checksum error, the
    FDB follows the guest (it announces itself: GUEST_ANNOUNCE), and the pings
    go on after a short gap."""
    sw, a, b, work = topology.sw, topology.a, topology.b, topology.work
    incoming = free_port()
    d = QemuGuest("a", image, sw.socket("dst"), server=False, mac=MAC_A, ip=f"{IP_A}/24",
                  queues=QUEUES, qemu=qemu10, msix=True, device_props=PROPS_A, workdir=work / "d",
                  extra_args=["-incoming", f"tcp:127.0.0.1:{incoming}"])
    topology.guests.append(d)
    d.start()
    sw.wait_port("dst", lambda x: x["state"] == "connected", timeout=60, what="destination connected")
    assert "LOG_SHMFD" in sw.port("a")["protocol_features"]
    assert "NET_GUEST_ANNOUNCE" in sw.port("a")["features"]
    b.check_output(f"dd if=/dev/urandom of=/tmp/data bs=64k count={CHUNKS} 2>/dev/null")
    want = b.check_output("md5sum /tmp/data").split()[0]
    a.check_output(f"setsid sh -c 'sleep 600 | nc -l -p 5000 | head -c {CHUNKS * 65536} | md5sum "
                   "> /tmp/recv.md5' </dev/null >/dev/null 2>&1 &")
    b.check_output(f"setsid sh -c 'sleep 1; (i=0; while [ $i -lt {CHUNKS} ]; do dd if=/tmp/data "
                   f"bs=64k skip=$i count=1 2>/dev/null; i=$((i+1)); usleep {PACE_US}; done; sleep 30) "
                   f"| nc {IP_A} 5000' </dev/null >/dev/null 2>&1 &")
    b.check_output(f"setsid sh -c 'ping -i 0.1 -c 300 -W 5 {IP_A} > /tmp/ping.log 2>&1' "
                   "</dev/null >/dev/null 2>&1 &")
    time.sleep(3)                                 # the stream and the pings are flowing
    before = a.check_output("grep Tcp: /proc/net/snmp | tail -1").split()
    since = log_offset(sw)
    a.qmp("migrate", uri=f"tcp:127.0.0.1:{incoming}")
    deadline = time.monotonic() + 180
    while True:
        status = a.qmp("query-migrate").get("status")
        if status == "completed":
            break
        assert status not in ("failed", "cancelled"), a.qmp("query-migrate")
        assert time.monotonic() < deadline, f"migration not done: {a.qmp('query-migrate')}"
        time.sleep(0.2)
    d.booted = True                               # the guest now runs in d, on port dst
    d.check_output("true", timeout=60)
    sw.wait_port("dst", _up, timeout=60, what="destination running with 2 queue pairs")
    print(f"QEMU 10 source while migrating: {compact(requests(sw, 'a', since))}")
    print(f"QEMU 10 destination: {compact(requests(sw, 'dst'))}")
    fdb: dict = {}
    deadline = time.monotonic() + 30
    while fdb.get(MAC_A) != "dst":
        assert time.monotonic() < deadline, f"FDB still has {MAC_A} on {fdb.get(MAC_A)}"
        time.sleep(0.2)
        fdb = {e["mac"]: e["port"] for e in sw.ctl("fdb show")}
    assert sw.port("dst")["rarps"] == 0          # the guest announced itself
    # logging on (the log, LOG_ALL, the rings' log flag per queue pair, each
    # with NEED_REPLY), then the rings' bases when the source stops
    source = requests(sw, "a", since)
    assert source[0] == "SET_LOG_BASE", source
    assert [r for r in source if r.startswith("SET_FEATURES")] == ["SET_FEATURES+R"] * QUEUES, source
    assert sorted(r for r in source if r.startswith("SET_VRING_ADDR")) == \
        [f"SET_VRING_ADDR({ring})+R" for ring in range(2 * QUEUES)], source
    assert source[-2 * QUEUES:] == [f"GET_VRING_BASE({ring})" for ring in range(2 * QUEUES)], source
    # the stream completes on the destination, byte for byte, and it was
    # still flowing when the migration ended
    assert d.run("test -s /tmp/recv.md5")[0] != 0, "the stream ended before the migration did"
    d.run("i=0; while [ ! -s /tmp/recv.md5 ]; do i=$((i+1)); [ $i -gt 1200 ] && exit 1; "
          "usleep 100000; done", timeout=180)
    assert d.check_output("cat /tmp/recv.md5").split()[0] == want, "the stream arrived altered"
    after = d.check_output("grep Tcp: /proc/net/snmp | tail -1").split()
    header = d.check_output("grep Tcp: /proc/net/snmp | head -1").split()
    csum_errors = header.index("InCsumErrors")
    assert int(after[csum_errors]) == int(before[csum_errors]), (header, before, after)
    b.check_output("i=0; while ! grep -q 'packet loss' /tmp/ping.log; do i=$((i+1)); "
                   "[ $i -gt 900 ] && exit 1; usleep 100000; done", timeout=120)
    summary = b.check_output("tail -3 /tmp/ping.log")
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", summary)
    assert m, summary
    sent, received = int(m.group(1)), int(m.group(2))
    assert sent == 300 and received >= sent - 30, summary     # at most ~3 s without replies
    assert d.ping(IP_B, count=5, interval=0.2).loss_pct == 0
    for name in ("dst", "b"):
        assert set(sw.drops(name)) <= {"no_rx_buffer", "no_rx_queue"}, (name, sw.drops(name))
    a.stop()
    # what QEMU 10 sends when it quits (QEMU 7.2's quit: test_request_sequence_against_qemu72)
    since = log_offset(sw)
    d.stop()
    sw.wait_port("dst", lambda x: x["state"] != "connected", timeout=30, what="QEMU 10 gone")
    stop = requests(sw, "dst", since)
    print(f"QEMU 10 quit: {' '.join(stop)}")
    assert stop == [f"GET_VRING_BASE({ring})" for ring in range(2 * QUEUES)], stop
