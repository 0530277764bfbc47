"""VM-to-VM TCP: iperf3 between two QEMU guests through vswitch, against the
same guests through DPDK's vhost PMD (testpmd, io forwarding, tso=1), run
alternately in one invocation.

    .venv/bin/python -m bench.iperf [--pairs 3] [--seconds 10]

Guests run under TCG here (no usable KVM), so their CPUs are the bottleneck
and the figure is a ratio between back-ends, not a line rate. Prints a table
and writes bench/results/iperf-*.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from tests.harness.guests import QemuGuest, build_image, default_cache_dir
from tests.harness.peers.testpmd import TestPmd, vhost_vdev
from tests.harness.switch import Vswitchd

RESULTS = ROOT / "bench" / "results"


def run_pair(kind: str, image, work: Path, seconds: int) -> float:
    """Boot two guests on the back-end `kind`, return A->B iperf3 Gbit/s."""
    work.mkdir(parents=True)
    socks = [str(work / "a.sock"), str(work / "b.sock")]
    if kind == "vswitch":
        backend = Vswitchd(work / "switch", {
            "a": {"type": "vhost-user", "socket": socks[0]},
            "b": {"type": "vhost-user", "socket": socks[1]}}, cpus="1")
        backend.start()
    else:
        # DPDK's vhost PMD with TSO so that it, too, hands GSO frames on
        backend = TestPmd([vhost_vdev(0, socks[0], queues=1, extra={"tso": 1}),
                           vhost_vdev(1, socks[1], queues=1, extra={"tso": 1})],
                          cpus=(1,), total_mbufs=32768, workdir=work, mbuf_size=9000)
        backend.start()
        backend.start_fwd()
    try:
        a = QemuGuest("a", image, socks[0], mac="52:54:00:00:03:01", ip="10.3.0.1/24", workdir=work / "a")
        b = QemuGuest("b", image, socks[1], mac="52:54:00:00:03:02", ip="10.3.0.2/24", workdir=work / "b")
        with a, b:
            a.wait_booted(240)
            b.wait_booted(240)
            a.ping("10.3.0.2", count=3, interval=0.3)
            b.iperf3_server()
            return a.iperf3_client("10.3.0.2", seconds=seconds).gbps
    finally:
        backend.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    image = build_image(default_cache_dir())
    work = Path(tempfile.mkdtemp(prefix="vswitch-iperf-"))
    runs: dict[str, list[float]] = {"dpdk": [], "vswitch": []}
    ratios = []
    for pair in range(args.pairs):
        for kind in ("dpdk", "vswitch"):
            gbps = run_pair(kind, image, work / f"p{pair}-{kind}", args.seconds)
            runs[kind].append(gbps)
            print(f"pair {pair} {kind:8} {gbps:6.2f} Gbit/s", flush=True)
        ratios.append(runs["vswitch"][-1] / runs["dpdk"][-1])
    summary = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in runs.items()}
    summary["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    print(f"\nDPDK vhost PMD (tso=1) {summary['dpdk']['median']:.2f} Gbit/s, vswitch "
          f"{summary['vswitch']['median']:.2f} Gbit/s, ratio {summary['ratio']['median']:.2f} "
          f"[{summary['ratio']['min']:.2f}..{summary['ratio']['max']:.2f}] over {args.pairs} pairs")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"iperf-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"benchmark": "iperf", "finished": datetime.now(timezone.utc).isoformat(),
                               "args": vars(args), "runs": runs, "summary": summary}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
