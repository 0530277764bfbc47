"""The datapath's control thread: changes that wait for the workers run
there, so the event loop never waits (vswitch/dpcontrol.py)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from vswitch._datapath import Datapath, DatapathError
from vswitch.dpcontrol import DatapathControl


@pytest.fixture
def dp():
    dp = Datapath(1, "adaptive")
    dp.enable_test_hooks()           # debug_stall_worker (testing.pxi)
    dp.start()
    ctl = DatapathControl()
    dp.bind_control_thread(ctl.ident)
    try:
        yield dp, ctl
    finally:
        ctl.run(dp.stop)
        ctl.close()


def test_a_change_that_waits_for_the_workers_is_refused_off_the_control_thread(dp):
    dp, ctl = dp
    slot = ctl.run(dp.port_add, 1)
    with pytest.raises(DatapathError, match="outside its control thread"):
        dp.port_reset(slot)
    with pytest.raises(DatapathError, match="outside its control thread"):
        dp.reap_notifications()
    ctl.run(dp.port_reset, slot)            # there, it is fine
    ctl.run(dp.port_remove, slot)


def test_the_event_loop_runs_on_while_a_change_waits_for_a_stalled_worker(dp):
    """A worker stuck for 1.5 s: the reset waits for it on the control
    thread, and the loop keeps its 10 ms ticks (the wait releases the GIL)."""
    dp, ctl = dp
    slot = ctl.run(dp.port_add, 1)

    async def main() -> tuple[float, float]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        dp.debug_stall_worker(0, 1.5)
        await asyncio.sleep(0.1)            # the worker is in its stall now
        t0 = time.monotonic()
        await ctl.call(dp.port_reset, slot)
        waited = time.monotonic() - t0
        done.set()
        await tick
        return waited, max(gaps)

    waited, worst_gap = asyncio.run(main())
    assert waited > 1.0                      # it did wait for the worker...
    assert worst_gap < 0.5, worst_gap        # ...and the loop did not


def test_a_cancelled_caller_unwinds_only_after_the_change_is_complete():
    ctl = DatapathControl()
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    async def main() -> bool:
        task = asyncio.create_task(ctl.call(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return finished.is_set()

    try:
        assert asyncio.run(main())
    finally:
        ctl.close()


def test_changes_run_in_order_on_one_thread():
    ctl = DatapathControl()
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        await asyncio.gather(*(ctl.call(lambda i=i: seen.append((i, threading.get_ident())))
                               for i in range(50)))

    try:
        asyncio.run(main())
        assert [i for i, _ in seen] == list(range(50))
        assert {t for _, t in seen} == {ctl.ident}
        assert ctl.run(threading.get_ident) == ctl.ident
    finally:
        ctl.close()


def test_a_reused_slot_starts_a_newer_notification_generation():
    """A notification write of a port's last front-end may complete after the
    slot was freed and given to a new port (the completion is tagged with the
    ring's address and generation): the new port's rings start a generation
    on, so that late completion cannot clear the new owner's write claim."""
    dp = Datapath(1, "adaptive")
    slot = dp.port_add(1)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        dp.vring_set_call(slot, 0, os.dup(call))       # a new fd: a new generation
        before = dp.vring_info(slot, 0)["notify_generation"]
        dp.port_remove(slot)
        again = dp.port_add(1)
        assert again == slot                            # the same ring memory
        assert dp.vring_info(again, 0)["notify_generation"] > before    # not back to 0
    finally:
        os.close(call)
