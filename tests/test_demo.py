"""`make demo` (tools/demo.py) keeps working: the whole demo, with 2 s
iperf3 runs instead of 5 (about 30 s): two guests and the host ping and
exchange iperf3 traffic through a fresh vswitchd, the metrics are scraped
and the rate plot is written, and nothing it started is left running."""

from __future__ import annotations

import os
import subprocess

import pytest

from tools import demo

pytestmark = pytest.mark.qemu


def test_demo_runs_end_to_end_and_leaves_nothing_behind(image, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    result = demo.run_demo(tmp_path / "out", tmp_path / "work", iperf_seconds=2)
    for label in ("vm2", "host"):
        r = result[f"ping_{label}"]
        assert (r.sent, r.loss_pct) == (5, 0), (label, r)
    assert result["iperf_vm2"].received_bps > 10e6 and result["iperf_host"].received_bps > 10e6
    counters = demo.parse_counters(result["metrics"])
    assert set(counters) == {"vm1", "vm2", "uplink"}
    assert all(c["receive_packets"] > 0 and c["transmit_packets"] > 0 for c in counters.values())
    png = result["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert result["samples"] >= 10
    out = capsys.readouterr().out
    for shown in ("$ vswitchctl show", "$ vswitchctl port show vm1", "$ vswitchctl fdb show",
                  "vswitch_port_receive_packets_total{port=\"uplink\""):
        assert shown in out
    # stopped: vswitchd took its TAP with it, no guest or iperf3 of ours is left
    assert not os.path.exists(f"/sys/class/net/{demo.TAP}")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps


def test_rates_come_from_counter_differences():
    text = ('vswitch_port_receive_packets_total{port="a",queue="0"} 10.0\n'
            'vswitch_port_receive_packets_total{port="a",queue="1"} 5.0\n'
            'vswitch_port_transmit_bytes_total{port="b",queue="0"} 1.5e+06\n')
    assert demo.parse_counters(text) == {"a": {"receive_packets": 15.0},
                                         "b": {"transmit_bytes": 1.5e6}}
    samples = [(0.0, {"a": {"receive_packets": 0.0}}), (0.5, {"a": {"receive_packets": 50.0}}),
               (1.5, {"a": {"receive_packets": 150.0}})]
    assert demo.rates(samples, "a", "receive_packets") == ([0.5, 1.5], [100.0, 100.0])
