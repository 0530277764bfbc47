"""Live migration of a QEMU guest between two vhost-user ports, under traffic.

A peer guest streams a file into the migrating guest and pings it while
QEMU migrates it (over loopback TCP) to a second QEMU attached to another
port of the same switch. The migrating guest verifies TCP checksums itself
(guest_csum=off), so a page the switch wrote but did not mark in the dirty
log would show as checksum errors or a stalled ring on the destination.
Twice: with GUEST_ANNOUNCE (the guest announces itself) and with
guest_announce=off (QEMU sends SEND_RARP and the switch announces it).
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 240
IP_M, IP_P = "10.0.4.1", "10.0.4.2"
MAC_M, MAC_P = "52:54:00:00:04:01", "52:54:00:00:04:02"
CHUNKS, PACE_US = 160, 100000         # 10 MiB over ~16 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("announce", ["guest_announce", "send_rarp"])
def test_guest_migrates_between_ports_without_corruption(tmp_path, image, announce):
    sw = Vswitchd(tmp_path / "switch", {name: {"type": "vhost-user"} for name in ("src", "dst", "peer")})
    sw.start()
    props = {"guest_csum": "off"}
    if announce == "send_rarp":
        props["guest_announce"] = "off"
    incoming = free_port()
    m = QemuGuest("m", image, sw.socket("src"), mac=MAC_M, ip=f"{IP_M}/24", device_props=props,
                  workdir=tmp_path / "m")
    p = QemuGuest("p", image, sw.socket("peer"), mac=MAC_P, ip=f"{IP_P}/24", workdir=tmp_path / "p")
    d = QemuGuest("m", image, sw.socket("dst"), mac=MAC_M, ip=f"{IP_M}/24", device_props=props,
                  workdir=tmp_path / "d", extra_args=["-incoming", f"tcp:127.0.0.1:{incoming}"])
    guests = [m, p]
    try:
        for g in guests:
            g.start()
        for g in guests:
            g.wait_booted(BOOT_TIMEOUT)
        d.start()
        guests.append(d)
        sw.wait_port("src", lambda x: x["state"] == "connected" and x["queues_enabled"] == 1,
                     timeout=60, what="source connected")
        features = sw.port("src")["features"]
        assert ("NET_GUEST_ANNOUNCE" in features) == (announce == "guest_announce"), features
        assert "LOG_SHMFD" in sw.port("src")["protocol_features"]
        assert p.ping(IP_M, count=3, interval=0.2).loss_pct == 0
        # The stream: random bytes, paced to span the migration, checked by md5
        # on arrival. Paced because TCG migration on this machine corrupts a
        # guest that writes memory fast, with or without any NIC (docs/faults.md, "Known limits").
        p.check_output(f"dd if=/dev/urandom of=/tmp/data bs=64k count={CHUNKS} 2>/dev/null")
        want = p.check_output("md5sum /tmp/data").split()[0]
        # (sleep | nc: busybox nc hangs up when its stdin ends; head -c ends the pipe)
        m.check_output(f"setsid sh -c 'sleep 600 | nc -l -p 5000 | head -c {CHUNKS * 65536} | md5sum "
                       "> /tmp/recv.md5' </dev/null >/dev/null 2>&1 &")
        p.check_output(f"setsid sh -c 'sleep 1; (i=0; while [ $i -lt {CHUNKS} ]; do dd if=/tmp/data "
                       f"bs=64k skip=$i count=1 2>/dev/null; i=$((i+1)); usleep {PACE_US}; done; sleep 30) "
                       f"| nc {IP_M} 5000' </dev/null >/dev/null 2>&1 &")
        p.check_output(f"setsid sh -c 'ping -i 0.1 -c 300 -W 5 {IP_M} > /tmp/ping.log 2>&1' "
                       "</dev/null >/dev/null 2>&1 &")
        time.sleep(3)                                 # the stream and the pings are flowing
        before = m.check_output("grep Tcp: /proc/net/snmp | tail -1").split()
        m.qmp("migrate", uri=f"tcp:127.0.0.1:{incoming}")
        deadline = time.monotonic() + 180
        while True:
            status = m.qmp("query-migrate").get("status")
            if status == "completed":
                break
            assert status not in ("failed", "cancelled"), m.qmp("query-migrate")
            assert time.monotonic() < deadline, f"migration not done: {m.qmp('query-migrate')}"
            time.sleep(0.2)
        # the guest now runs in d, on port dst
        d.booted = True
        d.check_output("true", timeout=60)
        sw.wait_port("dst", lambda x: x["state"] == "connected" and x["queues_enabled"] == 1,
                     timeout=60, what="destination connected")
        fdb = {}
        deadline = time.monotonic() + 30
        while fdb.get(MAC_M) != "dst":
            assert time.monotonic() < deadline, f"FDB still has {MAC_M} on {fdb.get(MAC_M)}"
            time.sleep(0.2)
            fdb = {e["mac"]: e["port"] for e in sw.ctl("fdb show")}
        # QEMU asks the switch to announce the guest only when the guest cannot
        if announce == "send_rarp":
            assert "RARP" in sw.port("dst")["protocol_features"]
            assert sw.port("dst")["rarps"] >= 1
        else:
            assert sw.port("dst")["rarps"] == 0
        # the stream completes on the destination, byte for byte, and it was
        # still flowing when the migration ended
        assert d.run("test -s /tmp/recv.md5")[0] != 0, "the stream ended before the migration did"
        d.run("i=0; while [ ! -s /tmp/recv.md5 ]; do i=$((i+1)); [ $i -gt 1200 ] && exit 1; "
              "usleep 100000; done", timeout=180)
        got = d.check_output("cat /tmp/recv.md5").split()[0]
        assert got == want, "the stream arrived altered or incomplete"
        after = d.check_output("grep Tcp: /proc/net/snmp | tail -1").split()
        header = d.check_output("grep Tcp: /proc/net/snmp | head -1").split()
        csum_errors = header.index("InCsumErrors")
        assert int(after[csum_errors]) == int(before[csum_errors]), (header, before, after)
        # the pings went on after a short gap
        p.check_output("i=0; while ! grep -q 'packet loss' /tmp/ping.log; do i=$((i+1)); "
                       "[ $i -gt 900 ] && exit 1; usleep 100000; done", timeout=120)
        summary = p.check_output("tail -3 /tmp/ping.log")
        sent, received = (int(x) for x in
                          __import__("re").search(r"(\d+) packets transmitted, (\d+) packets received",
                                                  summary).groups())
        assert sent == 300 and received >= sent - 30, summary     # at most ~3 s without replies
        assert d.ping(IP_P, count=5, interval=0.2).loss_pct == 0
        # the only frames lost: those sent to the guest while it was between
        # its two ports (no_rx_queue on the sender) or found its RX ring full
        for name in ("dst", "peer"):
            drops = sw.drops(name)
            assert set(drops) <= {"no_rx_buffer", "no_rx_queue"}, (name, drops)
    finally:
        for g in guests:
            g.stop()
        sw.stop()
