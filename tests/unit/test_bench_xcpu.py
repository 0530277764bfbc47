"""bench/xcpu.py: the machine-state probe the loopback bench runs beside each run."""
import os

import pytest

from bench import xcpu


def test_a_run_is_fast_only_when_both_probes_saw_the_near_state():
    near, far = xcpu.FAST_RTT_NS / 2, xcpu.FAST_RTT_NS * 3
    assert xcpu.state(near, near) == "fast"
    assert xcpu.state(far, far) == "slow"
    assert xcpu.state(near, far) == "mixed"
    assert xcpu.state(far, near) == "mixed"
    assert xcpu.state(None, near) == "unknown"


def test_the_probe_measures_a_round_trip_between_two_cpus():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.fail("the benchmarks need two CPUs")
    before = os.sched_getaffinity(0)
    rtt = xcpu.probe(cpus[0], cpus[1], samples=3, rounds=200)
    # a cache line's round trip between two cores: tens of ns at least, and
    # even on a loaded machine far below a scheduler time slice per hand-over
    assert 10 < rtt < 5_000_000
    assert os.sched_getaffinity(0) == before        # the caller's affinity is given back


def test_a_cpu_that_does_not_exist_is_an_error_not_a_figure():
    with pytest.raises(RuntimeError, match="cannot pin"):
        xcpu.probe(0, 4095, samples=1, rounds=10)
