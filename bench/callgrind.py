"""Instructions per frame of the datapath, counted by callgrind: a figure that
does not drift with the machine's speed states (bench/loopback.py) and needs
no hardware counters. Same build, same workload: the same count, to the
instruction.

What runs (one valgrind run per system, about 10 s each)::

    valgrind --tool=callgrind --separate-threads=yes \
             --dump-before=<worker_sleep> python -c 'vswitchd' --config ...
      port a (vhost-user) <--- front-end A: the source, TX only
      port b (vhost-user) <--- front-end B: the sink, one RX buffer per frame

vswitchd runs on a copy of the tree built for the purpose (see BUILD), one
worker in event mode, FDB aging off. The front-ends are the test suite's own
(tests/harness/frontend), run by this process, outside valgrind: rings of 32768
entries, filled in bulk (one descriptor per frame: the 12-byte virtio-net
header and a 64-byte frame; the sink's buffers are 2048 bytes), features
VERSION_1, MRG_RXBUF, INDIRECT_DESC (no EVENT_IDX: see "notify").

1. Warm-up: B sends one frame to A, A sends WARMUP frames to B: both MACs
   are learned (GEN_MACS of bench/loopback.py), so every measured frame is
   known unicast a -> b.
2. For each phase (PHASES: "quiet", "notify", then "packed"): FRAMES frames are
   written into A's TX ring and B gets FRAMES buffers, then one publish of
   A's avail index and one kick. The worker finds all of them at once:
   FRAMES / 32 bursts of 32 frames, back to back, one per round, then a
   round that finds nothing, then it goes to sleep.
   The interval: --dump-before=worker_sleep makes callgrind write the
   worker thread's counts each time the worker is about to sleep, and start
   again from zero. So the part written after the batch holds exactly: the
   end of the sleep the kick interrupted, every burst, the empty round. It
   does not depend on when this process looks, nor on the control plane
   (whose threads are not in it); a timeout wake-up (1 s) makes a part of
   its own, without frames, which is left out.
   "quiet": both rings say VRING_AVAIL_F_NO_INTERRUPT (a guest that polls):
   the switch's own work. "notify": neither does: every burst signals the
   source's TX ring and the sink's RX ring (the notification path; note
   that callgrind counts user-space instructions only: the kernel's side of
   an eventfd write or an io_uring submit is not in the figure).
   "packed": "quiet" with packed rings (VIRTIO_F_RING_PACKED): both
   front-ends connect again with RING_PACKED and warm up again; a batch is
   made available by its first descriptor's flags, written last
   (BulkPackedRing). Left out for builds without packed rings (the
   baseline).
3. Checks: the sink received exactly FRAMES frames, in order, byte for byte
   (virtio-net header included); the source got every buffer back; the port
   counters moved by FRAMES on a's TX and b's RX, with no drop anywhere;
   rx_enqueue ran once per frame in the part. Any mismatch fails the run.

The figure: the worker thread's instructions (Ir) in the part, minus its
sleeping and waking (worker_sleep, kick_drain and the notification
enable/disable helpers: once per phase, 0.02 Ir/frame), divided by FRAMES.
What is counted is everything the worker does for the frames: the round
loop, vhost_ingress_burst (ring walk, header copy, offload parse), switch_burst (VLAN,
FDB learn and lookup), deliver_to_port, rx_enqueue and the copy (libc memcpy
included), giving the TX buffers back, notifications (notify_*: queueing,
submitting, reaping). The raw part total is reported too.

Where the instructions go, two views. By function of the binary (exact):
callgrind's own functions, with calls into other libraries (memcpy, write,
syscall) counted for the caller; worker_loop and vhost_ingress_burst (and walk_chain,
take_headers... of the TX side) are inlined into the thread's entry,
Datapath._run_worker. By source function: the build keeps -g (Python's
default CFLAGS) and callgrind records a line for every instruction; each
line of the generated C belongs to one function of the .pyx/.pxi (or of a
header), inlined or not, so this view splits the inlined code. It is as good
as gcc's line tables: an instruction scheduled away from its statement may
count for a neighbour (a few Ir per frame, e.g. "vs_log_page" in
rx_enqueue while no dirty log exists). `--annotate FUNC,...` prints source
functions line by line (.pxi file:line).

BUILD: valgrind cannot run AVX-512 code, and setup.py builds with
-march=native. Each system is built again (CFLAGS=BENCH_CFLAGS, default
-mno-avx512f: -march=native otherwise) with this interpreter, its Cython and
the same compiler: the current tree is copied (tracked and untracked files,
so uncommitted changes count) to /tmp/vswitch-callgrind-current-*, the
baseline (--baseline REV) extracted with git archive to
/tmp/vswitch-callgrind-<commit>; each is rebuilt only when its sources, the
flags or the tool versions changed. `--variants` adds runs of the current
build with one of bench/loopback.py's port config variants (features on).
`--patch FILE[,FILE...]` (repeatable) adds a run of the current tree with
those patches applied (git apply): a way to measure a proposed datapath
change without committing it; `--patch baseline:FILE,...` patches a copy of
the baseline instead (the same optimisation on both sides). Each current
system is compared with the baseline, and with each patched baseline whose
patches it has too (like for like).

Usage (root, from the repository root; one benchmark at a time)::

    .venv/bin/python -m bench.callgrind [--baseline 705ace4] [--frames 20000]
        [--phases quiet,notify] [--variants off,all] [--patch [baseline:]FILE[,FILE]]
        [--annotate take_headers,sg_copy]

Results: a table on stdout and bench/results/callgrind-<date>.json; the
figures of clean commits (the baseline, and this tree when it has no
uncommitted changes) also go into bench/results/callgrind-history.tsv, one
line per commit (HISTORY; `python -m bench.plot --history` draws it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench import loopback  # host_info, single_instance, GEN_MACS, VARIANTS

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

DEFAULT_FRAMES = 20000
WARMUP = 64
FRAME_SIZE = 64              # bytes on the wire without FCS (the minimum Ethernet frame)
RING_SIZE = 32768            # the largest split ring: a whole phase is one batch
RX_BUF_LEN = 2048
BURST = 32                   # VS_BURST (cython_ext/types.pxi): frames per vhost_ingress_burst
PHASES = ("quiet", "notify", "packed")
TOLERANCE = 1.03             # the security work's budget: at most 3 % more instructions
BENCH_CFLAGS = "-mno-avx512f"
SLEEP_FN = "worker_sleep"      # where the worker goes when a round found nothing: the dump trigger
ETHERTYPE = b"\x88\xb5"       # IEEE local experimental
VRING_DESC_F_WRITE = 2
VRING_AVAIL_F_NO_INTERRUPT = 1
SWITCH_BURST = re.compile(r"_datapath_switch_burst\b")
SLEEP_FUNCS = ("worker_sleep", "kick_drain", "vring_notify_enable", "vring_notify_disable")
DATAPATH_OBJ = re.compile(r"_datapath[^/]*\.so$")
CYTHON_PREFIX = re.compile(r"^__pyx_[a-z]+_7vswitch_9_datapath_")


# --------------------------------------------------------------------------
# Callgrind's output format (valgrind docs, "Callgrind Format Specification")
# --------------------------------------------------------------------------


@dataclass
class Profile:
    """One callgrind output file (one part of one thread), positions: line."""

    events: list[str] = field(default_factory=lambda: ["Ir"])
    totals: int | None = None            # the file's "totals:"/"summary:" (first event)
    header: dict[str, str] = field(default_factory=dict)
    # self cost: (object, function, file, line) -> Ir
    lines: dict[tuple[str, str, str, int], int] = field(default_factory=lambda: defaultdict(int))
    # calls: (object, function, file, line, callee object, callee function) -> [count, inclusive Ir]
    calls: dict[tuple[str, str, str, int, str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0]))

    @property
    def self_total(self) -> int:
        return sum(self.lines.values())

    def self_by_function(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = defaultdict(int)
        for (ob, fn, _fl, _ln), c in self.lines.items():
            out[(ob, fn)] += c
        return dict(out)

    def add(self, other: Profile) -> None:
        """Sum another part (of the same thread) into this one."""
        lines = defaultdict(int, self.lines)
        for k, v in other.lines.items():
            lines[k] += v
        calls: dict[Any, list[int]] = defaultdict(lambda: [0, 0], {k: list(v) for k, v in self.calls.items()})
        for k, (n, c) in other.calls.items():
            calls[k][0] += n
            calls[k][1] += c
        self.lines, self.calls = dict(lines), dict(calls)
        self.totals = (self.totals or 0) + (other.totals if other.totals is not None else other.self_total)

    def has_function(self, pattern: re.Pattern[str]) -> bool:
        return any(pattern.search(fn) for (_ob, fn, _f, _l) in self.lines)

    def call_count(self, callee: str | re.Pattern[str]) -> int:
        """Calls made to functions named `callee` (a regex matches with search)."""
        n = 0
        for (_ob, _fn, _fl, _ln, _cob, cfn), (count, _) in self.calls.items():
            if (callee.search(cfn) if isinstance(callee, re.Pattern) else cfn == callee):
                n += count
        return n


def parse_callgrind(text: str) -> Profile:
    """Parse callgrind's format: compressed names ("(id) name" / "(id)") and
    positions ("+n", "-n", "*"), fi=/fe= (inlined files), calls= lines. Only
    the first event is kept (Ir)."""
    prof = Profile()
    names: dict[str, dict[str, str]] = {"ob": {}, "fl": {}, "fn": {}}
    kind_of = {"ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl",
               "fn": "fn", "cfn": "fn"}

    def name(kind: str, value: str) -> str:
        table = names[kind_of[kind]]
        value = value.strip()
        m = re.match(r"^\((\d+)\)(?:\s+(.*))?$", value)
        if not m:
            return value
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
            return m.group(2)
        return table.get(m.group(1), f"({m.group(1)})")

    ob = fl = fn = cur_file = "???"
    cob = cfn = None
    last_line = 0
    pending_call: int | None = None     # the count of a calls= line whose cost line comes next
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            parts = line.split()
            pos = parts[0]
            if pos == "*":
                ln = last_line
            elif pos[0] in "+-":
                ln = last_line + int(pos, 0)
            else:
                ln = int(pos, 0)
            last_line = ln
            cost = int(parts[1], 0) if len(parts) > 1 else 0
            if pending_call is not None:
                entry = prof.calls[(ob, fn, cur_file, ln, cob or ob, cfn or "???")]
                entry[0] += pending_call
                entry[1] += cost
                pending_call = None
                cob = cfn = None
            else:
                prof.lines[(ob, fn, cur_file, ln)] += cost
            continue
        key, sep, value = line.partition("=")
        if sep and key in kind_of:
            v = name(key, value)
            if key == "ob":
                ob = v
            elif key == "fl":
                fl = cur_file = v
            elif key in ("fi", "fe"):
                cur_file = v
            elif key == "fn":
                fn = v
                cur_file = fl
            elif key == "cob":
                cob = v
            elif key == "cfn":
                cfn = v
            continue            # cfi/cfl: the callee's file is not needed
        if sep and key == "calls":
            pending_call = int(value.split()[0])
            continue
        if sep and key in ("jump", "jcnd"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            value = value.strip()
            if key == "events":
                prof.events = value.split()
            elif key in ("totals", "summary"):
                if prof.totals is None or key == "totals":
                    prof.totals = int(value.split()[0])
            else:
                prof.header.setdefault(key, value)
    prof.lines = dict(prof.lines)
    prof.calls = {k: v for k, v in prof.calls.items()}
    return prof


# --------------------------------------------------------------------------
# Which source function a line of generated C belongs to
# --------------------------------------------------------------------------

_DEF_START = re.compile(r"^(?!typedef\b|struct\b|union\b|enum\b|extern\b|#)[A-Za-z_][\w \t\*]*?\b([A-Za-z_]\w*)\s*\(")
_PXI_COMMENT = re.compile(r'^\s*/\* "([^"]+)":(\d+)')


def demangle(c_name: str) -> str:
    """Cython's C names back to the source's: __pyx_f_7vswitch_9_datapath_tx_burst
    -> tx_burst; __pyx_pw_..._8Datapath_11_run_worker -> Datapath._run_worker;
    gcc's clones (.part.0, .constprop.0) and callgrind's recursion marks ('2) go."""
    base = c_name.split("'")[0]
    m = CYTHON_PREFIX.match(base)
    if not m:
        return base
    rest = base[m.end():].split(".")[0]
    cls = re.match(r"^(\d+)", rest)
    if cls:
        n = int(cls.group(1))
        tail = rest[cls.end():]
        return f"{tail[:n]}." + re.sub(r"^\d+", "", tail[n + 1:])
    return rest


@dataclass
class SourceMap:
    """Line ranges of the C functions of a file: line -> (function, .pxi
    file:line of the statement, from Cython's comments)."""

    funcs: list[tuple[int, int, str]]           # (first line, last line, source name), sorted
    pxi: dict[int, str]                          # C line -> "worker.pxi:706" (Cython files only)

    @classmethod
    def from_c(cls, text: str) -> SourceMap:
        lines = text.splitlines()
        funcs: list[tuple[int, int, str]] = []
        pxi: dict[int, str] = {}
        i = 0
        n = len(lines)
        while i < n:
            m = _DEF_START.match(lines[i])
            if m:
                # a definition: "{" before any ";" within the next few lines
                j, opened = i, False
                while j < min(n, i + 8):
                    s = lines[j].split("//")[0]
                    if ";" in s.split("{")[0] and "{" not in s:
                        break
                    if "{" in s:
                        opened = True
                        break
                    j += 1
                if opened:
                    body = lines[j].split("//")[0]
                    if body.count("{") and body.count("{") == body.count("}"):
                        k = j           # a one-line function: static inline void f(void) { ... }
                    else:
                        k = j + 1
                        while k < n and not lines[k].startswith("}"):
                            k += 1
                    funcs.append((i + 1, k + 1, demangle(m.group(1))))
                    where = None
                    for t in range(i, k + 1):
                        c = _PXI_COMMENT.match(lines[t])
                        if c:
                            where = f"{Path(c.group(1)).name}:{c.group(2)}"
                        if where:
                            pxi[t + 1] = where
                    i = k + 1
                    continue
            i += 1
        funcs.sort()
        return cls(funcs, pxi)

    def function_at(self, line: int) -> str | None:
        lo, hi = 0, len(self.funcs) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            a, b, name = self.funcs[mid]
            if line < a:
                hi = mid - 1
            elif line > b:
                lo = mid + 1
            else:
                return name
        return None


class SourceMaps:
    """The SourceMaps of a build's C files (generated .c and the headers), by base name."""

    def __init__(self, maps: dict[str, SourceMap]) -> None:
        self.maps = maps

    @classmethod
    def of_tree(cls, tree: Path) -> SourceMaps:
        maps = {}
        for p in sorted((tree / "cython_ext").glob("*.[ch]")):
            maps[p.name] = SourceMap.from_c(p.read_text(errors="replace"))
        return cls(maps)

    def locate(self, file: str, line: int) -> tuple[str | None, str | None]:
        m = self.maps.get(Path(file).name)
        if m is None:
            return None, None
        return m.function_at(line), m.pxi.get(line)


@dataclass
class Attribution:
    """A thread's instructions by source function (inlining resolved)."""

    by_function: dict[str, int]                    # source function -> Ir (own lines + calls out)
    external: dict[tuple[str, str], list[int]]     # (source function, callee) -> [calls, Ir]
    by_line: dict[tuple[str, str], int]            # (source function, "worker.pxi:706") -> Ir
    by_symbol: dict[str, int]                      # the function of the binary (gcc's inlining) -> Ir
    total: int                                     # the thread's total
    attributed: int                                # what the above cover


def attribute(prof: Profile, maps: SourceMaps, is_datapath=DATAPATH_OBJ.search) -> Attribution:
    """Instructions on datapath lines go to the source function of the line;
    a call from a datapath line into another object (libc's memcpy, write,
    epoll_wait, syscall) counts, inclusive, for the calling line. Lines
    without a known function keep callgrind's function name."""
    by_fn: dict[str, int] = defaultdict(int)
    by_line: dict[tuple[str, str], int] = defaultdict(int)
    by_sym: dict[str, int] = defaultdict(int)
    external: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])

    def where(fn: str, file: str, line: int) -> tuple[str, str | None]:
        src, pxi = maps.locate(file, line)
        return (src or demangle(fn)), pxi

    attributed = 0
    for (ob, fn, file, line), cost in prof.lines.items():
        if not is_datapath(ob):
            continue
        src, pxi = where(fn, file, line)
        by_fn[src] += cost
        by_line[(src, pxi or f"{Path(file).name}:{line}")] += cost
        by_sym[demangle(fn)] += cost
        attributed += cost
    for (ob, fn, file, line, cob, cfn), (count, cost) in prof.calls.items():
        if not is_datapath(ob) or is_datapath(cob):
            continue
        src, pxi = where(fn, file, line)
        by_fn[src] += cost
        by_line[(src, pxi or f"{Path(file).name}:{line}")] += cost
        by_sym[demangle(fn)] += cost
        e = external[(src, cfn)]
        e[0] += count
        e[1] += cost
        attributed += cost
    total = prof.totals if prof.totals is not None else prof.self_total
    return Attribution(dict(by_fn), {k: list(v) for k, v in external.items()}, dict(by_line), dict(by_sym),
                       total, attributed)


def phase_figures(att: Attribution, frames: int, top: int = 25) -> dict[str, Any]:
    """The figures of one measured phase of one system."""
    sleep = sum(att.by_function.get(f, 0) for f in SLEEP_FUNCS)
    work = att.total - sleep
    fns = sorted(att.by_function.items(), key=lambda kv: -kv[1])
    ext = sorted(att.external.items(), key=lambda kv: -kv[1][1])
    return {
        "frames": frames,
        "ir_total": att.total,
        "ir_sleep": sleep,
        "ir_unattributed": att.total - att.attributed,
        "ir_per_frame": work / frames,
        "ir_per_frame_raw": att.total / frames,
        "functions": {name: {"ir": ir, "per_frame": ir / frames} for name, ir in fns[:top]},
        "functions_all": {name: ir for name, ir in fns},
        "symbols": {name: ir for name, ir in sorted(att.by_symbol.items(), key=lambda kv: -kv[1])},
        "external_calls": {f"{src} -> {callee}": {"calls": n, "ir": ir, "per_frame": ir / frames,
                                                  "calls_per_frame": n / frames}
                           for (src, callee), (n, ir) in ext[:top]},
    }


def compare(base: dict[str, Any], cur: dict[str, Any], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """current / baseline of one phase, the verdict, and the functions whose
    cost moved most (Ir per frame, current minus baseline)."""
    ratio = cur["ir_per_frame"] / base["ir_per_frame"]
    names = set(base["functions_all"]) | set(cur["functions_all"])
    delta = {n: (cur["functions_all"].get(n, 0) / cur["frames"]) - (base["functions_all"].get(n, 0) / base["frames"])
             for n in names}
    moved = sorted(delta.items(), key=lambda kv: -abs(kv[1]))
    syms = set(base["symbols"]) | set(cur["symbols"])
    sym_delta = {n: (cur["symbols"].get(n, 0) / cur["frames"]) - (base["symbols"].get(n, 0) / base["frames"])
                 for n in syms}
    return {
        "baseline_ir_per_frame": base["ir_per_frame"],
        "current_ir_per_frame": cur["ir_per_frame"],
        "ratio": ratio,
        "delta_per_frame": cur["ir_per_frame"] - base["ir_per_frame"],
        "within_tolerance": ratio <= tolerance,
        "tolerance": tolerance,
        "moved": {n: d for n, d in moved[:15] if abs(d) >= 0.05},
        "moved_symbols": {n: d for n, d in sorted(sym_delta.items(), key=lambda kv: -abs(kv[1])) if abs(d) >= 0.05},
    }


# --------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------


def _run(argv: Sequence[str], **kw: Any) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}")
    return r.stdout


def tool_versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for key, argv in (("valgrind", ["valgrind", "--version"]), ("gcc", ["gcc", "--version"])):
        try:
            out[key] = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            out[key] = "?"
    try:
        import Cython
        out["cython"] = Cython.__version__
    except ImportError:
        out["cython"] = "?"
    return out


@dataclass
class Build:
    name: str          # "baseline", "current", "current+patch-NAME"
    tree: Path
    revision: str      # commit (with "-dirty" for a current tree with changes), or commit+patch
    ref: str
    datapath_tree: str = ""   # git's tree hash of cython_ext/ at that commit ("" if changed or patched)

    @property
    def datapath_so(self) -> Path:
        found = sorted((self.tree / "vswitch").glob("_datapath*.so"))
        if not found:
            raise FileNotFoundError(f"no vswitch/_datapath*.so in {self.tree}")
        return found[0]

    @property
    def has_packed_rings(self) -> bool:
        """VIRTIO_F_RING_PACKED in this build's datapath (not in older baselines)."""
        return (self.tree / "cython_ext" / "packed.pxi").exists()


def _tree_key(tree: Path, cflags: str, versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    for p in sorted([*(tree / "cython_ext").glob("*.p*"), *(tree / "cython_ext").glob("*.h"), tree / "setup.py"]):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(cflags.encode())
    h.update(json.dumps(versions, sort_keys=True).encode())
    return h.hexdigest()


def build_tree(tree: Path, cflags: str, log: TextIO = sys.stdout) -> None:
    """setup.py build_ext --inplace with this interpreter and CFLAGS, unless
    the tree was built so already (stamp: sources, flags, tool versions)."""
    versions = tool_versions()
    key = _tree_key(tree, cflags, versions)
    stamp = tree / ".vswitch-callgrind-built"
    if stamp.exists() and stamp.read_text().strip() == key and list((tree / "vswitch").glob("_datapath*.so")):
        print(f"  {tree}: built already", file=log, flush=True)
        return
    stamp.unlink(missing_ok=True)
    for so in (tree / "vswitch").glob("_datapath*.so"):
        so.unlink()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["CFLAGS"] = cflags
    t0 = time.monotonic()
    with open(tree / ".vswitch-callgrind-build.log", "w") as f:
        r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, env=env,
                           stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, timeout=1800)
    if r.returncode != 0:
        tail = (tree / ".vswitch-callgrind-build.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"build failed in {tree}:\n{tail}")
    stamp.write_text(key + "\n")
    print(f"  {tree}: built in {time.monotonic() - t0:.0f}s (CFLAGS={cflags})", file=log, flush=True)


def _git(*args: str) -> str:
    return _run(["git", "-C", str(REPO), *args], timeout=120).strip()


def _copy_files(src: Path, dst: Path, files: Iterable[str]) -> None:
    for rel in files:
        s = src / rel
        if not s.is_file() or s.suffix == ".so":
            continue
        d = dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        data = s.read_bytes()
        if not d.exists() or d.read_bytes() != data:
            d.write_bytes(data)
            shutil.copymode(s, d)


def prepare_current(cflags: str, patches: Sequence[Path] = (), log: TextIO = sys.stdout) -> Build:
    """This tree as it is (tracked and untracked files), optionally with
    patches applied, built in a directory of its own under /tmp."""
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    files = _git("ls-files", "-co", "--exclude-standard", "-z").split("\0")
    tag = hashlib.sha1(str(REPO).encode()).hexdigest()[:8]
    name = "current"
    if patches:
        tag += "-" + hashlib.sha1(b"".join(p.read_bytes() for p in patches)).hexdigest()[:8]
        name = "current+" + "+".join(p.stem for p in patches)
    tree = Path(tempfile.gettempdir()) / f"vswitch-callgrind-current-{tag}"
    tree.mkdir(parents=True, exist_ok=True)
    # every file back to this tree's content (undoes the patches of the last
    # run; the build is kept while the patched sources are the same)
    _copy_files(REPO, tree, [f for f in files if f])
    for p in patches:
        _run(["git", "apply", str(p.resolve())], cwd=tree, timeout=60)
    print(f"{name}: {commit[:12]}{' (uncommitted changes)' if dirty else ''} -> {tree}", file=log, flush=True)
    build_tree(tree, cflags, log)
    rev = commit + ("-dirty" if dirty else "") + "".join(f"+{p.name}" for p in patches)
    clean = not patches and not _git("status", "--porcelain", "--", "cython_ext", "setup.py")
    return Build(name, tree, rev, "HEAD", _git("rev-parse", f"{commit}:cython_ext") if clean else "")


def prepare_baseline(ref: str, cflags: str, patches: Sequence[Path] = (), log: TextIO = sys.stdout) -> Build:
    """REF extracted with git archive into /tmp/vswitch-callgrind-<commit> and
    built; with patches, a copy of it (-<hash of the patches>) patched and built."""
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except RuntimeError:
        raise SystemExit(f"--baseline {ref}: no such commit in {REPO}") from None
    tree = Path(tempfile.gettempdir()) / f"vswitch-callgrind-{commit[:12]}"
    if not (tree / "setup.py").exists():
        tmp = Path(tempfile.mkdtemp(prefix=f"vswitch-callgrind-{commit[:12]}-", dir=tempfile.gettempdir()))
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                                   stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tmp)], stdin=archive.stdout, check=True, timeout=300)
        archive.stdout.close()
        if archive.wait() != 0:
            raise SystemExit(f"git archive {commit} failed")
        shutil.rmtree(tree, ignore_errors=True)
        tmp.rename(tree)
    print(f"baseline {ref} = {commit[:12]} -> {tree}", file=log, flush=True)
    if patches:
        # a copy of the extracted tree per set of patches, patched once
        digest = hashlib.sha1(b"".join(p.read_bytes() for p in patches)).hexdigest()[:8]
        patched = tree.with_name(f"{tree.name}-{digest}")
        marker = patched / ".vswitch-callgrind-patched"
        if not marker.exists():
            shutil.rmtree(patched, ignore_errors=True)
            shutil.copytree(tree, patched, symlinks=True, ignore=shutil.ignore_patterns(
                "*.so", "build", ".vswitch-callgrind-*", "_datapath.c", "*.html"))
            for p in patches:
                _run(["git", "apply", str(p.resolve())], cwd=patched, timeout=60)
            marker.write_text("".join(f"{p}\n" for p in patches))
        tree = patched
        print(f"baseline+{'+'.join(p.stem for p in patches)} -> {tree}", file=log, flush=True)
    build_tree(tree, cflags, log)
    name = "baseline" + "".join(f"+{p.stem}" for p in patches)
    rev = commit + "".join(f"+{p.name}" for p in patches)
    return Build(name, tree, rev, ref, "" if patches else _git("rev-parse", f"{commit}:cython_ext"))


# --------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------


def mac_bytes(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


SRC_MAC_TEXT, DST_MAC_TEXT = loopback.GEN_MACS   # behind port a (the source), port b (the sink)
SRC_MAC = mac_bytes(SRC_MAC_TEXT)
DST_MAC = mac_bytes(DST_MAC_TEXT)


def make_frame(dst: bytes, src: bytes, seq: int, size: int = FRAME_SIZE) -> bytes:
    head = dst + src + ETHERTYPE + struct.pack("!I", seq)
    return head + bytes((seq + i) & 0xFF for i in range(size - len(head)))


class BulkRing:
    """A SplitRing of the test front-end filled in bulk: descriptor i always
    points at buffer i of one allocation (a batch reuses them once the
    previous one came back), so that tens of thousands of entries cost a
    few writes, not an allocation each."""

    def __init__(self, ring: Any, count: int, buf_len: int, writable: bool) -> None:
        self.ring = ring
        self.mem = ring.mem
        self.count = min(count, ring.num)
        self.buf_len = buf_len
        self.writable = writable
        self.base = self.mem.alloc(self.count * buf_len, 64, zero=False)
        self.used_seen = self._used_start()

    def _used_start(self) -> int:
        return self.ring.used_idx()

    def _descs(self, lengths: Sequence[int]) -> None:
        flags = VRING_DESC_F_WRITE if self.writable else 0
        blob = b"".join(struct.pack("<QIHH", self.base + i * self.buf_len, n, flags, 0)
                        for i, n in enumerate(lengths))
        self.mem.write(self.ring.desc_gpa, blob)

    def _avail(self, n: int) -> None:
        r = self.ring
        start = r.avail_idx
        entries = [((start + i) % r.num, i) for i in range(n)]
        # write in contiguous runs of slots (one wrap at most)
        run: list[int] = []
        first = entries[0][0] if entries else 0
        for slot, head in entries:
            if run and slot != first + len(run):
                self.mem.write(r.avail_gpa + 4 + 2 * first, struct.pack(f"<{len(run)}H", *run))
                run, first = [], slot
            run.append(head)
        if run:
            self.mem.write(r.avail_gpa + 4 + 2 * first, struct.pack(f"<{len(run)}H", *run))
        r.avail_idx = (start + n) & 0xFFFF

    def post_tx(self, packets: Sequence[bytes]) -> None:
        """Buffers and descriptors of len(packets) TX chains; avail entries
        written but not published."""
        if len(packets) > self.count:
            raise ValueError("batch larger than the ring")
        blob = bytearray(len(packets) * self.buf_len)
        for i, p in enumerate(packets):
            blob[i * self.buf_len: i * self.buf_len + len(p)] = p
        self.mem.write(self.base, bytes(blob))
        self._descs([len(p) for p in packets])
        self._avail(len(packets))

    def post_rx(self, n: int) -> None:
        if n > self.count:
            raise ValueError("batch larger than the ring")
        self._descs([self.buf_len] * n)
        self._avail(n)

    def publish(self, kick: bool = True) -> None:
        self.ring.publish(kick=kick)

    def set_interrupts(self, on: bool) -> None:
        self.ring.set_avail_flags(0 if on else VRING_AVAIL_F_NO_INTERRUPT)

    def used_since(self) -> int:
        return (self.ring.used_idx() - self.used_seen) & 0xFFFF

    def wait_used(self, n: int, timeout: float, alive=lambda: True) -> None:
        deadline = time.monotonic() + timeout
        while self.used_since() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ring {self.ring.index}: {self.used_since()} of {n} used entries "
                                   f"after {timeout:.0f}s")
            if not alive():
                raise RuntimeError("vswitchd exited")
            time.sleep(0.005)

    def take_used(self, n: int) -> list[tuple[int, int]]:
        """The next n used entries (id, len), consumed."""
        out = [self.ring.used_entry(self.used_seen + i) for i in range(n)]
        self.used_seen = (self.used_seen + n) & 0xFFFF
        self.ring.last_used = self.used_seen
        return out

    def read(self, head: int, n: int) -> bytes:
        return self.mem.read(self.base + head * self.buf_len, n)


class BulkPackedRing(BulkRing):
    """BulkRing's interface on a PackedRing of the test front-end: chain i
    of a batch is one descriptor with buffer id i pointing at buffer i, in
    the ring slots from the driver's position on. A batch is written whole
    except its first descriptor's flags, which `publish` stores last: the
    worker sees all of it at once, or nothing (spec "Packed Virtqueues":
    the driver makes a batch available by its first descriptor's flags)."""

    def __init__(self, ring: Any, count: int, buf_len: int, writable: bool) -> None:
        super().__init__(ring, count, buf_len, writable)
        self.head: tuple[int, int] | None = None    # (slot, flags) held back until publish

    def _used_start(self) -> int:
        return 0                    # positions are the ring's own (next_used, used_wrap)

    def _slots(self, pos: int, wrap: int, n: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(n):
            out.append((pos, wrap))
            pos += 1
            if pos == self.ring.num:
                pos, wrap = 0, wrap ^ 1
        return out

    def _write(self, slots: list[tuple[int, int, bytes]]) -> None:
        """Descriptor bytes into contiguous runs of slots (one wrap at most)."""
        run: list[bytes] = []
        first = slots[0][0] if slots else 0
        for slot, _, blob in slots:
            if run and slot != first + len(run):
                self.mem.write(self.ring.desc_addr(first), b"".join(run))
                run, first = [], slot
            run.append(blob)
        if run:
            self.mem.write(self.ring.desc_addr(first), b"".join(run))

    def _descs(self, lengths: Sequence[int]) -> None:
        from tests.harness.frontend.packed_ring import avail_bits
        r = self.ring
        if self.head is not None:
            raise RuntimeError("a batch is still unpublished")
        base_flags = VRING_DESC_F_WRITE if self.writable else 0
        slots = self._slots(r.next_avail, r.avail_wrap, len(lengths))
        out = []
        for i, ((slot, wrap), n) in enumerate(zip(slots, lengths, strict=True)):
            flags = base_flags | avail_bits(wrap)
            body = struct.pack("<QIH", self.base + i * self.buf_len, n, i)
            out.append((slot, wrap, body + struct.pack("<H", 0 if i == 0 else flags)))
            if i == 0:
                self.head = (slot, flags)
        self._write(out)
        r.next_avail, r.avail_wrap = self._slots(r.next_avail, r.avail_wrap, len(lengths) + 1)[-1]

    def _avail(self, n: int) -> None:
        pass                        # a packed ring has no avail ring: _descs did it all

    def publish(self, kick: bool = True) -> None:
        if self.head is not None:
            self.ring.set_desc_flags(*self.head)
            self.head = None
        if kick:
            self.ring.kick()

    def set_interrupts(self, on: bool) -> None:
        self.ring.set_avail_flags(0 if on else 1)     # driver event area: ENABLE or DISABLE

    def _used_at(self, k: int) -> bool:
        slot, wrap = self._slots(self.ring.next_used, self.ring.used_wrap, k + 1)[-1]
        return self.ring.is_used(slot, wrap)

    def used_since(self) -> int:
        """Used elements written since the last take (first and last of a
        prefix are checked: the device publishes a batch by its first flags)."""
        lo, hi = 0, self.count
        if not self._used_at(0):
            return 0
        while lo < hi:             # the longest used prefix, by bisection
            mid = (lo + hi + 1) // 2
            if self._used_at(mid - 1):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def take_used(self, n: int) -> list[tuple[int, int]]:
        r = self.ring
        out = []
        for slot, wrap in self._slots(r.next_used, r.used_wrap, n):
            if not r.is_used(slot, wrap):
                raise RuntimeError(f"ring {r.index}: slot {slot} is not used yet")
            d = r.read_desc(slot)
            out.append((d.id, d.len))
        r.next_used, r.used_wrap = self._slots(r.next_used, r.used_wrap, n + 1)[-1]
        return out


# --------------------------------------------------------------------------
# vswitchd under callgrind
# --------------------------------------------------------------------------


def daemon_config(build: Build, sock_dir: Path, variant: str) -> str:
    """Ports a and b with their sockets in sock_dir, the runtime dir under it."""
    ports = {}
    for i, name in enumerate(("a", "b")):
        ports[name] = {"type": "vhost-user", "mode": "server", "socket": str(sock_dir / f"{name}.sock"),
                       "queues": 1, **loopback.VARIANTS[variant](i)}
    doc: dict[str, Any] = {
        "runtime_dir": str(sock_dir / "run"),
        "ports": ports,
        "datapath": {"workers": 1, "mode": "event"},
        "fdb": {"aging_time": 0},
        "metrics": {"enabled": False},
    }
    schema = build.tree / "vswitch" / "config.py"
    if not schema.exists():   # trees where the configuration is a package
        schema = build.tree / "vswitch" / "config" / "validate.py"
    if '"seccomp"' in schema.read_text(errors="replace"):
        # no user-space instruction of the datapath depends on it, and valgrind
        # itself makes system calls the filter is not written for
        doc["security"] = {"seccomp": False}
    return json.dumps(doc, indent=1) + "\n"    # JSON is YAML


class CallgrindDaemon:
    def __init__(self, build: Build, run_dir: Path, variant: str) -> None:
        self.build = build
        self.run_dir = run_dir
        self.variant = variant
        self.out_dir = run_dir / "callgrind"
        self.log_path = run_dir / "vswitchd.log"
        # sockets where their paths are short (AF_UNIX: 107 bytes), whatever the workdir
        self.sock_dir = Path(tempfile.mkdtemp(prefix="vscg-", dir="/tmp"))
        self.ctl_path = self.sock_dir / "run" / "vswitchd.ctl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.trigger = ""

    def trigger_symbol(self) -> str:
        """The C name of worker_sleep in this build: it must be a function of
        its own (gcc keeps it out of line: two call sites)."""
        out = _run(["nm", str(self.build.datapath_so)], timeout=60)
        names = sorted({ln.split()[-1] for ln in out.splitlines()
                        if re.search(rf"\b__pyx_f_7vswitch_9_datapath_{SLEEP_FN}(\.\w+\.\d+)*$", ln)})
        if len(names) != 1:
            raise RuntimeError(f"{self.build.datapath_so}: {SLEEP_FN} is not one function of its own "
                               f"(inlined?): {names}")
        return names[0]

    def start(self, timeout: float = 300.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(exist_ok=True)
        cfg = self.run_dir / "vswitch.yaml"
        cfg.write_text(daemon_config(self.build, self.sock_dir, self.variant))
        self.trigger = self.trigger_symbol()
        argv = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                f"--callgrind-out-file={self.out_dir}/callgrind.out.%p",
                f"--dump-before={self.trigger}",
                sys.executable, "-c", "import sys; from vswitch.daemon import main; sys.exit(main())",
                "--config", str(cfg), "--log-level", "info"]
        if shutil.which("setpriv"):
            argv = ["setpriv", "--pdeathsig", "TERM", *argv]   # stop with us even if we are killed
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                            "LISTEN_PID", "VIRTUAL_ENV")}
        env["PYTHONPATH"] = str(self.build.tree)
        self._log = open(self.log_path, "w")
        self._log.write("# " + " ".join(argv) + "\n")
        self._log.flush()
        self.proc = subprocess.Popen(argv, cwd=self.build.tree, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vswitchd under valgrind exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ctl_path.exists():
                try:
                    self.ctl("version")
                    break
                except (OSError, RuntimeError, ValueError):
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"vswitchd did not start under valgrind in {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def ctl(self, command: str, **args: Any) -> Any:
        from vswitch.cli import request
        reply = request(str(self.ctl_path), command, args, timeout=120)
        if not reply.get("ok"):
            raise RuntimeError(f"{command}: {reply.get('error')}")
        return reply["result"]

    def dumps(self) -> set[Path]:
        """The parts written so far (callgrind.out.PID.PART-THREAD)."""
        return set(self.out_dir.glob("callgrind.out.*.*-*"))

    def batch_parts(self, since: set[Path], timeout: float = 120.0) -> list[tuple[Path, Profile]]:
        """The worker's parts written after `since` that switched frames. With
        --dump-before=worker_sleep the worker writes a part each time it is
        about to sleep, with everything it did since it last was: a batch
        published at once is one part (its wake-up, every burst, the round
        that found nothing more); a timeout wake-up's part switches nothing.
        Waits for the part of the batch: it is written after the last frame
        is in the sink's ring, when the worker looks again and finds nothing."""
        deadline = time.monotonic() + timeout
        seen: dict[Path, Profile | None] = {}
        while True:
            for path in sorted(self.dumps() - since):
                if path in seen:
                    continue
                text = path.read_text(errors="replace")
                if not re.search(r"^totals:", text, re.M):
                    continue            # still being written
                prof = parse_callgrind(text)
                seen[path] = prof if prof.has_function(SWITCH_BURST) else None
            found = [(p, prof) for p, prof in seen.items() if prof is not None]
            if found:
                return sorted(found)
            if not self.alive():
                raise RuntimeError("vswitchd exited")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no callgrind part with the batch after {timeout:.0f}s "
                                   f"({len(seen)} parts without frames)")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def socket(self, port: str) -> str:
        return str(self.sock_dir / f"{port}.sock")

    def stop(self) -> None:
        p = self.proc
        if p is not None:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(180)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            self._log.close()
            self.proc = None
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def _counters(info: dict[str, Any]) -> dict[str, Any]:
    q = info["queues"][0]
    drops = {f"{d}.{k}": v for d in ("rx", "tx") for k, v in q[d].get("drops", {}).items()}
    return {"rx_packets": q["rx"]["packets"], "tx_packets": q["tx"]["packets"],
            "rx_notifications": q["rx"].get("notifications", 0), "tx_notifications": q["tx"].get("notifications", 0),
            "drops": drops}


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out = {k: after[k] - before[k] for k in after if k != "drops"}
    out["drops"] = {k: v - before["drops"].get(k, 0) for k, v in after["drops"].items()
                    if v != before["drops"].get(k, 0)}
    return out


@dataclass
class RunOutcome:
    system: str
    build: str
    revision: str
    variant: str
    datapath_tree: str = ""
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    run_dir: str = ""
    error: str | None = None


def run_system(system: str, build: Build, variant: str, frames: int, phases: Sequence[str],
               workdir: Path, out: TextIO = sys.stdout) -> tuple[RunOutcome, dict[str, Attribution]]:
    from tests.harness.frontend import Feature as F
    from tests.harness.frontend import VhostUserFrontend, bits

    t0 = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix=re.sub(r"[^\w.-]+", "_", system)[:40] + "-", dir=workdir))
    outcome = RunOutcome(system, build.name, build.revision, variant, build.datapath_tree, run_dir=str(run_dir))
    atts: dict[str, Attribution] = {}
    maps = SourceMaps.of_tree(build.tree)
    daemon = CallgrindDaemon(build, run_dir, variant)
    devs = []
    try:
        daemon.start()
        print(f"  {system}: vswitchd up under callgrind after {time.monotonic() - t0:.0f}s", file=out, flush=True)
        features = bits(F.VERSION_1, F.MRG_RXBUF, F.INDIRECT_DESC)

        def connect(packed: bool) -> tuple[BulkRing, BulkRing, bytes]:
            """Both front-ends, with split or packed rings; warmed up."""
            for d in devs:
                d.close()
            devs.clear()
            bulk = BulkPackedRing if packed else BulkRing
            fa = VhostUserFrontend(daemon.socket("a"), timeout=120)
            a = fa.setup_net_device(1, RING_SIZE, features, mem_size=64 << 20, packed=packed)
            devs.append(a)
            fb = VhostUserFrontend(daemon.socket("b"), timeout=120)
            b = fb.setup_net_device(1, RING_SIZE, features, packed=packed,
                                    mem_size=((max(frames, WARMUP) * RX_BUF_LEN >> 20) + 32) << 20)
            devs.append(b)
            hdr = bytes(a.tx(0).hdr_len)
            src = bulk(a.tx(0), max(frames, WARMUP), 16 * -(-(len(hdr) + FRAME_SIZE) // 16), writable=False)
            sink = bulk(b.rx(0), max(frames, WARMUP), RX_BUF_LEN, writable=True)
            # Warm-up: b's MAC from a frame of its own, then a's from its first frame.
            a_rx = bulk(a.rx(0), 8, RX_BUF_LEN, writable=True)
            b_tx = bulk(b.tx(0), 8, 16 * -(-(len(hdr) + FRAME_SIZE) // 16), writable=False)
            a_rx.post_rx(8)
            a_rx.publish()
            b_tx.post_tx([hdr + make_frame(SRC_MAC, DST_MAC, 0)])
            b_tx.publish()
            a_rx.wait_used(1, 300, daemon.alive)
            sink.post_rx(WARMUP)
            sink.publish()
            src.post_tx([hdr + make_frame(DST_MAC, SRC_MAC, i) for i in range(WARMUP)])
            src.publish()
            sink.wait_used(WARMUP, 300, daemon.alive)
            src.wait_used(WARMUP, 300, daemon.alive)
            sink.take_used(WARMUP)
            src.take_used(WARMUP)
            print(f"  {system}: warmed up ({'packed' if packed else 'split'} rings) after "
                  f"{time.monotonic() - t0:.0f}s", file=out, flush=True)
            return src, sink, hdr

        ring_kind: str | None = None
        seq = WARMUP
        for phase in phases:
            if phase == "packed" and not build.has_packed_rings:
                print(f"  {system}: no packed rings in this build: phase {phase} left out", file=out, flush=True)
                continue
            kind = "packed" if phase == "packed" else "split"
            if kind != ring_kind:
                src, sink, hdr = connect(kind == "packed")
                ring_kind = kind
            tp = time.monotonic()
            interrupts = phase == "notify"
            src.set_interrupts(interrupts)
            sink.set_interrupts(interrupts)
            sent = [make_frame(DST_MAC, SRC_MAC, seq + i) for i in range(frames)]
            src.post_tx([hdr + f for f in sent])
            sink.post_rx(frames)
            sink.publish(kick=False)
            a_info0 = daemon.ctl("port show", name="a")
            b_info0 = daemon.ctl("port show", name="b")
            before = daemon.dumps()
            src.publish(kick=True)
            sink.wait_used(frames, 600, daemon.alive)
            src.wait_used(frames, 600, daemon.alive)
            parts = daemon.batch_parts(before)
            a_info1 = daemon.ctl("port show", name="a")
            b_info1 = daemon.ctl("port show", name="b")
            seq += frames
            # what arrived: every frame, in order, byte for byte
            used = sink.take_used(frames)
            bad = [i for i, (head, n) in enumerate(used) if head != i or n != len(hdr) + FRAME_SIZE]
            if bad:
                raise RuntimeError(f"{phase}: {len(bad)} used entries out of order or of the wrong length "
                                   f"(first: #{bad[0]} = {used[bad[0]]})")
            want_hdr = bytes(10) + struct.pack("<H", 1)     # num_buffers 1
            wrong = [i for i in range(frames) if sink.read(i, len(hdr) + FRAME_SIZE) != want_hdr + sent[i]]
            if wrong:
                raise RuntimeError(f"{phase}: {len(wrong)} frames differ from what was sent (first #{wrong[0]})")
            returned = src.take_used(frames)
            if sorted(h for h, _ in returned) != list(range(frames)):
                raise RuntimeError(f"{phase}: the source's TX buffers did not all come back once")
            ca = _delta(_counters(a_info1), _counters(a_info0))
            cb = _delta(_counters(b_info1), _counters(b_info0))
            if ca["tx_packets"] != frames or cb["rx_packets"] != frames or ca["drops"] or cb["drops"]:
                raise RuntimeError(f"{phase}: port counters a {ca}, b {cb}; expected {frames} frames, no drop")
            prof = parts[0][1]
            for _, more in parts[1:]:
                prof.add(more)
            att = attribute(prof, maps)
            figs = phase_figures(att, frames)
            n_enqueue = prof.call_count(re.compile(r"_datapath_rx_enqueue$"))
            if n_enqueue and n_enqueue != frames:
                raise RuntimeError(f"{phase}: rx_enqueue ran {n_enqueue} times for {frames} frames: "
                                   "the parts do not cover exactly the phase")
            figs["checks"] = {"port_a": ca, "port_b": cb, "rx_enqueue_calls": n_enqueue,
                              "parts": len(parts), "bursts": -(-frames // BURST)}
            figs["dumps"] = [str(p) for p, _ in parts]
            figs["seconds"] = round(time.monotonic() - tp, 1)
            outcome.phases[phase] = figs
            atts[phase] = att
            print(f"  {system} {phase:<6} {figs['ir_per_frame']:8.1f} Ir/frame "
                  f"(raw {figs['ir_per_frame_raw']:.1f}; notifications a {ca['tx_notifications']}, "
                  f"b {cb['rx_notifications']}; {figs['seconds']:.0f}s)", file=out, flush=True)
    except Exception as exc:  # noqa: BLE001 - the run's error is reported, the bench goes on
        outcome.error = f"{type(exc).__name__}: {exc}"
        print(f"  {system}: ERROR {outcome.error}\n{daemon.log_tail(1500)}", file=out, flush=True)
    finally:
        for d in devs:
            try:
                d.close()
            except Exception:  # noqa: BLE001
                pass
        daemon.stop()
        outcome.seconds = round(time.monotonic() - t0, 1)
    return outcome, atts


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _table(rows: Sequence[RunOutcome], phase: str, key: str, title: str, top: int, out: TextIO) -> None:
    names: list[str] = []
    for o in rows:
        for n, _ in sorted(o.phases[phase][key].items(), key=lambda kv: -kv[1])[:top]:
            if n not in names:
                names.append(n)
    w = max([len(n) for n in names] + [len(title)])
    delta = len(rows) > 1
    print(f"  {title:<{w}}" + "".join(f" {o.system[:14]:>14}" for o in rows) + ("   last-first" if delta else ""),
          file=out)
    for n in names:
        vals = [o.phases[phase][key].get(n, 0) / o.phases[phase]["frames"] for o in rows]
        tail = f"  {vals[-1] - vals[0]:+10.2f}" if delta else ""
        print(f"  {n:<{w}}" + "".join(f" {v:14.2f}" for v in vals) + tail, file=out)


def print_report(outcomes: Sequence[RunOutcome], comparisons: dict[str, dict[str, Any]],
                 top: int = 20, out: TextIO = sys.stdout) -> None:
    ok = [o for o in outcomes if not o.error]
    for phase in sorted({p for o in ok for p in o.phases}, key=lambda p: PHASES.index(p) if p in PHASES else 99):
        rows = [o for o in ok if phase in o.phases]
        print(f"\n== phase {phase}: instructions per 64-byte frame (worker thread, sleeping excluded)", file=out)
        for o in rows:
            f = o.phases[phase]
            print(f"  {o.system:<28} {f['ir_per_frame']:8.1f}   (raw {f['ir_per_frame_raw']:.1f}, "
                  f"sleep {f['ir_sleep'] / f['frames']:.2f}, {f['checks']['parts']} part(s))  "
                  f"{o.revision[:20]}", file=out)
        _table(rows, phase, "symbols", "by function of the binary (exact; Ir/frame)", top, out)
        _table(rows, phase, "functions_all", "by source function (line tables: +-few Ir; Ir/frame)", top, out)
    for key, c in comparisons.items():
        verdict = "within" if c["within_tolerance"] else "ABOVE"
        print(f"\n{key}: {c['current_ir_per_frame']:.1f} / {c['baseline_ir_per_frame']:.1f} Ir/frame = "
              f"{c['ratio']:.4f} ({c['delta_per_frame']:+.1f}): {verdict} the "
              f"{100 * (c['tolerance'] - 1):.0f} % budget",
              file=out)


def print_annotation(outcomes: Sequence[RunOutcome], atts: dict[str, dict[str, Attribution]],
                     functions: Sequence[str], out: TextIO = sys.stdout) -> dict[str, Any]:
    """Line by line (.pxi file:line) Ir per frame of the given source functions."""
    doc: dict[str, Any] = {}
    for o in outcomes:
        for phase, att in atts.get(o.system, {}).items():
            frames = o.phases[phase]["frames"]
            for fn in functions:
                lines = sorted(((where, ir) for (src, where), ir in att.by_line.items() if src == fn),
                               key=lambda kv: kv[0])
                if not lines:
                    continue
                print(f"\n{o.system} {phase}: {fn} ({sum(ir for _, ir in lines) / frames:.2f} Ir/frame)", file=out)
                for where, ir in lines:
                    print(f"    {where:<22} {ir / frames:8.2f}", file=out)
                ext = {k: v for k, v in att.external.items() if k[0] == fn}
                for (_, callee), (n, ir) in sorted(ext.items(), key=lambda kv: -kv[1][1]):
                    print(f"    -> {callee:<30} {n / frames:5.2f} calls/frame {ir / frames:8.2f} Ir/frame", file=out)
                doc.setdefault(o.system, {}).setdefault(phase, {})[fn] = {
                    "lines": {w: ir / frames for w, ir in lines},
                    "calls": {callee: {"calls_per_frame": n / frames, "per_frame": ir / frames}
                              for (_, callee), (n, ir) in ext.items()}}
    return doc


def parse_patch_spec(spec: str) -> tuple[str, list[Path]]:
    """'[baseline:]a.patch,b.patch' -> ("baseline" | "current", [paths])."""
    which = "current"
    if spec.startswith("baseline:"):
        which, spec = "baseline", spec[len("baseline:"):]
    files = [Path(f) for f in spec.split(",") if f.strip()]
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        raise SystemExit(f"--patch {spec}: no such file {', '.join(missing)}")
    return which, files


def compare_all(outcomes: Sequence[RunOutcome], tolerance: float = TOLERANCE) -> dict[str, dict[str, Any]]:
    """Every current system against "baseline"; and against each patched
    baseline whose patches it has too (the same change on both sides)."""
    def patches(name: str) -> set[str]:
        return set(name.split("+")[1:])
    bases = [o for o in outcomes if o.system.split("+")[0] == "baseline"]
    out: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        if o.system.split("+")[0] == "baseline":
            continue
        for b in bases:
            if b.system != "baseline" and not patches(b.system) <= patches(o.system):
                continue
            for phase in o.phases:
                if phase in b.phases:
                    out[f"{o.system} / {b.system}, {phase}"] = compare(b.phases[phase], o.phases[phase], tolerance)
    return out


# One line per commit: the instructions per frame of its datapath, quiet and
# notify, with what else decides the count (CFLAGS, compiler, valgrind). Only
# clean commits measured with the default workload are written; a commit
# measured again replaces its line; the lines are sorted by commit date, so
# the file is the same whatever order the commits were measured in.
HISTORY = BENCH / "results" / "callgrind-history.tsv"
HISTORY_FIELDS = ("commit", "date", "quiet", "notify", "packed", "cflags", "gcc", "valgrind", "subject")


def read_history(path: Path = HISTORY) -> dict[str, dict[str, str]]:
    """{commit: {field: value}} of the history file (empty if none). The
    fields are those of the file's own "#commit..." header line, so files
    written before a column was added read right."""
    out: dict[str, dict[str, str]] = {}
    fields: Sequence[str] = ("commit", "date", "quiet", "notify", "cflags", "gcc", "valgrind", "subject")
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("#commit\t"):
                fields = line[1:].split("\t")
            elif line and not line.startswith("#"):
                row = dict(zip(fields, line.split("\t"), strict=False))
                out[row["commit"]] = row
    return out


def record_history(outcomes: Sequence[RunOutcome], frames: int, cflags: str, tools: dict[str, str],
                   path: Path = HISTORY, out: TextIO = sys.stdout) -> list[str]:
    """Write the plain (no variant, no patch) clean-commit systems of this run
    into the history; returns the commits written."""
    if frames != DEFAULT_FRAMES:
        print(f"history: not recorded (--frames {frames}, the history is of {DEFAULT_FRAMES})", file=out)
        return []
    rows = read_history(path)
    written = []
    for o in outcomes:
        if o.error or o.system not in ("current", "baseline") or o.variant != "off":
            continue
        commit = o.revision
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            print(f"history: {o.system} not recorded ({commit[:12]}...: uncommitted changes or patches)",
                  file=out)
            continue
        if "quiet" not in o.phases:
            continue
        date, subject = _git("show", "-s", "--format=%cI%x09%s", commit).split("\t", 1)
        rows[commit] = {
            "commit": commit, "date": date,
            "quiet": f"{o.phases['quiet']['ir_per_frame']:.2f}",
            "notify": f"{o.phases['notify']['ir_per_frame']:.2f}" if "notify" in o.phases else "-",
            "packed": f"{o.phases['packed']['ir_per_frame']:.2f}" if "packed" in o.phases else "-",
            "cflags": cflags or "-", "gcc": tools.get("gcc", "?"), "valgrind": tools.get("valgrind", "?"),
            "subject": subject.replace("\t", " ")[:120],
        }
        written.append(commit)
    if written:
        lines = ["# instructions per 64-byte frame of the datapath (python -m bench.callgrind), "
                 "one line per commit, by commit date", "#" + "\t".join(HISTORY_FIELDS)]
        for row in sorted(rows.values(), key=lambda r: (r["date"], r["commit"])):
            lines.append("\t".join(row.get(f) or "-" for f in HISTORY_FIELDS))
        path.write_text("\n".join(lines) + "\n")
        print(f"history: {', '.join(c[:12] for c in written)} -> {path}", file=out)
    return written


def history_from_results(paths: Sequence[Path], out: TextIO = sys.stdout) -> list[str]:
    """Fill the history from earlier results files (their clean commits)."""
    fields = {f.name for f in dataclasses.fields(RunOutcome)}
    written: list[str] = []
    for path in sorted(paths):
        doc = json.loads(path.read_text())
        outcomes = [RunOutcome(**{k: v for k, v in o.items() if k in fields}) for o in doc.get("systems", [])]
        tools = {**doc.get("tools", {}), "valgrind": (doc.get("tools") or {}).get("valgrind") or "?"}
        print(f"{path.name}:", file=out)
        written += record_history(outcomes, doc.get("args", {}).get("frames", 0), doc.get("cflags", ""),
                                  tools, out=out)
    return written


def valgrind_version() -> str | None:
    try:
        return subprocess.run(["valgrind", "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", metavar="REV", default=None, help="also measure this commit (e.g. 705ace4)")
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                    help=f"frames per phase, at most {RING_SIZE} (default {DEFAULT_FRAMES})")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"from {','.join(PHASES)} (default: both)")
    ap.add_argument("--variants", default="off",
                    help=f"port config variants of the current build, from {','.join(loopback.VARIANTS)} (default off)")
    ap.add_argument("--patch", metavar="[baseline:]FILE[,FILE...]", action="append", default=[],
                    help="also measure the current tree (or with 'baseline:' the baseline) with these "
                         "patches applied together (git apply); repeatable: one system each")
    ap.add_argument("--cflags", default=os.environ.get("BENCH_CFLAGS", BENCH_CFLAGS),
                    help=f"CFLAGS of the bench builds (default {BENCH_CFLAGS}: valgrind has no AVX-512)")
    ap.add_argument("--annotate", default="take_headers,sg_copy,sg_read,notify_request,notify_flush,notify_reap",
                    help="source functions to print line by line (comma-separated; '' for none)")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help=f"current/baseline limit (default {TOLERANCE})")
    ap.add_argument("--workdir", type=Path, default=None, help="run directories, logs and dumps (default: temp dir)")
    ap.add_argument("--results", type=Path, default=BENCH / "results")
    ap.add_argument("--no-history", dest="history", action="store_false",
                    help=f"do not write this run's commits into {HISTORY.relative_to(REPO)}")
    ap.add_argument("--history-from", metavar="JSON", type=Path, nargs="+", default=None,
                    help="run nothing: write the clean commits of these earlier results into the history")
    args = ap.parse_args(argv)
    if args.history_from:
        history_from_results(args.history_from)
        return 0
    if not 1 <= args.frames <= RING_SIZE:
        raise SystemExit(f"--frames: 1..{RING_SIZE}")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or any(p not in PHASES for p in phases):
        raise SystemExit(f"--phases: from {', '.join(PHASES)}")
    variants = loopback.parse_variants(args.variants)
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    if not shutil.which("valgrind"):
        print("valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vswitch-callgrind-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now().astimezone()
    t0 = time.monotonic()
    outcomes: list[RunOutcome] = []
    atts: dict[str, dict[str, Attribution]] = {}
    with loopback.single_instance():
        systems: list[tuple[str, Build, str]] = []
        if args.baseline:
            systems.append(("baseline", prepare_baseline(args.baseline, args.cflags), "off"))
        current = prepare_current(args.cflags)
        for v in variants:
            systems.append(("current" if v == "off" else f"current+{v}", current, v))
        for spec in args.patch:
            which, files = parse_patch_spec(spec)
            if which == "baseline":
                if not args.baseline:
                    raise SystemExit(f"--patch {spec}: no --baseline to patch")
                b = prepare_baseline(args.baseline, args.cflags, files)
            else:
                b = prepare_current(args.cflags, files)
            systems.append((b.name, b, "off"))
        print(f"workdir {workdir}; {args.frames} frames per phase, phases {','.join(phases)}", flush=True)
        try:
            for name, build, variant in systems:
                o, a = run_system(name, build, variant, args.frames, phases, workdir)
                outcomes.append(o)
                atts[name] = a
        except KeyboardInterrupt:
            print("interrupted: reporting the runs so far", flush=True)
    comparisons = compare_all([o for o in outcomes if not o.error], args.tolerance)
    print_report(outcomes, comparisons)
    fns = [f.strip() for f in args.annotate.split(",") if f.strip()]
    annotation = print_annotation(outcomes, atts, fns) if fns else {}
    for o in outcomes:
        if o.error:
            print(f"error {o.system}: {o.error.splitlines()[0][:300]}")
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"callgrind-{started.strftime('%Y%m%d-%H%M%S')}.json"
    host = loopback.host_info()
    host.pop("dpdk", None)
    doc = {
        "benchmark": "callgrind",
        "started": started.isoformat(),
        "finished": dt.datetime.now().astimezone().isoformat(),
        "seconds": round(time.monotonic() - t0, 1),
        "host": host,
        "tools": {**tool_versions(), "valgrind": valgrind_version()},
        "cflags": args.cflags,
        "args": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
                 for k, v in vars(args).items()},
        "workload": {"frame_size": FRAME_SIZE, "frames_per_phase": args.frames, "warmup": WARMUP,
                     "ring_size": RING_SIZE, "rx_buf_len": RX_BUF_LEN, "phases": phases,
                     "src_mac": loopback.GEN_MACS[0], "dst_mac": loopback.GEN_MACS[1],
                     "features": "VERSION_1 MRG_RXBUF INDIRECT_DESC (+ RING_PACKED in phase packed)",
                     "mode": "event", "workers": 1,
                     "excluded_as_sleep": list(SLEEP_FUNCS)},
        "systems": [{k: v for k, v in dataclasses.asdict(o).items()} for o in outcomes],
        "comparisons": comparisons,
        "annotation": annotation,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    if args.history:
        record_history(outcomes, args.frames, args.cflags, doc["tools"])
    print(f"\nresults: {path}\nlogs and dumps: {workdir}")
    return 0 if outcomes and not any(o.error for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
