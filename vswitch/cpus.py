"""Which CPUs the daemon's threads run on: the workers on theirs, the rest elsewhere.

A worker polls its rings; the control plane (the event loop, the datapath's
control thread, the metrics server, uvloop's thread pool) wakes up for every
vhost-user message, control command and scrape, and for its own periodic
work (the health checks and the FDB sweep, every second). On a CPU it
shares with a worker, each wake-up takes that CPU from the worker for as
long as it runs: measured on the loopback benchmark (docs/performance.md),
the once-a-second work took it six times a second for ~130 us each, long
enough for a front-end sending 5-10 Mframes/s to fill a 256-entry ring and
lose frames. And whoever can make the control plane busy (a front-end
flooding its socket with messages, a scraper in a loop) would slow every
port of that worker.

So when the workers are pinned (`datapath.cpus`) and the daemon's CPU mask
has CPUs no worker is pinned to, every other thread is moved onto those;
threads started later inherit the mask of the thread that starts them.
When the workers take every CPU of the mask (or are not pinned), the
control plane keeps the whole mask and shares: the kernel schedules it
where it can.

The daemon's mask is the one it was started with (taskset, systemd's
CPUAffinity=), remembered before any thread is moved: a thread's own mask
is narrower afterwards, and validating `datapath.cpus` against it would
refuse CPUs the daemon may use.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)

# Datapath worker threads are named so: the Python thread (Datapath.start)
# and, once it runs, the OS thread (its comm, Datapath._run_worker).
WORKER_THREAD_PREFIX = "vswitch-worker-"
WORKER_COMM_PREFIX = "vsw-worker-"

_daemon_cpus: frozenset[int] | None = None


def remember_daemon_cpus() -> frozenset[int] | None:
    """Note the process's CPU mask as the daemon's own; call before any
    thread is moved (vswitchd's main does, first thing). None: not Linux."""
    global _daemon_cpus
    try:
        _daemon_cpus = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        _daemon_cpus = None
    return _daemon_cpus


def daemon_cpus() -> frozenset[int] | None:
    """The CPUs the daemon may use: the remembered mask, or (nothing
    remembered: a config check, a test) the calling thread's. None: not Linux."""
    if _daemon_cpus is not None:
        return _daemon_cpus
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def control_cpus(allowed: Iterable[int], worker_cpus: Iterable[int] | None) -> frozenset[int]:
    """Where the control plane goes: the allowed CPUs no worker is pinned
    to, or all of them when the workers are not pinned or take every one."""
    allowed = frozenset(allowed)
    rest = allowed - frozenset(worker_cpus or ())
    return rest if worker_cpus and rest else allowed


def cpu_list(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5" (the kernel's cpulist format)."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def place_control_plane(worker_cpus: Iterable[int] | None) -> frozenset[int] | None:
    """Move every thread of the process but the workers (and io_uring's own,
    which the kernel places) onto control_cpus(); returns that set, or None
    where the mask cannot be read. A thread that ends meanwhile is skipped."""
    allowed = daemon_cpus()
    if allowed is None:
        return None
    cpus = control_cpus(allowed, worker_cpus)
    workers = {t.native_id for t in threading.enumerate() if t.name.startswith(WORKER_THREAD_PREFIX)}
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [threading.get_native_id()]
    for tid in tids:
        if tid in workers:
            continue
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read()
            if comm.startswith(WORKER_COMM_PREFIX) or comm.startswith("iou-"):
                continue    # a worker; io_uring's own threads (PF_NO_SETAFFINITY)
            os.sched_setaffinity(tid, cpus)
        except OSError as exc:   # ended meanwhile (ENOENT, ESRCH); EINVAL: a kernel-placed thread
            log.debug("thread %d: affinity not set: %s", tid, exc)
    return cpus
