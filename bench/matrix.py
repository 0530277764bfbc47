"""The performance table's runs (docs/performance.md, "The table"): the
loopback benchmark (bench/loopback.py) over both memory modes, both socket
roles and the frame sizes and queue pairs of the table, in one invocation.

Parts, each one bench.loopback invocation (its pairs interleaved: every
system once per config and pair, odd pairs in the reverse order)::

    huge-client  2 MiB pages, the switch as socket client   CONFIGS  dpdk, ovs-normal, ovs-p2p, [baseline], vswitch
    4k-server    4 KiB pages, the switch as socket server   CONFIGS  dpdk, ovs-normal, ovs-p2p, [baseline], vswitch
    4k-client    4 KiB pages, client                        BAR      dpdk, [baseline], vswitch
    huge-server  2 MiB pages, server                        BAR      dpdk, [baseline], vswitch

so the bar (BAR_CONFIG, 64 B and one queue pair, one worker) is measured in
all four memory x role combinations and the full table in two of them. OVS
is always the socket client (dpdkvhostuserclient) and always on huge pages
of its own (with 4 KiB pages only the generator's memory is on them: the
memory mode is the guest's). The baseline (``--baseline REF`` built under
/tmp, or ``--baseline-tree PATH`` already built, e.g. a worktree of main) is
the before of a before/after: the same invocation, interleaved.

Each part's JSON and plot go to bench/results/table-DATE-TIME/PART.{json,png},
and manifest.json beside them lists the parts, their command lines, the
estimated and the actual duration; ``python -m bench.table`` turns the
directory into the markdown tables. The duration is estimated before the
start (estimate_s: runs x (settle + warm-up + seconds + a start/stop cost
per system measured on the 2 vCPU VMs) and printed with the actual one.

Usage (root, from the repository root)::

    .venv/bin/python -m bench.matrix [--pairs 5] [--seconds 6] [--warmup 2]
        [--configs 64x1,1518x1,64x2,1518x2] [--baseline REF | --baseline-tree PATH]
        [--parts huge-client,4k-server,4k-client,huge-server] [--dry-run]
        [any other bench.loopback option, passed to every part, e.g. --keep-noisy]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.loopback import LOCK_FD_ENV, MODES, single_instance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

DEFAULT_CONFIGS = "64x1,1518x1,64x2,1518x2"
BAR_CONFIG = "64x1"
OVS_FLOWS = ("normal", "p2p")
PART_NAMES = ("huge-client", "4k-server", "4k-client", "huge-server")

# A run's cost beyond settle + warm-up + sampling, seconds, by kind of
# switch and memory mode: start, link-up, stop (the runs' "timings" on the
# 2 vCPU VMs: testpmd as the switch 2-7 s on huge pages, 8-9 s on 4 KiB
# pages, where the generator and it each set up 1 GiB of small pages; OVS
# about 1 s on huge pages, 5-6 s beside a 4 KiB generator; vswitch 1-1.5 s).
RUN_OVERHEAD_S = {("dpdk", "4k"): 8.0, ("dpdk", "huge"): 3.0, ("ovs", "4k"): 5.5, ("ovs", "huge"): 1.5,
                  ("vswitch", "4k"): 1.5, ("vswitch", "huge"): 1.5}
PART_OVERHEAD_S = 10.0  # idle check, huge pages, the baseline tree's check, the summary, the plot


@dataclass(frozen=True)
class Part:
    name: str
    memory: str               # the generator's (and DPDK's) memory: "4k" or "huge"
    role: str                 # the switch's side of the sockets: "server" or "client"
    configs: tuple[str, ...]
    ovs: bool                 # OVS NORMAL and port to port beside DPDK
    baseline: bool            # the before build beside the after

    def systems(self) -> list[str]:
        """The systems of one pair, in bench.loopback's order."""
        out = ["dpdk"]
        if self.ovs:
            out += [f"ovs-{f}" for f in OVS_FLOWS]
        if self.baseline:
            out.append("baseline")
        out.append("vswitch")
        return out


def parse_configs(text: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(c.strip().lower() for c in text.split(",") if c.strip()))
    for c in items:
        size, x, queues = c.partition("x")
        if not (size.isdigit() and x and queues.isdigit()):
            raise SystemExit(f"--configs: {c!r} is not SIZExQUEUES (e.g. 64x1)")
    if not items:
        raise SystemExit("--configs: empty")
    return items


def plan(configs: Sequence[str], *, ovs: bool = True, baseline: bool = False, bar: str = BAR_CONFIG,
         parts: Sequence[str] = PART_NAMES) -> list[Part]:
    """The parts to run, in PART_NAMES order, restricted to *parts*."""
    unknown = [p for p in parts if p not in PART_NAMES]
    if unknown:
        raise SystemExit(f"--parts: unknown {', '.join(unknown)}; from {','.join(PART_NAMES)}")
    full = tuple(configs)
    every = [
        Part("huge-client", "huge", "client", full, ovs, baseline),
        Part("4k-server", "4k", "server", full, ovs, baseline),
        Part("4k-client", "4k", "client", (bar,), False, baseline),
        Part("huge-server", "huge", "server", (bar,), False, baseline),
    ]
    return [p for p in every if p.name in parts]


def kind_of(system: str) -> str:
    return "dpdk" if system == "dpdk" else "ovs" if system.startswith("ovs-") else "vswitch"


def estimate_s(part: Part, pairs: int, seconds: float, warmup: float, settle: float) -> float:
    """Seconds the part takes: every run of every system, config and pair."""
    per_pair = sum(settle + warmup + seconds + RUN_OVERHEAD_S[kind_of(s), part.memory] for s in part.systems())
    return PART_OVERHEAD_S + pairs * len(part.configs) * per_pair


def part_argv(part: Part, args: argparse.Namespace, out: Path) -> list[str]:
    """The bench.loopback command line of one part."""
    argv = [sys.executable, "-m", "bench.loopback",
            "--pairs", str(args.pairs), "--seconds", str(args.seconds), "--warmup", str(args.warmup),
            "--settle", str(args.settle), "--configs", ",".join(part.configs),
            "--memory", part.memory, "--socket-role", part.role, "--workers", str(args.workers),
            "--out", str(out)]
    if args.mode:
        argv += ["--mode", args.mode]
    if part.ovs:
        argv += ["--ovs", ",".join(OVS_FLOWS)]
    if part.baseline:
        argv += (["--baseline-tree", str(args.baseline_tree)] if args.baseline_tree
                 else ["--baseline", args.baseline])
    if args.vswitchd:
        argv += ["--vswitchd", str(args.vswitchd)]
    return argv + list(getattr(args, "passthrough", []))


def minutes(s: float) -> str:
    return f"{s / 60:.1f} min"


class Stop(Exception):
    """SIGTERM or SIGHUP: the current part summarises, no other starts."""


def run_part(argv: list[str], lock_fd: int | None = None) -> tuple[int, bool]:
    """Run one part to its end; (exit status, interrupted). Ctrl-C reaches
    the part too (same process group): it stops its run, summarises, gives
    its huge pages back, and no further part starts. SIGTERM and SIGHUP are
    passed on to it as SIGTERM, which it treats the same way. *lock_fd*, the
    benchmark lock this process holds, is passed down (loopback.LOCK_FD_ENV):
    no other benchmark starts between two parts."""
    env = dict(os.environ)
    fds: tuple[int, ...] = ()
    if lock_fd is not None:
        env[LOCK_FD_ENV] = str(lock_fd)
        fds = (lock_fd,)
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, env=env, pass_fds=fds)

    def forward(signum: int, frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        raise Stop

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
    interrupted = False
    try:
        while True:
            try:
                return proc.wait(), interrupted
            except (KeyboardInterrupt, Stop):
                interrupted = True  # wait on: the part writes its results first
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5, help="interleaved pairs per config (default 5)")
    ap.add_argument("--seconds", type=int, default=6, help="sampling seconds per run (default 6)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run (default 2)")
    ap.add_argument("--settle", type=float, default=1.0, help="pause after links up (default 1)")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS,
                    help=f"the table's configs, in huge-client and 4k-server (default {DEFAULT_CONFIGS})")
    ap.add_argument("--bar-config", default=BAR_CONFIG,
                    help=f"the config of 4k-client and huge-server (default {BAR_CONFIG})")
    ap.add_argument("--parts", default=",".join(PART_NAMES), help=f"from {','.join(PART_NAMES)}")
    ap.add_argument("--no-ovs", action="store_true", help="leave OVS-DPDK out")
    ap.add_argument("--baseline", metavar="REF", default=None, help="the before build: this commit, built under /tmp")
    ap.add_argument("--baseline-tree", metavar="PATH", type=Path, default=None,
                    help="the before build: this already built checkout")
    ap.add_argument("--workers", type=int, default=1, help="vswitch's datapath workers (default 1)")
    ap.add_argument("--mode", choices=MODES, default=None, help="vswitch's datapath mode (default: its own)")
    ap.add_argument("--vswitchd", type=Path, default=None, help="the after build's vswitchd (bench.loopback's default)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--dry-run", action="store_true", help="print the parts, their commands and estimates only")
    # anything else goes to every part's bench.loopback (e.g. --keep-noisy, --gen-cpu 0)
    args, args.passthrough = ap.parse_known_args(argv)
    if args.baseline and args.baseline_tree:
        raise SystemExit("--baseline and --baseline-tree: one baseline at a time")
    configs = parse_configs(args.configs)
    bar = parse_configs(args.bar_config)[0]
    parts = plan(configs, ovs=not args.no_ovs, baseline=bool(args.baseline or args.baseline_tree), bar=bar,
                 parts=[p.strip() for p in args.parts.split(",") if p.strip()])
    started = dt.datetime.now().astimezone()
    outdir = args.results / f"table-{started.strftime('%Y%m%d-%H%M%S')}"
    estimates = [estimate_s(p, args.pairs, args.seconds, args.warmup, args.settle) for p in parts]
    total_est = sum(estimates)
    for p, est in zip(parts, estimates, strict=True):
        print(f"part {p.name:<12} {','.join(p.configs):<24} {' '.join(p.systems()):<48} "
              f"about {minutes(est)}", flush=True)
    print(f"table: {len(parts)} parts, {args.pairs} pairs, {args.seconds} s samples after {args.warmup} s "
          f"warm-up: estimated {minutes(total_est)}", flush=True)
    if args.dry_run:
        for p in parts:
            print(" ".join(part_argv(p, args, outdir / f"{p.name}.json")))
        return 0
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    outdir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "benchmark": "table", "started": started.isoformat(), "estimated_s": round(total_est),
        "pairs": args.pairs, "seconds": args.seconds, "warmup": args.warmup, "settle": args.settle,
        "configs": list(configs), "bar_config": bar, "workers": args.workers, "mode": args.mode,
        "baseline": args.baseline or (str(args.baseline_tree) if args.baseline_tree else None),
        "parts": [],
    }
    manifest_path = outdir / "manifest.json"
    with single_instance() as lock_fd:
        status = run_parts(parts, estimates, args, outdir, manifest, lock_fd)
    manifest["finished"] = dt.datetime.now().astimezone().isoformat()
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"table: {minutes(manifest['actual_s'])} (estimated {minutes(total_est)}); {manifest_path}\n"
          f"the tables: python -m bench.table {outdir}", flush=True)
    return status


def run_parts(parts: Sequence[Part], estimates: Sequence[float], args: argparse.Namespace, outdir: Path,
              manifest: dict[str, Any], lock_fd: int) -> int:
    """Run the parts one after the other, the manifest rewritten after each."""
    manifest_path = outdir / "manifest.json"
    t_all = time.monotonic()
    manifest["actual_s"] = 0
    status = 0
    for p, est in zip(parts, estimates, strict=True):
        out = outdir / f"{p.name}.json"
        argv_p = part_argv(p, args, out)
        print(f"== table part {p.name} ({dt.datetime.now(dt.timezone.utc):%H:%M:%S} UTC, "
              f"about {minutes(est)})", flush=True)
        t0 = time.monotonic()
        rc, interrupted = run_part(argv_p, lock_fd)
        took = time.monotonic() - t0
        print(f"== table part {p.name}: {minutes(took)} (estimated {minutes(est)}), exit {rc}", flush=True)
        manifest["parts"].append({**asdict(p), "argv": argv_p[1:], "json": out.name, "estimated_s": round(est),
                                  "actual_s": round(took), "exit": rc, "interrupted": interrupted})
        manifest["actual_s"] = round(time.monotonic() - t_all)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            subprocess.run([sys.executable, "-m", "bench.plot", str(out)], cwd=REPO, check=False)
        status = status or rc
        if interrupted:
            print("interrupted: no further part starts", flush=True)
            status = status or 130
            break
    manifest["actual_s"] = round(time.monotonic() - t_all)
    return status


if __name__ == "__main__":
    sys.exit(main())
