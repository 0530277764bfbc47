"""Scale run: the loopback benchmark (bench/loopback.py) with one and two
vswitch workers, one and two queue pairs (docs/performance.md, "Scale").

The machine has two CPUs, so this can only show the direction:

* ``off``: one worker on CPU sut (bench.loopback's own vswitch);
* ``2workers``: two workers, worker 0 on CPU sut and worker 1 on CPU gen,
  the generator's CPU: worker 1 shares its core with testpmd's forwarding
  lcore, so it takes cycles from the generator it serves;
* ``2workers1core``: two workers both on CPU sut (time-shared: what
  oversubscribing a core costs).

DPDK's vhost PMD (one lcore on CPU sut) runs in each pair as the reference,
as in every loopback run; each vswitch variant's ratio to ``off`` of the same
pair is the scaling figure. The variants are registered into bench.loopback
at run time (a YAML fragment with a marker the runner here turns into the
``datapath`` settings), so the run is bench.loopback's, interleaving and
noise flags included.

Usage (root, from the repository root)::

    .venv/bin/python -m bench.scale [--pairs 3] [--seconds 5] [any bench.loopback option]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench import loopback

WORKERS_KEY = "_scale_workers"  # marker in a variant's fragment; never reaches the YAML
SHARED_KEY = "_scale_gen_cpu"   # worker 1 on the generator's CPU


def _two_workers(port: int) -> dict[str, Any]:
    return {WORKERS_KEY: 2, SHARED_KEY: True}


def _two_workers_one_core(port: int) -> dict[str, Any]:
    return {WORKERS_KEY: 2, SHARED_KEY: False}


class ScaleVSwitch(loopback.VSwitch):
    """bench.loopback's vswitchd runner, reading the worker count (and where
    the second worker runs) from the variant's marker keys."""

    gen_cpu = 0  # set by main from --gen-cpu

    def __init__(self, run_dir: Path, cpu: int, queues: int, socks: tuple[Path, Path], vswitchd: Path,
                 port_extra: Any = ({}, {}), **kwargs: Any) -> None:
        extras = [dict(e) for e in port_extra]
        workers = int(extras[0].get(WORKERS_KEY, 1))
        shared = bool(extras[0].get(SHARED_KEY, False))
        for e in extras:
            e.pop(WORKERS_KEY, None)
            e.pop(SHARED_KEY, None)
        # the variant's worker count and pinning; the rest (client, mode) as bench.loopback passes it
        kwargs.pop("workers", None)
        kwargs.pop("cpus", None)
        cpus = [cpu, self.gen_cpu] if shared else [cpu]
        super().__init__(run_dir, cpu, queues, socks, vswitchd, tuple(extras), workers=workers, cpus=cpus,
                         **kwargs)
        self.shared = shared
        self.sut_cpu = cpu
        if self.workers > 1 and self.shared:
            # taskset takes a list; the daemon pins worker i to cpus[i % len]
            self.cpu = f"{cpu},{self.gen_cpu}"  # type: ignore[assignment]


def install() -> None:
    """Register the variants and the runner in bench.loopback (this process only)."""
    loopback.VARIANTS.setdefault("2workers", _two_workers)
    loopback.VARIANTS.setdefault("2workers1core", _two_workers_one_core)
    loopback.VSwitch = ScaleVSwitch  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--gen-cpu" in argv:
        ScaleVSwitch.gen_cpu = int(argv[argv.index("--gen-cpu") + 1])
    install()
    defaults = {"--configs": "64x1,64x2", "--variants": "off,2workers,2workers1core",
                "--pairs": "3", "--seconds": "5", "--warmup": "2"}
    for k, v in defaults.items():
        if k not in argv:
            argv += [k, v]
    return loopback.main(argv)


if __name__ == "__main__":
    sys.exit(main())
