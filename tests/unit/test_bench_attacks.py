"""The attack benchmark's own logic (bench/attacks.py), without a daemon: the
switch's ports keep the healthy pairs and the attackers in VLANs of their
own, and the figures (steal, CPU shares, percentiles, the table) are
computed as the output says."""

from __future__ import annotations


import pytest
import yaml

from bench import attacks, loopback
from vswitch.config import parse_config
from vswitch.policy import policy_of



def test_switch_ports_are_a_config_vswitch_accepts_with_each_group_in_its_own_vlan(tmp_path):
    doc = {"runtime_dir": str(tmp_path), "ports": attacks.switch_ports(), "datapath": {"workers": 1},
           "metrics": {"enabled": False}}
    cfg = parse_config(yaml.safe_dump(doc, sort_keys=False), "attacks.yaml", check_host=False)
    vid = {name: policy_of(port)["vlan"] for name, port in cfg.ports.items()}
    assert vid["a"] == vid["b"] == ("access", attacks.THROUGHPUT_VLAN, (), 0)
    assert vid["h1"] == vid["h2"] == ("access", attacks.LATENCY_VLAN, (), 0)
    attack_ports = [n for names in attacks.ATTACK_PORTS.values() for n in names]
    assert set(cfg.ports) == {"a", "b", "h1", "h2", *attack_ports}
    assert len(attack_ports) == len(set(attack_ports))          # no port shared by two attacks
    for name in attack_ports:
        assert vid[name] == ("access", attacks.ATTACK_VLAN, (), 0), name
    assert len({attacks.THROUGHPUT_VLAN, attacks.LATENCY_VLAN, attacks.ATTACK_VLAN}) == 3
    # the generator's destination is known (a -> b unicast, as in loopback's oneway)
    assert cfg.ports["b"].mac == loopback.GEN_MACS[1]
    # the racing writer's port security allows exactly the MAC the racer flips away from
    assert policy_of(cfg.ports["att"])["allowed_macs"] == (attacks.race.A.hex(":"),)
    assert set(attacks.ATTACK_PORTS) == set(attacks.ATTACKS)


STAT0 = """cpu  100 0 50 800 10 0 0 40 0 0
cpu0 60 0 30 390 5 0 0 15 0 0
cpu1 40 0 20 410 5 0 0 25 0 0
intr 12345
"""
STAT1 = """cpu  250 0 100 1350 10 0 0 90 20 0
cpu0 160 0 60 560 5 0 0 15 20 0
cpu1 90 0 40 790 5 0 0 75 0 0
"""


def test_steal_is_the_share_of_all_cpu_time_between_two_readings():
    a, b = attacks.parse_proc_stat(STAT0), attacks.parse_proc_stat(STAT1)
    assert set(a) == {"cpu", "cpu0", "cpu1"}
    # total +800 jiffies (guest is inside user, not added again), steal +50
    assert attacks.steal_percent(a, b) == pytest.approx(100 * 50 / 800)
    assert attacks.steal_percent(a, b, "cpu0") == 0.0
    assert attacks.steal_percent(a, a) is None
    assert attacks.steal_percent(a, b, "cpu7") is None


def test_busy_seconds_leave_out_idle_iowait_and_steal():
    a, b = attacks.parse_proc_stat(STAT0), attacks.parse_proc_stat(STAT1)
    assert attacks.busy_seconds(a, b, [0], 100) == pytest.approx((100 + 30) / 100)
    assert attacks.busy_seconds(a, b, [0, 1], 100) == pytest.approx((130 + 70) / 100)


def test_cpu_shares_give_the_rest_to_others_never_below_zero():
    assert attacks.cpu_shares(2.0, 3.0, 1.0, 1.5) == {"switch": 0.5, "generator": 0.75, "others": 0.25}
    assert attacks.cpu_shares(1.0, 1.0, 0.7, 0.5)["others"] == 0.0     # clock ticks vs /proc/PID/stat
    assert attacks.cpu_shares(0.0, 1.0, 1.0, 1.0)["switch"] == 0.0


def test_latency_summary_percentiles_in_milliseconds():
    s = attacks.latency_summary([i / 1000 for i in range(1, 1001)])      # 1..1000 ms
    assert s["n"] == 1000
    assert s["p50_ms"] == pytest.approx(500.5)
    assert s["p99_ms"] == pytest.approx(990.99)
    assert s["max_ms"] == pytest.approx(1000.0)
    few = attacks.latency_summary([0.001, 0.003, 0.002])
    assert few["p50_ms"] == pytest.approx(2.0) and few["p99_ms"] == pytest.approx(3.0)   # too few: the worst
    assert attacks.latency_summary([]) == {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}


def test_cpu_layout_says_when_the_attacker_shares_a_cpu():
    two = attacks.cpu_layout(2, gen_cpu=0, sut_cpu=1)
    assert two["attacker"] == 0 and two["attacker_shares_cpu"] is True
    assert "share CPU 0" in two["note"] and "2 CPUs" in two["note"]
    four = attacks.cpu_layout(4, gen_cpu=0, sut_cpu=1)
    assert four["attacker"] == 2 and four["attacker_shares_cpu"] is False
    assert four["switch"] == 1 and four["latency_pair"] == 0


def test_counters_delta_and_evidence():
    before = {"taken": 100, "delivered": 5, "drops": {"bad_offload": 10}, "notify_merged": 0, "alerts": set()}
    after = {"taken": 1100, "delivered": 5, "drops": {"bad_offload": 510, "rx_no_buffers": 7, "x": 0},
             "notify_merged": 40, "alerts": {"bad:notify0"}}
    d = attacks.counters_delta(before, after)
    assert d == {"taken": 1000, "delivered": 0, "drops": {"bad_offload": 500, "rx_no_buffers": 7},
                 "notify_merged": 40, "alerts": ["bad:notify0"]}
    assert attacks.evidence_text(d) == "bad_offload 500; rx_no_buffers 7; notify_merged 40; alerts bad:notify0"
    assert attacks.evidence_text(None) == "-"


def phase(label, attack, mpps, p99, paused=None, ratio=None, **kw):
    cond = "none" if attack == "none" else "attack"
    return {"phase": label, "attack": attack,
            "throughput": {"mpps": mpps, "paused_mpps": paused, "ratio": ratio, "generator_bound": False,
                           "cpu": {cond: {"switch": 1.0, "generator": 0.5, "others": 0.5},
                                   "paused": {"switch": 1.0, "generator": 1.0, "others": 0.0}}},
            "latency": {"n": 1000, "p50_ms": 0.1, "p99_ms": p99, "max_ms": 2.0, "lost": 0},
            "steal_percent": 0.25, **kw}


def test_table_gives_running_paused_and_their_ratio_and_p99_against_the_first_baseline():
    rows = [phase("none", "none", 8.0, 0.2),
            phase("tiny_gso", "tiny_gso", 6.0, 0.3, paused=8.5, ratio=0.7123, attack_fps=1234.4,
                  switch_counters={"drops": {"bad_offload": 9}, "alerts": []}),
            phase("racing_writer", "racing_writer", None, None, error="RuntimeError: boom\nmore"),
            phase("none-after", "none", 8.8, 0.2)]
    lines = attacks.format_table(rows).splitlines()
    assert lines[0].split()[:4] == ["phase", "Mpps", "paused", "ratio"]
    assert lines[1].split()[:2] == ["none", "8.00"] and "(+" not in lines[1]
    assert lines[2].split()[:5] == ["tiny_gso", "6.00", "8.50", "0.712", "1.00/0.50/0.50"]
    assert "0.300 (+50%)" in lines[2] and "1234" in lines[2] and "bad_offload 9" in lines[2]
    assert "ERROR RuntimeError: boom" in lines[3] and "more" not in lines[3]
    assert lines[4].split()[:3] == ["none-after", "8.80", "1.00/0.50/0.50"] and "0.2%" in lines[4]


def test_windows_alternate_abba_and_the_ratio_is_the_median_of_adjacent_pairs():
    assert attacks.window_plan(3, paired=False) == ["none"] * 3
    plan = attacks.window_plan(3, paired=True)
    assert plan == ["attack", "paused", "paused", "attack", "attack", "paused"]
    # the machine changes state (x2) between the pairs: the pair ratios stay 0.9
    s = attacks.summarize_windows(plan, [3.6, 4.0, 9.0, 8.1, 4.5, 5.0])
    assert s["pair_ratios"] == [0.9, 0.9, 0.9]
    assert s["ratio"] == pytest.approx(0.9)
    assert s["mpps"] == 4.5 and s["paused_mpps"] == 5.0          # medians per condition
    assert attacks.summarize_windows(["none"] * 3, [1.0, 3.0, 2.0]) == {"mpps": 2.0}
    # a paused window that moved nothing gives no ratio
    assert attacks.summarize_windows(["attack", "paused"], [1.0, 0.0])["ratio"] is None


def test_phases_start_and_end_without_attack_and_unknown_attacks_are_refused():
    assert attacks.phase_names(["tiny_gso"]) == [("none", "none"), ("tiny_gso", "tiny_gso"),
                                                  ("none-after", "none")]
    assert attacks.parse_attacks("tiny_gso, racing_writer,tiny_gso") == ["tiny_gso", "racing_writer"]
    with pytest.raises(SystemExit, match="unknown tiny; known: blocked_call"):
        attacks.parse_attacks("tiny")
    assert attacks.relative(6.0, 8.0) == pytest.approx(-0.25)
    assert attacks.per_cpu(6.0, 0.75) == 8.0 and attacks.per_cpu(6.0, 0.0) is None
    assert attacks.relative(None, 8.0) is None and attacks.relative(1.0, 0.0) is None
