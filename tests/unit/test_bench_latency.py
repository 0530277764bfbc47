"""The latency benchmark's own logic (bench/latency.py), without a switch:
the percentiles are nearest-rank on known data, the vswitch it starts runs
the asked mode with port b's MAC static, and the C driver loop sets its rings
up as a polling driver does (all RX buffers posted, no interrupts wanted)
and kicks only when the device has not suppressed kicks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench import latency
from tests.harness.frontend.vhost_frontend import GuestMemory, SplitRing
from vswitch.config import parse_config


def test_percentile_is_nearest_rank_on_known_data():
    values = list(range(1, 1001))  # 1..1000
    assert latency.percentile(values, 0.5) == 500
    assert latency.percentile(values, 0.99) == 990
    assert latency.percentile(values, 0.999) == 999
    assert latency.percentile(values, 1.0) == 1000
    # few values: the p99 of ten is the largest, never an interpolation
    assert latency.percentile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 0.99) == 100
    assert latency.percentile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 0.5) == 50
    assert latency.percentile([7], 0.999) == 7
    with pytest.raises(ValueError):
        latency.percentile([], 0.5)
    with pytest.raises(ValueError):
        latency.percentile([1], 0.0)


def test_summary_of_latencies_in_us():
    s = latency.summarize_ns([1000 * i for i in range(1, 2001)][::-1])  # order does not matter
    assert s["n"] == 2000
    assert (s["p50_us"], s["p99_us"], s["p99.9_us"]) == (1000.0, 1980.0, 1998.0)
    assert (s["min_us"], s["max_us"]) == (1.0, 2000.0)
    assert latency.summarize_ns([]) == {"n": 0}


@pytest.mark.parametrize("mode", ["poll", "adaptive", "event"])
def test_vswitch_runs_the_asked_mode_with_port_b_known(tmp_path: Path, mode: str):
    sw = latency.ModeVSwitch(tmp_path, 1, (tmp_path / "a.sock", tmp_path / "b.sock"),
                             Path("/nonexistent/vswitchd"), mode, workers=2)
    cfg = parse_config(sw.config_text(), "bench.yaml", check_host=False)
    assert (cfg.datapath.mode, cfg.datapath.workers) == (mode, 2)
    assert cfg.ports["b"].mac == ":".join(f"{x:02x}" for x in latency.MAC_B)
    assert cfg.ports["a"].mac is None


def kicked(ring: SplitRing) -> bool:
    try:
        os.eventfd_read(ring.kick_fd)
    except BlockingIOError:
        return False
    return True


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
@pytest.mark.parametrize("event_idx", [False, True])
def test_c_loop_posts_rx_buffers_and_kicks_only_when_asked(tmp_path: Path, monkeypatch, event_idx: bool):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = latency.load_helper()
    with GuestMemory(4 << 20) as mem:
        rx = SplitRing(mem, 64, 0)
        rx.event_idx = event_idx
        gpa = mem.alloc(64 * 256, 64)
        r = latency.LatRing(desc=rx.desc_uaddr, avail=rx.avail_uaddr, used=rx.used_uaddr,
                            buf_uaddr=mem.uaddr(gpa), buf_gpa=gpa, num=64, buf_size=256,
                            kick_fd=rx.kick_fd, event_idx=int(event_idx))
        # the device has not suppressed kicks (used flags 0; avail_event 0,
        # which the new index 64 passed): the first publish kicks
        assert lib.lat_rx_init(r) == 0
        assert kicked(rx)
        assert rx.avail_idx_in_memory() == 64
        assert [rx.read_desc(i) for i in (0, 63)] == [(gpa, 256, 2, 0), (gpa + 63 * 256, 256, 2, 0)]
        assert {rx.mem.load16(rx.avail_gpa + 4 + 2 * i) for i in range(64)} == set(range(64))
        assert rx.mem.load16(rx.avail_gpa) == 1  # NO_INTERRUPT: the loop polls
        # a device that suppressed kicks: re-init publishes 64 more, no kick
        if event_idx:
            rx.mem.store16(rx.used_gpa + 4 + 8 * 64, 1000)  # avail_event far ahead
        else:
            rx.mem.store16(rx.used_gpa, 1)  # VRING_USED_F_NO_NOTIFY
        assert lib.lat_rx_init(r) == 0
        assert rx.avail_idx_in_memory() == 128
        assert not kicked(rx)
        rx.close()


@pytest.mark.parametrize(("variant", "workers", "cpus", "taskset"), [
    ("off", 1, (1,), "1"),
    ("2workers", 2, (1, 0), "1,0"),
    ("2workers1core", 2, (1,), "1"),
])
def test_scale_variants_run_the_asked_workers_where_asked(tmp_path: Path, variant: str, workers: int,
                                                          cpus: tuple[int, ...], taskset: str):
    """bench.scale's variants: the worker count and pinning reach the config
    (the marker keys do not), and taskset allows the generator's CPU only
    when a worker runs there."""
    from bench import loopback, scale
    fragment = {"off": loopback.VARIANTS["off"], "2workers": scale._two_workers,
                "2workers1core": scale._two_workers_one_core}[variant]
    sw = scale.ScaleVSwitch(tmp_path, 1, 2, (tmp_path / "a.sock", tmp_path / "b.sock"),
                            Path("/nonexistent/vswitchd"), (fragment(0), fragment(1)))
    text = sw.config_text()
    assert scale.WORKERS_KEY not in text and scale.SHARED_KEY not in text
    cfg = parse_config(text, "bench.yaml", check_host=False)
    assert (cfg.datapath.workers, tuple(cfg.datapath.cpus)) == (workers, cpus)
    assert str(sw.cpu) == taskset
    assert [cfg.ports[p].queues for p in ("a", "b")] == [2, 2]
