"""Latency benchmark: round trip of single 64-byte frames through the switch
(docs/performance.md, "Latency").

Topology (one run)::

    CPU fe: this process, the front-end             CPU sut: the switch under test
      device A (TX ring 1) --- a.sock ---  port a
      device B (RX ring 0) --- b.sock ---  port b

The front-end is the test suite's Python vhost-user front-end
(tests/harness/frontend/vhost_frontend.py) for the control path: it connects
to both ports, negotiates VERSION_1 and EVENT_IDX (as a Linux guest does; one
queue pair, 256-entry split rings), sends the memory table and the rings.
The timed part is a small C loop (bench/_latency_ring.c, compiled on first
use into a cache directory and called through ctypes): it puts a frame
carrying a sequence number and its CLOCK_MONOTONIC send time on A's TX ring,
publishes it, kicks A's kick eventfd when the back-end has not suppressed
kicks, and spins on B's RX used ring until the frame is there; the latency is
the clock then minus the time in the frame. RX is found by polling the used
ring in every mode (the loop asks for no interrupts: it never waits on the
call eventfd), so the figure is the switch's latency plus the front-end's
polling delay, not a guest's interrupt path.

Two conditions per system:

* no load: ``--probes`` frames, one in flight, ``--gap-us`` of idle between
  the arrival of one and the sending of the next (default 2000 us: longer
  than adaptive mode's 1 ms spin, so an adaptive or event worker is asleep
  when each frame comes);
* load: first the maximum rate (the loop sends as fast as A's TX ring takes
  frames for ``--max-seconds``), then a stream paced at ``--load`` (0.5) of that
  system's maximum for ``--load-seconds``, every frame timestamped and every
  k-th one's latency recorded. The load comes from the same loop on the same
  core as the probes (the machine has two cores: one for the switch, one for
  the front-end; there is no third core for a separate generator), so a
  frame's latency includes the loop's turns for the frames around it.

Systems: vswitch in ``poll``, ``adaptive`` and ``event`` mode (one worker,
``taskset`` to CPU sut, port b's MAC static so the frames are known
unicast) and DPDK's vhost PMD (testpmd io forwarding port 0 -> port 1, one
lcore on CPU sut), as bench/loopback.py starts them. Each round runs every
system once (odd rounds in the reverse order).

Usage (root, from the repository root)::

    .venv/bin/python -m bench.latency [--systems dpdk,poll,adaptive,event] [--rounds 1]
        [--probes 5000] [--gap-us 2000] [--max-seconds 3] [--load 0.5] [--load-seconds 5]

Results: a table on stdout and bench/results/latency-*.json (CPU, kernel,
steal per run, every percentile).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loopback import (
    REPO,
    CpuWindow,
    DpdkSwitch,
    SwitchUnderTest,
    VSwitch,
    host_info,
    idle_check,
    single_instance,
)
from tests.harness.frontend.vhost_frontend import (
    Feature,
    GuestMemory,
    NetDevice,
    SplitRing,
    VhostUserFrontend,
    bits,
)
from tests.harness.peers.testpmd import TestPmdError, testpmd_available

SYSTEMS = ("dpdk", "poll", "adaptive", "event")  # "dpdk" or a vswitch datapath mode
QUANTILES = (0.5, 0.99, 0.999)
FRAME_LEN = 64
BUF_SIZE = 2048  # per descriptor, as a Linux guest posts RX buffers without MRG_RXBUF
RING_SIZE = 256
MAC_A = bytes.fromhex("027673620a01")  # locally administered, the front-end's device A
MAC_B = bytes.fromhex("027673620a02")
ETHERTYPE = 0x88B5  # IEEE local experimental
C_SOURCE = Path(__file__).resolve().with_name("_latency_ring.c")
MAX_NUM = 32768  # the C side's bound on a ring size (its free-id stack)


# --------------------------------------------------------------------------
# Percentiles (nearest rank)
# --------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values: the smallest value
    with at least a fraction *q* of all values at or below it (q in (0, 1]).
    No interpolation: every figure is a latency that was measured."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile {q} not in (0, 1]")
    rank = math.ceil(q * len(sorted_values))  # 1-based
    return sorted_values[max(rank, 1) - 1]


def summarize_ns(samples: Sequence[int]) -> dict[str, Any]:
    """p50/p99/p99.9, min, max and mean of latencies in ns, as microseconds."""
    if not samples:
        return {"n": 0}
    s = sorted(samples)
    out: dict[str, Any] = {"n": len(s), "min_us": s[0] / 1e3, "max_us": s[-1] / 1e3,
                           "mean_us": sum(s) / len(s) / 1e3}
    for q in QUANTILES:
        out[quantile_key(q)] = percentile(s, q) / 1e3
    return out


def quantile_key(q: float) -> str:
    """0.5 -> "p50_us", 0.999 -> "p99.9_us"."""
    return f"p{q * 100:g}_us"


# --------------------------------------------------------------------------
# The C loop
# --------------------------------------------------------------------------


class LatRing(ctypes.Structure):
    """struct lat_ring of bench/_latency_ring.c (same field order)."""

    _fields_ = [
        ("desc", ctypes.c_uint64),
        ("avail", ctypes.c_uint64),
        ("used", ctypes.c_uint64),
        ("buf_uaddr", ctypes.c_uint64),
        ("buf_gpa", ctypes.c_uint64),
        ("num", ctypes.c_uint32),
        ("buf_size", ctypes.c_uint32),
        ("kick_fd", ctypes.c_int32),
        ("event_idx", ctypes.c_int32),
        ("avail_idx", ctypes.c_uint16),
        ("last_used", ctypes.c_uint16),
        ("nfree", ctypes.c_uint32),
        ("kicks", ctypes.c_uint64),
        ("free_ids", ctypes.c_uint16 * MAX_NUM),
    ]


class LatStats(ctypes.Structure):
    """struct lat_stats of bench/_latency_ring.c."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "tx", "rx", "bad", "late", "lost", "tx_full", "samples", "elapsed_ns", "tx_kicks", "rx_kicks")]

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name, _ in self._fields_}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vswitch-bench"


def load_helper() -> ctypes.CDLL:
    """Compile bench/_latency_ring.c unless a build of this exact source is
    cached (the file name carries the source's hash), and load it."""
    src = C_SOURCE.read_bytes()
    tag = hashlib.sha256(src).hexdigest()[:16]
    so = cache_dir() / f"latency_ring-{tag}.so"
    if not so.exists():
        so.parent.mkdir(parents=True, exist_ok=True)
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"
        tmp = so.with_suffix(f".{os.getpid()}.tmp")
        r = subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp), str(C_SOURCE)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"building {C_SOURCE.name} failed:\n{r.stderr}")
        tmp.replace(so)  # atomic: a concurrent reader sees a whole file or none
    lib = ctypes.CDLL(str(so))
    ring_p, stats_p = ctypes.POINTER(LatRing), ctypes.POINTER(LatStats)
    u8p, u32p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_uint32)
    u32, u64 = ctypes.c_uint32, ctypes.c_uint64
    lib.lat_tx_init.argtypes = [ring_p]
    lib.lat_rx_init.argtypes = [ring_p]
    lib.lat_probe.argtypes = [ring_p, ring_p, u8p, u32, u32, u64, u64, u64, u64, u32p, stats_p]
    lib.lat_stream.argtypes = [ring_p, ring_p, u8p, u32, u32, ctypes.c_double, u64, u64, u64, u32p, u64,
                               stats_p]
    for f in (lib.lat_tx_init, lib.lat_rx_init, lib.lat_probe, lib.lat_stream):
        f.restype = ctypes.c_int
    return lib


def make_frame() -> bytes:
    """64 bytes of Ethernet, A -> B; the C loop writes magic, seq and time at 14..33."""
    frame = MAC_B + MAC_A + ETHERTYPE.to_bytes(2, "big")
    return frame + bytes(FRAME_LEN - len(frame))


class FrontEnd:
    """The two devices (A sends, B receives) and the C loop over their rings."""

    def __init__(self, lib: ctypes.CDLL, socks: tuple[Path, Path]) -> None:
        self.lib = lib
        self.devs: list[NetDevice] = []
        self.bufs: list[tuple[GuestMemory, int]] = []
        features = bits(Feature.VERSION_1, Feature.EVENT_IDX)
        try:
            for sock in socks:
                fe = VhostUserFrontend(str(sock), connect_timeout=30.0)
                fe.connect(30.0)
                self.devs.append(fe.setup_net_device(1, RING_SIZE, features, mem_size=8 << 20))
        except BaseException:
            self.close()
            raise
        a, b = self.devs
        self.hdr_len = a.tx().hdr_len
        self.event_idx = a.has(Feature.EVENT_IDX)
        self.tx = self._ring(a, a.tx())
        self.rx = self._ring(b, b.rx())
        for init, ring in ((lib.lat_tx_init, self.tx), (lib.lat_rx_init, self.rx)):
            rc = init(ctypes.byref(ring))
            if rc != 0:
                raise RuntimeError(f"ring init failed ({rc})")
        frame = make_frame()
        self.frame = (ctypes.c_uint8 * len(frame)).from_buffer_copy(frame)
        self.seq = 1

    def _ring(self, dev: NetDevice, ring: Any) -> LatRing:
        if not isinstance(ring, SplitRing):
            raise TypeError("split rings only")
        mem = dev.mem
        gpa = mem.alloc(ring.num * BUF_SIZE, 64)
        self.bufs.append((mem, gpa))
        r = LatRing()
        r.desc, r.avail, r.used = ring.desc_uaddr, ring.avail_uaddr, ring.used_uaddr
        r.buf_uaddr, r.buf_gpa = mem.uaddr(gpa), gpa
        r.num, r.buf_size = ring.num, BUF_SIZE
        r.kick_fd, r.event_idx = ring.kick_fd, int(ring.event_idx)
        return r

    def probe(self, n: int, gap_us: float, timeout_s: float = 0.2) -> tuple[list[int], dict[str, int]]:
        out = (ctypes.c_uint32 * max(n, 1))()
        st = LatStats()
        rc = self.lib.lat_probe(ctypes.byref(self.tx), ctypes.byref(self.rx), self.frame, FRAME_LEN,
                                self.hdr_len, n, int(gap_us * 1e3), int(timeout_s * 1e9), self.seq, out,
                                ctypes.byref(st))
        self.seq += n
        if rc != 0:
            raise RuntimeError(f"probe loop failed ({rc}): {st.as_dict()}")
        return list(out[: st.samples]), st.as_dict()

    def stream(self, rate_fps: float, seconds: float, cap: int = 200_000) -> tuple[list[int], dict[str, int]]:
        """rate_fps 0: as fast as the ring takes frames. Samples about *cap*
        frames spread over the run (every k-th sequence number)."""
        expect = (rate_fps or 20e6) * seconds
        every = max(1, int(expect // cap))
        out = (ctypes.c_uint32 * cap)()
        st = LatStats()
        rc = self.lib.lat_stream(ctypes.byref(self.tx), ctypes.byref(self.rx), self.frame, FRAME_LEN,
                                 self.hdr_len, float(rate_fps), int(seconds * 1e9), self.seq, every, out, cap,
                                 ctypes.byref(st))
        self.seq += st.tx + 1
        if rc != 0:
            raise RuntimeError(f"stream loop failed ({rc}): {st.as_dict()}")
        d = st.as_dict()
        d["sample_every"] = every
        return list(out[: st.samples]), d

    def close(self) -> None:
        for dev in self.devs:
            try:
                dev.close()
            except OSError:
                pass
        self.devs = []


# --------------------------------------------------------------------------
# The switch under test
# --------------------------------------------------------------------------


class ModeVSwitch(VSwitch):
    """bench.loopback's vswitchd runner with the datapath mode (and worker
    count) set; port b's MAC static, so A's frames are known unicast."""

    def __init__(self, run_dir: Path, cpu: int, socks: tuple[Path, Path], vswitchd: Path, mode: str,
                 workers: int = 1) -> None:
        mac_b = ":".join(f"{x:02x}" for x in MAC_B)
        super().__init__(run_dir, cpu, 1, socks, vswitchd, ({}, {"mac": mac_b}), workers=workers, mode=mode)


@dataclass
class Options:
    fe_cpu: int
    sut_cpu: int
    probes: int
    gap_us: float
    max_seconds: float
    load: float
    load_seconds: float
    warmup_probes: int
    vswitchd: Path
    workdir: Path
    max_foreign: float = 0.05


def run_system(system: str, rnd: int, lib: ctypes.CDLL, opt: Options) -> dict[str, Any]:
    """One system: start it, connect, measure both conditions, stop. Never raises."""
    res: dict[str, Any] = {"system": system, "round": rnd}
    run_dir = opt.workdir / f"r{rnd}-{system}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    socks = (run_dir / "a.sock", run_dir / "b.sock")
    sut: SwitchUnderTest
    if system == "dpdk":
        sut = DpdkSwitch(run_dir, opt.sut_cpu, 1, socks)
    else:
        sut = ModeVSwitch(run_dir, opt.sut_cpu, socks, opt.vswitchd, system)
    fe: FrontEnd | None = None
    t0 = time.monotonic()
    try:
        sut.start()
        fe = FrontEnd(lib, socks)
        sut.after_links_up(1)
        time.sleep(0.5)
        res["event_idx"] = fe.event_idx
        window = CpuWindow([opt.fe_cpu, opt.sut_cpu], [os.getpid(), *([sut.pid] if sut.pid else [])])
        window.start(per_process=True)
        fe.probe(opt.warmup_probes, 50.0)  # caches, page faults, the FDB entry
        samples, st = fe.probe(opt.probes, opt.gap_us)
        res["idle"] = {"latency": summarize_ns(samples), "loop": st}
        fe.stream(0, 0.5)  # warm-up at full speed
        _, st = fe.stream(0, opt.max_seconds)
        max_fps = (st["rx"] - st["late"]) * 1e9 / st["elapsed_ns"] if st["elapsed_ns"] else 0.0
        res["max"] = {"fps": max_fps, "loop": st}
        if max_fps <= 0:
            raise RuntimeError("no frames came through at full speed")
        rate = opt.load * max_fps
        samples, st = fe.stream(rate, opt.load_seconds)
        got = (st["rx"] - st["late"]) * 1e9 / st["elapsed_ns"] if st["elapsed_ns"] else 0.0
        res["load"] = {"target_fps": rate, "fps": got, "latency": summarize_ns(samples), "loop": st}
        res["foreign_top"] = window.top_foreign()  # who else ran meanwhile (any CPU)
        res["cpu"] = window.stop()
        if res["cpu"]["foreign"] > opt.max_foreign:
            res["flagged"] = f"other processes used {res['cpu']['foreign']:.0%} of a CPU"
        if not sut.alive():
            raise RuntimeError("the switch exited during the run")
    except Exception as e:  # noqa: BLE001 - one failed system must not end the benchmark
        res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    finally:
        if fe is not None:
            fe.close()
        sut.stop()
        res["seconds"] = time.monotonic() - t0
        res["run_dir"] = str(run_dir)
    return res


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def summarize(runs: Sequence[dict[str, Any]], systems: Sequence[str], keep_noisy: bool = False
              ) -> list[dict[str, Any]]:
    """Per system: the median over its usable rounds of each figure (flagged
    rounds, where other processes used the CPUs, left out unless keep_noisy)."""
    out = []
    for name in systems:
        ok = [r for r in runs if r["system"] == name and "error" not in r
              and (keep_noisy or "flagged" not in r)]
        row: dict[str, Any] = {"system": name, "rounds": len(ok),
                               "flagged": sum(1 for r in runs if r["system"] == name and "flagged" in r)}
        for cond in ("idle", "load"):
            for q in QUANTILES:
                k = quantile_key(q)
                vals = sorted(r[cond]["latency"][k] for r in ok if k in r[cond]["latency"])
                row[f"{cond}_{k}"] = vals[len(vals) // 2] if vals else None
        mx = sorted(r["max"]["fps"] for r in ok)
        row["max_mfps"] = mx[len(mx) // 2] / 1e6 if mx else None
        ld = sorted(r["load"]["fps"] for r in ok)
        row["load_mfps"] = ld[len(ld) // 2] / 1e6 if ld else None
        st = sorted(r["cpu"]["steal"] for r in ok)
        row["steal"] = st[len(st) // 2] if st else None
        fo = sorted(r["cpu"]["foreign"] for r in ok)
        row["foreign"] = fo[len(fo) // 2] if fo else None  # other processes' CPU on the two CPUs
        row["lost"] = sum(r["idle"]["loop"]["lost"] for r in ok)
        row["errors"] = sum(1 for r in runs if r["system"] == name and "error" in r)
        out.append(row)
    return out


def print_table(summary: Sequence[dict[str, Any]], out: Any = sys.stdout) -> None:
    hdr = ("system", "idle p50 us", "p99", "p99.9", "load p50 us", "p99", "p99.9", "load Mf/s",
           "max Mf/s", "steal", "foreign", "rounds", "flagged", "lost", "errors")
    rows = []
    for s in summary:
        label = s["system"] if s["system"] == "dpdk" else f"vswitch {s['system']}"
        rows.append((label,
                     *(_us(s[f"idle_{quantile_key(q)}"]) for q in QUANTILES),
                     *(_us(s[f"load_{quantile_key(q)}"]) for q in QUANTILES),
                     "-" if s["load_mfps"] is None else f"{s['load_mfps']:.2f}",
                     "-" if s["max_mfps"] is None else f"{s['max_mfps']:.2f}",
                     "-" if s["steal"] is None else f"{s['steal']:.1%}",
                     "-" if s.get("foreign") is None else f"{s['foreign']:.1%}",
                     str(s["rounds"]), str(s.get("flagged", 0) or "-"),
                     str(s["lost"]), str(s["errors"] or "-")))
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows, strict=True)]
    for r in (hdr, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip(), file=out)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def parse_systems(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SYSTEMS]
    if bad or not names:
        raise SystemExit(f"--systems: unknown {', '.join(bad) or '(empty)'}; known: {', '.join(SYSTEMS)}")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="dpdk and/or vswitch modes (default all)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per system, interleaved (default 1)")
    ap.add_argument("--probes", type=int, default=5000, help="no-load probes per run (default 5000)")
    ap.add_argument("--gap-us", type=float, default=2000.0,
                    help="idle between no-load probes, microseconds (default 2000: > adaptive's 1 ms spin)")
    ap.add_argument("--max-seconds", type=float, default=3.0, help="full-speed window (default 3)")
    ap.add_argument("--load", type=float, default=0.5, help="background load, fraction of the maximum (default 0.5)")
    ap.add_argument("--load-seconds", type=float, default=5.0, help="loaded window (default 5)")
    ap.add_argument("--warmup-probes", type=int, default=2000)
    ap.add_argument("--fe-cpu", type=int, default=0, help="the front-end's CPU (default 0)")
    ap.add_argument("--sut-cpu", type=int, default=1, help="the switch's CPU (default 1)")
    ap.add_argument("--max-foreign", type=float, default=0.05,
                    help="flag runs where other processes used more than this fraction of a CPU (default 0.05)")
    ap.add_argument("--keep-noisy", action="store_true", help="include flagged runs in the medians")
    ap.add_argument("--resummarize", type=Path, metavar="JSON", default=None,
                    help="print the table of a results file again (with this version's summary), run nothing")
    ap.add_argument("--vswitchd", type=Path, default=REPO / ".venv" / "bin" / "vswitchd")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    systems = parse_systems(args.systems)
    if args.resummarize:
        doc = json.loads(args.resummarize.read_text())
        for r in doc["runs"]:  # flag again with this run's threshold
            r.pop("flagged", None)
            if "cpu" in r and r["cpu"]["foreign"] > args.max_foreign:
                r["flagged"] = f"other processes used {r['cpu']['foreign']:.0%} of a CPU"
        names = list(dict.fromkeys(r["system"] for r in doc["runs"]))
        print_table(summarize(doc["runs"], [n for n in SYSTEMS if n in names], args.keep_noisy))
        return 0
    if not 0.0 < args.load < 1.0:
        raise SystemExit("--load must be in (0, 1)")
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if "dpdk" in systems and not testpmd_available():
        print("dpdk-testpmd not found (apt-get install dpdk-dev)", file=sys.stderr)
        return 2
    lib = load_helper()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vswitch-latency-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opt = Options(args.fe_cpu, args.sut_cpu, args.probes, args.gap_us, args.max_seconds, args.load,
                  args.load_seconds, args.warmup_probes, args.vswitchd, workdir, args.max_foreign)
    # the front-end loop runs in this process: on its own CPU (the switch's
    # processes are started on theirs by taskset / testpmd's lcore list)
    os.sched_setaffinity(0, {opt.fe_cpu})
    started = dt.datetime.now().astimezone()
    runs: list[dict[str, Any]] = []
    with single_instance():
        idle = idle_check([opt.fe_cpu, opt.sut_cpu])
        print(f"workdir {workdir}; CPUs {opt.fe_cpu},{opt.sut_cpu} busy before start: {idle:.1%} of a CPU",
              flush=True)
        try:
            for rnd in range(args.rounds):
                order = systems if rnd % 2 == 0 else systems[::-1]
                for system in order:
                    r = run_system(system, rnd, lib, opt)
                    runs.append(r)
                    if "error" in r:
                        print(f"round {rnd} {system:<9} ERROR {r['error'].splitlines()[0][:200]}", flush=True)
                        continue
                    i, ld = r["idle"]["latency"], r["load"]["latency"]
                    print(f"round {rnd} {system:<9} idle p50 {_us(i.get('p50_us'))} p99 {_us(i.get('p99_us'))} us; "
                          f"max {r['max']['fps'] / 1e6:.2f} Mf/s; load {r['load']['fps'] / 1e6:.2f} Mf/s "
                          f"p50 {_us(ld.get('p50_us'))} p99 {_us(ld.get('p99_us'))} us; "
                          f"steal {r['cpu']['steal']:.1%} foreign {r['cpu']['foreign']:.1%}  "
                          f"{r['seconds']:.0f}s" + (f" FLAGGED {r['flagged']}" if "flagged" in r else ""),
                          flush=True)
        except KeyboardInterrupt:
            print("interrupted: summarising the runs so far", flush=True)
    summary = summarize(runs, systems, args.keep_noisy)
    print()
    print_table(summary)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"latency-{started.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {
        "benchmark": "latency",
        "started": started.isoformat(),
        "finished": dt.datetime.now().astimezone().isoformat(),
        "host": host_info(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "idle_before_start": idle,
        "frame_bytes": FRAME_LEN,
        "ring_size": RING_SIZE,
        "summary": summary,
        "runs": runs,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults: {path}\nlogs: {workdir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TestPmdError as e:
        print(f"testpmd error: {e}", file=sys.stderr)
        sys.exit(1)
