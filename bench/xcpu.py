"""The two CPUs' cache-to-cache state, recorded beside each benchmark run.

On the 2-vCPU virtual machines this project benchmarks on, the loopback rate
at 64 B is bimodal from one run to the next (docs/performance.md): the same
build gives ~4 or ~12 Mframes/s, DPDK's vhost PMD too. A 64-byte frame costs
the switch a handful of cache lines that the other CPU just wrote (avail
entry, descriptor, buffer, used entry), so one suspect was what a hand-over
between the two vCPUs costs, which the hypervisor changes when it places
them near each other or far apart. Measured here: the round trip of one
cache line between a thread on each CPU, ~60-90 ns ("near") or ~320-340 ns
("far") on AMD EPYC, changing every few seconds.

bench/loopback.py takes ``probe(gen_cpu, sut_cpu)`` right before each run
and right after it (``xcpu_rtt_ns``, ``xcpu_state`` in the results). The
answer is "mostly" (docs/performance.md, "The slow state"): in the table
run of 2026-12-06 every system was slow with both probes far and fast with
both near in the huge-page/client part, but a few runs were slow with both
probes near, and runs change state in the middle, which a probe at each end
cannot see. So the probe is a record beside each run, not a filter of runs.

``probe`` runs the C loop of bench/_xcpu_probe.c (built on first use,
cached by the source's hash) many times and returns the median round trip
in nanoseconds. ``python -m bench.xcpu`` prints a series of probes.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

C_SOURCE = Path(__file__).resolve().with_name("_xcpu_probe.c")

# A round trip under this is the near state (AMD EPYC 2-vCPU VMs: near
# 60-90 ns, far 320-340 ns, with 190 and ~1000 ns seen on a busy machine).
FAST_RTT_NS = 150.0
# Many short samples, their median: a sample in which either thread was
# preempted (a few ms) is an outlier, not a shift of the figure.
ROUNDS = 500            # hand-overs per sample: ~30-500 us
SAMPLES = 41


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vswitch-bench"


def build_shared(source: Path, name: str, flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile *source* into a shared object unless a build of this exact
    source is cached (the file name carries the source's hash), and load it."""
    tag = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    so = cache_dir() / f"{name}-{tag}.so"
    if not so.exists():
        so.parent.mkdir(parents=True, exist_ok=True)
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"
        tmp = so.with_suffix(f".{os.getpid()}.tmp")
        r = subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", *flags, "-o", str(tmp), str(source)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"building {source.name} failed:\n{r.stderr}")
        tmp.replace(so)  # atomic: a concurrent reader sees a whole file or none
    return ctypes.CDLL(str(so))


_lib: ctypes.CDLL | None = None


def _probe_fn():
    global _lib
    if _lib is None:
        _lib = build_shared(C_SOURCE, "xcpu_probe", ("-pthread",))
        _lib.xcpu_round_trip_ns.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
        _lib.xcpu_round_trip_ns.restype = ctypes.c_double
    return _lib.xcpu_round_trip_ns


def probe(cpu_a: int, cpu_b: int, samples: int = SAMPLES, rounds: int = ROUNDS) -> float:
    """Median round trip (ns) of one cache line between *cpu_a* and *cpu_b*.
    Both CPUs are busy for the probe's few milliseconds: call it between runs."""
    fn = _probe_fn()
    got = []
    for _ in range(samples):
        ns = fn(cpu_a, cpu_b, rounds)
        if ns < 0:
            raise RuntimeError(f"cannot pin probe threads to CPUs {cpu_a} and {cpu_b}")
        got.append(ns)
    return statistics.median(got)


def state(rtt_before: float | None, rtt_after: float | None) -> str:
    """'fast' when both probes around a run saw the near state, 'slow' when
    both saw the far one, 'mixed' when it changed, 'unknown' when a probe is
    missing."""
    if rtt_before is None or rtt_after is None:
        return "unknown"
    fast = (rtt_before < FAST_RTT_NS, rtt_after < FAST_RTT_NS)
    if all(fast):
        return "fast"
    if not any(fast):
        return "slow"
    return "mixed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", default="0,1", help="the two CPUs (default 0,1)")
    ap.add_argument("--count", type=int, default=20, help="probes (default 20)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between probes (default 1)")
    args = ap.parse_args()
    a, b = (int(c) for c in args.cpus.split(","))
    for _ in range(args.count):
        rtt = probe(a, b)
        print(f"{time.strftime('%H:%M:%S')}  {rtt:7.1f} ns  {'fast' if rtt < FAST_RTT_NS else 'slow'}",
              flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
