"""Uplink benchmark: frames/s from a virtio-user port through the switch into
the kernel's TAP, vswitch against DPDK testpmd forwarding the same traffic
between a vhost port and a TAP (its net_tap PMD), alternately in one run;
plus the kernel's own ceiling: testpmd's net_tap PMD writing into a TAP as
fast as it can (txonly) on the switch's CPU.

    .venv/bin/python bench/uplink.py [--pairs 3] [--seconds 8] [--size 64]

G (CPU 0): testpmd, one net_virtio_user port, txonly. S (CPU 1): the switch.
The figure is the TAP's rx_packets rate (frames the kernel took in), read
from sysfs. Note: this kernel has no vhost-net, so it cannot be the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers.testpmd import TestPmd, vhost_vdev, virtio_user_vdev  # noqa: E402
from tests.switch import Vswitchd  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def rx_packets(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/statistics/rx_packets").read_text())


def wait_link(ifname: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not Path(f"/sys/class/net/{ifname}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ifname} did not appear")
        time.sleep(0.1)


def measure(ifname: str, warmup: float, seconds: float) -> float:
    time.sleep(warmup)
    before, t0 = rx_packets(ifname), time.monotonic()
    time.sleep(seconds)
    return (rx_packets(ifname) - before) / (time.monotonic() - t0)


def generator(sock: str, size: int, work: Path) -> TestPmd:
    gen = TestPmd([virtio_user_vdev(0, sock)], cpus=(0,), forward_mode="txonly", txpkts=size,
                  total_mbufs=32768, workdir=work, name="gen")
    gen.start()
    gen.wait_links_up([0], timeout=30)
    gen.start_fwd()
    return gen


def run(kind: str, size: int, work: Path, warmup: float, seconds: float) -> float:
    work.mkdir(parents=True)
    ifname = f"vsb{os.getpid() % 10000}{kind[0]}"
    sock = str(work / "gen.sock")
    if kind == "vswitch":
        sut = Vswitchd(work / "switch", {"gen": {"type": "vhost-user", "socket": sock},
                                         "up": {"type": "tap", "ifname": ifname}}, cpus="1")
        sut.start()
    elif kind == "dpdk":
        sut = TestPmd([vhost_vdev(0, sock), f"net_tap0,iface={ifname}"], cpus=(1,),
                      total_mbufs=32768, workdir=work, name="sut")
        sut.start()
        sut.start_fwd()
    else:  # kernel ceiling: a plain writer into the TAP, on the switch's CPU
        sut = TestPmd([f"net_tap0,iface={ifname}"], cpus=(1,), forward_mode="txonly", txpkts=size,
                      total_mbufs=32768, workdir=work, name="writer")
        sut.start()
        sut.start_fwd()
    gen = None
    try:
        wait_link(ifname)
        if kind != "kernel":
            gen = generator(sock, size, work)
        return measure(ifname, warmup, seconds)
    finally:
        if gen:
            gen.stop()
        sut.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vswitch-uplink-"))
    runs: dict[str, list[float]] = {"dpdk": [], "vswitch": [], "kernel": []}
    ratios = []
    for pair in range(args.pairs):
        for kind in ("dpdk", "vswitch"):
            rate = run(kind, args.size, work / f"p{pair}-{kind}", args.warmup, args.seconds)
            runs[kind].append(rate)
            print(f"pair {pair} {kind:8} {rate / 1e6:6.3f} Mframes/s into the kernel", flush=True)
        ratios.append(runs["vswitch"][-1] / runs["dpdk"][-1])
    runs["kernel"].append(run("kernel", args.size, work / "kernel", args.warmup, args.seconds))
    print(f"kernel ceiling (testpmd net_tap txonly on CPU 1): {runs['kernel'][0] / 1e6:.3f} Mframes/s")
    summary = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in runs.items()}
    summary["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    print(f"\n{args.size} B: DPDK vhost->net_tap {summary['dpdk']['median'] / 1e6:.3f}, vswitch "
          f"{summary['vswitch']['median'] / 1e6:.3f} Mframes/s, ratio {summary['ratio']['median']:.2f} "
          f"[{summary['ratio']['min']:.2f}..{summary['ratio']['max']:.2f}], kernel ceiling "
          f"{summary['kernel']['median'] / 1e6:.3f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"uplink-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"benchmark": "uplink", "finished": datetime.now(timezone.utc).isoformat(),
                               "args": vars(args), "runs": runs, "summary": summary}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
