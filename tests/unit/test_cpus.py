"""Where the daemon's threads run (vswitch/cpus.py): workers on their CPUs,
the control plane on the others of the daemon's mask."""

from __future__ import annotations

import os
import threading

import pytest

from vswitch import cpus


def test_the_control_plane_gets_the_cpus_no_worker_is_pinned_to():
    assert cpus.control_cpus({0, 1, 2, 3}, [2, 3]) == {0, 1}
    assert cpus.control_cpus({0, 1, 2, 3}, [3, 3]) == {0, 1, 2}
    # a pinned CPU outside the mask takes nothing away (validation refuses it anyway)
    assert cpus.control_cpus({0, 1}, [1, 5]) == {0}


def test_it_keeps_the_whole_mask_when_workers_are_unpinned_or_take_every_cpu():
    assert cpus.control_cpus({0, 1}, None) == {0, 1}
    assert cpus.control_cpus({0, 1}, ()) == {0, 1}
    assert cpus.control_cpus({0, 1}, [0, 1]) == {0, 1}
    assert cpus.control_cpus({1}, [1]) == {1}


def test_cpu_list_is_the_kernels_format():
    assert cpus.cpu_list({0, 1}) == "0-1"
    assert cpus.cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert cpus.cpu_list({3}) == "3"


@pytest.fixture
def remembered(monkeypatch):
    """The test process's mask as the daemon's; every thread's mask given back after."""
    mask = os.sched_getaffinity(0)
    monkeypatch.setattr(cpus, "_daemon_cpus", None)
    assert cpus.remember_daemon_cpus() == frozenset(mask)
    yield frozenset(mask)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), mask)
        except OSError:
            pass


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_every_thread_but_the_workers_moves_and_the_mask_is_the_remembered_one(remembered):
    worker_cpu, other = sorted(remembered)[-1], sorted(remembered)[0]
    stop = threading.Event()
    started = threading.Barrier(3)

    def worker() -> None:
        os.sched_setaffinity(0, {worker_cpu})      # as Datapath._run_worker pins itself
        started.wait()
        stop.wait(10)

    def helper() -> None:
        started.wait()
        stop.wait(10)

    threads = [threading.Thread(target=worker, name=f"{cpus.WORKER_THREAD_PREFIX}0"),
               threading.Thread(target=helper, name="not-a-worker")]
    for t in threads:
        t.start()
    try:
        started.wait()
        placed = cpus.place_control_plane([worker_cpu])
        assert placed == remembered - {worker_cpu}
        assert other in placed
        assert os.sched_getaffinity(threads[0].native_id) == {worker_cpu}
        assert os.sched_getaffinity(threads[1].native_id) == placed
        assert os.sched_getaffinity(0) == placed          # this (the main) thread too
        # the calling thread is narrower now; the daemon's mask is not
        assert cpus.daemon_cpus() == remembered
        # unpinned again: everyone back on the whole mask
        assert cpus.place_control_plane(None) == remembered
        assert os.sched_getaffinity(threads[1].native_id) == remembered
    finally:
        stop.set()
        for t in threads:
            t.join()
