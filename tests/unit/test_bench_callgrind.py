"""bench/callgrind.py's own logic, without valgrind: reading callgrind's
format (compressed names and positions, inlined files, calls), mapping lines
of generated C to source functions, the per-frame figures and the 3 %
verdict, the bulk ring filling and the daemon's config."""

from __future__ import annotations

import struct

import pytest

from bench import callgrind
from vswitch.config import parse_config
from vswitch.policy import policy_of


SO = "/tmp/t/vswitch/_datapath.cpython-311-x86_64-linux-gnu.so"

# One part of a worker thread, as callgrind 3.19 writes it (--compress-strings
# and --compress-pos on, the defaults): tx_burst's lines inlined into the
# thread's entry (fi=/fe=), a call into libc's memcpy from sg_copy's line, a
# call to another datapath function (not counted twice).
PART = f"""# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python -c vswitchd
part: 7
thread: 2

desc: Trigger: --dump-before=__pyx_f_7vswitch_9_datapath_worker_sleep

positions: line
events: Ir
summary: 1000

ob=(1) {SO}
fl=(1) /tmp/t/cython_ext/_datapath.c
fn=(1) __pyx_pw_7vswitch_9_datapath_8Datapath_11_run_worker
20 5
fi=(2) /tmp/t/cython_ext/vs_defs.h
3 7
fe=(1)
+6 100
cfn=(2) __pyx_f_7vswitch_9_datapath_rx_enqueue
calls=10 40
* 400
fn=(2)
38 300
+4 50
cob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
cfi=(3) ???
cfn=(3) __memcpy_avx_unaligned_erms
calls=20 0
* 120
ob=(3)
fl=(3)
fn=(3)
0 120
ob=(1)
fl=(1)
fn=(4) __pyx_f_7vswitch_9_datapath_worker_sleep
60 20
+1 8

totals: 610
"""

# The generated C those lines point into (line numbers matter): the entry
# 18..21, tx_burst 24..27 with its pxi comment, rx_enqueue 36..39, sg_copy
# 40..43 (its line 42 inlined into rx_enqueue), worker_sleep 59..62; line 9
# is in no function.
C_LINES = {
    1: "static void __pyx_f_7vswitch_9_datapath_worker_loop(int *w); /*proto*/",
    18: "static PyObject *__pyx_pw_7vswitch_9_datapath_8Datapath_11_run_worker(PyObject *self,",
    19: "    PyObject *i) {",
    20: "  x = 1;",
    21: "}",
    24: "static void __pyx_f_7vswitch_9_datapath_tx_burst(int *w) {",
    25: '  /* "cython_ext/worker.pxi":706',
    26: "  t = 2;",
    27: "}",
    36: "static int __pyx_f_7vswitch_9_datapath_rx_enqueue(int *w) {",
    37: '  /* "cython_ext/vring.pxi":300',
    38: "  sg_copy(d);",
    39: "}",
    40: "static CYTHON_INLINE void __pyx_f_7vswitch_9_datapath_sg_copy(int *d) {",
    41: '  /* "cython_ext/vring.pxi":120',
    42: "  memcpy(a, b, n);",
    43: "}",
    59: "static void __pyx_f_7vswitch_9_datapath_worker_sleep(int *w) {",
    60: '  /* "cython_ext/worker.pxi":830',
    61: "  epoll_wait();",
    62: "}",
}
HEADER = """#ifndef X
static inline void vs_mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void vs_log_page(uint8_t *log,
                               uint64_t page) {
    __atomic_fetch_or(&log[page >> 3], 1, 0);
}
#endif
"""


def c_text(lines: dict[int, str]) -> str:
    return "\n".join(lines.get(i, "") for i in range(1, max(lines) + 1)) + "\n"


@pytest.fixture
def maps() -> callgrind.SourceMaps:
    c = callgrind.SourceMap.from_c(c_text(C_LINES))
    return callgrind.SourceMaps({"_datapath.c": c, "vs_defs.h": callgrind.SourceMap.from_c(HEADER)})


def test_parse_resolves_compressed_names_positions_inlined_files_and_calls():
    prof = callgrind.parse_callgrind(PART)
    entry = "__pyx_pw_7vswitch_9_datapath_8Datapath_11_run_worker"
    c, h = "/tmp/t/cython_ext/_datapath.c", "/tmp/t/cython_ext/vs_defs.h"
    assert prof.totals == 610
    assert prof.header["desc"].startswith("Trigger: --dump-before=")
    assert prof.lines[(SO, entry, c, 20)] == 5
    assert prof.lines[(SO, entry, h, 3)] == 7            # fi=: inlined from the header
    assert prof.lines[(SO, entry, c, 9)] == 100          # fe=(1) back, +6 relative to line 3
    assert prof.lines[(SO, "__pyx_f_7vswitch_9_datapath_rx_enqueue", c, 38)] == 300
    assert prof.lines[(SO, "__pyx_f_7vswitch_9_datapath_rx_enqueue", c, 42)] == 50
    assert prof.lines[(SO, "__pyx_f_7vswitch_9_datapath_worker_sleep", c, 61)] == 8
    # a call's cost is inclusive: not self cost of the caller's line
    assert prof.calls[(SO, entry, c, 9, SO, "__pyx_f_7vswitch_9_datapath_rx_enqueue")] == [10, 400]
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert prof.calls[(SO, "__pyx_f_7vswitch_9_datapath_rx_enqueue", c, 42, libc,
                       "__memcpy_avx_unaligned_erms")] == [20, 120]
    assert prof.self_total == 610
    assert prof.call_count("__memcpy_avx_unaligned_erms") == 20
    assert prof.has_function(callgrind.re.compile(r"_datapath_worker_sleep$"))
    twice = callgrind.parse_callgrind(PART)
    twice.add(prof)
    assert twice.totals == 1220 and twice.lines[(SO, entry, c, 20)] == 10
    assert twice.call_count("__memcpy_avx_unaligned_erms") == 40


def test_source_map_finds_functions_one_liners_multiline_signatures_and_pxi_lines(maps):
    c = maps.maps["_datapath.c"]
    assert c.function_at(1) is None                      # a prototype is no definition
    assert c.function_at(19) == c.function_at(20) == "Datapath._run_worker"
    assert c.function_at(26) == "tx_burst" and c.pxi[26] == "worker.pxi:706"
    assert c.function_at(38) == "rx_enqueue"
    assert c.function_at(42) == "sg_copy" and c.pxi[42] == "vring.pxi:120"
    assert c.function_at(9) is None and c.function_at(30) is None
    h = maps.maps["vs_defs.h"]
    assert h.function_at(2) == "vs_mb"                    # ends on its own line
    assert h.function_at(3) == h.function_at(5) == "vs_log_page"
    assert h.function_at(7) is None


@pytest.mark.parametrize("c_name,name", [
    ("__pyx_f_7vswitch_9_datapath_tx_burst", "tx_burst"),
    ("__pyx_f_7vswitch_9_datapath_notify_flush.part.0", "notify_flush"),
    ("__pyx_f_7vswitch_9_datapath_fdb_forget.constprop.0.isra.0", "fdb_forget"),
    ("__pyx_pw_7vswitch_9_datapath_8Datapath_11_run_worker", "Datapath._run_worker"),
    ("__pyx_pf_7vswitch_9_datapath_8Datapath_37memory_regions", "Datapath.memory_regions"),
    ("__pyx_f_7vswitch_9_datapath_8Datapath__notify_io", "Datapath._notify_io"),
    ("memcpy'2", "memcpy"),
])
def test_demangle(c_name, name):
    assert callgrind.demangle(c_name) == name


def test_attribution_splits_inlined_code_and_charges_library_calls_to_their_line(maps):
    att = callgrind.attribute(callgrind.parse_callgrind(PART), maps)
    assert att.total == att.attributed == 610      # libc's own lines are in the call's 120
    # line 9 is in no function: it keeps the name of the function callgrind saw
    assert att.by_function == {"Datapath._run_worker": 5 + 100, "vs_log_page": 7, "rx_enqueue": 300,
                               "sg_copy": 50 + 120, "worker_sleep": 28}
    assert att.external == {("sg_copy", "__memcpy_avx_unaligned_erms"): [20, 120]}
    assert att.by_line[("sg_copy", "vring.pxi:120")] == 170
    # the binary's view: inlined code stays with the function it was inlined into
    assert att.by_symbol == {"Datapath._run_worker": 112, "rx_enqueue": 470, "worker_sleep": 28}


def test_figures_leave_out_sleeping_and_the_verdict_is_the_ratio(maps):
    att = callgrind.attribute(callgrind.parse_callgrind(PART), maps)
    f = callgrind.phase_figures(att, frames=10)
    assert f["ir_sleep"] == 28
    assert f["ir_per_frame"] == pytest.approx((610 - 28) / 10)
    assert f["ir_per_frame_raw"] == pytest.approx(61.0)
    assert f["external_calls"]["sg_copy -> __memcpy_avx_unaligned_erms"]["calls_per_frame"] == 2
    base = {**f, "ir_per_frame": 50.0, "functions_all": {"sg_copy": 300, "tx_burst": 100},
            "symbols": {"rx_enqueue": 400}}
    cur = {**f, "ir_per_frame": 51.4, "functions_all": {"sg_copy": 320, "take_headers": 5, "tx_burst": 100},
           "symbols": {"rx_enqueue": 420}}
    c = callgrind.compare(base, cur)
    assert c["ratio"] == pytest.approx(1.028) and c["within_tolerance"] is True
    assert c["moved"] == {"sg_copy": pytest.approx(2.0), "take_headers": pytest.approx(0.5)}
    assert c["moved_symbols"] == {"rx_enqueue": pytest.approx(2.0)}
    assert callgrind.compare(base, {**cur, "ir_per_frame": 51.6})["within_tolerance"] is False


def test_bulk_ring_reuses_descriptors_and_wraps_the_avail_ring():
    from tests.harness.frontend import GuestMemory, SplitRing
    mem = GuestMemory(1 << 20)
    ring = SplitRing(mem, 8, 1)
    rxring = SplitRing(mem, 8, 0)
    bulk = callgrind.BulkRing(ring, 6, 80, writable=False)
    frames = [bytes(12) + callgrind.make_frame(callgrind.DST_MAC, callgrind.SRC_MAC, i) for i in range(6)]
    for batch in range(2):                 # slots 0..5, then 6, 7, 0, 1, 2, 3
        bulk.post_tx(frames)
        bulk.publish(kick=False)
    assert ring.avail_idx_in_memory() == 12
    slots = [mem.load16(ring.avail_gpa + 4 + 2 * s) for s in range(8)]
    assert slots == [2, 3, 4, 5, 4, 5, 0, 1]
    for i in range(6):
        addr, length, flags, nxt = struct.unpack("<QIHH", mem.read(ring.desc_gpa + 16 * i, 16))
        assert (addr, length, flags) == (bulk.base + 80 * i, 76, 0)
        assert mem.read(addr, 76) == frames[i]
    assert len(frames[0]) - 12 == callgrind.FRAME_SIZE == 64
    rx = callgrind.BulkRing(rxring, 4, 2048, writable=True)
    rx.post_rx(4)
    assert struct.unpack("<QIHH", mem.read(rx.ring.desc_gpa + 16 * 3, 16))[1:3] == (2048, callgrind.VRING_DESC_F_WRITE)
    with pytest.raises(ValueError):
        rx.post_rx(5)
    ring.close()
    rxring.close()
    mem.close()


@pytest.mark.parametrize("variant", ["off", "all"])
def test_daemon_config_is_valid_for_this_tree(tmp_path, variant):
    build = callgrind.Build("current", callgrind.REPO, "x", "HEAD")
    cfg = parse_config(callgrind.daemon_config(build, tmp_path, variant), "bench.yaml", check_host=False)
    assert cfg.datapath.workers == 1 and cfg.datapath.mode == "event"
    assert cfg.fdb.aging_time == 0
    assert cfg.security.seccomp is False
    assert [p.queues for p in cfg.ports.values()] == [1, 1]
    a, b = (policy_of(cfg.ports[n]) for n in ("a", "b"))
    if variant == "all":
        # the source sends from GEN_MACS[0] into a, the sink from GEN_MACS[1] into b
        assert (a["allowed_macs"], b["allowed_macs"]) == ((callgrind.SRC_MAC_TEXT,), (callgrind.DST_MAC_TEXT,))
    else:
        assert a["allowed_macs"] == b["allowed_macs"] == ()


def test_patch_specs_and_like_for_like_comparisons(tmp_path):
    a, b = tmp_path / "p1.patch", tmp_path / "p4.patch"
    a.write_text("")
    b.write_text("")
    assert callgrind.parse_patch_spec(f"{a},{b}") == ("current", [a, b])
    assert callgrind.parse_patch_spec(f"baseline:{b}") == ("baseline", [b])
    with pytest.raises(SystemExit, match="no such file"):
        callgrind.parse_patch_spec(str(tmp_path / "nope.patch"))

    def outcome(name: str, ir: float) -> callgrind.RunOutcome:
        fig = {"ir_per_frame": ir, "frames": 1, "functions_all": {}, "symbols": {}}
        return callgrind.RunOutcome(name, name, "r", "off", phases={"quiet": fig})

    runs = [outcome("baseline", 100.0), outcome("baseline+p4", 80.0), outcome("current", 110.0),
            outcome("current+p1+p4", 82.0), outcome("current+p1", 101.0)]
    got = {k: round(v["ratio"], 3) for k, v in callgrind.compare_all(runs).items()}
    # every current system against the baseline; against baseline+p4 only those that have p4
    assert got == {"current / baseline, quiet": 1.1, "current+p1+p4 / baseline, quiet": 0.82,
                   "current+p1+p4 / baseline+p4, quiet": 1.025, "current+p1 / baseline, quiet": 1.01}


def test_history_has_one_line_per_clean_commit_sorted_by_commit_date(tmp_path, monkeypatch):
    dates = {"a" * 40: "2026-12-01T10:00:00+00:00", "b" * 40: "2026-12-02T10:00:00+00:00"}
    monkeypatch.setattr(callgrind, "_git", lambda *args: f"{dates[args[-1]]}\tsubject of {args[-1][:4]}")
    path = tmp_path / "callgrind-history.tsv"
    tools = {"gcc": "gcc 12.2.0", "valgrind": "valgrind-3.19.0"}

    def outcome(system: str, rev: str, quiet: float) -> callgrind.RunOutcome:
        return callgrind.RunOutcome(system, system, rev, "off",
                                    phases={"quiet": {"ir_per_frame": quiet}, "notify": {"ir_per_frame": quiet + 10}})
    # the newer commit first, then the older; a dirty tree and a variant are not history
    callgrind.record_history([outcome("current", "b" * 40, 935.65), outcome("baseline", "a" * 40, 1060.8)],
                             callgrind.DEFAULT_FRAMES, "-mno-avx512f", tools, path)
    callgrind.record_history([outcome("current", "b" * 40 + "-dirty", 900.0),
                              callgrind.RunOutcome("current+all", "current", "b" * 40, "all")],
                             callgrind.DEFAULT_FRAMES, "-mno-avx512f", tools, path)
    first = path.read_text()
    rows = [line.split("\t") for line in first.splitlines() if not line.startswith("#")]
    assert [(r[0][:1], r[2], r[3], r[4]) for r in rows] == [("a", "1060.80", "1070.80", "-"),
                                                              ("b", "935.65", "945.65", "-")]
    assert rows[0][5:8] == ["-mno-avx512f", "gcc 12.2.0", "valgrind-3.19.0"]
    # measured again: the same file; another --frames: not recorded
    callgrind.record_history([outcome("baseline", "a" * 40, 1060.8)], callgrind.DEFAULT_FRAMES,
                             "-mno-avx512f", tools, path)
    assert callgrind.record_history([outcome("baseline", "a" * 40, 1.0)], 500, "-mno-avx512f", tools, path) == []
    assert path.read_text() == first


def test_history_written_before_the_packed_column_reads_by_its_own_header(tmp_path, monkeypatch):
    """The file's "#commit..." line names its columns: a line of the older
    format keeps its figures when a run adds a commit with a packed figure."""
    monkeypatch.setattr(callgrind, "_git", lambda *args: "2026-12-07T10:00:00+00:00\tnew")
    path = tmp_path / "callgrind-history.tsv"
    path.write_text("# instructions per 64-byte frame\n"
                    "#commit\tdate\tquiet\tnotify\tcflags\tgcc\tvalgrind\tsubject\n"
                    + "\t".join(["a" * 40, "2026-12-01T10:00:00+00:00", "1060.81", "1064.75",
                                 "-mno-avx512f", "gcc 12", "valgrind-3.19.0", "old"]) + "\n")
    figs = {p: {"ir_per_frame": v} for p, v in (("quiet", 670.4), ("notify", 678.9), ("packed", 800.25))}
    callgrind.record_history([callgrind.RunOutcome("current", "current", "b" * 40, "off", phases=figs)],
                             callgrind.DEFAULT_FRAMES, "-mno-avx512f", {"gcc": "gcc 12"}, path)
    rows = callgrind.read_history(path)
    assert (rows["a" * 40]["quiet"], rows["a" * 40]["packed"], rows["a" * 40]["cflags"]) == \
        ("1060.81", "-", "-mno-avx512f")
    assert (rows["b" * 40]["quiet"], rows["b" * 40]["packed"]) == ("670.40", "800.25")
