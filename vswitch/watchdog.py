"""Feed systemd's watchdog only while every datapath worker makes progress.

A worker's loop increments its "rounds" counter once per round. A busy
worker does millions of rounds a second; an idle one in event or adaptive
mode sleeps in epoll_wait with a 1 s timeout (SLEEP_TIMEOUT_MS in
cython_ext/worker.pxi) and so still completes a round at least every second.
A worker whose counter stands still for longer than that is stuck (a bug, a
deadlock, a guest memory access that never returns): the pings stop, and
systemd restarts the service when WatchdogSec= runs out.

The asyncio loop being stuck stops the pings as well, since they are sent
from a task on it.

    wd = WorkerWatchdog(dp, notifier, notifier.watchdog_interval(), status=switch.status_line)
    task = asyncio.create_task(wd.run())

The decision is made by WorkerWatchdog.check(stats, now), which touches
neither the clock nor the socket and is unit-tested with fake stats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

log = logging.getLogger("vswitch.watchdog")

# Longest time an idle, healthy worker goes without finishing a round: the
# epoll_wait timeout of a sleeping worker (SLEEP_TIMEOUT_MS = 1000) plus
# scheduling slack. A stall is declared only after this long without progress,
# even when the ping period is shorter (WatchdogSec= below 4 s).
IDLE_ROUND_MAX_S = 2.0


class _Datapath(Protocol):
    def worker_stats(self) -> list[dict[str, Any]]: ...


class _Notifier(Protocol):
    def watchdog(self) -> bool: ...
    def status(self, text: str) -> bool: ...


@dataclass
class Verdict:
    """The outcome of one check."""

    healthy: bool                                  # send WATCHDOG=1
    stalled: list[int] = field(default_factory=list)         # stuck now
    newly_stalled: list[int] = field(default_factory=list)   # stuck since this check
    recovered: list[int] = field(default_factory=list)       # moving again since this check


class WorkerWatchdog:
    def __init__(self, dp: _Datapath, notifier: _Notifier, period: float,
                 grace: float | None = None,
                 status: Callable[[], str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """period: seconds between checks (half of WatchdogSec=).
        grace: seconds without progress before a worker counts as stalled;
        at least one period and IDLE_ROUND_MAX_S.
        status: gives the normal STATUS= line, sent again when every
        stalled worker has recovered."""
        if period <= 0:
            raise ValueError("watchdog period must be positive")
        self.dp = dp
        self.notifier = notifier
        self.period = period
        self.grace = max(period, IDLE_ROUND_MAX_S) if grace is None else grace
        self.status_fn = status
        self.clock = clock
        self._rounds: list[int] | None = None      # per worker, at the last change
        self._progress_at: list[float] = []        # per worker, when it last moved
        self._stalled: set[int] = set()
        self._stats_error_logged = False

    # --- decision (pure: no clock, no I/O) ---------------------------------------

    def check(self, stats: Sequence[dict[str, Any]], now: float) -> Verdict:
        """Compare each worker's "rounds" with what it was at its last
        change. Healthy when no worker has stood still for grace seconds or
        more (with the default grace and period >= IDLE_ROUND_MAX_S: every
        worker advanced since the previous check). The first check (or one after the worker count changed)
        only takes a baseline, and is healthy."""
        rounds = [int(s["rounds"]) for s in stats]
        if self._rounds is None or len(rounds) != len(self._rounds):
            self._rounds = rounds
            self._progress_at = [now] * len(rounds)
            recovered = sorted(self._stalled)
            self._stalled = set()
            return Verdict(healthy=True, recovered=recovered)
        stalled = set()
        for i, r in enumerate(rounds):
            if r != self._rounds[i]:
                self._rounds[i] = r
                self._progress_at[i] = now
            elif now - self._progress_at[i] >= self.grace:
                stalled.add(i)
        verdict = Verdict(healthy=not stalled, stalled=sorted(stalled),
                          newly_stalled=sorted(stalled - self._stalled),
                          recovered=sorted(self._stalled - stalled))
        self._stalled = stalled
        return verdict

    def stalled_for(self, worker: int, now: float) -> float:
        return now - self._progress_at[worker] if self._progress_at else 0.0

    # --- action ----------------------------------------------------------------

    def tick(self) -> Verdict | None:
        """One check against the datapath, and its notifications."""
        now = self.clock()
        try:
            stats = self.dp.worker_stats()
        except Exception:
            # Unknown health is not health: no ping. Logged once.
            if not self._stats_error_logged:
                self._stats_error_logged = True
                log.exception("watchdog: cannot read worker stats; not feeding the watchdog")
            return None
        verdict = self.check(stats, now)
        for i in verdict.newly_stalled:
            log.error("worker %d stalled: no progress for %.1f s (rounds %d); "
                      "watchdog pings stopped", i, self.stalled_for(i, now), self._rounds[i])
        for i in verdict.recovered:
            log.warning("worker %d is making progress again", i)
        if verdict.newly_stalled or (verdict.recovered and verdict.stalled):
            ids = verdict.stalled
            noun = "worker" if len(ids) == 1 else "workers"
            self.notifier.status(f"{noun} {', '.join(map(str, ids))} stalled")
        elif verdict.recovered and self.status_fn is not None:
            try:
                self.notifier.status(self.status_fn())
            except Exception:
                log.exception("watchdog: status line failed")
        if verdict.healthy:
            self.notifier.watchdog()
        return verdict

    async def run(self) -> None:
        """Check every period until cancelled."""
        while True:
            self.tick()
            await asyncio.sleep(self.period)
