"""The loopback benchmark's own logic: each variant is a config vswitch
accepts and turns on exactly the features it is named after, on both ports;
the summary compares systems pair by pair and gives the 5 % verdict from the
median of those per-pair ratios."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench import loopback, uplink
from vswitch.config import parse_config
from vswitch.policy import policy_of

OFF = {"vlan": ("all", 0, (), 0), "allowed_macs": (), "storm": (None, None, None)}
NO_POLICER = (None, None, None, None, "drop")


def port_policies(tmp_path: Path, variant: str) -> list[dict]:
    system = loopback.variant_system(variant, Path("/nonexistent/vswitchd"))
    sw = loopback.VSwitch(tmp_path, 1, 2, (tmp_path / "a.sock", tmp_path / "b.sock"), system.vswitchd,
                          (system.port_extra(0), system.port_extra(1)))
    cfg = parse_config(sw.config_text(), "bench.yaml", check_host=False)
    return [policy_of(cfg.ports[name]) for name in ("a", "b")]


def test_variant_off_is_the_plain_config(tmp_path):
    for pol in port_policies(tmp_path, "off"):
        assert pol == {**OFF, "ingress": NO_POLICER, "egress": NO_POLICER}


def test_variant_policing_polices_ingress_above_line_rate_only(tmp_path):
    for pol in port_policies(tmp_path, "policing"):
        assert pol["ingress"][0] == 100_000_000_000
        assert pol["egress"] == NO_POLICER
        assert {k: pol[k] for k in OFF} == OFF


def test_variant_vlan_puts_both_ports_in_access_vlan_10(tmp_path):
    for pol in port_policies(tmp_path, "vlan"):
        assert pol["vlan"] == ("access", 10, (), 0)
        assert pol["allowed_macs"] == () and pol["ingress"] == NO_POLICER


def test_variant_security_allows_exactly_the_generator_port_behind_each_port(tmp_path):
    a, b = port_policies(tmp_path, "security")
    assert a["allowed_macs"] == (loopback.GEN_MACS[0],)
    assert b["allowed_macs"] == (loopback.GEN_MACS[1],)
    # testpmd sends to 02:00:00:00:00:0N: a source MAC equal to one would be
    # learned and turn the flooded loop into same-port drops
    assert not any(m.startswith("02:00:00:00:00:") for m in loopback.GEN_MACS)


def test_variant_all_turns_every_port_feature_on(tmp_path):
    for i, pol in enumerate(port_policies(tmp_path, "all")):
        assert pol["vlan"] == ("access", 10, (), 0)
        assert pol["allowed_macs"] == (loopback.GEN_MACS[i],)
        assert pol["storm"] == (100_000_000,) * 3
        assert pol["ingress"][0] == pol["egress"][0] == 100_000_000_000


def test_unknown_variant_is_refused_with_the_known_ones():
    with pytest.raises(SystemExit, match="unknown vlna; known: off, policing, vlan, security, all"):
        loopback.parse_variants("off,vlna")


def run(kind: str, pair: int, mpps: float, flagged: str | None = None) -> loopback.RunResult:
    return loopback.RunResult(kind=kind, size=64, queues=1, pair=pair, median_pps=mpps * 1e6,
                              flagged=flagged)


def test_baseline_verdict_is_the_median_of_per_pair_ratios():
    # Pair 0 in the machine's fast state, pair 1 in its slow one. The medians
    # of the Mframes/s (6.0 and 5.7) are exactly 5 % apart, but within each
    # pair vswitch loses 2.5 % and 10 %: the per-pair median is 0.9375.
    runs = [run("dpdk", 0, 10), run("baseline", 0, 8), run("vswitch", 0, 7.8), run("vswitch+all", 0, 7.0),
            run("dpdk", 1, 5), run("baseline", 1, 4), run("vswitch", 1, 3.6), run("vswitch+all", 1, 3.6),
            run("baseline", 2, 9), run("vswitch", 2, 1, flagged="foreign CPU")]  # noisy: left out
    names = ["dpdk", "baseline", "vswitch", "vswitch+all"]
    (row,) = loopback.summarize(runs, loopback.Config.parse("64x1"), keep_noisy=False, systems=names)
    assert row["ratio_baseline"]["median"] == pytest.approx(0.9375)
    assert row["ratio_baseline"]["n"] == 2
    assert row["within_5pct_of_baseline"] is False
    assert row["ratio"]["median"] == pytest.approx((0.78 + 0.72) / 2)       # vswitch / DPDK, as before
    assert row["systems"]["vswitch+all"]["ratio_off"]["max"] == pytest.approx(1.0)
    assert row["systems"]["vswitch+all"]["ratio_baseline"]["min"] == pytest.approx(0.875)
    assert row["flagged"]["vswitch"] == 1
    (noisy,) = loopback.summarize(runs, loopback.Config.parse("64x1"), keep_noisy=True, systems=names)
    assert noisy["ratio_baseline"]["n"] == 3


def test_packed_configs_are_compared_with_split_ones_per_system_and_pair():
    configs = loopback.Config.parse("64x1, 64x1p")
    assert [(c.size, c.queues, c.ring, c.label) for c in configs] == [
        (64, 1, "split", "64B x1q"), (64, 1, "packed", "64B x1q packed")]

    def ring_run(kind: str, pair: int, mpps: float, ring: str) -> loopback.RunResult:
        r = run(kind, pair, mpps)
        r.ring = ring
        return r
    runs = [ring_run("dpdk", 0, 10, "split"), ring_run("vswitch", 0, 8, "split"),
            ring_run("dpdk", 0, 12, "packed"), ring_run("vswitch", 0, 6, "packed"),
            ring_run("dpdk", 1, 10, "split"), ring_run("vswitch", 1, 8, "split"),
            ring_run("dpdk", 1, 11, "packed"), ring_run("vswitch", 1, 10, "packed")]
    split, packed = loopback.summarize(runs, configs, keep_noisy=False, systems=["dpdk", "vswitch"])
    assert "ratio_split" not in split["systems"]["vswitch"]
    assert split["ratio"]["median"] == pytest.approx(0.8)
    assert packed["ring"] == "packed"
    assert packed["ratio"]["median"] == pytest.approx((0.5 + 10 / 11) / 2)
    assert packed["systems"]["vswitch"]["ratio_split"]["median"] == pytest.approx((0.75 + 1.25) / 2)
    assert packed["systems"]["dpdk"]["ratio_split"]["median"] == pytest.approx((1.2 + 1.1) / 2)


# --- the oneway topology -----------------------------------------------------


def oneway_config(tmp_path: Path, variant: str, topology: str = "oneway"):
    system = loopback.variant_system(variant, Path("/nonexistent/vswitchd"))
    sw = loopback.VSwitch(tmp_path, 1, 1, (tmp_path / "a.sock", tmp_path / "b.sock"), system.vswitchd,
                          loopback.port_extras(system, topology))
    return parse_config(sw.config_text(), "bench.yaml", check_host=False)


@pytest.mark.parametrize("variant", list(loopback.VARIANTS))
def test_oneway_switch_knows_the_generators_destination_on_port_b(tmp_path, variant):
    # the generator's frames go to GEN_MACS[1], which never sends: without the
    # static entry they would be unknown unicast (flooded), not a -> b forwarding
    cfg = oneway_config(tmp_path, variant)
    assert cfg.ports["b"].mac == loopback.GEN_MACS[1]
    assert cfg.ports["a"].mac is None
    a, b = (policy_of(cfg.ports[n]) for n in ("a", "b"))
    want = [policy_of(p) for p in oneway_config(tmp_path, variant, "loop").ports.values()]
    assert [a, b] == want  # the variant's features are the same as in the loop


def test_loop_topology_config_is_unchanged(tmp_path):
    cfg = oneway_config(tmp_path, "all", "loop")
    assert cfg.ports["a"].mac is None and cfg.ports["b"].mac is None


class FakeGen:
    """The generator's commands, recorded; ports listed out of vdev order."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names = names
        self.commands: list[str] = []

    def ports(self):
        from tests.harness.peers.testpmd import PortSummary
        return {p: PortSummary(p, "00:00:00:00:00:00", n, "x", "up") for p, n in self.names.items()}

    def set_portlist(self, ports):
        self.commands.append("set portlist " + ",".join(map(str, ports)))

    def cmd(self, text, timeout=10.0, *, check=False):
        self.commands.append(text)
        return ""


def test_oneway_generator_chains_null_to_a_and_b_to_null_addressed_to_port_b():
    gen = FakeGen({0: "net_virtio_user1", 1: "net_null0", 2: "net_virtio_user0"})
    assert loopback.setup_oneway_generator(gen) == (2, 0, 1)
    assert gen.commands == ["set portlist 1,2,0", f"set eth-peer 2 {loopback.GEN_MACS[1]}"]
    assert loopback.null_vdev(1518) == "net_null0,size=1518"


def test_oneway_generator_missing_port_is_an_error():
    with pytest.raises(loopback.TestPmdError, match="net_null0"):
        loopback.setup_oneway_generator(FakeGen({0: "net_virtio_user0", 1: "net_virtio_user1"}))


def fwd_stats(sent: int, dropped: int, got: int):
    from tests.harness.peers.testpmd import FwdPortStats, FwdStats
    return FwdStats(streams=(), total=None, ports={
        0: FwdPortStats(0, tx_packets=sent, tx_dropped=dropped),
        1: FwdPortStats(1, rx_packets=got)})


def test_oneway_run_where_the_switch_took_every_frame_is_flagged_generator_bound():
    r = run("vswitch", 0, 5.0)
    assert loopback.oneway_check(r, fwd_stats(1000, 0, 1000), 0, 1).startswith("generator-bound")
    r = run("vswitch", 0, 5.0)
    assert loopback.oneway_check(r, fwd_stats(1000, 3000, 990), 0, 1) is None
    assert r.gen_tx_dropped == 3000
    assert r.delivered_fraction == pytest.approx(0.99)


def test_pair_ratios_pair_runs_of_the_same_pair_only():
    # pair 1's baseline failed: vswitch's pair-1 run has nothing to compare with
    base = [run("baseline", 0, 8.0), run("baseline", 2, 4.0)]
    base.append(loopback.RunResult(kind="baseline", size=64, queues=1, pair=1, error="died"))
    vs = [run("vswitch", 0, 7.6), run("vswitch", 1, 9.0), run("vswitch", 2, 4.2)]
    runs = base + vs
    (row,) = loopback.summarize(runs, loopback.Config.parse("64x1"), keep_noisy=False,
                                systems=["baseline", "vswitch"])
    assert row["ratio_baseline"] == {"median": pytest.approx(1.0), "min": pytest.approx(0.95),
                                     "max": pytest.approx(1.05), "n": 2}
    assert row["within_5pct_of_baseline"] is True


def test_odd_pairs_run_the_systems_in_reverse_order():
    systems = [loopback.System("dpdk", "dpdk"), *(loopback.variant_system(v, Path("/x")) for v in ("off", "all"))]
    assert [s.name for s in loopback.pair_order(systems, 0)] == ["dpdk", "vswitch", "vswitch+all"]
    assert [s.name for s in loopback.pair_order(systems, 1)] == ["vswitch+all", "vswitch", "dpdk"]
    assert loopback.pair_order(systems, 2) == systems


def test_best_run_ratio_ignores_pairs_split_across_the_machines_speed_states():
    # every run is either ~9 (fast state) or ~3.6 (slow); vswitch is 2 % slower
    runs = [run("baseline", 0, 9.0), run("vswitch", 0, 3.6),
            run("baseline", 1, 3.6), run("vswitch", 1, 8.8),
            run("baseline", 2, 3.7), run("vswitch", 2, 3.6)]
    (row,) = loopback.summarize(runs, loopback.Config.parse("64x1"), keep_noisy=False,
                                systems=["baseline", "vswitch"])
    assert row["ratio_baseline"]["min"] == pytest.approx(0.4)
    assert row["ratio_baseline"]["max"] == pytest.approx(8.8 / 3.6)
    assert row["best_ratio_baseline"] == pytest.approx(8.8 / 9.0)


def test_resummarize_rewrites_the_summary_from_the_runs(tmp_path):
    import dataclasses
    import io
    import json
    runs = [run("baseline", 0, 9.0), run("vswitch", 0, 8.1)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"args": {"configs": "64x1", "keep_noisy": False},
                                "systems": ["baseline", "vswitch"], "summary": [],
                                "runs": [dataclasses.asdict(r) for r in runs]}))
    out = io.StringIO()
    loopback.resummarize(path, out)
    doc = json.loads(path.read_text())
    assert doc["summary"][0]["ratio_baseline"]["median"] == pytest.approx(0.9)
    assert doc["summary"][0]["within_5pct_of_baseline"] is False
    assert "MORE THAN 5 % BELOW; best run / best run 0.900" in out.getvalue()


# --- references, the fast state, socket roles, what a run records ------------------------


def test_fast_threshold_is_the_first_step_down_from_the_fastest_and_one_state_without_one():
    # two states: ~9.4 and ~13.6; the threshold is the step's geometric midpoint
    assert loopback.fast_threshold([13.6, 9.3, 13.7, 9.5, 13.5]) == pytest.approx((9.5 * 13.5) ** 0.5)
    # three states (3.9, 6.5, 10.7): the fast one is the top cluster, though
    # the step below 6.5 is the larger one
    assert loopback.fast_threshold([6.45, 3.86, 10.67, 10.72]) == pytest.approx((6.45 * 10.67) ** 0.5)
    # the fast state spread by +-10 %: no gap of 1.25x, one state, every run counts
    assert loopback.fast_threshold([9.0, 9.8, 10.5, 9.4]) == 0.0
    assert loopback.fast_threshold([7.0]) == 0.0
    assert loopback.fast_threshold([]) == 0.0


def test_every_system_is_compared_with_each_reference_and_in_the_fast_state():
    # dpdk's pair 1 and vswitch's pair 2 ran in the slow state
    runs = [run("dpdk", 0, 14), run("ovs-normal", 0, 5), run("ovs-p2p", 0, 6), run("vswitch", 0, 10),
            run("dpdk", 1, 9), run("ovs-normal", 1, 5.2), run("ovs-p2p", 1, 6.3), run("vswitch", 1, 10.5),
            run("dpdk", 2, 13), run("ovs-normal", 2, 4.8), run("ovs-p2p", 2, 5.7), run("vswitch", 2, 6)]
    names = ["dpdk", "ovs-normal", "ovs-p2p", "vswitch"]
    (row,) = loopback.summarize(runs, loopback.Config.parse("64x1"), keep_noisy=False, systems=names)
    vs = row["systems"]["vswitch"]
    assert set(vs["ratios"]) == {"dpdk", "ovs-normal", "ovs-p2p"}
    assert vs["ratios"]["ovs-normal"]["median"] == pytest.approx(10 / 5)   # of 2.0, 2.02, 1.25
    assert vs["ratios"]["dpdk"]["n"] == 3
    # fast pairs with DPDK: pair 0 only (pair 1: DPDK slow, pair 2: vswitch slow)
    assert vs["fast_ratios"]["dpdk"] == {"median": pytest.approx(10 / 14), "min": pytest.approx(10 / 14),
                                         "max": pytest.approx(10 / 14), "n": 1}
    # OVS showed one state: the fast pairs with it are vswitch's fast ones
    assert vs["fast_ratios"]["ovs-p2p"]["n"] == 2
    assert "ratios" not in row["systems"]["ovs-p2p"]     # a reference is not compared with the others
    assert row["systems"]["ovs-p2p"]["ratio_dpdk"]["n"] == 3


def test_steal_and_worker_cycles_appear_in_the_table_side_by_side():
    import io
    a = run("vswitch", 0, 10)
    a.cpu = {"steal_pct": 1.5}
    a.worker = {"cycles_per_frame": 250.0}
    b = run("dpdk", 0, 12)
    b.cpu = {"steal_pct": 0.5}
    summary = loopback.summarize([a, b], loopback.Config.parse("64x1"), keep_noisy=False,
                                 systems=["dpdk", "vswitch"])
    assert summary[0]["systems"]["vswitch"]["cycles_per_frame"]["median"] == 250.0
    out = io.StringIO()
    loopback.print_table(summary, out)
    header, dpdk_row, vs_row = out.getvalue().splitlines()[:3]
    assert header.index("steal %") < header.index("worker cycles/frame")
    assert "1.5" in vs_row and "250" in vs_row and "0.5" in dpdk_row


def test_worker_figures_are_busy_time_times_the_tsc_rate_over_frames(monkeypatch):
    monkeypatch.setattr(loopback, "tsc_hz", lambda: 2.6e9)
    w = loopback.worker_figures({"busy_ns": 1e9, "frames": 0, "t": 10.0},
                                {"busy_ns": 9e9, "frames": 80e6, "t": 18.0})
    assert w["busy_fraction"] == pytest.approx(1.0)
    assert w["cycles_per_frame"] == pytest.approx(8 * 2.6e9 / 80e6)


def test_steal_percent_is_steal_over_all_cpu_time():
    before = {"steal": 1.0, "total": 100.0}
    after = {"steal": 3.0, "total": 300.0}
    assert loopback.steal_percent(before, after) == pytest.approx(1.0)
    assert loopback.steal_percent(after, after) is None


def test_client_role_makes_vswitchs_ports_connect(tmp_path):
    sw = loopback.VSwitch(tmp_path, 1, 1, (tmp_path / "a.sock", tmp_path / "b.sock"), Path("/x"), client=True)
    cfg = parse_config(sw.config_text(), "bench.yaml", check_host=False)
    assert [cfg.ports[n].mode for n in ("a", "b")] == ["client", "client"]
    assert str(cfg.ports["a"].socket) == str(tmp_path / "a.sock")


def test_ovs_flow_setups_and_systems():
    assert loopback.OVS_FLOWS["normal"] == []        # the bridge's default flow: NORMAL
    assert loopback.OVS_FLOWS["p2p"] == ["in_port=1,actions=output:2", "in_port=2,actions=output:1"]
    assert set(loopback.REFERENCES) == {"dpdk", "ovs-normal", "ovs-p2p"}


def test_ovs_needs_the_loop_and_runs_beside_a_4k_generator(monkeypatch):
    """OVS-DPDK has huge pages of its own with --memory 4k (the generator
    stays on 4 KiB pages), so both memory modes have OVS in them."""
    monkeypatch.setattr(loopback, "ovs_available", lambda: True)
    assert loopback.parse_ovs("normal,p2p", "4k", "loop") == ["normal", "p2p"]
    with pytest.raises(SystemExit, match="--memory"):
        loopback.parse_ovs("", "1g", "loop")
    with pytest.raises(SystemExit, match="--topology loop"):
        loopback.parse_ovs("p2p", "huge", "oneway")
    with pytest.raises(SystemExit, match="from normal,p2p"):
        loopback.parse_ovs("learning", "huge", "loop")
    assert loopback.parse_ovs("", "4k", "loop") == []


# --- the uplink benchmark ------------------------------------------------------------------

@pytest.mark.parametrize("kind,tap_io", [("vswitch", "io_uring"), ("vswitch-write", "write")])
def test_uplink_systems_are_configs_that_differ_only_in_tap_io(tmp_path: Path, kind: str, tap_io: str) -> None:
    ports, extra = uplink.switch_config(kind, str(tmp_path / "gen.sock"), "vsb1")
    cfg = parse_config(yaml.safe_dump({"runtime_dir": str(tmp_path), "ports": ports, **extra}),
                       "bench.yaml", check_host=False)
    assert cfg.datapath.tap_io == tap_io and cfg.datapath.workers == 1
    assert [p.type for p in cfg.ports.values()] == ["vhost-user", "tap"]


def test_uplink_summary_ratios_are_per_pair() -> None:
    runs = {"dpdk": [1.0, 2.0, 4.0], "vswitch": [1.5, 2.0, 2.0], "vswitch-write": [1.0, 1.0, 4.0]}
    s = uplink.summarize(runs)
    assert s["vswitch/dpdk"] == {"median": 1.0, "min": 0.5, "max": 1.5}
    assert s["vswitch-write/dpdk"] == {"median": 1.0, "min": 0.5, "max": 1.0}
    assert s["vswitch/vswitch-write"] == {"median": 1.5, "min": 0.5, "max": 2.0}
    assert s["dpdk"]["median"] == 2.0
    assert uplink.pair_order(["a", "b", "c"], 1) == ["c", "b", "a"]


def test_worker_figures_give_frames_per_round_and_the_switchs_drops(monkeypatch):
    monkeypatch.setattr(loopback, "tsc_hz", lambda: 2.6e9)
    w = loopback.worker_figures({"busy_ns": 0, "frames": 0, "rounds": 0, "t": 0.0, "drops": {}},
                                {"busy_ns": 1e9, "frames": 18e6, "rounds": 1e6, "t": 1.0,
                                 "drops": {"no_rx_buffer": 7}})
    assert w["frames_per_round"] == pytest.approx(18.0)
    assert w["drops_since_start"] == {"no_rx_buffer": 7}
    # an older vswitchd without the counters: neither figure, no error
    w = loopback.worker_figures({"busy_ns": 0, "frames": 0, "t": 0.0},
                                {"busy_ns": 1e9, "frames": 18e6, "t": 1.0})
    assert "frames_per_round" not in w and "drops_since_start" not in w


PERF_REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 19K of event 'cpu-clock'
#
# Overhead  Command          Symbol
# ........  ...............  .......................................................
#
    74.38%  vswitchd         [.] __pyx_f_7vswitch_9_datapath_rx_enqueue
    15.22%  vswitchd         [.] __pyx_pw_7vswitch_9_datapath_8Datapath_7_run_worker
     6.03%  rte-worker-1     [.] 0x0000000000012f1d


#
# (Tip: use --percent-limit)
#
"""


def test_perf_top_reads_percent_command_and_symbol_hottest_first():
    top = loopback.perf_top(PERF_REPORT)
    assert top == [[74.38, "vswitchd", "[.] __pyx_f_7vswitch_9_datapath_rx_enqueue"],
                   [15.22, "vswitchd", "[.] __pyx_pw_7vswitch_9_datapath_8Datapath_7_run_worker"],
                   [6.03, "rte-worker-1", "[.] 0x0000000000012f1d"]]
    assert loopback.perf_top(PERF_REPORT, n=1) == top[:1]
    assert loopback.perf_top("") == []
