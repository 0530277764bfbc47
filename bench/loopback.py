"""Loopback benchmark: vswitch against DPDK's vhost PMD (docs/performance.md, "Loopback").

Topology (one run)::

    CPU gen: G, dpdk-testpmd, io forward         CPU sut: S, the switch under test
      P0 net_virtio_user0 --- a.sock ---  port a  (S listens, G connects;
      P1 net_virtio_user1 --- b.sock ---  port b   --socket-role client: the reverse)

G injects ``start tx_first 8`` (8 bursts x 32 frames per port and queue), then
io-forwards P0->P1 and P1->P0 while S forwards a->b and b->a, so the frames
circulate. The figure is G's RX rate on P0 + P1: frames per second the switch
delivered, both directions summed. Each run: a settle pause after the links
are up, ``--warmup`` seconds, then one sample per second for ``--seconds``
(testpmd's own "Rx-pps since last show"); the run's figure is the median.

S is either DPDK 22.11's vhost PMD (``dpdk-testpmd``, io forward: the
reference), OVS-DPDK (``--ovs``) or vswitch (``vswitchd --config FILE``, under ``taskset``), run
alternately: for each pair, for each config, reference then vswitch (odd pairs
in the reverse order, so that a drift favours neither). Runs in
which other processes used the two CPUs (busy time in /proc/stat minus the
benchmark's own processes from /proc/PID/stat) are flagged and left out of
the medians (``--keep-noisy`` keeps them). The ratio is per pair
(vswitch / reference of the same config and pair), summarised by its median.

``--baseline REF`` adds a third system, "baseline": vswitchd of an earlier
commit (built once in a throw-away git worktree under /tmp with its own
``make build``, reused while it is at REF), interleaved as dpdk, baseline,
vswitch for each pair and config (odd pairs reversed); each vswitch system is then also reported
as a per-pair ratio to the baseline (the tenant features cost nothing when off:
the switch stays within 5 % of the release before them, ``--baseline cefd30a``).
``--baseline-tree PATH`` makes an already built checkout the baseline instead
(e.g. a git worktree of main after ``make build``): nothing is built, it runs
with PATH first on the Python path (its own .venv's interpreter if it has
one), and the results name its commit and whether its files differ from it.

``--workers N`` and ``--mode poll|adaptive|event`` set the ``datapath:`` of
vswitch's generated config (default: one worker, the daemon's default mode);
bench/latency.py and bench/scale.py pass theirs the same way.

``--variants off,policing,...`` runs the current vswitch once per variant, a
named YAML fragment applied to both ports (see VARIANTS): "off" is the plain
config; the others turn tenant features (docs/tenants.md) on with limits above what the loop
can reach, so the figure is their cost, not their effect. A variant's ratio
to "off" of the same pair is its cost. The generator's ports have fixed MACs
(GEN_MACS) so that "security" can allow exactly the sources it sends from.

``--topology oneway`` (``loop`` stays the default): the loop's rate is
bimodal on this machine -- the same build gives ~3.6 or ~9.3 Mframes/s from
one run to the next. Oneway was meant to rule out the circulation (a
population of frames shrunk by early losses) as the cause; it does: nothing
circulates there, yet the same states remain (result
loopback-oneway-20261126-011743: 64 B, baseline and vswitch alike ~3.5-4 or
~8-10.5 Mframes/s, mostly steady for a whole run, sometimes switching within
one; DPDK at 1518 B ~2.2 or ~5.5). The states belong to the machine, not to
the topology, and a per-pair ratio straddling two states is 0.4 or 2.5. In
oneway::

    CPU gen: G, one dpdk-testpmd, mac forward, --port-topology=chained
      net_null0 (endless source) -> P0 net_virtio_user0 --- a.sock --- port a
      P1 net_virtio_user1 --- b.sock --- port b  -> net_null0 (frees them)

One forwarding lcore polls both directions: net_null0's RX makes frames at
full speed (as fast as testpmd's txonly, cheaper: no headers to build), the
mac engine addresses them to GEN_MACS[1] from GEN_MACS[0] and sends them on
P0 (what the ring does not take is dropped there: the switch is the
bottleneck); what the switch delivers arrives on P1 and is freed. The figure
is P1's RX rate. vswitch knows GEN_MACS[1] from the start (the static
``mac:`` of port b), so the frames are known unicast, a -> b. Two testpmd
processes (txonly, rxonly) would need two busy lcores on the one generator
CPU, time-sliced by the kernel: each ring overflows while its poller sleeps.
The reference is DPDK's vhost PMD io-forwarding a -> b (and b -> a, idle).
A run where P0 never found its ring full is flagged "generator-bound".

1518-byte frames are 1504 bytes of payload: over a 1500 MTU. DPDK's vhost
and virtio-user PMDs do not enforce MTU; a switch that does must allow more
for that config (vswitch's YAML has no MTU setting today). A run that moves
no frames is reported as an error ("no frames circulate"), not as 0 Mpps.

``--memory huge`` puts the generator's memory (and a DPDK switch's own) on
2 MiB huge pages instead of 4 KiB pages (``--no-huge``, the default): the
run raises vm.nr_hugepages by what is missing for HUGE_PAGES free pages and
mounts a private hugetlbfs in its workdir (``--huge-dir``,
``--single-file-segments``: one memory region per segment list, not per
page); each run's page files are removed after it, and the pages and the
mount are given back at the end whatever happens (an error, Ctrl-C, SIGTERM,
SIGHUP). ``--socket-role client`` makes the switch connect: the generator's
virtio-user ports listen (``server=1``; it blocks in accept() on socket a,
then b, during its start, so it starts first), DPDK's vhost PMD runs with
``client=1``, vswitch's ports with ``mode: client``.

``--ovs normal,p2p`` adds OVS-DPDK (Debian's openvswitch-switch-dpdk, OVS
3.1 on DPDK 22.11) as reference systems "ovs-normal" and "ovs-p2p" (see
OvsSwitch): its own ovsdb and run directory per run, one PMD thread on the
switch's CPU, dpdkvhostuserclient ports (always a socket client), huge
pages (it cannot run without them: with ``--memory 4k`` the generator stays
on 4 KiB pages and OVS alone gets OVS_ONLY_HUGE_PAGES of its own); NORMAL is MAC
learning like vswitch, p2p one OpenFlow rule per direction. Every system that
is not a reference is reported as per-pair ratios to each reference present
(dpdk, ovs-normal, ovs-p2p).

Each ratio is given twice: the median over all pairs, and ("fast") over the
pairs whose two runs were both in the machine's fast state. The rule, from
the data (fast_threshold): a system's run rates of one config, from the
fastest down, are fast until the first step down of at least BIMODAL_GAP
(1.25x); the threshold is that step's geometric midpoint. A system with no
such step is taken as one state (all "fast").

What was measured is in the JSON and printed: the CPU model, kernel, DPDK
and OVS versions, each vswitchd's build target (vswitch._datapath.BUILD_TARGET,
"native" for builds from before it), the steal time of the whole run (all
CPUs, /proc/stat) and of each run, and for vswitch the worker's TSC cycles
per delivered frame: its busy time (control socket "stats", the rounds
that moved frames) times the TSC rate over the frames it delivered. Busy time
is wall-clock, so stolen time counts as busy: the figure is printed only
beside the steal.

Usage (root, from the repository root; never run two benchmarks at once --
a lock file enforces it)::

    .venv/bin/python -m bench.loopback [--pairs 5] [--configs 64x1,1518x1,64x2,1518x2,64x1p]
        [--topology loop|oneway] [--seconds 10] [--warmup 5] [--only dpdk|vswitch|both]
        [--baseline cefd30a] [--variants off,policing,vlan,security,all]
        [--memory 4k|huge] [--socket-role server|client] [--ovs normal,p2p]
        [--workers 1] [--mode poll|adaptive|event] [--baseline-tree PATH] [--out FILE.json]

A config with a trailing "p" (``64x1p``) has the generator's virtio-user
ports ask for packed virtqueues (``packed_vq=1``); both switches then run
packed rings. With the same config split in the list, each system's packed run
is also reported as a per-pair ratio to its split run ("/split").

Results: a table on stdout and a JSON file under bench/results/ (``--out``:
that file). bench/matrix.py runs this over the performance table's memory
modes and socket roles, bench/table.py turns those results into markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import fcntl
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench import xcpu

REPO = Path(__file__).resolve().parents[1]

from tests.harness.peers.testpmd import (
    TestPmd,
    TestPmdError,
    testpmd_available,
    vhost_vdev,
    virtio_user_vdev,
)

DEFAULT_CONFIGS = "64x1,1518x1,64x2,1518x2"
TOPOLOGIES = ("loop", "oneway")
LOCK_PATH = Path("/tmp/vswitch-bench.lock")
KINDS = ("dpdk", "vswitch")
MIN_PPS = 1000.0  # below this median a run is an error: nothing circulates
BASELINE_TOLERANCE = 0.95  # tenant features off stay within 5 % of the release before them

# The generator's port MACs (net_virtio_user0 on socket a, 1 on b). Fixed, so
# that port security can allow them; locally administered, and never testpmd's
# default peer addresses (02:00:00:00:00:0N), which are the frames'
# destinations: they stay unknown unicast, flooded to the other port, as
# before. A frame sent on gen port i enters the switch on port i and, after
# one trip through the loop, is sent on gen port i again, so port i only ever
# sees source GEN_MACS[i].
GEN_MACS = ("02:76:73:62:00:0a", "02:76:73:62:00:0b")

# Far above what one port carries here (1518 B loop: < 60 Gbit/s per port and
# direction; 64 B: < 15 Mframes/s), so that no frame is held back: the figure
# is the cost of checking.
_NO_LIMIT_RATE = "100Gbit"
_NO_LIMIT_FPS = 100_000_000  # the config's maximum storm-control rate


def _variant_off(port: int) -> dict[str, Any]:
    return {}


def _variant_policing(port: int) -> dict[str, Any]:
    return {"ingress_policing": {"rate": _NO_LIMIT_RATE}}


def _variant_vlan(port: int) -> dict[str, Any]:
    # untagged in, VLAN 10 inside, untagged out: classification + membership check
    return {"vlan": {"mode": "access", "id": 10}}


def _variant_security(port: int) -> dict[str, Any]:
    return {"allowed_macs": [GEN_MACS[port]]}


def _variant_all(port: int) -> dict[str, Any]:
    # everything a port can have except a mirror (that needs a third port)
    return {
        **_variant_vlan(port),
        **_variant_security(port),
        "storm_control": {"broadcast": _NO_LIMIT_FPS, "multicast": _NO_LIMIT_FPS,
                          "unknown_unicast": _NO_LIMIT_FPS},
        "ingress_policing": {"rate": _NO_LIMIT_RATE},
        "egress_policing": {"rate": _NO_LIMIT_RATE},
    }


# variant name -> the YAML fragment merged into port i (0: a, 1: b)
VARIANTS = {
    "off": _variant_off,
    "policing": _variant_policing,
    "vlan": _variant_vlan,
    "security": _variant_security,
    "all": _variant_all,
}


@dataclass(frozen=True)
class System:
    """One switch under test: DPDK, or a vswitchd binary with a port fragment."""

    name: str            # "dpdk", "ovs-normal", "ovs-p2p", "baseline", "vswitch" (variant off), "vswitch+VARIANT"
    kind: str            # "dpdk" | "ovs" | "vswitch"
    vswitchd: Path | None = None
    variant: str = "off"
    flows: str = ""      # ovs: a key of OVS_FLOWS

    def port_extra(self, port: int) -> dict[str, Any]:
        return VARIANTS[self.variant](port)


def parse_variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise SystemExit(f"--variants: unknown {', '.join(unknown) or '(empty list)'}; "
                         f"known: {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))  # keep the order, drop repeats


def variant_system(variant: str, vswitchd: Path) -> System:
    return System("vswitch" if variant == "off" else f"vswitch+{variant}", "vswitch", vswitchd, variant)


def port_extras(system: System, topology: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The YAML fragments of ports a and b. In oneway the generator sends to
    GEN_MACS[1], which never sends anything the switch could learn it from:
    port b carries it as its static `mac:` (a known-unicast a -> b stream)."""
    a, b = system.port_extra(0), system.port_extra(1)
    if topology == "oneway":
        b = {**b, "mac": GEN_MACS[1]}
    return a, b


# --------------------------------------------------------------------------
# CPU accounting
# --------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read_cpu_times(cpus: Sequence[int]) -> dict[str, float]:
    """Seconds per /proc/stat field, summed over *cpus*."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    out = dict.fromkeys(names, 0.0)
    want = {f"cpu{c}" for c in cpus}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in want:
                for n, v in zip(names, parts[1:], strict=False):
                    out[n] += int(v) / CLK_TCK
    out["total"] = sum(out[n] for n in names)  # guest time is inside user already
    return out


def steal_percent(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Steal time between two `read_cpu_times` as a percentage of those CPUs'
    time: what the hypervisor gave to others while the benchmark ran."""
    total = after["total"] - before["total"]
    return round(100.0 * (after["steal"] - before["steal"]) / total, 2) if total > 0 else None


def read_proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def read_all_procs() -> dict[int, tuple[str, float]]:
    """{pid: (comm, utime+stime seconds)} of every process."""
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1 : data.rindex(")")]
        fields = data[data.rindex(")") + 2 :].split()
        out[int(entry)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


@dataclass
class CpuWindow:
    """Busy time on the benchmark CPUs vs. the benchmark's own processes over a window."""

    cpus: Sequence[int]
    pids: Sequence[int]
    t0: float = 0.0
    sys0: dict[str, float] = field(default_factory=dict)
    own0: float = 0.0

    procs0: dict[int, tuple[str, float]] = field(default_factory=dict)

    def start(self, *, per_process: bool = False) -> None:
        self.t0 = time.monotonic()
        self.sys0 = read_cpu_times(self.cpus)
        self.own0 = sum(read_proc_cpu(p) for p in self.pids)
        self.procs0 = read_all_procs() if per_process else {}

    def top_foreign(self, n: int = 5) -> list[str]:
        """The other processes that used most CPU since `start(per_process=True)`
        (any CPU; processes that exited meanwhile are not seen)."""
        if not self.procs0:
            return []
        now = read_all_procs()
        own = set(self.pids)
        used = []
        for pid, (comm, t1) in now.items():
            if pid in own:
                continue
            t0 = self.procs0.get(pid, (comm, 0.0))[1]
            if t1 - t0 > 0:
                used.append((t1 - t0, pid, comm))
        used.sort(reverse=True)
        return [f"{comm}[{pid}] {sec:.2f}s" for sec, pid, comm in used[:n]]

    def stop(self) -> dict[str, float]:
        """Fractions of one CPU over the window: own, foreign, irq, steal."""
        wall = time.monotonic() - self.t0
        sys1 = read_cpu_times(self.cpus)
        own = sum(read_proc_cpu(p) for p in self.pids) - self.own0
        d = {k: sys1[k] - self.sys0[k] for k in sys1}
        busy = d["user"] + d["nice"] + d["system"]
        return {
            "wall_s": wall,
            "own": own / wall,
            "foreign": max(0.0, busy - own) / wall,
            "irq": (d["irq"] + d["softirq"]) / wall,
            "steal": d["steal"] / wall,
            "steal_pct": steal_percent(self.sys0, sys1) or 0.0,
        }


def idle_check(cpus: Sequence[int], seconds: float = 1.0) -> float:
    """Busy fraction (of one CPU) on *cpus* while the benchmark runs nothing."""
    w = CpuWindow(cpus, [os.getpid()])
    w.start()
    time.sleep(seconds)
    return w.stop()["foreign"]


# --------------------------------------------------------------------------
# Huge pages (--memory huge)
# --------------------------------------------------------------------------

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
HUGE_PAGE_KB = 2048
# per process on huge pages: testpmd's and OVS's -m / dpdk-socket-mem, MiB
DPDK_MEM_MB = 1024
# generator + switch, each DPDK_MEM_MB in 2 MiB pages, and a margin for
# DPDK's own rounding
HUGE_PAGES = 2 * DPDK_MEM_MB // 2 + 76

# Signals that end the benchmark: they become KeyboardInterrupt (main), and
# are held back while the pages and the mount are being given back.
END_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class HugePages:
    """2 MiB pages for one benchmark: vm.nr_hugepages raised by what is
    missing and a private hugetlbfs mount, both put back by `release` (called
    from a finally: an error, Ctrl-C, SIGTERM or SIGHUP all get there)."""

    def __init__(self, mount: Path, pages: int = HUGE_PAGES) -> None:
        self.mount = mount
        self.pages = pages
        self.before: int | None = None   # vm.nr_hugepages before we raised it
        self.mounted = False

    def reserve(self) -> None:
        if _meminfo("Hugepagesize") != HUGE_PAGE_KB:
            raise SystemExit("--memory huge: the default huge page is not 2 MiB on this machine")
        self.before = int(NR_HUGEPAGES.read_text())
        self.mount.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0700", "vswitch-bench",
                            str(self.mount)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise SystemExit(f"--memory huge: mount hugetlbfs on {self.mount}: {r.stderr.strip()}")
        self.mounted = True
        free = _meminfo("HugePages_Free")
        if free < self.pages:
            NR_HUGEPAGES.write_text(str(self.before + self.pages - free))
        free = _meminfo("HugePages_Free")
        if free < self.pages:
            # memory too fragmented for more: the machine's problem, said plainly
            raise SystemExit(f"--memory huge: only {free} free 2 MiB pages of {self.pages} needed")

    def clear(self) -> None:
        """Remove the page files a run left in the mount (DPDK keeps its
        --single-file-segments files after exit; each run has its own
        --file-prefix, so nothing else would ever free them)."""
        if self.mounted:
            for f in self.mount.iterdir():
                try:
                    f.unlink()
                except OSError:
                    pass

    def release(self) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, END_SIGNALS)
        try:
            self.clear()
            if self.before is not None:
                # pages still in use become surplus and go back when freed
                NR_HUGEPAGES.write_text(str(self.before))
                self.before = None
            if self.mounted:
                if subprocess.run(["umount", str(self.mount)], capture_output=True, timeout=30).returncode:
                    subprocess.run(["umount", "-l", str(self.mount)], capture_output=True, timeout=30)
                self.mounted = False
                try:
                    self.mount.rmdir()
                except OSError:
                    pass
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def as_json(self) -> dict[str, Any]:
        return {"mount": str(self.mount), "pages": self.pages, "page_kb": HUGE_PAGE_KB,
                "nr_hugepages_before": self.before}


# OVS-DPDK alone on huge pages (the generator on 4 KiB pages): its
# dpdk-socket-mem and the same margin
OVS_ONLY_HUGE_PAGES = DPDK_MEM_MB // 2 + 76


@contextmanager
def huge_pages(memory: str, workdir: Path, pages: int = HUGE_PAGES) -> Iterator[HugePages | None]:
    """*pages* 2 MiB pages and a private mount for the run when *memory* is
    "huge", else nothing."""
    if memory != "huge":
        yield None
        return
    hp = HugePages(workdir / "hugetlbfs", pages)
    try:
        hp.reserve()
        yield hp
    finally:
        hp.release()


# --------------------------------------------------------------------------
# The switch under test
# --------------------------------------------------------------------------


class SwitchUnderTest:
    """Common interface of the two kinds of S."""

    kind: str
    pid: int | None = None

    def start(self) -> None: ...

    def after_links_up(self, queues: int) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool:
        return True

    def pids(self) -> list[int]:
        """Every process of the switch (for the CPU accounting)."""
        return [self.pid] if self.pid else []

    def worker_counters(self) -> dict[str, float] | None:
        """vswitch: its worker's busy nanoseconds and frames delivered so far."""
        return None


class DpdkSwitch(SwitchUnderTest):
    """DPDK's vhost PMD in testpmd, io forwarding: the reference."""

    kind = "dpdk"

    def __init__(self, run_dir: Path, cpu: int, queues: int, socks: tuple[Path, Path],
                 client: bool = False, huge_dir: Path | None = None) -> None:
        self.socks = socks
        self.queues = queues
        self.tp = TestPmd(
            [vhost_vdev(0, socks[0], queues=queues, client=client),
             vhost_vdev(1, socks[1], queues=queues, client=client)],
            rxq=queues, cpus=[cpu], forward_mode="io", burst=32, workdir=run_dir, name="sut-dpdk",
            huge_dir=huge_dir, mem_mb=DPDK_MEM_MB,
        )

    def start(self) -> None:
        self.tp.start(timeout=60)
        self.tp.start_fwd()
        self.pid = self.tp.pid

    def after_links_up(self, queues: int) -> None:
        self.tp.wait_vrings_enabled(self.socks, 2 * queues, timeout=20)

    def alive(self) -> bool:
        return self.tp.running

    def stop(self) -> None:
        self.tp.stop()


MODES = ("poll", "adaptive", "event")  # the datapath modes of vswitchd's config (docs/configuration.md)


def datapath_yaml(workers: int = 1, mode: str | None = None, cpus: Sequence[int] | None = None) -> str:
    """The `datapath:` line of the generated config: the worker count, and
    the mode and worker CPUs only when asked (else the daemon's defaults)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    items = [f"workers: {workers}"]
    if mode is not None:
        items.append(f"mode: {mode}")
    if cpus is not None:
        items.append(f"cpus: {list(cpus)}")
    return "datapath: {" + ", ".join(items) + "}\n"


class VSwitch(SwitchUnderTest):
    """vswitchd with two vhost-user ports (server, or client), one worker
    unless asked for more (--workers, --mode), under taskset."""

    kind = "vswitch"

    def __init__(
        self, run_dir: Path, cpu: int, queues: int, socks: tuple[Path, Path], vswitchd: Path,
        port_extra: Sequence[dict[str, Any]] = ({}, {}), client: bool = False,
        workers: int = 1, mode: str | None = None, cpus: Sequence[int] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.cpu = cpu
        self.queues = queues
        self.socks = socks
        self.client = client  # connect to the generator's sockets instead of listening
        self.vswitchd = vswitchd
        self.port_extra = port_extra  # YAML fragment merged into port a, port b
        self.workers = workers
        self.mode = mode  # None: the daemon's default (adaptive)
        self.worker_cpus = cpus  # None: the daemon's default pinning
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = run_dir / "sut-vswitch.log"
        self.config_path = run_dir / "vswitch.yaml"
        self._log: TextIO | None = None

    def config_text(self) -> str:
        d = self.run_dir
        q = self.queues
        ports = ""
        for i, name in enumerate(("a", "b")):
            port = {"type": "vhost-user", "mode": "client" if self.client else "server",
                    "socket": str(self.socks[i]), "queues": q, **self.port_extra[i]}
            ports += f"  {name}: {json.dumps(port)}\n"  # JSON is YAML (flow style)
        return f"runtime_dir: {d}\nports:\n{ports}{datapath_yaml(self.workers, self.mode, self.worker_cpus)}"

    def start(self) -> None:
        if not (self.vswitchd.exists() and os.access(self.vswitchd, os.X_OK)):
            raise FileNotFoundError(f"vswitchd not found at {self.vswitchd}")
        self.config_path.write_text(self.config_text())
        self._log = open(self.log_path, "w")
        argv = ["taskset", "-c", str(self.cpu), str(self.vswitchd), "--config", str(self.config_path)]
        if shutil.which("setpriv"):  # stop with us even if we are killed
            argv = ["setpriv", "--pdeathsig", "TERM", *argv]
        self._log.write("# " + " ".join(argv) + "\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=self.run_dir, start_new_session=True,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        # a server is ready once its sockets exist; a client once its control
        # socket does (it connects, and retries, by itself)
        ready = [self.control_socket] if self.client else list(self.socks)
        while not all(s.exists() for s in ready):
            if self.proc.poll() is not None:
                tail = self.log_tail()
                last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
                raise RuntimeError(
                    f"vswitchd exited with {self.proc.returncode} before its sockets appeared: "
                    f"{last}\n{tail}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError("vswitchd sockets did not appear in 30s:\n" + self.log_tail())
            time.sleep(0.05)

    def after_links_up(self, queues: int) -> None:
        time.sleep(0.0)  # nothing to poll; the common settle pause applies

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "vswitchd.ctl"

    def worker_counters(self) -> dict[str, Any] | None:
        """From the control socket's "stats": the worker's busy time (rounds
        that moved frames; docs/metrics.md, vswitch_worker_busy_seconds) and
        the frames the switch handed to the generator's ports. None when this
        vswitchd does not report busy time (an older baseline)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(self.control_socket))
                sock.sendall(b'{"command": "stats", "args": {}}\n')
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            result = json.loads(buf)["result"]
            busy = sum(w["busy_ns"] for w in result["workers"])
            rounds = sum(w.get("rounds", 0) for w in result["workers"])
            frames = sum(t["transmit_packets"] for t in result["ports"].values())
            drops: dict[str, int] = {}
            for t in result["ports"].values():
                for way in ("receive_drops", "transmit_drops"):
                    for reason, n in t.get(way, {}).items():
                        drops[reason] = drops.get(reason, 0) + int(n)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return {"busy_ns": float(busy), "frames": float(frames), "rounds": float(rounds),
                "drops": drops, "t": time.monotonic()}

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        p = self.proc
        if p is not None:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.returncode = p.returncode
        if self._log is not None:
            self._log.close()
            self._log = None


OVS_VSWITCHD = Path("/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk")
OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
OVS_BRIDGE = "vswbench0"
# --ovs FLOWS: what the bridge does with a frame
OVS_FLOWS = {
    # the default flow: MAC learning and flooding, like vswitch
    "normal": [],
    # one rule per direction, no learning: OVS-DPDK's cheapest path
    "p2p": ["in_port=1,actions=output:2", "in_port=2,actions=output:1"],
}


def ovs_available() -> bool:
    return OVS_VSWITCHD.exists() and bool(shutil.which("ovsdb-server")) and bool(shutil.which("ovs-vsctl"))


class OvsSwitch(SwitchUnderTest):
    """OVS-DPDK (Debian's openvswitch-switch-dpdk) on a database, run and log
    directory of its own under the run directory, never the system's: an
    ovsdb-server and ovs-vswitchd-dpdk, both under taskset on the switch's
    CPU, one PMD thread pinned there (pmd-cpu-mask), a netdev bridge with two
    dpdkvhostuserclient ports (OVS connects to the generator's sockets, and
    retries until they exist). Memory: DPDK_MEM_MB on huge pages (OVS-DPDK
    cannot run without them). The bridge's own port (a tap) is set no-flood,
    so that NORMAL floods an unknown destination to the other port only, as
    vswitch does with two ports; p2p replaces NORMAL with one rule per
    direction. Everything goes when the run ends (the processes die with us
    through setpriv --pdeathsig; the tap is not persistent)."""

    kind = "ovs"

    def __init__(self, run_dir: Path, cpu: int, queues: int, socks: tuple[Path, Path], flows: str,
                 huge_dir: Path) -> None:
        self.cpu = cpu
        self.queues = queues
        self.socks = socks
        self.flows = flows
        self.huge_dir = huge_dir
        self.dir = run_dir / "ovs"
        self.db = self.dir / "conf.db"
        self.db_sock = self.dir / "db.sock"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[TextIO] = []
        self.env = {**os.environ, "OVS_RUNDIR": str(self.dir), "OVS_DBDIR": str(self.dir),
                    "OVS_LOGDIR": str(self.dir), "OVS_SYSCONFDIR": str(self.dir)}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        argv = ["taskset", "-c", str(self.cpu), *argv]
        if shutil.which("setpriv"):  # dies with us even if we are killed
            argv = ["setpriv", "--pdeathsig", "TERM", *argv]
        log = open(self.dir / f"{name}.out", "w")
        self._logs.append(log)
        log.write("# " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.dir, env=self.env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def _run(self, *argv: str, timeout: float = 60) -> str:
        r = subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-500:]}"
                               + self._log_tail())
        return r.stdout

    def vsctl(self, *args: str, timeout: float = 60) -> str:
        return self._run("ovs-vsctl", f"--db=unix:{self.db_sock}", f"--timeout={int(timeout)}", *args,
                         timeout=timeout + 5)

    def _log_tail(self) -> str:
        try:
            return "\n" + (self.dir / "ovs-vswitchd.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def start(self) -> None:
        if not ovs_available():
            raise FileNotFoundError(f"{OVS_VSWITCHD} not found (apt-get install openvswitch-switch-dpdk)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._run("ovsdb-tool", "create", str(self.db), str(OVS_SCHEMA))
        self._spawn("ovsdb-server", [
            "ovsdb-server", str(self.db), f"--remote=punix:{self.db_sock}",
            f"--pidfile={self.dir / 'ovsdb-server.pid'}", f"--unixctl={self.dir / 'ovsdb-server.ctl'}",
            f"--log-file={self.dir / 'ovsdb-server.log'}"])
        deadline = time.monotonic() + 20
        while not self.db_sock.exists():
            if self.procs["ovsdb-server"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ovsdb-server did not start: " + (self.dir / "ovsdb-server.out").read_text())
            time.sleep(0.05)
        mask = f"{1 << self.cpu:#x}"
        extra = (f"--no-pci --single-file-segments --huge-dir={self.huge_dir} "
                 f"--file-prefix=vswbench-ovs-{os.getpid()}")
        self.vsctl("--no-wait", "init")
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".", "other_config:dpdk-init=true",
                   f"other_config:dpdk-socket-mem={DPDK_MEM_MB}", f"other_config:dpdk-lcore-mask={mask}",
                   f"other_config:pmd-cpu-mask={mask}", f'other_config:dpdk-extra="{extra}"')
        self.pid = self._spawn("ovs-vswitchd", [
            str(OVS_VSWITCHD), f"unix:{self.db_sock}", f"--pidfile={self.dir / 'ovs-vswitchd.pid'}",
            f"--unixctl={self.dir / 'ovs-vswitchd.ctl'}", f"--log-file={self.dir / 'ovs-vswitchd.log'}",
            "--mlockall"]).pid
        # without --no-wait: each returns once ovs-vswitchd has applied it
        self.vsctl("add-br", OVS_BRIDGE, "--", "set", "Bridge", OVS_BRIDGE, "datapath_type=netdev",
                   timeout=120)
        for i, sock in enumerate(self.socks):
            name = f"vhu{'ab'[i]}"
            self.vsctl("add-port", OVS_BRIDGE, name, "--", "set", "Interface", name,
                       "type=dpdkvhostuserclient", f"options:vhost-server-path={sock}",
                       f"options:n_rxq={self.queues}", f"ofport_request={i + 1}")
        ofctl = ["ovs-ofctl", "-O", "OpenFlow13"]
        self._run(*ofctl, "mod-port", OVS_BRIDGE, OVS_BRIDGE, "no-flood")
        if OVS_FLOWS[self.flows]:
            self._run(*ofctl, "del-flows", OVS_BRIDGE)
            for flow in OVS_FLOWS[self.flows]:
                self._run(*ofctl, "add-flow", OVS_BRIDGE, flow)

    def after_links_up(self, queues: int) -> None:
        time.sleep(0.0)  # the generator's links are up: OVS enabled the rings

    def alive(self) -> bool:
        p = self.procs.get("ovs-vswitchd")
        return p is not None and p.poll() is None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def stop(self) -> None:
        # the switch first, the database after it
        for name in ("ovs-vswitchd", "ovsdb-server"):
            p = self.procs.get(name)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for log in self._logs:
            log.close()
        self._logs = []


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------


RINGS = ("split", "packed")


@dataclass
class Config:
    size: int
    queues: int
    ring: str = "split"   # the virtqueue layout the generator's virtio-user ports ask for

    @property
    def label(self) -> str:
        return f"{self.size}B x{self.queues}q" + ("" if self.ring == "split" else f" {self.ring}")

    @property
    def key(self) -> str:
        return f"{self.size}x{self.queues}" + ("" if self.ring == "split" else "p")

    @staticmethod
    def parse(text: str) -> list[Config]:
        """SIZExQUEUES items; a trailing "p" (64x1p) asks for packed rings."""
        out = []
        for item in text.split(","):
            item = item.strip().lower()
            if not item:
                continue
            ring = "split"
            if item.endswith("p"):
                item, ring = item[:-1], "packed"
            size, _, q = item.partition("x")
            out.append(Config(int(size), int(q or 1), ring))
        return out


@dataclass
class RunResult:
    kind: str  # the system's name: dpdk, baseline, vswitch, vswitch+VARIANT
    size: int
    queues: int
    pair: int
    ring: str = "split"
    samples_pps: list[float] = field(default_factory=list)
    foreign_per_sample: list[float] = field(default_factory=list)
    foreign_top: list[str] = field(default_factory=list)
    median_pps: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    flagged: str | None = None  # why the run is noisy (left out of medians)
    error: str | None = None
    rx_per_queue: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    run_dir: str = ""
    variant: str = "off"
    vswitchd: str = ""
    topology: str = "loop"
    # oneway: frames/s P0 handed to the switch (per sample), frames P0 had to
    # drop because port a's ring was full, and P1 RX / P0 TX over the run
    offered_pps: list[float] = field(default_factory=list)
    # oneway: frames/s net_null0 produced (the generator's own speed: with
    # the switch the bottleneck, it falls only when CPU gen does)
    source_pps: list[float] = field(default_factory=list)
    gen_tx_dropped: int | None = None
    delivered_fraction: float | None = None
    memory: str = "4k"         # the generator's (and DPDK switches') memory: "4k" or "huge"
    # The two CPUs around the run (bench/xcpu.py): one cache line's round
    # trip right before the switch starts and right after both stopped, and
    # what they say (near, far, mixed, unknown). A record, not a filter: the
    # rates' slow state mostly follows it, not always, and a run can change
    # state in the middle (docs/performance.md, "The slow state").
    xcpu_rtt_ns: list[float | None] = field(default_factory=list)
    xcpu_state: str = "unknown"
    socket_role: str = "server"  # the switch's side of the vhost-user sockets
    # vswitch only: its worker's busy time and the frames it delivered over
    # the sampling window (control socket "stats"), and TSC cycles per frame
    worker: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # what to know about the run that does not leave it out
    # --perf: the hottest symbols of each CPU over the sampling window
    # ("cpu N": [[percent, command, symbol], ...]) and the perf.data's path
    perf_top: dict[str, list[list[Any]]] = field(default_factory=dict)
    perf_data: str = ""

    @property
    def usable(self) -> bool:
        return self.error is None and self.median_pps is not None


@dataclass
class Options:
    seconds: int
    warmup: float
    settle: float
    gen_cpu: int
    sut_cpu: int
    max_foreign: float
    workdir: Path
    gen_mbufs: int | None
    topology: str = "loop"
    memory: str = "4k"
    socket_role: str = "server"
    huge: HugePages | None = None
    # OVS-DPDK's own memory when the generator runs on 4 KiB pages (OVS
    # cannot run without huge pages); with --memory huge it shares `huge`
    ovs_huge: HugePages | None = None
    workers: int = 1            # vswitch's datapath workers (--workers)
    mode: str | None = None     # vswitch's datapath mode (--mode); None: its default
    perf: bool = False          # --perf: perf record both CPUs over the sampling window
    gen_in_order: bool = True   # --gen-in-order: the generator's ports ask for IN_ORDER


NULL_PORT = "net_null0"


def null_vdev(size: int) -> str:
    """DPDK's null PMD: RX hands out *size*-byte frames endlessly (the data is
    not written: the mac engine writes the addresses), TX frees."""
    return f"{NULL_PORT},size={size}"


def setup_oneway_generator(gen: TestPmd) -> tuple[int, int, int]:
    """Chain the ports as null -> P0, P0 -> P1, P1 -> null and address P0's
    frames to GEN_MACS[1]; returns the port ids of P0, P1 and the source. The stream
    P0 -> P1 carries only what the switch would send back out of port a
    (nothing, with b's MAC known)."""
    ids = {s.name: s.port for s in gen.ports().values()}
    try:
        null, p0, p1 = ids[NULL_PORT], ids["net_virtio_user0"], ids["net_virtio_user1"]
    except KeyError as e:
        raise TestPmdError(f"generator: port {e} missing from {ids}") from e
    gen.set_portlist([null, p0, p1])
    # the mac engine writes peer_eth_addrs[tx port] as destination, the TX port's MAC as source
    gen.cmd(f"set eth-peer {p0} {GEN_MACS[1]}", check=True)
    return p0, p1, null


def oneway_check(res: RunResult, fwd: Any, p0: int, p1: int) -> str | None:
    """Record what P0 sent and dropped; a reason to flag the run, if any."""
    sent = fwd.ports[p0].tx_packets if p0 in fwd.ports else 0
    got = fwd.ports[p1].rx_packets if p1 in fwd.ports else 0
    res.gen_tx_dropped = fwd.ports[p0].tx_dropped if p0 in fwd.ports else 0
    res.delivered_fraction = round(got / sent, 6) if sent else None
    if sent and res.gen_tx_dropped == 0:
        # port a's ring never filled: the generator, not the switch, set the pace
        return "generator-bound: P0 never found port a's ring full"
    return None


PERF_TOP = 12  # symbols kept per CPU in the results


def start_perf(run_dir: Path, opt: Options) -> subprocess.Popen[bytes] | None:
    """`perf record` of both CPUs (cpu-clock: this kind of VM has no hardware
    counters) for the sampling window, into run_dir/perf.data."""
    if not shutil.which("perf"):
        print("--perf: no perf on this machine (apt install linux-perf)", file=sys.stderr)
        return None
    argv = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-C", f"{opt.gen_cpu},{opt.sut_cpu}",
            "-o", str(run_dir / "perf.data"), "--", "sleep", str(opt.seconds)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_perf(perf: subprocess.Popen[bytes], run_dir: Path, opt: Options, res: RunResult) -> None:
    """Wait for perf, then keep each CPU's hottest symbols (percent of that
    CPU's samples) in the result and each CPU's report beside perf.data."""
    try:
        perf.wait(timeout=opt.seconds + 30)
    except subprocess.TimeoutExpired:
        perf.kill()
        perf.wait()
        return
    data = run_dir / "perf.data"
    if not data.exists():
        return
    res.perf_data = str(data)
    for cpu in (opt.gen_cpu, opt.sut_cpu):
        r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--cpu", str(cpu),
                            "--percentage", "relative", "--sort", "comm,sym", "--percent-limit", "0.5"],
                           capture_output=True, text=True, timeout=120)
        (run_dir / f"perf-cpu{cpu}.txt").write_text(r.stdout)
        res.perf_top[f"cpu {cpu}"] = perf_top(r.stdout)


def perf_top(report: str, n: int = PERF_TOP) -> list[list[Any]]:
    """[[percent, command, symbol], ...] from `perf report --stdio --sort
    comm,sym`, hottest first, at most n."""
    top: list[list[Any]] = []
    for line in report.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or line.lstrip().startswith("#") or not parts[0].endswith("%"):
            continue
        try:
            pct = float(parts[0].rstrip("%"))
        except ValueError:
            continue
        top.append([pct, parts[1], parts[2].strip()])
        if len(top) == n:
            break
    return top


def run_once(system: System, cfg: Config, pair: int, opt: Options, log: TextIO) -> RunResult:
    """One run of *system* for *cfg*; never raises."""
    res = RunResult(kind=system.name, size=cfg.size, queues=cfg.queues, pair=pair, ring=cfg.ring,
                    variant=system.variant, vswitchd=str(system.vswitchd or ""), topology=opt.topology)
    oneway = opt.topology == "oneway"
    run_dir = opt.workdir / f"p{pair}-{cfg.key}-{system.name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    res.run_dir = str(run_dir)
    socks = (run_dir / "a.sock", run_dir / "b.sock")
    # OVS's vhost ports are always clients (dpdkvhostuserclient)
    client = opt.socket_role == "client" or system.kind == "ovs"
    res.socket_role = "client" if client else "server"
    huge_dir = opt.huge.mount if opt.huge is not None else None
    res.memory = "huge" if huge_dir is not None else "4k"
    sut: SwitchUnderTest
    if system.kind == "dpdk":
        sut = DpdkSwitch(run_dir, opt.sut_cpu, cfg.queues, socks, client=client, huge_dir=huge_dir)
    elif system.kind == "ovs":
        ovs_pages = opt.huge or opt.ovs_huge
        if ovs_pages is None:
            raise SystemExit("OVS-DPDK needs huge pages of its own (opt.ovs_huge) or --memory huge")
        sut = OvsSwitch(run_dir, opt.sut_cpu, cfg.queues, socks, system.flows, ovs_pages.mount)
    else:
        assert system.vswitchd is not None
        sut = VSwitch(run_dir, opt.sut_cpu, cfg.queues, socks, system.vswitchd,
                      port_extras(system, opt.topology), client=client,
                      workers=opt.workers, mode=opt.mode)
    # packed_vq only when asked: a split run's command line stays what it was
    packed = True if cfg.ring == "packed" else None
    # in_order only when turned off: virtio-user asks for it by default
    in_order = None if opt.gen_in_order else False
    virtio = [virtio_user_vdev(i, socks[i], queues=cfg.queues, mac=GEN_MACS[i], packed_vq=packed, server=client,
                               in_order=in_order)
              for i in (0, 1)]
    mem = {"huge_dir": huge_dir, "mem_mb": DPDK_MEM_MB}
    if oneway:
        gen = TestPmd(
            [null_vdev(cfg.size), *virtio], rxq=cfg.queues, cpus=[opt.gen_cpu], forward_mode="mac",
            burst=32, total_mbufs=opt.gen_mbufs, workdir=run_dir, name="gen",
            app_args=["--port-topology=chained"], **mem,
        )
    else:
        gen = TestPmd(
            virtio, rxq=cfg.queues, cpus=[opt.gen_cpu], forward_mode="io", burst=32, txpkts=cfg.size,
            total_mbufs=opt.gen_mbufs, workdir=run_dir, name="gen", **mem,
        )
    p0, p1, src = 0, 1, -1  # the generator's port ids on a and b, source (oneway: looked up)
    t = time.monotonic()

    def mark(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        res.timings[name] = round(now - t, 3)
        t = now

    rtt_before = xcpu_probe(opt.gen_cpu, opt.sut_cpu)
    try:
        if client:
            # the generator listens: it blocks in accept() on socket a, then
            # b, during its start; the switch connects (and retries)
            gen.start(wait=False)
            deadline = time.monotonic() + 60
            while not socks[0].exists():
                if not gen.running or time.monotonic() > deadline:
                    raise TestPmdError("generator: socket a did not appear:\n" + gen.tail())
                time.sleep(0.05)
            mark("gen_start")
            sut.start()
            mark("sut_start")
            gen.wait_ready(90)
            mark("gen_ready")
        else:
            sut.start()
            mark("sut_start")
            gen.start(timeout=90)
            mark("gen_start")
        if oneway:
            p0, p1, src = setup_oneway_generator(gen)
        gen.wait_links_up([p0, p1], 20)
        sut.after_links_up(cfg.queues)
        time.sleep(opt.settle)
        mark("links_up")
        assert gen.pid is not None and sut.pid is not None
        if oneway:
            gen.start_fwd()
        else:
            gen.start_fwd(tx_first=8)
        time.sleep(opt.warmup)
        if not sut.alive():
            raise RuntimeError("switch under test died during warm-up")
        gen.port_stats()  # rate baseline for the first sample
        pids = [gen.pid, *sut.pids(), os.getpid()]
        w0 = sut.worker_counters()
        win = CpuWindow([opt.gen_cpu, opt.sut_cpu], pids)
        win.start(per_process=True)
        sec = CpuWindow([opt.gen_cpu, opt.sut_cpu], pids)
        sec.start()
        perf = start_perf(run_dir, opt) if opt.perf else None
        t0 = time.monotonic()
        for i in range(opt.seconds):
            time.sleep(max(0.0, t0 + i + 1 - time.monotonic()))
            st = gen.port_stats()
            if oneway:
                res.samples_pps.append(float(st[p1].rx_pps) if p1 in st else 0.0)
                res.offered_pps.append(float(st[p0].tx_pps) if p0 in st else 0.0)
                res.source_pps.append(float(st[src].rx_pps) if src in st else 0.0)
            else:
                res.samples_pps.append(float(sum(s.rx_pps for p, s in st.items() if p in (0, 1))))
            res.foreign_per_sample.append(round(sec.stop()["foreign"], 3))
            sec.start()
        res.foreign_top = win.top_foreign()
        res.cpu = {k: round(v, 4) for k, v in win.stop().items()}
        if perf is not None:
            finish_perf(perf, run_dir, opt, res)
        w1 = sut.worker_counters()
        if w0 and w1:
            res.worker = worker_figures(w0, w1)
        mark("measure")
        fwd = gen.stop_fwd()
        for p in ((p1,) if oneway else (p0, p1)):  # oneway: nothing arrives on P0
            xs = gen.xstats(p)
            for q in range(cfg.queues):
                res.rx_per_queue[f"p{p}q{q}"] = xs.get(f"rx_q{q}_good_packets", 0)
        res.median_pps = statistics.median(res.samples_pps)
        if oneway:
            flag = oneway_check(res, fwd, p0, p1)
            if flag:
                res.flagged = flag
        else:
            # frames the generator could not send on (its TX ring full): each
            # one is a frame less circulating in the loop
            res.gen_tx_dropped = sum(fwd.ports[p].tx_dropped for p in (p0, p1) if p in fwd.ports)
        if res.median_pps < MIN_PPS:
            res.error = (
                f"no frames {'delivered' if oneway else 'circulate'} "
                f"(median {res.median_pps:.0f} pps; MTU? queues not enabled?)"
            )
        elif cfg.queues > 1 and any(v == 0 for v in res.rx_per_queue.values()):
            if system.kind == "ovs":
                # OVS-DPDK's one PMD thread sends on one TX queue of each
                # port (its static queue id, not the RX queue's): the frames
                # gather on that queue pair. Its figure, not a broken run.
                res.note = f"OVS sent on one queue: {res.rx_per_queue}"
            else:
                res.flagged = f"a queue carried nothing: {res.rx_per_queue}"
        if res.cpu.get("foreign", 0.0) > opt.max_foreign:
            res.flagged = (
                f"foreign CPU {res.cpu['foreign']:.1%} of a CPU > {opt.max_foreign:.1%}"
                + (f" ({', '.join(res.foreign_top[:3])})" if res.foreign_top else "")
                + (f"; {res.flagged}" if res.flagged else "")
            )
        if not sut.alive():
            res.error = res.error or "switch under test died"
    except Exception as e:  # noqa: BLE001 - reported per run, the benchmark goes on
        res.error = f"{type(e).__name__}: {e}".strip()[:2000]
        traceback.print_exc(file=log)
    finally:
        gen.stop()
        sut.stop()
        for pages in (opt.huge, opt.ovs_huge):
            if pages is not None:
                pages.clear()
        mark("teardown")
        rtt_after = xcpu_probe(opt.gen_cpu, opt.sut_cpu)
        res.xcpu_rtt_ns = [rtt_before, rtt_after]
        res.xcpu_state = xcpu.state(rtt_before, rtt_after)
    return res


def xcpu_probe(cpu_a: int, cpu_b: int) -> float | None:
    """bench/xcpu.py's round trip between the two CPUs (ns), taken while
    neither the generator nor the switch runs; None if it cannot be taken."""
    try:
        return round(xcpu.probe(cpu_a, cpu_b), 1)
    except (OSError, RuntimeError) as e:
        print(f"xcpu probe: {e}", file=sys.stderr)
        return None


def tsc_hz() -> float | None:
    """The TSC's rate: the kernel's "cpu MHz" on this kind of VM
    (constant_tsc, tsc_known_freq: the frequency the hypervisor reports)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) * 1e6
    except (OSError, ValueError):
        pass
    return None


def worker_figures(w0: dict[str, Any], w1: dict[str, Any]) -> dict[str, Any]:
    """The worker over the sampling window: its busy fraction of the wall
    time and TSC cycles per delivered frame (busy time x TSC rate / frames).
    Busy time is wall-clock time inside rounds that moved frames, so the time
    the hypervisor stole from the switch's CPU is in it: read the figure
    only with the run's steal beside it."""
    frames = w1["frames"] - w0["frames"]
    busy = w1["busy_ns"] - w0["busy_ns"]
    wall = w1["t"] - w0["t"]
    out = {"frames": frames, "busy_s": round(busy / 1e9, 4),
           "busy_fraction": round(busy / 1e9 / wall, 4) if wall > 0 else 0.0}
    rounds = w1.get("rounds", 0.0) - w0.get("rounds", 0.0)
    if rounds > 0:
        # frames per polling round (a round polls every queue once): small
        # when the switch waits for its peer, up to 2 x 32 when it is behind
        out["frames_per_round"] = round(frames / rounds, 2)
    if w1.get("drops"):
        # since the switch started (warm-up and the loop's start included): a
        # loop that lost frames circulates fewer of them
        out["drops_since_start"] = w1["drops"]
    hz = tsc_hz()
    if hz and frames > 0:
        out["tsc_hz"] = hz
        out["cycles_per_frame"] = round(busy / 1e9 * hz / frames, 1)
    return out


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _pair_ratios(num: list[RunResult], den: list[RunResult]) -> list[float]:
    """num/den per pair, for the pairs where both runs are usable."""
    den_by_pair = {r.pair: r.median_pps for r in den if r.median_pps}
    return [r.median_pps / den_by_pair[r.pair] for r in num
            if r.median_pps is not None and den_by_pair.get(r.pair)]


def _best_ratio(num: list[RunResult], den: list[RunResult]) -> float | None:
    """Best run of num / best run of den. The machine puts whole runs in a
    slow state (e.g. 3.6 instead of 9.3 Mframes/s, steady within the run, for
    DPDK, the baseline and vswitch alike); a pair where only one of the two
    runs is slow gives a ratio of 0.4 or 2.5 that says nothing about the
    code. The best runs are (with enough pairs) both in the fast state. A
    second view, not the criterion: the fast state itself varies by +-10 %
    here (1518 B: 5-7.5 Mframes/s), so neither figure resolves 5 %."""
    a = [r.median_pps for r in num if r.median_pps]
    b = [r.median_pps for r in den if r.median_pps]
    return max(a) / max(b) if a and b else None


# A run is in the machine's fast state when it reaches this fraction of the
# config's fastest run: the slow state is 0.35-0.45 of the fast one here,
# the fast state itself spreads by about +-10 %.
FAST_STATE_FRACTION = 0.7


def _fast_pair_ratios(num: list[RunResult], den: list[RunResult], fastest: float) -> list[float]:
    """num/den per pair, only for pairs whose two runs are both in the fast
    state: the comparison the machine's speed states leave meaningful."""
    floor = FAST_STATE_FRACTION * fastest
    den_by_pair = {r.pair: r.median_pps for r in den if r.median_pps and r.median_pps >= floor}
    return [r.median_pps / den_by_pair[r.pair] for r in num
            if r.median_pps is not None and r.median_pps >= floor and den_by_pair.get(r.pair)]


# The reference systems every other system is compared with, per pair.
REFERENCES = ("dpdk", "ovs-normal", "ovs-p2p")

# The machine's speed states (docs/performance.md): a system's runs of one
# config, from the fastest down, belong to the fast state until the first
# step down by at least this factor; the threshold is that step's geometric
# midpoint. Runs with no such step are taken as one state, "fast".
BIMODAL_GAP = 1.25


def fast_threshold(rates: Sequence[float]) -> float:
    """The rate at or above which a run of this system and config counts as
    in the fast state: walking the rates from the fastest down, the geometric
    midpoint of the first step of at least BIMODAL_GAP (the top cluster: the
    machine has shown more than two states, e.g. 13.6, 9.4 and 3.6 Mframes/s),
    else 0 (one state seen; with every run slow the data cannot tell, and
    says so only through the rates)."""
    xs = sorted((r for r in rates if r > 0), reverse=True)
    for hi, lo in zip(xs, xs[1:]):
        if hi / lo >= BIMODAL_GAP:
            return (lo * hi) ** 0.5
    return 0.0


def _fast_state_ratios(num: list[RunResult], den: list[RunResult]) -> list[float]:
    """num/den per pair, for the pairs where both runs are in their own
    system's fast state (fast_threshold)."""
    tn = fast_threshold([r.median_pps for r in num if r.median_pps])
    td = fast_threshold([r.median_pps for r in den if r.median_pps])
    return _pair_ratios([r for r in num if r.median_pps and r.median_pps >= tn],
                        [r for r in den if r.median_pps and r.median_pps >= td])


def _steal_stats(runs: list[RunResult]) -> dict[str, float] | None:
    return _stats([r.cpu["steal_pct"] for r in runs if "steal_pct" in r.cpu])


def summarize(runs: list[RunResult], configs: list[Config], keep_noisy: bool,
              systems: Sequence[str] = KINDS) -> list[dict[str, Any]]:
    """Per config: every system's Mframes/s, and per-pair ratios of each
    vswitch system to DPDK, to the baseline and to vswitch with features off.
    The keys of the two-system benchmark (dpdk_mpps, vswitch_mpps, ratio) stay."""
    out = []
    for cfg in configs:
        mine = [r for r in runs if (r.size, r.queues, r.ring) == (cfg.size, cfg.queues, cfg.ring)]
        # the same size and queues with split rings, when this config is packed
        split = [r for r in runs if (r.size, r.queues, r.ring) == (cfg.size, cfg.queues, "split")
                 ] if cfg.ring != "split" else []

        def ok(r: RunResult) -> bool:
            return r.usable and (keep_noisy or r.flagged is None)

        by_kind = {k: [r for r in mine if r.kind == k] for k in systems}
        good = {k: [r for r in v if ok(r)] for k, v in by_kind.items()}
        mpps = {k: [r.median_pps / 1e6 for r in v if r.median_pps] for k, v in good.items()}
        per_system: dict[str, dict[str, Any]] = {}
        for k in systems:
            entry: dict[str, Any] = {"mpps": _stats(mpps[k])}
            fast_t = fast_threshold([r.median_pps for r in good[k] if r.median_pps])
            entry["fast_threshold_mpps"] = round(fast_t / 1e6, 3)
            entry["steal_pct"] = _steal_stats(good[k])
            cycles = [r.worker["cycles_per_frame"] for r in good[k] if "cycles_per_frame" in r.worker]
            if cycles:
                entry["cycles_per_frame"] = _stats(cycles)
            if k != "dpdk":
                entry["ratio_dpdk"] = _stats(_pair_ratios(good[k], good.get("dpdk", [])))
            if k not in REFERENCES:
                # every reference present: per-pair ratios, and over the
                # pairs where both runs were in the fast state
                entry["ratios"] = {ref: _stats(_pair_ratios(good[k], good[ref]))
                                   for ref in REFERENCES if good.get(ref)}
                entry["fast_ratios"] = {ref: _stats(_fast_state_ratios(good[k], good[ref]))
                                        for ref in REFERENCES if good.get(ref)}
            entry["xcpu_states"] = dict(sorted(Counter(r.xcpu_state for r in good[k]).items()))
            if k not in ("dpdk", "baseline") and "baseline" in good:
                entry["ratio_baseline"] = _stats(_pair_ratios(good[k], good["baseline"]))
                entry["best_ratio_baseline"] = _best_ratio(good[k], good["baseline"])
            if k.startswith("vswitch+") and "vswitch" in good:
                entry["ratio_off"] = _stats(_pair_ratios(good[k], good["vswitch"]))
            if split:
                # packed / split of the same system and pair
                entry["ratio_split"] = _stats(_pair_ratios(good[k], [r for r in split
                                                                    if r.kind == k and ok(r)]))
            per_system[k] = entry
        row = {
            "config": cfg.label,
            "size": cfg.size,
            "queues": cfg.queues,
            "ring": cfg.ring,
            "dpdk_mpps": _stats(mpps.get("dpdk", [])),
            "vswitch_mpps": _stats(mpps.get("vswitch", [])),
            "ratio": _stats(_pair_ratios(good.get("vswitch", []), good.get("dpdk", []))),
            "systems": per_system,
            "errors": {k: [r.error for r in v if r.error] for k, v in by_kind.items()},
            "flagged": {k: sum(1 for r in v if r.usable and r.flagged) for k, v in by_kind.items()},
            "runs": {k: len(v) for k, v in by_kind.items()},
        }
        if "baseline" in systems:
            row["baseline_mpps"] = _stats(mpps["baseline"])
            row["ratio_baseline"] = _stats(_pair_ratios(good.get("vswitch", []), good["baseline"]))
            rb = row["ratio_baseline"]
            # the criterion: median per-pair ratio of "off" to the baseline (BASELINE_TOLERANCE)
            row["within_5pct_of_baseline"] = None if rb is None else rb["median"] >= BASELINE_TOLERANCE
            row["best_ratio_baseline"] = _best_ratio(good.get("vswitch", []), good["baseline"])
            both = [r.median_pps for r in good.get("vswitch", []) + good["baseline"] if r.median_pps]
            if both:
                row["fast_ratio_baseline"] = _stats(_fast_pair_ratios(good.get("vswitch", []),
                                                                      good["baseline"], max(both)))
                for k in systems:
                    if k.startswith("vswitch+") and "vswitch" in good:
                        per_system[k]["fast_ratio_off"] = _stats(_fast_pair_ratios(
                            good[k], good["vswitch"], max(both + [r.median_pps for r in good[k]
                                                                  if r.median_pps])))
        out.append(row)
    return out


def _fmt(s: dict[str, float] | None, digits: int = 2) -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}..{s['max']:.{digits}f}] n={s['n']}"


def print_table(summary: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    """One row per config and system; ratios are medians of per-pair ratios,
    "fast" the same over the pairs with both runs in the fast state
    (fast_threshold). Columns without a figure in any row are left out."""
    rows: list[dict[str, str]] = []
    for s in summary:
        systems = s.get("systems") or {
            k: {"mpps": s[f"{k}_mpps"], **({"ratio_dpdk": s["ratio"]} if k == "vswitch" else {})}
            for k in KINDS}
        for k, e in systems.items():
            nerr = len(s["errors"].get(k, []))
            row = {"config": s["config"], "system": k, "Mpps med [min..max]": _fmt(e["mpps"]),
                   "Gbit/s": f"{e['mpps']['median'] * s['size'] * 8 / 1e3:.2f}" if e["mpps"] else "-"}
            ratios = e.get("ratios") or ({"dpdk": e["ratio_dpdk"]} if e.get("ratio_dpdk") else {})
            for ref, st in ratios.items():
                row[f"/{ref}"] = _fmt(st, 3)
                if (e.get("fast_ratios") or {}).get(ref):
                    row[f"/{ref} fast"] = _fmt(e["fast_ratios"][ref], 3)
            for key, col in (("ratio_baseline", "/baseline"), ("ratio_off", "/off"), ("ratio_split", "/split")):
                if key in e:
                    row[col] = _fmt(e.get(key), 3)
            if e.get("steal_pct"):
                row["steal %"] = f"{e['steal_pct']['median']:.1f}"
            if e.get("cycles_per_frame"):
                # only beside the steal: stolen time is inside the worker's busy time
                row["worker cycles/frame"] = _fmt(e["cycles_per_frame"], 0)
            row["flagged"] = str(s["flagged"].get(k, 0) or "-")
            row["errors"] = str(nerr or "-")
            rows.append(row)
    hdr: list[str] = []
    for r in rows:
        hdr += [c for c in r if c not in hdr]
    tail = ("steal %", "worker cycles/frame", "flagged", "errors")
    hdr = [c for c in hdr if c not in tail] + [c for c in tail if c in hdr]
    table = [hdr] + [[r.get(c, "") for c in hdr] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(*table, strict=True)]
    for r in table:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip(), file=out)
    for s in summary:
        if "within_5pct_of_baseline" in s:
            verdict = {None: "no usable pair", True: "within 5 %", False: "MORE THAN 5 % BELOW"}[
                s["within_5pct_of_baseline"]]
            best = s.get("best_ratio_baseline")
            print(f"{s['config']}: vswitch (features off) / baseline = {_fmt(s['ratio_baseline'], 3)}: "
                  f"{verdict}" + ("" if best is None else f"; best run / best run {best:.3f}"), file=out)
            if s.get("fast_ratio_baseline"):
                print(f"{s['config']}: pairs with both runs in the fast state (>= {FAST_STATE_FRACTION} of "
                      f"the fastest): off / baseline = {_fmt(s['fast_ratio_baseline'], 3)}", file=out)
            for k, e in (s.get("systems") or {}).items():
                if e.get("fast_ratio_off"):
                    print(f"{s['config']}: fast-state pairs: {k} / off = {_fmt(e['fast_ratio_off'], 3)}",
                          file=out)
    errs = {(s["config"], k, e) for s in summary for k, v in s["errors"].items() for e in v}
    for cfg, k, e in sorted(errs):
        print(f"error {cfg} {k}: {e.splitlines()[0][:300]}", file=out)


# --------------------------------------------------------------------------
# The baseline: an earlier commit, built in a worktree of its own
# --------------------------------------------------------------------------


def _git(*args: str, cwd: Path = REPO) -> str:
    r = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} (in {cwd}) failed: {r.stderr.strip()}")
    return r.stdout.strip()


def prepare_baseline(ref: str, out: TextIO = sys.stdout) -> tuple[str, Path]:
    """Build *ref* in /tmp/vswitch-baseline-<commit> (a detached git worktree
    with its own .venv, `make build`) unless it is already built there at that
    commit; returns (commit, its vswitchd)."""
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except RuntimeError:
        raise SystemExit(f"--baseline {ref}: no such commit in {REPO} (a shallow clone? "
                         f"git fetch --unshallow)") from None
    tree = Path(tempfile.gettempdir()) / f"vswitch-baseline-{commit[:12]}"
    vswitchd = tree / ".venv" / "bin" / "vswitchd"
    stamp = tree / ".vswitch-baseline-built"  # written after a successful build of `commit`
    try:
        head = _git("rev-parse", "HEAD", cwd=tree) if tree.is_dir() else ""
    except RuntimeError:
        head = ""
    if head == commit and vswitchd.exists() and stamp.exists() and stamp.read_text().strip() == commit:
        print(f"baseline {ref} = {commit[:12]}: reusing {tree}", flush=True)
        return commit, vswitchd
    if tree.exists() and head != commit:
        # not (or no longer) a worktree at that commit: start again
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                       capture_output=True, timeout=120)
        shutil.rmtree(tree, ignore_errors=True)
    if not tree.exists():
        _git("worktree", "prune")
        _git("worktree", "add", "--detach", str(tree), commit)
    stamp.unlink(missing_ok=True)
    log_path = tree / ".vswitch-baseline-build.log"
    print(f"baseline {ref} = {commit[:12]}: building in {tree} (make build, log {log_path})", flush=True)
    t0 = time.monotonic()
    # its own venv and its own make: nothing from ours (`make bench VAR=...` passes
    # command-line variables down through MAKEFLAGS)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    with open(log_path, "w") as log:
        r = subprocess.run(["make", "build"], cwd=tree, stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT, env=env, timeout=1800)
    if r.returncode != 0 or not vswitchd.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"baseline {ref}: make build failed in {tree} (exit {r.returncode}):\n{tail}")
    stamp.write_text(commit + "\n")
    print(f"baseline built in {time.monotonic() - t0:.0f}s", flush=True)
    return commit, vswitchd


def tree_commit(tree: Path) -> tuple[str, bool]:
    """The commit checked out in *tree* and whether its tracked files differ
    from it (`git status --porcelain --untracked-files=no`)."""
    try:
        commit = _git("rev-parse", "HEAD", cwd=tree)
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=tree))
    except RuntimeError as e:
        raise SystemExit(f"--baseline-tree {tree}: not a git checkout ({e})") from None
    return commit, dirty


def wrapper_scripts(tree: Path, bindir: Path, python: Path) -> tuple[Path, Path]:
    """bindir/python and bindir/vswitchd: *python* with *tree* first on its
    path, so that `vswitch` (and its extension built in place) is imported
    from the tree, whatever the interpreter's own install points at (an
    editable install's finder comes after PYTHONPATH). build_target() finds
    bindir/python beside bindir/vswitchd."""
    bindir.mkdir(parents=True, exist_ok=True)
    env = f"PYTHONPATH={shlex.quote(str(tree))}"
    py = bindir / "python"
    py.write_text(f"#!/bin/sh\n# {tree}'s vswitch first on the path\n"
                  f"{env} exec {shlex.quote(str(python))} \"$@\"\n")
    daemon = bindir / "vswitchd"
    daemon.write_text(f"#!/bin/sh\n# vswitchd of {tree}\n{env} exec {shlex.quote(str(python))} -c "
                      f"'import sys; from vswitch.daemon import main; sys.exit(main())' \"$@\"\n")
    for f in (py, daemon):
        f.chmod(0o755)
    return py, daemon


def prepare_baseline_tree(tree: Path, bindir: Path, out: TextIO = sys.stdout) -> dict[str, Any]:
    """An already built checkout (its extension built in place, e.g. a git
    worktree of main after `make build`) as the baseline: no venv, no build.
    Runs it with its own .venv's interpreter when it has one, else ours;
    checks that its `vswitch` and extension are the ones imported."""
    tree = tree.resolve()
    if not (tree / "vswitch" / "__init__.py").is_file():
        raise SystemExit(f"--baseline-tree {tree}: no vswitch package there")
    commit, dirty = tree_commit(tree)
    venv_python = tree / ".venv" / "bin" / "python"
    python = venv_python if venv_python.exists() else Path(sys.executable)
    py, vswitchd = wrapper_scripts(tree, bindir, python)
    code = "import vswitch, vswitch._datapath as d; print(d.__file__)"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60, cwd=bindir)
    ext = r.stdout.strip()
    if r.returncode != 0 or not ext.startswith(str(tree) + os.sep):
        raise SystemExit(f"--baseline-tree {tree}: its extension is not importable from it "
                         f"(built? make build there): {(r.stderr or ext).strip()[-500:]}")
    print(f"baseline tree {tree} at {commit[:12]}{' (dirty)' if dirty else ''}, {python}", flush=True)
    return {"ref": str(tree), "tree": str(tree), "commit": commit, "dirty": dirty,
            "python": str(python), "vswitchd": str(vswitchd)}


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


# Set by a benchmark that runs others as its children (bench.matrix): the
# number of its open, locked descriptor of LOCK_PATH, passed down to them.
LOCK_FD_ENV = "VSWITCH_BENCH_LOCK_FD"


def inherited_lock(path: Path = LOCK_PATH) -> int | None:
    """The lock descriptor a parent benchmark passed down (LOCK_FD_ENV), if
    it is open on *path* itself; None otherwise."""
    text = os.environ.get(LOCK_FD_ENV, "")
    if not text.isdigit():
        return None
    try:
        st, want = os.fstat(int(text)), os.stat(path)
    except OSError:
        return None
    return int(text) if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino) else None


@contextmanager
def single_instance(path: Path = LOCK_PATH) -> Iterator[int]:
    """Refuse to run while another benchmark holds the lock; a child of the
    benchmark holding it (inherited_lock) runs under its parent's lock.
    Yields the locked descriptor."""
    held = inherited_lock(path)
    if held is not None:
        yield held
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another benchmark holds {path}; run one at a time") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield fd
    finally:
        os.close(fd)


def pair_order(systems: Sequence[System], pair: int) -> list[System]:
    """Even pairs in the given order, odd pairs reversed (A B C, C B A, ...):
    a slow drift of the machine's speed then favours no system's position."""
    return list(systems) if pair % 2 == 0 else list(systems)[::-1]


def build_target(vswitchd: Path) -> str:
    """The extension's build target (vswitch._datapath.BUILD_TARGET, e.g.
    "x86-64-v2" or "native") as the interpreter beside *vswitchd* imports it;
    builds from before the attribute existed were all -march=native."""
    python = vswitchd.parent / "python"
    code = "import vswitch._datapath as d; print(getattr(d, 'BUILD_TARGET', 'native'))"
    try:
        r = subprocess.run([str(python) if python.exists() else sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "?"


def machine_line(host: dict[str, Any]) -> str:
    """What the figures were measured on, in one line for the output."""
    steal = host.get("steal_pct")
    return (f"CPU {host.get('cpu_model', '?')} x{host.get('cpus', '?')}, kernel {host.get('kernel', '?')}, "
            f"DPDK {host.get('dpdk', '?')}, OVS {host.get('ovs') or '-'}, build target(s) "
            + (", ".join(f"{k} {v}" for k, v in (host.get("build_target") or {}).items()) or "-")
            + ("" if steal is None else f", steal {steal:.2f} % over the run"))


def host_info(systems: Sequence[System] = ()) -> dict[str, Any]:
    info: dict[str, Any] = {"hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count()}
    info["build_target"] = {x.name: build_target(x.vswitchd) for x in systems if x.vswitchd is not None}
    if any(x.kind == "ovs" for x in systems):
        try:
            info["ovs"] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "openvswitch-switch-dpdk"],
                                         capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["dpdk"] = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "dpdk-dev"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        info["git"] = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def resummarize(path: Path, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    """Summarise a results file's runs again with this version's summary."""
    doc = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(RunResult)}
    runs = [RunResult(**{k: v for k, v in r.items() if k in fields}) for r in doc["runs"]]
    a = doc["args"]
    summary = summarize(runs, Config.parse(a["configs"]), bool(a.get("keep_noisy")), doc["systems"])
    doc["summary"] = summary
    doc["resummarized"] = dt.datetime.now().astimezone().isoformat()
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(summary, out)
    return summary


def parse_ovs(text: str, memory: str, topology: str) -> list[str]:
    """--ovs: the flow setups asked for, refused where OVS cannot run. With
    --memory 4k the generator stays on 4 KiB pages and OVS alone gets huge
    pages of its own (it cannot run without them)."""
    flows = list(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    if any(f not in OVS_FLOWS for f in flows):
        raise SystemExit(f"--ovs: from {','.join(OVS_FLOWS)}")
    if memory not in ("4k", "huge"):
        raise SystemExit(f"--memory: 4k or huge, not {memory}")
    if flows and topology != "loop":
        raise SystemExit("--ovs: only with --topology loop")
    if flows and not ovs_available():
        raise SystemExit(f"--ovs: {OVS_VSWITCHD} not found (apt-get install --no-install-recommends "
                         "openvswitch-switch-dpdk, or make deps-bench)")
    return flows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5, help="reference+vswitch pairs per config (default 5)")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"SIZExQUEUES list, 'p' after one for packed rings, e.g. 64x1,64x1p (default {DEFAULT_CONFIGS})")
    ap.add_argument("--seconds", type=int, default=10, help="sampling seconds per run (default 10)")
    ap.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds per run (default 5)")
    ap.add_argument("--settle", type=float, default=1.0, help="pause after links up before tx_first (default 1)")
    ap.add_argument("--topology", choices=TOPOLOGIES, default="loop",
                    help="loop: frames circulate (tx_first 8, the default); oneway: a generator "
                         "at full speed into port a, the figure is what port b delivers (steady)")
    ap.add_argument("--only", choices=("both", *KINDS), default="both",
                    help="run only DPDK, or only the vswitch systems (baseline and variants)")
    ap.add_argument("--baseline", metavar="REF", default=None,
                    help="also run vswitchd built from this commit (e.g. cefd30a), interleaved")
    ap.add_argument("--baseline-tree", metavar="PATH", type=Path, default=None,
                    help="the baseline is this already built checkout (e.g. a worktree of main after "
                         "make build): no build; the results name its commit and whether it is dirty")
    ap.add_argument("--perf", action="store_true",
                    help="perf record both CPUs over each run's sampling window (cpu-clock); the "
                         "hottest symbols per CPU go into the results (perf_top), perf.data stays "
                         "in the run's directory (use --workdir to keep it)")
    ap.add_argument("--workers", type=int, default=1, help="vswitch's datapath workers (default 1)")
    ap.add_argument("--mode", choices=MODES, default=None,
                    help="vswitch's datapath mode (default: the daemon's own, adaptive)")
    ap.add_argument("--variants", default="off",
                    help=f"vswitch variants, comma-separated, from {','.join(VARIANTS)} (default off)")
    ap.add_argument("--memory", choices=("4k", "huge"), default="4k",
                    help="the generator's (and DPDK switches') memory: 4k pages (--no-huge, the default) "
                         f"or 2 MiB huge pages ({HUGE_PAGES} reserved for the run and a private "
                         "hugetlbfs mount, both given back at the end); OVS needs huge")
    ap.add_argument("--socket-role", choices=("server", "client"), default="server",
                    help="the switch's side of the vhost-user sockets: server (it listens, the default) "
                         "or client (the generator's virtio-user ports listen); OVS is always a client")
    ap.add_argument("--ovs", default="",
                    help=f"also run OVS-DPDK with these flow setups, from {','.join(OVS_FLOWS)} "
                         "(systems ovs-normal, ovs-p2p; needs --memory huge)")
    ap.add_argument("--gen-cpu", type=int, default=0)
    ap.add_argument("--sut-cpu", type=int, default=1)
    ap.add_argument("--max-foreign", type=float, default=0.05,
                    help="flag runs where other processes used more than this fraction of a CPU (default 0.05)")
    ap.add_argument("--keep-noisy", action="store_true", help="include flagged runs in the medians")
    ap.add_argument("--vswitchd", type=Path, default=REPO / ".venv" / "bin" / "vswitchd")
    ap.add_argument("--gen-in-order", choices=("on", "off"), default="on",
                    help="the generator's ports ask for VIRTIO_F_IN_ORDER (on: virtio-user's default). "
                         "A switch that grants it lets the generator run its cheaper in-order RX and TX "
                         "paths; off puts both switches' generators on the same general paths")
    ap.add_argument("--gen-mbufs", type=int, default=None,
                    help="generator --total-num-mbufs (default: testpmd's default pool)")
    ap.add_argument("--workdir", type=Path, default=None, help="run directories and logs (default: temp dir)")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--out", type=Path, default=None,
                    help="the results JSON file (default: RESULTS/loopback-[TOPOLOGY-]DATE-TIME.json)")
    ap.add_argument("--resummarize", type=Path, metavar="JSON", default=None,
                    help="recompute the summary of a results file from its runs (rewritten in place), "
                         "print the table, run nothing")
    args = ap.parse_args(argv)
    if args.resummarize:
        resummarize(args.resummarize)
        return 0

    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    # Ctrl-C, and SIGINT/SIGTERM even when started in the background (where a
    # shell leaves SIGINT ignored): stop the current run cleanly, summarise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if not testpmd_available():
        print("dpdk-testpmd not found (apt-get install dpdk-dev)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGHUP, signal.default_int_handler)  # a closed terminal: clean up too
    configs = Config.parse(args.configs)
    variants = parse_variants(args.variants)
    if args.baseline and args.baseline_tree:
        raise SystemExit("--baseline and --baseline-tree: one baseline at a time")
    if args.workers < 1:
        raise SystemExit("--workers: at least 1")
    ovs_flows = parse_ovs(args.ovs, args.memory, args.topology)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vswitch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opt = Options(
        seconds=args.seconds, warmup=args.warmup, settle=args.settle, gen_cpu=args.gen_cpu,
        sut_cpu=args.sut_cpu, max_foreign=args.max_foreign,
        workdir=workdir, gen_mbufs=args.gen_mbufs, topology=args.topology,
        memory=args.memory, socket_role=args.socket_role, workers=args.workers, mode=args.mode,
        perf=args.perf, gen_in_order=args.gen_in_order == "on",
    )
    started = dt.datetime.now().astimezone()
    runs: list[RunResult] = []
    baseline_info: dict[str, str] | None = None
    huge_info: dict[str, Any] | None = None
    cpus_all = list(range(os.cpu_count() or 1))
    stat0 = read_cpu_times(cpus_all)
    # OVS on 4 KiB pages: the generator stays there, OVS gets pages of its own
    ovs_memory = "huge" if ovs_flows and args.memory == "4k" else "4k"
    with single_instance(), huge_pages(args.memory, workdir) as huge, \
            huge_pages(ovs_memory, workdir / "ovs-pages", OVS_ONLY_HUGE_PAGES) as ovs_huge:
        opt.huge = huge
        opt.ovs_huge = ovs_huge
        huge_info = huge.as_json() if huge else (ovs_huge.as_json() | {"for": "ovs"} if ovs_huge else None)
        # the order within a pair: dpdk, ovs-*, baseline, vswitch, vswitch+VARIANT...
        systems: list[System] = []
        if args.only in ("both", "dpdk"):
            systems.append(System("dpdk", "dpdk"))
            systems.extend(System(f"ovs-{f}", "ovs", flows=f) for f in ovs_flows)
        if args.only in ("both", "vswitch"):
            if args.baseline:
                commit, baseline_vswitchd = prepare_baseline(args.baseline)
                systems.append(System("baseline", "vswitch", baseline_vswitchd))
                baseline_info = {"ref": args.baseline, "commit": commit, "vswitchd": str(baseline_vswitchd)}
            elif args.baseline_tree:
                baseline_info = prepare_baseline_tree(args.baseline_tree, workdir / "baseline-bin")
                systems.append(System("baseline", "vswitch", Path(baseline_info["vswitchd"])))
            systems.extend(variant_system(v, args.vswitchd) for v in variants)
        idle = idle_check([opt.gen_cpu, opt.sut_cpu])
        print(f"topology {opt.topology}; memory {opt.memory}"
              f"{' (OVS: its own huge pages)' if ovs_huge else ''}; switch as socket {opt.socket_role}"
              f"{' (OVS: client)' if ovs_flows and opt.socket_role == 'server' else ''}; "
              f"vswitch's {datapath_yaml(opt.workers, opt.mode).strip()}; workdir {workdir}; "
              f"CPUs {opt.gen_cpu},{opt.sut_cpu} busy before start: {idle:.1%} of a CPU", flush=True)
        host = host_info(systems)  # at the start: the tree (git describe) that runs
        print(machine_line(host), flush=True)
        if idle > opt.max_foreign:
            print("WARNING: the benchmark CPUs are not idle; runs will be flagged", flush=True)
        err_log = open(workdir / "errors.log", "a")
        try:
            for pair in range(args.pairs):
                for cfg in configs:
                    for system in pair_order(systems, pair):
                        t0 = time.monotonic()
                        r = run_once(system, cfg, pair, opt, err_log)
                        runs.append(r)
                        what = (f"{r.median_pps / 1e6:6.2f} Mpps" if r.median_pps is not None else "   -  ")
                        note = f" ERROR {r.error.splitlines()[0][:160]}" if r.error else ""
                        if r.offered_pps and r.delivered_fraction is not None:
                            note += (f"  (P0 sent {statistics.median(r.offered_pps) / 1e6:.2f} Mpps, "
                                     f"delivered {r.delivered_fraction:.4f})")
                        note += f" FLAGGED {r.flagged}" if r.flagged else ""
                        note += f" NOTE {r.note}" if r.note else ""
                        print(f"pair {pair} {cfg.label:<10} {system.name:<16} {what}  foreign "
                              f"{r.cpu.get('foreign', float('nan')):.1%}  {time.monotonic() - t0:5.1f}s{note}",
                              flush=True)
        except KeyboardInterrupt:
            print("interrupted: summarising the runs so far", flush=True)
        finally:
            err_log.close()
    host["steal_pct"] = steal_percent(stat0, read_cpu_times(cpus_all))
    summary = summarize(runs, configs, args.keep_noisy, [x.name for x in systems])
    print()
    print(machine_line(host))
    print_table(summary)
    args.results.mkdir(parents=True, exist_ok=True)
    tag = "" if args.topology == "loop" else f"{args.topology}-"
    path = args.out or args.results / f"loopback-{tag}{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "loopback",
        "topology": args.topology,
        "started": started.isoformat(),
        "finished": dt.datetime.now().astimezone().isoformat(),
        "host": host,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "idle_before_start": idle,
        "memory": args.memory,
        "huge_pages": huge_info,
        "socket_role": args.socket_role,
        "ovs_memory": None if not ovs_flows else ("huge (its own pages; the generator on 4k)"
                                                  if ovs_huge else "huge"),
        "datapath": {"workers": args.workers, "mode": args.mode or "adaptive (default)"},
        "fast_state_rule": (f"per system and config: from the fastest run down, runs are fast until the "
                            f"first step down of >= {BIMODAL_GAP}x (threshold: its geometric midpoint; "
                            f"no such step: all fast); a pair is fast when both runs are"),
        "systems": [x.name for x in systems],
        "baseline": baseline_info,
        "variants": {v: [VARIANTS[v](0), VARIANTS[v](1)] for v in variants},
        "gen_macs": list(GEN_MACS),
        "summary": summary,
        "runs": [dataclasses.asdict(r) for r in runs],
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
