"""The datapath's control thread: every change to the datapath runs here.

A change to what the workers see (a ring stopped, memory unmapped, an fd
closed) ends with a wait: the control plane flips a flag, then waits for
every worker to finish the round it was in before it releases anything
(docs/architecture.md, "Quiescence"). That wait is bounded (5 s) but it is a
wait; on the asyncio thread it would stall every other port's handshake,
`vswitchctl` and the metrics with it. So the event loop never calls a
changing method of the datapath itself: it hands the call to this one thread
and awaits the result. The datapath releases the GIL while it waits, so the
event loop runs on meanwhile.

One thread, not a pool: changes are applied in the order they were asked
for and never two at once, which is what the datapath's control side
assumes (it was written for one caller). Reads (counters, `show`) stay on
the event loop; they take no lock and wait for nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_STOP = object()


class DatapathControl:
    """Runs callables on one dedicated thread, in submission order."""

    def __init__(self, name: str = "dp-control") -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int:
        ident = self._thread.ident
        assert ident is not None
        return ident

    def on_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to whoever awaits it
                future.set_exception(exc)
            else:
                future.set_result(result)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.on_thread():
            # Already here (a change that makes another): run it in place,
            # queueing it would wait for ourselves.
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            return future
        self._jobs.put((future, fn, args, kwargs))
        return future

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Blocking: for start-up and shutdown, before and after the event loop runs."""
        return self.submit(fn, *args, **kwargs).result()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn on the control thread and await its result. A change once
        started runs to its end: if the caller is cancelled meanwhile, the
        cancellation is delivered after the change is complete, so that the
        caller's cleanup never overlaps it."""
        future = asyncio.wrap_future(self.submit(fn, *args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                await asyncio.wait({future})     # bounded: the datapath's waits are
            raise

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Fire and forget (e.g. reaping notification completions); a failure is logged."""
        def done(f: concurrent.futures.Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("datapath control: %s failed: %s", getattr(fn, "__name__", fn),
                          f.exception())
        self.submit(fn, *args).add_done_callback(done)

    def close(self) -> None:
        """Finish what is queued, then end the thread."""
        if self._thread.is_alive() and not self.on_thread():
            self._jobs.put(_STOP)
            self._thread.join()
