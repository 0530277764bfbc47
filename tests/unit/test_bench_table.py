"""The performance table's pure parts: bench.loopback's --workers/--mode
config and --baseline-tree scripts, bench.matrix's plan and time estimate,
and bench.table's figures and markdown from a small result fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import loopback, matrix, table
from vswitch.config import parse_config


def vswitch_config(tmp_path: Path, **kwargs):
    sw = loopback.VSwitch(tmp_path, 1, 2, (tmp_path / "a.sock", tmp_path / "b.sock"), Path("/x"), **kwargs)
    return sw.config_text(), parse_config(sw.config_text(), "bench.yaml", check_host=False)


# --- bench.loopback: workers, mode, baseline tree -----------------------------------------


def test_default_config_keeps_one_worker_and_the_daemons_default_mode(tmp_path):
    text, cfg = vswitch_config(tmp_path)
    assert "datapath: {workers: 1}\n" in text
    assert cfg.datapath.workers == 1


@pytest.mark.parametrize("mode", loopback.MODES)
def test_workers_and_mode_reach_the_datapath_config(tmp_path, mode):
    text, cfg = vswitch_config(tmp_path, workers=2, mode=mode)
    assert (cfg.datapath.workers, cfg.datapath.mode) == (2, mode)
    assert [cfg.ports[p].queues for p in ("a", "b")] == [2, 2]


def test_datapath_line_refuses_what_the_daemon_would():
    assert loopback.datapath_yaml(2, "event", [1, 0]) == "datapath: {workers: 2, mode: event, cpus: [1, 0]}\n"
    with pytest.raises(ValueError, match="workers"):
        loopback.datapath_yaml(0)
    with pytest.raises(ValueError, match="mode"):
        loopback.datapath_yaml(1, "busy")


def test_loopback_options_parse_workers_mode_and_baseline_tree(monkeypatch):
    """The options reach the parser (run nothing: --help exits first)."""
    help_text = subprocess.run([sys.executable, "-m", "bench.loopback", "--help"], capture_output=True,
                               text=True, cwd=loopback.REPO, timeout=60).stdout
    for opt in ("--workers", "--mode", "--baseline-tree", "--out"):
        assert opt in help_text
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(loopback, "testpmd_available", lambda: True)
    monkeypatch.setattr(loopback.signal, "signal", lambda *a: None)  # main's handlers stay out of pytest
    with pytest.raises(SystemExit, match="one baseline"):
        loopback.main(["--baseline", "HEAD", "--baseline-tree", "/tmp", "--pairs", "0"])


def test_baseline_tree_scripts_put_the_tree_first_on_the_path(tmp_path):
    tree = tmp_path / "tree"
    (tree / "vswitch").mkdir(parents=True)
    (tree / "vswitch" / "__init__.py").write_text("WHERE = 'tree'\n")
    py, daemon = loopback.wrapper_scripts(tree, tmp_path / "bin", Path(sys.executable))
    out = subprocess.run([str(py), "-c", "import vswitch; print(vswitch.WHERE, vswitch.__file__)"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.split() == ["tree", str(tree / "vswitch" / "__init__.py")]
    assert "from vswitch.daemon import main" in daemon.read_text() and os.access(daemon, os.X_OK)
    # build_target() looks for the interpreter beside the vswitchd it is given
    assert daemon.parent / "python" == py


def test_baseline_tree_names_its_commit_and_whether_it_is_dirty(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tree / "f").write_text("1\n")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    commit, dirty = loopback.tree_commit(tree)
    assert len(commit) == 40 and not dirty
    (tree / "f").write_text("2\n")
    assert loopback.tree_commit(tree) == (commit, True)
    with pytest.raises(SystemExit, match="not a git checkout"):
        loopback.tree_commit(tmp_path)


def test_a_child_benchmark_runs_under_its_parents_lock(tmp_path, monkeypatch):
    lock = tmp_path / "bench.lock"
    with loopback.single_instance(lock) as fd:
        monkeypatch.setenv(loopback.LOCK_FD_ENV, str(fd))
        assert loopback.inherited_lock(lock) == fd
        with loopback.single_instance(lock) as inner:  # would refuse without the parent's descriptor
            assert inner == fd
        monkeypatch.delenv(loopback.LOCK_FD_ENV)
        with pytest.raises(SystemExit, match="another benchmark"):
            with loopback.single_instance(lock):
                pass
    other = tmp_path / "other.lock"
    other.write_text("")
    with open(other) as f:  # an open descriptor of another file is no lock
        monkeypatch.setenv(loopback.LOCK_FD_ENV, str(f.fileno()))
        assert loopback.inherited_lock(lock) is None


# --- bench.matrix: what runs and how long -------------------------------------------------


def test_matrix_measures_the_bar_in_all_four_memory_and_role_combinations():
    parts = matrix.plan(("64x1", "1518x1", "64x2"), baseline=True)
    assert [(p.memory, p.role) for p in parts] == [("huge", "client"), ("4k", "server"),
                                                  ("4k", "client"), ("huge", "server")]
    assert all("64x1" in p.configs for p in parts)
    assert parts[0].systems() == ["dpdk", "ovs-normal", "ovs-p2p", "baseline", "vswitch"]
    assert parts[1].systems() == parts[0].systems()      # OVS on 4 KiB pages too (its own huge pages)
    assert parts[2].systems() == ["dpdk", "baseline", "vswitch"] and parts[2].configs == ("64x1",)
    assert [p.name for p in matrix.plan(("64x1",), parts=["4k-client"])] == ["4k-client"]
    with pytest.raises(SystemExit, match="unknown"):
        matrix.plan(("64x1",), parts=["4k-nowhere"])


def test_matrix_estimate_counts_every_run_with_its_systems_start_cost():
    part = matrix.Part("x", "4k", "server", ("64x1", "1518x1"), ovs=False, baseline=False)
    per_pair = (1 + 2 + 6 + matrix.RUN_OVERHEAD_S["dpdk", "4k"]) + (1 + 2 + 6 + matrix.RUN_OVERHEAD_S["vswitch", "4k"])
    assert matrix.estimate_s(part, 5, 6, 2, 1) == pytest.approx(matrix.PART_OVERHEAD_S + 5 * 2 * per_pair)


def test_default_table_fits_in_make_bench():
    """The table section's share of make bench's 90 minutes (docs/performance.md, "Sections")."""
    parts = matrix.plan(matrix.parse_configs(matrix.DEFAULT_CONFIGS), baseline=True)
    total = sum(matrix.estimate_s(p, 5, 6, 2.0, 1.0) for p in parts)
    assert 30 * 60 < total < 50 * 60


def test_matrix_part_command_lines(tmp_path):
    args = matrix.main.__globals__["argparse"].Namespace(
        pairs=5, seconds=6, warmup=2.0, settle=1.0, workers=1, mode="poll", baseline=None,
        baseline_tree=Path("/srv/main"), vswitchd=None, passthrough=["--keep-noisy"])
    part = matrix.plan(("64x1",), baseline=True)[0]
    argv = matrix.part_argv(part, args, tmp_path / "huge-client.json")
    assert argv[1:3] == ["-m", "bench.loopback"]
    joined = " ".join(argv)
    for want in ("--memory huge", "--socket-role client", "--ovs normal,p2p", "--workers 1", "--mode poll",
                 "--baseline-tree /srv/main", f"--out {tmp_path / 'huge-client.json'}", "--pairs 5",
                 "--keep-noisy"):
        assert want in joined
    with pytest.raises(SystemExit, match="SIZExQUEUES"):
        matrix.parse_configs("64,1518x1")


def test_matrix_dry_run_prints_the_estimate_and_runs_nothing(tmp_path, capsys):
    assert matrix.main(["--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "estimated" in out and "bench.loopback" in out
    assert list(tmp_path.iterdir()) == []


# --- bench.table: the figures and the markdown ----------------------------------------------


def run(kind: str, pair: int, mpps: float, size: int = 64, queues: int = 1, **extra) -> dict:
    r = {"kind": kind, "size": size, "queues": queues, "pair": pair, "median_pps": mpps * 1e6,
         "cpu": {"steal_pct": 0.1}, "samples_pps": [mpps * 1e6]}
    r.update(extra)
    return r


def fixture_dir(tmp_path: Path) -> Path:
    """One part, huge pages, switch as client: five pairs at 64x1 (pair 4
    has DPDK in its slow state) and one flagged vswitch run at 1518x1."""
    d = tmp_path / "table-20990101-000000"
    d.mkdir()
    dpdk = [10.0, 10.2, 9.8, 10.0, 4.0]
    vs = [9.5, 9.0, 9.8, 9.2, 9.4]
    base = [9.0, 9.0, 9.0, 9.0, 9.0]
    runs = []
    for i in range(5):
        runs += [run("dpdk", i, dpdk[i]), run("baseline", i, base[i]),
                 run("vswitch", i, vs[i], worker={"cycles_per_frame": 250.0 + i})]
        runs += [run("dpdk", i, 5.0, 1518), run("baseline", i, 5.0, 1518),
                 run("ovs-p2p", i, 4.0, 64, 2, note="OVS sent on one queue: {}"),
                 run("vswitch", i, 5.5, 1518, flagged="foreign CPU" if i == 0 else None)]
    doc = {"benchmark": "loopback", "memory": "huge", "socket_role": "client",
           "systems": ["dpdk", "baseline", "vswitch"],
           "args": {"configs": "64x1,1518x1", "keep_noisy": False, "memory": "huge", "socket_role": "client"},
           "host": {"cpu_model": "Test CPU", "cpus": 2, "kernel": "6.0", "dpdk": "22.11", "git": "abc1234",
                    "build_target": {"vswitch": "x86-64-v2", "baseline": "x86-64-v2"}, "steal_pct": 0.12},
           "baseline": {"commit": "0123456789abcdef", "dirty": True},
           "datapath": {"workers": 1, "mode": "adaptive (default)"},
           "runs": runs}
    (d / "huge-client.json").write_text(json.dumps(doc))
    manifest = {"benchmark": "table", "started": "2099-01-01T00:00:00+00:00", "estimated_s": 2700,
                "actual_s": 2580, "pairs": 5, "seconds": 6, "warmup": 2.0, "bar_config": "64x1",
                "parts": [{"name": "huge-client", "json": "huge-client.json"}]}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_table_ratios_are_per_pair_over_all_and_over_fast_pairs(tmp_path):
    manifest, parts = table.load(fixture_dir(tmp_path))
    p = parts[0]
    all_pairs, fast = table.ratios(p.counted("vswitch", "64x1"), p.counted("dpdk", "64x1"))
    assert all_pairs["n"] == 5 and all_pairs["median"] == pytest.approx(0.95)  # 9.5/10, 9/10.2, 1, .92, 2.35
    # pair 4's DPDK run (4.0) is below DPDK's fast threshold: left out of "fast"
    assert fast["n"] == 4 and fast["median"] == pytest.approx((0.92 + 0.95) / 2)
    assert table.bar_verdict(all_pairs, fast) == "yes (>= 0.9)"
    # the flagged vswitch run counts nowhere
    assert len(p.counted("vswitch", "1518x1")) == 4


def test_table_bar_needs_both_medians_and_enough_pairs():
    s = lambda m, n: {"median": m, "min": m, "max": m, "n": n}  # noqa: E731
    assert table.bar_verdict(s(0.95, 5), s(0.91, 3)).startswith("yes")
    assert table.bar_verdict(s(0.95, 5), s(0.85, 3)).startswith("NO")
    assert table.bar_verdict(s(0.85, 5), s(0.95, 3)).startswith("NO")
    assert table.bar_verdict(s(0.95, 4), s(0.95, 4)).startswith("too few pairs")
    assert table.bar_verdict(None, None) == "no usable pair"
    assert table.bar_verdict(s(0.95, 5), None) == "no fast pair"
    assert table.no_worse_verdict(s(0.96, 5)).startswith("yes")
    assert table.no_worse_verdict(s(0.94, 5)).startswith("NO")


def test_table_markdown_names_machine_builds_steal_and_cycles(tmp_path):
    d = fixture_dir(tmp_path)
    manifest, parts = table.load(d)
    text = table.render(manifest, parts)
    for want in ("Test CPU", "kernel 6.0", "vswitch abc1234 (x86-64-v2)", "0123456789ab with uncommitted changes",
                 "huge-client 0.12 %", "took 43 min (estimated 45 min)", "| 2 MiB huge | client | 64 B | 1 |",
                 "252 [250..254]", "vswitch/DPDK >= 0.9, all and fast", "no worse: vswitch/baseline 1.10",
                 "Runs left out as noisy (other processes on the CPUs): 1", "OVS-DPDK sent every frame on one queue"):
        assert want in text, want
    # every markdown table's rows have as many cells as its header
    for block in text.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        assert len({ln.count("|") for ln in rows}) <= 1, block


def test_table_block_replaces_only_what_lies_between_the_markers(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text(f"# P\n\nbefore\n{table.BEGIN}\nold\n{table.END}\nafter\n")
    assert table.main([str(fixture_dir(tmp_path)), "--docs", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# P\n\nbefore\n" + table.BEGIN + "\nMeasured ")
    assert "old" not in text and text.endswith(table.END + "\nafter\n")
    again = table.replace_block(text, "new")
    assert table.replace_block(again, "new") == again
    with pytest.raises(SystemExit, match="no block"):
        table.replace_block("# P\n", "x")


def test_the_performance_document_has_the_generated_block():
    text = (table.REPO / "docs" / "performance.md").read_text()
    assert text.count(table.BEGIN) == 1 and text.count(table.END) == 1
    assert text.index(table.BEGIN) < text.index(table.END)


def test_newest_table_directory(tmp_path):
    with pytest.raises(SystemExit, match="no table results"):
        table.newest(tmp_path)
    fixture_dir(tmp_path)
    (tmp_path / "table-20980101-000000").mkdir()  # no manifest: not a result
    assert table.newest(tmp_path).name == "table-20990101-000000"

