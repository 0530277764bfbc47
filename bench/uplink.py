"""Uplink benchmark: frames/s from a virtio-user port through the switch into
the kernel's TAP, vswitch against DPDK testpmd forwarding the same traffic
between a vhost port and a TAP (its net_tap PMD), interleaved in one run;
plus the kernel's own ceiling: testpmd's net_tap PMD writing into a TAP as
fast as it can (txonly) on the switch's CPU.

    .venv/bin/python -m bench.uplink [--pairs 3] [--seconds 8] [--sizes 64,1514]
                                     [--systems dpdk,vswitch,vswitch-write]

Systems: "dpdk" (testpmd: vhost PMD -> net_tap PMD, one writev per frame),
"vswitch" (datapath.tap_io: io_uring, the default: a burst of writes per
system call) and "vswitch-write" (tap_io: write: one syscall per frame, the
same pattern as DPDK's net_tap). Each pair runs the systems once, in the
given order on even pairs and reversed on odd ones; the figure per pair is
the ratio of each vswitch system to DPDK, reported as median [min..max].

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

from tests.harness.peers.testpmd import TestPmd, vhost_vdev, virtio_user_vdev
from tests.harness.switch import Vswitchd

RESULTS = ROOT / "bench" / "results"
SYSTEMS = ("dpdk", "vswitch", "vswitch-write")
TAP_IO = {"vswitch": "io_uring", "vswitch-write": "write"}


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


def switch_config(kind: str, sock: str, ifname: str) -> tuple[dict, dict]:
    """(ports, extra) of the vswitch system `kind`."""
    ports = {"gen": {"type": "vhost-user", "socket": sock},
             "up": {"type": "tap", "ifname": ifname}}
    return ports, {"datapath": {"workers": 1, "tap_io": TAP_IO[kind]}}


def run(kind: str, size: int, work: Path, warmup: float, seconds: float) -> float:
    work.mkdir(parents=True)
    ifname = f"vsb{os.getpid() % 10000}{kind[0]}"
    sock = str(work / "gen.sock")
    if kind in TAP_IO:
        ports, extra = switch_config(kind, sock, ifname)
        sut = Vswitchd(work / "switch", ports, cpus="1", extra=extra)
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


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def pair_order(systems: list[str], pair: int) -> list[str]:
    """Even pairs in the given order, odd pairs reversed: a drift of the
    machine's speed then favours no system's position."""
    return list(systems) if pair % 2 == 0 else list(systems)[::-1]


def summarize(runs: dict[str, list[float]]) -> dict[str, dict]:
    """Medians per system, and per-pair ratios of each vswitch system to DPDK
    (runs[k][i] is pair i of system k)."""
    out: dict[str, dict] = {k: stats(v) for k, v in runs.items() if v}
    for k in runs:
        if k in TAP_IO and runs.get("dpdk"):
            ratios = [a / b for a, b in zip(runs[k], runs["dpdk"]) if b > 0]
            out[f"{k}/dpdk"] = stats(ratios)
    if runs.get("vswitch") and runs.get("vswitch-write"):
        out["vswitch/vswitch-write"] = stats([a / b for a, b in zip(runs["vswitch"], runs["vswitch-write"])
                                              if b > 0])
    return out


def fmt(s: dict | None, scale: float = 1.0) -> str:
    if s is None:
        return "-"
    return f"{s['median'] / scale:.3f} [{s['min'] / scale:.3f}..{s['max'] / scale:.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--sizes", default="64", help="frame sizes, comma-separated (default 64)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)}")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="vswitch-uplink-"))
    results: dict[str, dict] = {}
    for size in sizes:
        runs: dict[str, list[float]] = {k: [] for k in systems}
        for pair in range(args.pairs):
            for kind in pair_order(systems, pair):
                rate = run(kind, size, work / f"{size}-p{pair}-{kind}", args.warmup, args.seconds)
                runs[kind].append(rate)
                print(f"{size} B pair {pair} {kind:13} {rate / 1e6:6.3f} Mframes/s into the kernel",
                      flush=True)
        kernel = run("kernel", size, work / f"{size}-kernel", args.warmup, args.seconds)
        print(f"{size} B kernel ceiling (testpmd net_tap txonly, a plain writer, on CPU 1): "
              f"{kernel / 1e6:.3f} Mframes/s", flush=True)
        summary = summarize(runs)
        summary["kernel"] = stats([kernel])
        results[str(size)] = {"runs": {**runs, "kernel": [kernel]}, "summary": summary}
    print("\nsize  system         Mframes/s median [min..max]   ratio per pair median [min..max]")
    for size, r in results.items():
        s = r["summary"]
        for k in systems:
            ratio = fmt(s.get(f"{k}/dpdk")) if k in TAP_IO else ""
            print(f"{size:>5} {k:14} {fmt(s.get(k), 1e6):29} {('x DPDK ' + ratio) if ratio else ''}")
        if "vswitch/vswitch-write" in s:
            print(f"{size:>5} io_uring/write {'':29} {fmt(s['vswitch/vswitch-write'])}")
        print(f"{size:>5} kernel ceiling {fmt(s['kernel'], 1e6)}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"uplink-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"benchmark": "uplink", "finished": datetime.now(timezone.utc).isoformat(),
                               "args": vars(args), "sizes": results}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
