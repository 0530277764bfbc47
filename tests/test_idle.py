"""Idle costs nothing: with two guests connected and quiet, a switch in event or
adaptive mode sleeps on the guests' kick eventfds instead of spinning. Ping
round-trip times are printed next to poll mode's (a report, not a limit).
"""

from __future__ import annotations

import os
import time

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 240
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process (/proc/PID/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@pytest.mark.parametrize("mode", ["event", "adaptive", "poll"])
def test_idle_switch_sleeps_and_forwards_on_kicks(tmp_path, image, mode):
    ports = {name: {"type": "vhost-user", "queues": 1} for name in ("a", "b")}
    with Vswitchd(tmp_path / "switch", ports, extra={"datapath": {"workers": 1, "mode": mode}}) as sw:
        a = QemuGuest("a", image, sw.socket("a"), mac="52:54:00:00:01:0a", ip="10.1.0.1/24",
                      workdir=tmp_path / "a")
        b = QemuGuest("b", image, sw.socket("b"), mac="52:54:00:00:01:0b", ip="10.1.0.2/24",
                      workdir=tmp_path / "b")
        with a, b:
            a.wait_booted(BOOT_TIMEOUT)
            b.wait_booted(BOOT_TIMEOUT)
            for name in ("a", "b"):
                sw.wait_port(name, lambda p: p["queues_enabled"] == 1, timeout=60, what="queue enabled")
            # frames wake a sleeping worker: pings pass without loss
            r = a.ping("10.1.0.2", count=20, interval=0.2)
            assert r.loss_pct == 0, r
            print(f"\nping RTT in {mode} mode: avg {r.avg_rtt_ms:.2f} ms")
            assert sw.ctl("show")["mode"] == mode
            if mode == "poll":
                return           # poll mode spins by design: only its RTT is reported
            time.sleep(1)
            before = cpu_seconds(sw.proc.pid)
            time.sleep(10)
            used = cpu_seconds(sw.proc.pid) - before
            print(f"vswitchd CPU over 10 s idle in {mode} mode: {used:.3f} s")
            assert used < 0.1, f"{used:.3f} s of CPU in 10 s idle ({mode} mode)"
            workers = sw.ctl("show")["workers"]
            assert workers[0]["idle_sleeps"] > 0
            # and it still forwards after the idle spell
            r = b.ping("10.1.0.1", count=5, interval=0.2)
            assert r.loss_pct == 0, r
