"""Self-check of the testpmd harness against DPDK's own vhost PMD (no vswitch needed).

Run as root from the repository root::

    .venv/bin/python -m tests.harness.peers.selfcheck [--workdir DIR] [--seconds 3]

Steps (each timed):

1. backend: testpmd with two ``net_vhost`` ports (listening, ``client=0``,
   queues=2, io forwarding) on CPU 1;
2. frontend: testpmd with two ``net_virtio_user`` ports (``server=0``,
   queues=2) on CPU 0; links up; ``start tx_first 8``; rates for a few
   seconds; ``stop``; both queue pairs of both ports must have carried frames
   (forward stats per stream and xstats per queue);
3. byte-for-byte: `verify_delivery` A->B and B->A with 2 queues through the
   backend, and a negative control (backend in ``macswap`` mode must be
   reported as corrupting every frame);
4. reversed roles: frontend listens (``server=1``) and is started first,
   backend connects (``client=1``); traffic on both queue pairs; then a
   byte-for-byte check through the same (reconnecting) backend.

Exit status 0 when every step passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness.peers.testpmd import (
    TestPmd,
    testpmd_available,
    verify_delivery,
    vhost_vdev,
    virtio_user_vdev,
)

QUEUES = 2
FRONT_CPU = 0
BACK_CPU = 1


class Report:
    """Collects timed steps and their outcome."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, bool, str]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        notes: list[str] = []
        t0 = time.monotonic()
        print(f"--- {name}", flush=True)
        try:
            yield notes
        except Exception as e:  # record and continue with the next step
            dt = time.monotonic() - t0
            traceback.print_exc()
            self.rows.append((name, dt, False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            print(f"    FAIL after {dt:.2f}s", flush=True)
        else:
            dt = time.monotonic() - t0
            self.rows.append((name, dt, True, "; ".join(notes)))
            print(f"    ok in {dt:.2f}s {'; '.join(notes)}", flush=True)

    @property
    def ok(self) -> bool:
        return all(r[2] for r in self.rows)

    def print(self) -> None:
        print("\n=== summary")
        w = max(len(r[0]) for r in self.rows)
        for name, dt, ok, note in self.rows:
            print(f"{'PASS' if ok else 'FAIL'}  {name:<{w}}  {dt:7.2f}s  {note}")


def wait_path(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout}s")
        time.sleep(0.05)


def traffic(front: TestPmd, seconds: float, notes: list[str]) -> None:
    """tx_first 8, sample RX rates, stop, and require frames on every queue of both ports."""
    front.start_fwd(tx_first=8)
    front.port_stats()  # rate baseline
    rates = []
    for _ in range(max(1, round(seconds))):
        time.sleep(1.0)
        st = front.port_stats()
        rates.append(sum(s.rx_pps for s in st.values()))
    fwd = front.stop_fwd()
    notes.append("RX Mpps " + "/".join(f"{r / 1e6:.2f}" for r in rates))
    for port in (0, 1):
        per_q = fwd.rx_by_queue(port)
        xs = front.xstats(port)
        xq = {q: xs.get(f"rx_q{q}_good_packets", 0) for q in range(QUEUES)}
        notes.append(f"port {port} rx per queue fwd={per_q} xstats={xq}")
        for q in range(QUEUES):
            if per_q.get(q, 0) <= 0 or xq[q] <= 0:
                raise AssertionError(f"port {port} queue {q} carried no frames: fwd={per_q} xstats={xq}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None, help="logs and pcaps (default: new temp dir)")
    ap.add_argument("--seconds", type=float, default=3.0, help="traffic seconds per traffic step")
    ap.add_argument("--count", type=int, default=500, help="frames per queue in byte checks")
    args = ap.parse_args(argv)
    if not testpmd_available():
        print("dpdk-testpmd not found", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    wd: Path = args.workdir or Path(tempfile.mkdtemp(prefix="testpmd-selfcheck-"))
    wd.mkdir(parents=True, exist_ok=True)
    print(f"workdir {wd}")
    rep = Report()
    procs: list[TestPmd] = []

    def new(*a: object, **kw: object) -> TestPmd:
        tp = TestPmd(*a, **kw)  # type: ignore[arg-type]
        procs.append(tp)
        return tp

    try:
        # ---------------- backend listens, frontend connects ----------------
        d1 = wd / "normal"
        d1.mkdir(exist_ok=True)
        sa, sb = d1 / "a.sock", d1 / "b.sock"
        for s in (sa, sb):
            s.unlink(missing_ok=True)
        back = new(
            [vhost_vdev(0, sa, queues=QUEUES), vhost_vdev(1, sb, queues=QUEUES)],
            rxq=QUEUES, cpus=[BACK_CPU], workdir=d1, name="backend", total_mbufs=32768, mem_mb=512,
        )
        front: TestPmd | None = None
        with rep.step("backend start (vhost PMD, client=0, queues=2, CPU 1)") as n:
            back.start()
            back.start_fwd()
            n.append(f"prompt after {back.startup_seconds:.2f}s")
        with rep.step("frontend start (virtio-user, server=0, queues=2, CPU 0) + links up") as n:
            front = new(
                [virtio_user_vdev(0, sa, queues=QUEUES), virtio_user_vdev(1, sb, queues=QUEUES)],
                rxq=QUEUES, cpus=[FRONT_CPU], txpkts=64, workdir=d1, name="frontend",
                total_mbufs=32768, mem_mb=512,
            )
            front.start()
            n.append(f"prompt after {front.startup_seconds:.2f}s")
            t = time.monotonic()
            front.wait_links_up([0, 1], 15)
            n.append(f"links up after {time.monotonic() - t:.2f}s more")
            back.wait_vrings_enabled([sa, sb], 2 * QUEUES)
            n.append(f"all vrings enabled at the backend after {time.monotonic() - t:.2f}s")
            neg = back.negotiation()
            n.append(
                "negotiated "
                + ", ".join(
                    f"{Path(k).name}: features={v.virtio_features:#x} protocol={v.protocol_features:#x}"
                    for k, v in neg.items()
                    if v.virtio_features is not None and v.protocol_features is not None
                )
            )
        if front is not None and front.ready:
            with rep.step(f"traffic tx_first 8, {args.seconds:.0f}s, per-queue stats") as n:
                traffic(front, args.seconds, n)
            with rep.step("frontend stop") as n:
                rc = front.stop()
                n.append(f"rc={rc}")
        for direction, (si, se) in (("A->B", (sa, sb)), ("B->A", (sb, sa))):
            with rep.step(f"byte-for-byte {direction}, 2 queues, {args.count} frames/queue, 60..1514 B") as n:
                res = verify_delivery(
                    virtio_user_vdev(0, si, queues=QUEUES),
                    virtio_user_vdev(1, se, queues=QUEUES),
                    queues=QUEUES, count=args.count, workdir=d1, name=f"delivery_{direction[0]}{direction[-1]}",
                    ready=lambda: back.wait_vrings_enabled([sa, sb], 2 * QUEUES),
                )
                n.append(f"{res.received} map={res.queue_map} in {res.elapsed:.2f}s")
                res.check()
        with rep.step("byte-for-byte negative control (backend macswap must fail)") as n:
            back.stop_fwd()
            back.set_fwd("macswap")
            back.start_fwd()
            res = verify_delivery(
                virtio_user_vdev(0, sa, queues=QUEUES), virtio_user_vdev(1, sb, queues=QUEUES),
                queues=QUEUES, count=50, workdir=d1, name="delivery_macswap",
                ready=lambda: back.wait_vrings_enabled([sa, sb], 2 * QUEUES),
            )
            n.append(f"corrupted={len(res.corrupted)} e.g. {res.corrupted[:1]}")
            if res.ok or len(res.corrupted) != 50 * QUEUES:
                raise AssertionError("macswap not detected:\n" + res.describe())
            back.stop_fwd()
            back.set_fwd("io")
        with rep.step("backend stop") as n:
            n.append(f"rc={back.stop()}")

        # ---------------- frontend listens, backend connects ----------------
        d2 = wd / "reversed"
        d2.mkdir(exist_ok=True)
        ra, rb = d2 / "a.sock", d2 / "b.sock"
        for s in (ra, rb):
            s.unlink(missing_ok=True)
        rfront = new(
            [virtio_user_vdev(0, ra, queues=QUEUES, server=True),
             virtio_user_vdev(1, rb, queues=QUEUES, server=True)],
            rxq=QUEUES, cpus=[FRONT_CPU], txpkts=64, workdir=d2, name="frontend", total_mbufs=32768, mem_mb=512,
        )
        rback = new(
            [vhost_vdev(0, ra, queues=QUEUES, client=True), vhost_vdev(1, rb, queues=QUEUES, client=True)],
            rxq=QUEUES, cpus=[BACK_CPU], workdir=d2, name="backend", total_mbufs=32768, mem_mb=512,
        )
        with rep.step("reversed: frontend (server=1) launched first, socket A appears") as n:
            rfront.start(wait=False)
            t = time.monotonic()
            wait_path(ra, 30)
            n.append(f"socket A after {time.monotonic() - t:.2f}s")
        with rep.step("reversed: backend (client=1) start, frontend ready, links up") as n:
            rback.start()
            rback.start_fwd()
            n.append(f"backend prompt after {rback.startup_seconds:.2f}s")
            rfront.wait_ready(60)
            n.append(f"frontend prompt {rfront.startup_seconds:.2f}s after its launch")
            rfront.wait_links_up([0, 1], 15)
            rback.wait_vrings_enabled([ra, rb], 2 * QUEUES)
        if rfront.ready:
            with rep.step(f"reversed: traffic tx_first 8, {args.seconds:.0f}s, per-queue stats") as n:
                traffic(rfront, args.seconds, n)
        with rep.step("reversed: frontend stop") as n:
            n.append(f"rc={rfront.stop()}")
        with rep.step("reversed: byte-for-byte A->B via reconnecting backend (server=1 ports)") as n:
            res = verify_delivery(
                virtio_user_vdev(0, ra, queues=QUEUES, server=True),
                virtio_user_vdev(1, rb, queues=QUEUES, server=True),
                queues=QUEUES, count=args.count, workdir=d2, name="delivery_AB",
                ready=lambda: rback.wait_vrings_enabled([ra, rb], 2 * QUEUES),
            )
            n.append(f"{res.received} map={res.queue_map} in {res.elapsed:.2f}s")
            res.check()
        with rep.step("reversed: backend stop") as n:
            n.append(f"rc={rback.stop()}")
    finally:
        for tp in procs:
            tp.stop()
    rep.print()
    print(f"logs in {wd}")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
