"""Attack benchmark: what a hostile guest on one port costs a healthy pair on others.

Informational (no pass/fail): the healthy pair's throughput and round-trip
latency while each attack of the hostile-guest tests runs on other ports of
the same switch, next to the same figures with no attack, in one run::

    phases: none, blocked_call, tiny_gso, zero_length_chains, racing_writer, cpu_hog, none-after

One vswitchd (one worker, pinned like the tests: ``--sut-cpu``, 1) carries
three groups of ports in three VLANs that share nothing but the switch:

* VLAN 10, ports a, b: DPDK testpmd's virtio-user pair, the throughput pair;
* VLAN 11, ports h1, h2: two test front-end devices, the latency pair;
* VLAN 20: the attackers' ports (and the victims/peers the attacks need).

Each phase: the attack starts in a child process (fork, as in
tests/test_hostile_work.py, so that it shares no GIL with the measuring
process) and sets itself up; then, one after the other, so that neither
disturbs the other's figure,

1. throughput: testpmd forwards 64-byte frames in the "oneway" topology of
   bench/loopback.py: net_null0 makes frames at full speed, the mac engine
   sends them on port a to port b's static MAC (known unicast a -> b), what
   b delivers is freed. The figure is port b's RX rate (testpmd's "Rx-pps
   since last show") over 1 s windows after ``--warmup`` (1 s): ``--seconds``
   (5) windows without an attack; under an attack 5 pairs of windows, one
   with the attack running and one with the attacker paused (SIGSTOP to its
   process group, the racer included; its ports stay connected), in the order
   ABBA..., 0.2 s after each pause or resume. The machine's own speed
   changes by a factor of 2 between states that last seconds (below), so
   the figure that says something is the ratio running / paused of two
   adjacent windows, the median over the pairs. A run in which port a's ring
   never filled is flagged "generator-bound" (bench/loopback.py's
   oneway_check);
2. latency: single-frame round trips h1 -> h2 -> h1 for ``--latency-seconds``
   (5 s, the attack running; tests/test_hostile_work.py's round_trips): p50,
   p99, max. A lost frame is counted, the pair resynchronised, and the
   measurement goes on.

then the attack is stopped (SIGTERM) and its ports must be listening again
before the next phase. The attacks (their code is the tests'):

* blocked_call: tests/test_hostile_notify.py's front-end that blocks its call
  and err eventfds (counter at its maximum, O_NONBLOCK cleared) on both
  rings, asks for an interrupt after every used entry (no EVENT_IDX), and
  keeps traffic going both ways with a peer port (re-posting its RX buffers
  without ever reading the eventfd), paced at about one batch of 32 frames
  per millisecond: its harm is the blocking notification, not its volume;
* tiny_gso: tests/test_hostile_work.py's _tiny_gso (60 KB TSO frames with
  gso_size 1 and 64 to a receiver without GUEST_TSO), flat out;
* zero_length_chains: tests/test_hostile_work.py's _zero_length_chains (four
  receivers whose RX entries all name one chain of 65 536 zero-length
  descriptors, a flooder broadcasting to them), flat out;
* racing_writer: tests/test_hostile_race.py's attacker with
  tests/harness/racer.c flipping the source MAC and the EtherType/802.1Q
  tag in every one of its 128 TX buffers while the attacker re-posts them as
  fast as the switch hands them back (allowed_macs [A], access VLAN 20, a
  receiver re-posting its RX buffers);
* cpu_hog: no attack, the control: a busy loop on the attacker's CPU and no
  port. What sharing a CPU with a busy process costs the healthy pair; an
  attack's figures beyond these are what it costs through the switch. (The
  racing writer is two busy processes, the others one; blocked_call is
  paced.)

CPUs: the switch alone on ``--sut-cpu``; testpmd, the latency pair (this
process) on ``--gen-cpu``; the attacker (and the racer) on a CPU of its own
when the machine has a third one, else on ``--gen-cpu`` too. On 2 cores the
attacker, the healthy pair and the generator therefore share a CPU: a figure
under attack includes the CPU the attacker took from the generator and the
latency pair, not only what it cost the switch. The output and the JSON say
so, and give per phase the CPU shares of the switch, the generator and the
rest (attacker, racer, this process) in the running and the paused windows,
so that the two can be told apart: with the generator short of CPU, port
a's ring runs dry now and then and the switch's CPU idles (the JSON also
gives mpps_per_switch_cpu, throughput per CPU the switch used); and the
cpu_hog control says what the CPU sharing alone costs. The first run
(bench/results/attacks-20261206-050424.json): every attack's ratio and p99
were the hog's (0.62-0.76 against 0.67; 4.2 ms, the racing writer's two
busy processes 8.1 ms), p50 unchanged, nothing lost - the figures cannot
resolve a cost to the switch smaller than the CPU sharing on 2 cores.

Why testpmd and not a Python front-end for throughput: testpmd's
virtio-user is a C poll-mode driver that offers more than the switch can
take (the "generator-bound" flag checks it in every phase), so a drop in its
figure is the switch's; a tests/harness/frontend device bulk-exchanging frames in a
child process moves some 10^4-10^5 frames/s, bounded by its own interpreter,
and would measure Python competing with the attacker for the same core.
testpmd is started once for the whole benchmark (about 1 s) and only
started/stopped per phase, as bench/loopback.py reads its rates.

The two "none" phases (first and last) show how far the machine itself
drifts within a run: this VM has a slow and a fast state (bench/loopback.py:
~3.6 or ~9.5 Mframes/s at 64 B for the same build), and here they change
within seconds (the first run of this benchmark: 4.1 Mframes/s in every
window of the first "none", 9.1, 9.0, 8.9, 8.7 and then 6.0 in the last).
Hence the paired windows: a throughput compared across phases says nothing.

Usage (root, from the repository root; never two benchmarks at once: the
lock of bench/loopback.py is taken)::

    .venv/bin/python -m bench.attacks [--seconds 5] [--latency-seconds 5]
        [--attacks blocked_call,tiny_gso,zero_length_chains,racing_writer,cpu_hog]

Results: a table on stdout and bench/results/attacks-<date>.json (CPU model,
kernel, steal percentage of the run and per phase from /proc/stat, the
switch revision, the CPU layout).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import loopback
from tests import test_hostile_notify as notify
from tests import test_hostile_race as race
from tests import test_hostile_work as work
from tests.harness.frontend import RingFull, VhostUserFrontend
from tests.harness.peers.testpmd import TestPmd, TestPmdError, testpmd_available, virtio_user_vdev
from tests.harness.racer import Racer
from tests.harness.switch import Vswitchd

REPO = Path(__file__).resolve().parents[1]

ATTACKS = ("blocked_call", "tiny_gso", "zero_length_chains", "racing_writer", "cpu_hog")
THROUGHPUT_VLAN, LATENCY_VLAN, ATTACK_VLAN = 10, 11, 20
FRAME_SIZE = 64
ATTACK_MAX_S = 90.0          # an attacker (and the racer) ends by itself after this, whatever happens
BLOCKED_BATCH, BLOCKED_PACE_S = 32, 0.001
WINDOW_S = 1.0               # one throughput sample
WINDOW_SETTLE_S = 0.2        # after pausing or resuming the attacker, before a window
RACE_RING = 1024             # the racing writer's receiver: RX buffers re-posted as they come back

# The attackers' ports (all in ATTACK_VLAN); the first of each list runs the attack.
ATTACK_PORTS: dict[str, tuple[str, ...]] = {
    "blocked_call": ("bad", "peer"),
    "tiny_gso": ("atk", "sink"),
    "zero_length_chains": ("flood", "trap0", "trap1", "trap2", "trap3"),
    "racing_writer": ("att", "rsink"),
    "cpu_hog": (),               # the control: no port, a busy loop on the attacker's CPU
}
BAD_MAC, PEER_MAC = notify.BAD_MAC, notify.PEER_MAC


# --------------------------------------------------------------------------
# Pure helpers (tests/unit/test_bench.py)
# --------------------------------------------------------------------------


def switch_ports() -> dict[str, dict[str, Any]]:
    """The switch's ports: throughput pair, latency pair and every attack's
    ports, each group in a VLAN of its own."""
    def access(vid: int, **extra: Any) -> dict[str, Any]:
        return {"type": "vhost-user", "vlan": {"mode": "access", "id": vid}, **extra}
    ports = {
        "a": access(THROUGHPUT_VLAN),
        # the generator sends to GEN_MACS[1], which never sends: known unicast a -> b
        "b": access(THROUGHPUT_VLAN, mac=loopback.GEN_MACS[1]),
        "h1": access(LATENCY_VLAN),
        "h2": access(LATENCY_VLAN),
    }
    for attack, names in ATTACK_PORTS.items():
        for name in names:
            if attack == "racing_writer" and name == "att":
                a = race.A.hex(":")
                ports[name] = access(ATTACK_VLAN, mac=a, allowed_macs=[a])
            else:
                ports[name] = access(ATTACK_VLAN)
    return ports


def parse_proc_stat(text: str) -> dict[str, dict[str, int]]:
    """The cpu lines of /proc/stat: {"cpu": {...}, "cpu0": {...}}, jiffies per field."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("cpu"):
            out[parts[0]] = {n: int(v) for n, v in zip(names, parts[1:], strict=False)}
    return out


def read_proc_stat() -> dict[str, dict[str, int]]:
    with open("/proc/stat") as f:
        return parse_proc_stat(f.read())


def _total(fields: dict[str, int]) -> int:
    # guest and guest_nice are already counted in user and nice
    return sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))


def steal_percent(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
                  cpu: str = "cpu") -> float | None:
    """Steal time between two /proc/stat readings, in % of all the CPU time
    (of `cpu`: "cpu" is every CPU together); None if no time passed."""
    a, b = before.get(cpu), after.get(cpu)
    if not a or not b:
        return None
    total = _total(b) - _total(a)
    if total <= 0:
        return None
    return 100.0 * (b.get("steal", 0) - a.get("steal", 0)) / total


def busy_seconds(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
                 cpus: Sequence[int], clk_tck: int) -> float:
    """CPU seconds spent on `cpus` (everything but idle, iowait and steal)."""
    s = 0
    for c in cpus:
        a, b = before.get(f"cpu{c}"), after.get(f"cpu{c}")
        if a and b:
            d = {k: b[k] - a.get(k, 0) for k in b}
            s += _total(d) - d.get("idle", 0) - d.get("iowait", 0) - d.get("steal", 0)
    return s / clk_tck


def cpu_shares(wall: float, busy: float, switch: float, generator: float) -> dict[str, float]:
    """Fractions of one CPU over a window of `wall` seconds: the switch, the
    generator and everything else that ran on the benchmark's CPUs."""
    if wall <= 0:
        return {"switch": 0.0, "generator": 0.0, "others": 0.0}
    return {"switch": round(switch / wall, 3), "generator": round(generator / wall, 3),
            "others": round(max(0.0, busy - switch - generator) / wall, 3)}


def window_plan(seconds: int, paired: bool) -> list[str]:
    """The throughput windows' conditions: "none" x seconds without an attack;
    with one, `seconds` pairs of "attack" and "paused" windows, ABBA... so
    that neither condition always comes first after a switch."""
    if not paired:
        return ["none"] * seconds
    out: list[str] = []
    for k in range(seconds):
        out += ["attack", "paused"] if k % 2 == 0 else ["paused", "attack"]
    return out


def summarize_windows(plan: Sequence[str], mpps: Sequence[float]) -> dict[str, Any]:
    """Medians per condition and, for paired plans, the median of the per-pair
    ratios attack / paused (each pair: two adjacent windows, usually in the
    same state of the machine)."""
    by: dict[str, list[float]] = {}
    for c, x in zip(plan, mpps, strict=True):
        by.setdefault(c, []).append(x)

    def med(c: str) -> float | None:
        return round(statistics.median(by[c]), 4) if by.get(c) else None
    out: dict[str, Any] = {"mpps": med("attack") if "attack" in by else med("none")}
    if "paused" in by:
        out["paused_mpps"] = med("paused")
        ratios = []
        for k in range(0, len(plan) - 1, 2):
            pair = dict(zip(plan[k:k + 2], mpps[k:k + 2], strict=True))
            if pair.get("paused"):
                ratios.append(pair["attack"] / pair["paused"])
        out["pair_ratios"] = [round(r, 4) for r in ratios]
        out["ratio"] = round(statistics.median(ratios), 4) if ratios else None
    return out


def per_cpu(mpps: float | None, share: float | None) -> float | None:
    """Mframes/s per CPU the switch used: what it forwarded for the healthy
    pair per second of its own CPU time (its CPU idles when a starved
    generator cannot keep port a's ring filled)."""
    if mpps is None or not share:
        return None
    return round(mpps / share, 3)


def latency_summary(rtts: Sequence[float]) -> dict[str, Any]:
    """p50, p99 and max of round trips (seconds in, milliseconds out)."""
    if not rtts:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = sorted(r * 1e3 for r in rtts)
    if len(ms) >= 100:
        q = statistics.quantiles(ms, n=100)
        p50, p99 = q[49], q[98]
    else:
        p50, p99 = statistics.median(ms), ms[-1]       # too few for a 99th percentile: the worst
    return {"n": len(ms), "p50_ms": round(p50, 4), "p99_ms": round(p99, 4), "max_ms": round(ms[-1], 4)}


def relative(value: float | None, base: float | None) -> float | None:
    """value / base - 1 (e.g. -0.12: 12 % less), None when either is missing."""
    if value is None or not base:
        return None
    return value / base - 1.0


def cpu_layout(ncpus: int, gen_cpu: int, sut_cpu: int) -> dict[str, Any]:
    """Who runs where, and whether the attacker shares a CPU with the healthy pair."""
    spare = [c for c in range(ncpus) if c not in (gen_cpu, sut_cpu)]
    attacker = spare[0] if spare else gen_cpu
    shared = attacker in (gen_cpu, sut_cpu)
    layout = {"cpus": ncpus, "switch": sut_cpu, "generator": gen_cpu, "latency_pair": gen_cpu,
              "attacker": attacker, "attacker_shares_cpu": shared}
    if shared:
        layout["note"] = (f"{ncpus} CPUs: the attacker, the healthy pair and the generator share CPU "
                          f"{attacker} (the switch has CPU {sut_cpu}): figures under attack include the CPU "
                          f"the attacker took from the generator and the latency pair")
    else:
        layout["note"] = (f"the attacker has CPU {attacker} to itself; the switch CPU {sut_cpu}; the generator "
                          f"and the latency pair CPU {gen_cpu} (they do not run at the same time)")
    return layout


def counters_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the switch counted on an attack's ports between two readings of
    `port_counters`: frames taken from them, delivered to them, drops by reason."""
    out: dict[str, Any] = {"taken": after["taken"] - before["taken"],
                           "delivered": after["delivered"] - before["delivered"]}
    drops = {r: n - before["drops"].get(r, 0) for r, n in after["drops"].items()}
    out["drops"] = {r: n for r, n in sorted(drops.items()) if n > 0}
    if after.get("notify_merged") is not None:
        out["notify_merged"] = after["notify_merged"] - before.get("notify_merged", 0)
    out["alerts"] = sorted(after.get("alerts", ()))
    return out


def evidence_text(delta: dict[str, Any] | None, limit: int = 3) -> str:
    """The attack's traces in the switch's counters, shortest first."""
    if not delta:
        return "-"
    parts = [f"{r} {n}" for r, n in sorted(delta.get("drops", {}).items(), key=lambda kv: -kv[1])[:limit]]
    if delta.get("notify_merged"):
        parts.append(f"notify_merged {delta['notify_merged']}")
    if delta.get("alerts"):
        parts.append("alerts " + ",".join(delta["alerts"]))
    return "; ".join(parts) or "-"


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "" if v is None else f" ({v * 100:+.0f}%)"


def format_table(phases: Sequence[dict[str, Any]]) -> str:
    """One line per phase: throughput with the attack running, in the windows
    where it was paused, their ratio (median of adjacent pairs); p99 also
    relative to the first "none"."""
    base = next((p for p in phases if p["attack"] == "none" and not p.get("error")), None)
    base_p99 = base["latency"].get("p99_ms") if base else None
    hdr = ("phase", "Mpps", "paused", "ratio", "CPU sw/gen/oth", "p50 ms", "p99 ms", "max ms", "RTTs",
           "lost", "attack fps", "steal", "evidence")
    rows = [hdr]
    for p in phases:
        t, lat = p.get("throughput", {}), p.get("latency", {})
        cpu = (t.get("cpu") or {}).get("none" if p["attack"] == "none" else "attack") or {}
        rows.append((
            p["phase"],
            _f(t.get("mpps"), ".2f"),
            _f(t.get("paused_mpps"), ".2f") if p["attack"] != "none" else "",
            _f(t.get("ratio"), ".3f") if p["attack"] != "none" else "",
            "/".join(_f(cpu.get(k), ".2f") for k in ("switch", "generator", "others")) if cpu else "-",
            _f(lat.get("p50_ms"), ".3f"),
            _f(lat.get("p99_ms"), ".3f") + ("" if p is base else _pct(relative(lat.get("p99_ms"), base_p99))),
            _f(lat.get("max_ms"), ".1f"),
            str(lat.get("n", "-")),
            str(lat.get("lost", "-")),
            _f(p.get("attack_fps"), ".0f") if p["attack"] != "none" else "",
            _f(p.get("steal_percent"), ".1f") + "%" if p.get("steal_percent") is not None else "-",
            ("ERROR " + p["error"].splitlines()[0][:80]) if p.get("error") else evidence_text(p.get("switch_counters")),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(hdr))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def phase_names(attacks: Sequence[str]) -> list[tuple[str, str]]:
    """(phase label, attack) in run order: none first and last."""
    return [("none", "none"), *((a, a) for a in attacks), ("none-after", "none")]


def parse_attacks(text: str) -> list[str]:
    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise SystemExit(f"--attacks: unknown {', '.join(unknown)}; known: {', '.join(ATTACKS)}")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------
# The attacks that the tests run inline (the others are imported as they are)
# --------------------------------------------------------------------------


def _blocked_call(path_bad: str, path_peer: str, seconds: float, ready, sent) -> None:
    """A front-end whose call and err eventfds block (test_hostile_notify), with
    traffic both ways so that the switch keeps owing it interrupts: it never
    reads its eventfds (reap, not recv_frames: that would read the call fd)."""
    bad = VhostUserFrontend(path_bad).setup_net_device(1, 256, notify.NO_EVENT_IDX)
    bad.rx(0).post_rx(128, 2048)
    peer = VhostUserFrontend(path_peer).setup_net_device(1, 256, work.FULL)
    peer.rx(0).post_rx(128, 2048)
    for ring in (bad.rx(0), bad.tx(0)):
        notify.block_eventfd(ring.call_fd)
        notify.block_eventfd(ring.err_fd)
    to_bad = [BAD_MAC + PEER_MAC + b"\x88\xb5" + struct.pack("!I", i) + bytes(46) for i in range(BLOCKED_BATCH)]
    to_peer = [PEER_MAC + BAD_MAC + b"\x88\xb5" + struct.pack("!I", i) + bytes(46) for i in range(BLOCKED_BATCH)]
    ready.set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for dev, frames in ((bad, to_peer), (peer, to_bad)):
            dev.tx(0).reap()
            try:
                dev.tx(0).post_tx_frames(frames)
                sent.value += len(frames)
            except RingFull:
                pass                       # the switch is behind: next round
            got = len(dev.rx(0).reap())
            if got:
                dev.rx(0).post_rx(got, 2048)
        time.sleep(BLOCKED_PACE_S)
    bad.close()
    peer.close()


def _racing_writer(path_att: str, path_sink: str, seconds: float, ready, sent) -> None:
    """test_hostile_race's attacker: 128 TX buffers, each with its source MAC
    and EtherType flipped by racer.c all the time, re-posted as fast as they
    come back; a receiver in the same VLAN re-posts its RX buffers."""
    att = VhostUserFrontend(path_att).setup_net_device(1, 256, race.FULL)
    sink = VhostUserFrontend(path_sink).setup_net_device(1, RACE_RING, race.FULL)
    rx = race.FixedRing(sink.rx(0), [2048] * RACE_RING, writable=True, offer=True)
    sizes = [race.SIZES[i % len(race.SIZES)] for i in range(race.NBUF)]
    tx = race.FixedRing(att.tx(0), [12 + s for s in sizes], writable=False, offer=False)
    specs = []
    for head, off in tx.buf.items():
        size = tx.length[head] - 12
        tx.mm[off:off + 12 + size] = bytes(12) + race.expected(head, size)
        specs.append(race.flip(off + 12 + 6, race.A, race.B, bit=0))              # source MAC
        specs.append(race.flip(off + 12 + 12, race.OWN_TYPE, race.TPID, bit=1))    # 802.1Q tag or not
    with Racer(tx.fd, specs, limit_s=seconds):
        ready.set()
        tx.repost(sorted(tx.buf), kick=True)
        deadline = time.monotonic() + seconds
        idle = 0
        while time.monotonic() < deadline:
            back = tx.used()
            if back:
                tx.repost([h for h, _ in back], kick=True)
                sent.value += len(back)
            got = rx.used()
            if got:
                rx.repost([h for h, _ in got], kick=False)
            if back or got:
                idle = 0
            else:
                idle += 1
                if idle > 3:
                    time.sleep(0.0002)
                    tx.ring.kick()             # never rely on a lost notification
    att.close()
    sink.close()


def _cpu_hog(seconds: float, ready, sent) -> None:
    """Not an attack: a busy loop on the attacker's CPU, no port. What CPU
    sharing alone costs the healthy pair."""
    ready.set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(100_000):
            pass


def attack_spec(attack: str, sw: Vswitchd) -> tuple[Callable[..., None], tuple[Any, ...]]:
    """The child's function and its arguments before (seconds, ready, sent)."""
    sock = sw.socket
    if attack == "blocked_call":
        return _blocked_call, (sock("bad"), sock("peer"))
    if attack == "tiny_gso":
        return work._tiny_gso, (sock("atk"), sock("sink"))
    if attack == "zero_length_chains":
        return work._zero_length_chains, (sock("flood"), [sock(f"trap{i}") for i in range(4)])
    if attack == "racing_writer":
        return _racing_writer, (sock("att"), sock("rsink"))
    if attack == "cpu_hog":
        return _cpu_hog, ()
    raise ValueError(attack)


def _attack_child(target: Callable[..., None], cpu: int, args: tuple[Any, ...], ready, sent) -> None:
    os.sched_setaffinity(0, {cpu})
    os.setpgid(0, 0)             # a process group of its own (the racer joins it): paused as one
    # SIGTERM ends the attack through its finally/with blocks (the racer is stopped)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the parent's to handle
    target(*args, ATTACK_MAX_S, ready, sent)


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def pauser(pgid: int) -> Callable[[bool], None]:
    """pause(True) stops the attacker's process group, pause(False) resumes it."""
    def pause(stop: bool) -> None:
        os.killpg(pgid, signal.SIGSTOP if stop else signal.SIGCONT)
    return pause


def port_counters(sw: Vswitchd, names: Sequence[str]) -> dict[str, Any]:
    """Frames the switch took from / delivered to these ports, drops by reason,
    merged notifications and alerts (summed over the ports)."""
    out: dict[str, Any] = {"taken": 0, "delivered": 0, "drops": {}, "notify_merged": 0, "alerts": set()}
    for name in names:
        info = sw.port(name)
        out["alerts"].update(f"{name}:{k}" for k in info.get("alerts", {}))
        for q in info.get("queues", []):
            out["taken"] += q["tx"].get("packets", 0)
            out["delivered"] += q["rx"].get("packets", 0)
            out["notify_merged"] += q["rx"].get("notify_merged", 0) + q["tx"].get("notify_merged", 0)
            for direction in ("rx", "tx"):
                for reason, n in q[direction].get("drops", {}).items():
                    out["drops"][reason] = out["drops"].get(reason, 0) + n
    return out


class Generator:
    """testpmd, oneway: net_null0 -> P0 (port a) ... port b -> P1 -> net_null0."""

    def __init__(self, sw: Vswitchd, cpu: int, workdir: Path) -> None:
        virtio = [virtio_user_vdev(0, sw.socket("a"), mac=loopback.GEN_MACS[0]),
                  virtio_user_vdev(1, sw.socket("b"), mac=loopback.GEN_MACS[1])]
        self.tp = TestPmd([loopback.null_vdev(FRAME_SIZE), *virtio], cpus=[cpu], forward_mode="mac", burst=32,
                          workdir=workdir, name="gen", app_args=["--port-topology=chained"])
        self.sw = sw
        self.p0 = self.p1 = self.src = -1

    def start(self) -> None:
        self.tp.start(timeout=90)
        self.p0, self.p1, self.src = loopback.setup_oneway_generator(self.tp)
        self.tp.wait_links_up([self.p0, self.p1], 20)
        for port in ("a", "b"):
            self.sw.wait_port(port, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                              timeout=30, what=f"{port} connected")

    def measure(self, warmup: float, seconds: int, sw_pid: int, cpus: Sequence[int],
                pause: Callable[[bool], None] | None = None) -> dict[str, Any]:
        """Port b's RX rate over 1 s windows after `warmup`: `seconds` windows;
        with `pause` (an attack to pause and resume), `seconds` pairs of
        windows, one with the attack running and one with it paused, in the
        order ABBA... (see window_plan)."""
        tp = self.tp
        gen_pid = tp.pid or 0
        plan = window_plan(seconds, pause is not None)
        rates: list[float] = []
        offered: list[float] = []
        acc: dict[str, list[float]] = {}           # condition -> [wall, busy, switch, generator]
        st_first = st_last = None
        tp.start_fwd()
        try:
            time.sleep(warmup)
            for cond in plan:
                if pause is not None:
                    pause(cond == "paused")
                    time.sleep(WINDOW_SETTLE_S)    # the attack resumed or the switch's backlog gone
                tp.port_stats()                    # the window's rates start here
                st0, sw0, g0, t0 = (read_proc_stat(), loopback.read_proc_cpu(sw_pid),
                                    loopback.read_proc_cpu(gen_pid), time.monotonic())
                time.sleep(WINDOW_S)
                st = tp.port_stats()
                wall, st1 = time.monotonic() - t0, read_proc_stat()
                a = acc.setdefault(cond, [0.0, 0.0, 0.0, 0.0])
                a[0] += wall
                a[1] += busy_seconds(st0, st1, cpus, loopback.CLK_TCK)
                a[2] += loopback.read_proc_cpu(sw_pid) - sw0
                a[3] += loopback.read_proc_cpu(gen_pid) - g0
                rates.append(float(st[self.p1].rx_pps) if self.p1 in st else 0.0)
                offered.append(float(st[self.p0].tx_pps) if self.p0 in st else 0.0)
                st_first, st_last = st_first or st0, st1
        finally:
            if pause is not None:
                pause(False)                       # never leave the attacker stopped
            fwd = tp.stop_fwd()
        r = loopback.RunResult(kind="attacks", size=FRAME_SIZE, queues=1, pair=0, topology="oneway")
        flag = loopback.oneway_check(r, fwd, self.p0, self.p1)
        out = summarize_windows(plan, [x / 1e6 for x in rates])
        out.update({
            "windows": [{"condition": c, "mpps": round(x / 1e6, 4), "offered_mpps": round(o / 1e6, 4)}
                        for c, x, o in zip(plan, rates, offered, strict=True)],
            "cpu": {c: cpu_shares(*a) for c, a in acc.items()},
            "generator_bound": flag is not None,
            "gen_tx_dropped": r.gen_tx_dropped,
            "delivered_fraction": r.delivered_fraction,
            "steal_percent": steal_percent(st_first, st_last) if st_first else None,
        })
        main = out["cpu"].get(plan[0], {})
        out["mpps_per_switch_cpu"] = per_cpu(out["mpps"], main.get("switch"))
        return out

    def stop(self) -> None:
        self.tp.stop()


def _resync(h1, h2) -> None:
    """After a lost frame: let late ones arrive, take every frame off both RX rings."""
    time.sleep(0.2)
    for dev in (h1, h2):
        while frames := dev.rx(0).recv_frames(64, timeout=0.05):
            dev.rx(0).post_rx(len(frames), 2048)
        dev.tx(0).reap()


def measure_latency(h1, h2, seconds: float) -> dict[str, Any]:
    """Round trips for `seconds`, in chunks of at most a second so that a lost
    frame costs one chunk's samples only."""
    rtts: list[float] = []
    lost, errors = 0, []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0.05:
        try:
            rtts += work.round_trips(h1, h2, min(1.0, left))
        except AssertionError as e:
            lost += 1
            errors.append(str(e).splitlines()[0][:200])
            _resync(h1, h2)
    return {**latency_summary(rtts), "lost": lost, "errors": errors[:5]}


def wait_listening(sw: Vswitchd, names: Sequence[str], timeout: float = 30.0) -> str | None:
    """None once every port is back to listening; else what is not."""
    deadline = time.monotonic() + timeout
    while True:
        states = {n: sw.port(n)["state"] for n in names}
        if all(s == "listening" for s in states.values()):
            return None
        if time.monotonic() > deadline:
            return f"ports not listening after the attack: {states}"
        time.sleep(0.1)


def run_phase(label: str, attack: str, sw: Vswitchd, gen: Generator, h1, h2,
              opt: argparse.Namespace, layout: dict[str, Any]) -> dict[str, Any]:
    """One phase: the attack (if any) in a child, then throughput, then latency."""
    res: dict[str, Any] = {"phase": label, "attack": attack, "throughput": {}, "latency": {}}
    cpus = sorted({layout["switch"], layout["generator"], layout["attacker"]})
    names = ATTACK_PORTS.get(attack, ())
    proc = None
    t_start = time.monotonic()
    st0 = read_proc_stat()
    try:
        if attack != "none":
            target, args = attack_spec(attack, sw)
            ctx = multiprocessing.get_context("fork")
            ready, sent = ctx.Event(), ctx.Value("q", 0)
            proc = ctx.Process(target=_attack_child, args=(target, layout["attacker"], args, ready, sent),
                               daemon=True, name=f"attack-{attack}")
            sys.stdout.flush()                  # the child must not print our buffer again
            proc.start()
            if not ready.wait(60):
                raise RuntimeError("the attacker did not get ready in 60 s")
            res["attack_setup_s"] = round(time.monotonic() - t_start, 2)
            time.sleep(opt.settle)
            before = port_counters(sw, names)
        pause = None if proc is None else pauser(proc.pid)
        res["throughput"] = gen.measure(opt.warmup, opt.seconds, sw.proc.pid, cpus, pause)
        if proc is not None:      # the attack's rate: while the latency is measured, never paused
            mid, sent1, t1 = port_counters(sw, names), sent.value, time.monotonic()
        res["latency"] = measure_latency(h1, h2, opt.latency_seconds)
        if proc is not None:
            end, elapsed = port_counters(sw, names), time.monotonic() - t1
            res["switch_counters"] = counters_delta(before, end)          # the whole phase
            # frames the switch took from the attackers' TX rings, a second
            res["attack_fps"] = round(counters_delta(mid, end)["taken"] / elapsed, 1)
            res["attacker_sent_fps"] = round((sent.value - sent1) / elapsed, 1) if sent.value else None
            if not proc.is_alive():
                res["error"] = f"the attacker ended early (exit code {proc.exitcode})"
        if not sw.alive():
            res["error"] = "the switch died"
    except Exception as e:  # noqa: BLE001 - reported per phase, the benchmark goes on
        res["error"] = f"{type(e).__name__}: {e}".strip()[:1000]
        traceback.print_exc()
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGCONT)       # a stopped process does not see SIGTERM
            except ProcessLookupError:
                pass
            proc.terminate()
            proc.join(20)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            try:
                os.killpg(proc.pid, signal.SIGKILL)       # anything left of it (a racer)
            except ProcessLookupError:
                pass
            if sw.alive():
                try:
                    err = wait_listening(sw, names)
                except Exception as e:  # noqa: BLE001
                    err = f"{type(e).__name__}: {e}"
                if err:
                    res["error"] = res.get("error") or err
    res["steal_percent"] = steal_percent(st0, read_proc_stat())
    res["duration_s"] = round(time.monotonic() - t_start, 1)
    return res


def switch_revision() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "describe": git("describe", "--always", "--dirty"),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, from {','.join(ATTACKS)}")
    ap.add_argument("--seconds", type=int, default=5,
                    help="throughput windows (1 s) per phase; under an attack that many running/paused pairs "
                         "(default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="forwarding before the samples (default 1)")
    ap.add_argument("--latency-seconds", type=float, default=5.0, help="round trips per phase (default 5)")
    ap.add_argument("--settle", type=float, default=0.5, help="pause after the attacker is ready (default 0.5)")
    ap.add_argument("--gen-cpu", type=int, default=0)
    ap.add_argument("--sut-cpu", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None, help="switch and testpmd logs (default: temp dir)")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    opt = ap.parse_args(argv)
    attacks = parse_attacks(opt.attacks)
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    if not testpmd_available():
        print("dpdk-testpmd not found (apt-get install dpdk-dev)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    layout = cpu_layout(os.cpu_count() or 1, opt.gen_cpu, opt.sut_cpu)
    workdir = opt.workdir or Path(tempfile.mkdtemp(prefix="vswitch-attacks-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now().astimezone()
    t_run = time.monotonic()
    phases: list[dict[str, Any]] = []
    print(f"CPU layout: {layout['note']}", flush=True)
    with loopback.single_instance():
        idle = loopback.idle_check(sorted({opt.gen_cpu, opt.sut_cpu}))
        print(f"workdir {workdir}; CPUs busy before start: {idle:.1%} of a CPU", flush=True)
        if idle > 0.05:
            print("WARNING: the benchmark CPUs are not idle: the figures will be noisy", flush=True)
        os.sched_setaffinity(0, {layout["latency_pair"]})
        st_run0 = read_proc_stat()
        sw = Vswitchd(workdir / "switch", switch_ports(), workers=1, cpus=str(opt.sut_cpu))
        gen = Generator(sw, opt.gen_cpu, workdir)
        h1 = h2 = None
        try:
            sw.start()
            gen.start()
            h1 = work.connect(sw, "h1", rx_buffers=128)
            h2 = work.connect(sw, "h2", rx_buffers=128)
            work.round_trips(h1, h2, 0.5)                    # MACs learned, paths warm
            for label, attack in phase_names(attacks):
                r = run_phase(label, attack, sw, gen, h1, h2, opt, layout)
                phases.append(r)
                t, lat = r["throughput"], r["latency"]
                bound = " (generator-bound)" if t.get("generator_bound") else ""
                paired = (f" (paused {_f(t.get('paused_mpps'), '.2f')}, ratio {_f(t.get('ratio'), '.3f')})"
                          if attack != "none" else "")
                print(f"{label:<20} {_f(t.get('mpps'), '.2f'):>6} Mpps{paired}{bound}"
                      f"  p50 {_f(lat.get('p50_ms'), '.3f')} ms  p99 {_f(lat.get('p99_ms'), '.3f')} ms"
                      f"  {r['duration_s']:.0f}s" + (f"  ERROR {r['error']}" if r.get("error") else ""), flush=True)
                if not sw.alive():
                    print("the switch died: stopping", flush=True)
                    break
        except KeyboardInterrupt:
            print("interrupted: reporting the phases so far", flush=True)
        finally:
            for dev in (h1, h2):
                if dev is not None:
                    dev.close()
            gen.stop()
            sw.stop()
        st_run1 = read_proc_stat()
    host = loopback.host_info()
    run_steal = steal_percent(st_run0, st_run1)
    duration = time.monotonic() - t_run
    print()
    print(f"host: {host.get('cpu_model', '?')}, {host.get('cpus')} CPUs, kernel {host.get('kernel')}; "
          f"steal {_f(run_steal, '.1f')}% of the run; switch {switch_revision()['describe']}; "
          f"{duration:.0f} s")
    print(f"CPU layout: {layout['note']}")
    print(f"throughput: testpmd oneway {FRAME_SIZE} B, port a -> b, medians of 1 s windows ({opt.seconds} "
          f"per phase; under an attack {opt.seconds} with it running and {opt.seconds} with it paused); "
          f"latency: h1 -> h2 -> h1 single frames, {opt.latency_seconds:g} s, attack running")
    print(format_table(phases))
    print("Mpps: frames/s port b delivered (median; under attack: the windows with it running); paused:\n"
          "the windows of the same phase with the attacker stopped (SIGSTOP), its ports still connected;\n"
          "ratio: median over adjacent window pairs of running / paused (the machine's own speed changes\n"
          "by 2x between states that last seconds: compare within a pair, not across phases); CPU\n"
          "sw/gen/oth: CPUs used in the running windows by the switch, testpmd and the rest (attacker,\n"
          "racer, this process); p99 relative to the first 'none'; attack fps: frames the switch took from\n"
          "the attackers a second; evidence: the attack's traces in the switch's counters; cpu_hog is no\n"
          "attack: a busy loop on the attacker's CPU, what CPU sharing alone costs")
    opt.results.mkdir(parents=True, exist_ok=True)
    path = opt.results / f"attacks-{started.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {
        "benchmark": "attacks",
        "informational": True,
        "started": started.isoformat(),
        "finished": dt.datetime.now().astimezone().isoformat(),
        "duration_s": round(duration, 1),
        "host": {**host, "steal_percent": run_steal},
        "switch_revision": switch_revision(),
        "cpu_layout": layout,
        "cpus_shared": layout["attacker_shares_cpu"],
        "idle_before_start": idle,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opt).items()},
        "throughput": {"tool": "dpdk-testpmd", "topology": "oneway", "frame_size": FRAME_SIZE,
                       "figure": "port b's RX rate, median of 1 s samples, Mframes/s"},
        "latency": {"tool": "tests/harness/frontend", "figure": "h1 -> h2 -> h1 single-frame round trips"},
        "vlans": {"throughput": THROUGHPUT_VLAN, "latency": LATENCY_VLAN, "attacks": ATTACK_VLAN},
        "phases": phases,
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
