"""The FDB table itself (cython_ext/fdb.pxi), driven in-process through the
Datapath's test hooks: learning and lookups as a worker does them, aging
with an explicit clock, caps, flushes, static entries, slot reuse.

No worker threads run; frames through a real daemon are in tests/test_fdb.py.
"""

from __future__ import annotations

import pytest

from vswitch._datapath import Datapath, DatapathError

X = "02:aa:00:00:00:01"


def mac(i: int, prefix: int = 0x02) -> str:
    return f"{prefix:02x}:00:{(i >> 24) & 0xff:02x}:{(i >> 16) & 0xff:02x}:{(i >> 8) & 0xff:02x}:{i & 0xff:02x}"


@pytest.fixture
def dp():
    d = Datapath(1, "poll")
    d.enable_test_hooks()             # debug_fdb_* (testing.pxi)
    d.fdb_set_default_max(0)
    yield d


def ports(dp, n):
    return [dp.port_add(1) for _ in range(n)]


def learned(dp, p):
    return dp.port_fdb_info(p)["learned"]


def test_same_mac_in_two_vlans_maps_to_two_ports_independently(dp):
    a, b = ports(dp, 2)
    dp.debug_fdb_learn(10, X, a)
    dp.debug_fdb_learn(20, X, b)
    assert (dp.debug_fdb_lookup(10, X), dp.debug_fdb_lookup(20, X)) == (a, b)
    assert dp.debug_fdb_lookup(0, X) is None and dp.debug_fdb_lookup(30, X) is None
    # a move in one VLAN leaves the other alone
    dp.debug_fdb_learn(10, X, b)
    assert (dp.debug_fdb_lookup(10, X), dp.debug_fdb_lookup(20, X)) == (b, b)
    assert (learned(dp, a), learned(dp, b)) == (0, 2)
    assert sorted((e["vlan"], e["port"]) for e in dp.fdb_entries()) == [(10, b), (20, b)]
    assert [e["vlan"] for e in dp.fdb_entries(vlan=20)] == [20]


def test_a_learned_mac_moves_and_counts_follow(dp):
    a, b = ports(dp, 2)
    dp.debug_fdb_learn(0, X, a)
    assert (dp.debug_fdb_lookup(0, X), learned(dp, a), learned(dp, b)) == (a, 1, 0)
    dp.debug_fdb_learn(0, X, b)
    assert (dp.debug_fdb_lookup(0, X), learned(dp, a), learned(dp, b)) == (b, 0, 1)
    assert len(dp.fdb_entries()) == 1


def test_static_entries_do_not_move_and_are_not_counted(dp):
    a, b = ports(dp, 2)
    dp.fdb_set_static(X, a, vlan=5)
    dp.debug_fdb_learn(5, X, b)
    assert dp.debug_fdb_lookup(5, X) == a
    assert dp.fdb_stats()["static_moves"] == 1
    assert (learned(dp, a), learned(dp, b)) == (0, 0)
    # a learned entry pinned later stops counting on its port
    dp.debug_fdb_learn(0, X, b)
    assert learned(dp, b) == 1
    dp.fdb_set_static(X, a, vlan=0)
    assert (dp.debug_fdb_lookup(0, X), learned(dp, b)) == (a, 0)
    # unpinned: learned again where it is seen
    dp.fdb_set_static(X, -1, vlan=0)
    assert dp.debug_fdb_lookup(0, X) is None
    dp.debug_fdb_learn(0, X, b)
    assert (dp.debug_fdb_lookup(0, X), learned(dp, b)) == (b, 1)


def test_per_port_cap_refuses_and_counts_and_moves_respect_it(dp):
    a, b = ports(dp, 2)
    dp.port_set_fdb_max(a, 100)
    for i in range(2000):
        dp.debug_fdb_learn(0, mac(i), a)
    assert dp.port_fdb_info(a) == {"learned": 100, "max": 100, "limit_refused": 1900}
    assert dp.debug_fdb_lookup(0, mac(99)) == a and dp.debug_fdb_lookup(0, mac(100)) is None
    # b's MAC seen on a (at its cap): not moved to a, and no longer pointing at b
    dp.debug_fdb_learn(0, X, b)
    dp.debug_fdb_learn(0, X, a)
    assert dp.debug_fdb_lookup(0, X) is None
    assert (learned(dp, a), learned(dp, b), dp.port_fdb_info(a)["limit_refused"]) == (100, 0, 1901)
    # the default cap applies to ports without their own; None returns to it
    dp.fdb_set_default_max(10)
    assert dp.port_fdb_info(b)["max"] == 10 and dp.port_fdb_info(a)["max"] == 100
    dp.port_set_fdb_max(a, None)
    assert dp.port_fdb_info(a)["max"] == 10
    # a flush makes room again
    assert dp.fdb_flush(port=a) == 100
    dp.debug_fdb_learn(0, mac(5000), a)
    assert learned(dp, a) == 1


def test_flush_by_port_and_vlan_keeps_static_entries(dp):
    a, b = ports(dp, 2)
    for i in range(10):
        dp.debug_fdb_learn(i % 2, mac(i), a)
        dp.debug_fdb_learn(i % 2, mac(100 + i), b)
    dp.fdb_set_static(X, a, vlan=0)
    assert dp.fdb_flush(port=a, vlan=1) == 5
    assert dp.fdb_flush(vlan=1) == 5                       # b's VLAN 1 entries
    assert dp.fdb_flush(port=b) == 5
    assert (learned(dp, a), learned(dp, b)) == (5, 0)
    assert dp.fdb_flush() == 5
    assert [(e["mac"], e["static"]) for e in dp.fdb_entries()] == [(X, True)]
    assert dp.fdb_flush() == 0
    with pytest.raises(DatapathError):
        dp.fdb_flush(vlan=4096)
    with pytest.raises(DatapathError):
        dp.fdb_flush(port=200)


def test_aging_forgets_learned_entries_only_after_the_aging_time(dp):
    # The clock moves at sweeps only: a stamp may be a sweep period older
    # than its frame, so an entry goes once its stamp is more than aging + 1 old.
    a, b = ports(dp, 2)
    dp.fdb_set_aging(2)
    dp.fdb_age(now=100)
    dp.fdb_set_static(X, b)
    dp.debug_fdb_learn(0, mac(1), a)
    dp.debug_fdb_learn(0, mac(2), a)
    assert dp.fdb_age(now=101) == 0
    dp.debug_fdb_learn(0, mac(2), a)            # refreshed at 101
    assert dp.fdb_age(now=102) == 0
    assert dp.fdb_age(now=103) == 0             # 3 = aging + 1: may have been seen 2 s ago
    assert {e["mac"]: e["age_s"] for e in dp.fdb_entries()} == {mac(1): 3, mac(2): 2, X: 0}
    assert dp.fdb_age(now=104) == 1             # mac(1): 4 s
    assert dp.debug_fdb_lookup(0, mac(1)) is None and dp.debug_fdb_lookup(0, mac(2)) == a
    assert dp.fdb_age(now=105) == 1
    assert dp.fdb_age(now=1000) == 0            # static entries never age
    assert dp.debug_fdb_lookup(0, X) == b
    st = dp.fdb_stats()
    assert (st["aged"], st["learned"], st["static"], learned(dp, a)) == (2, 0, 1, 0)
    # 0: never
    dp.fdb_set_aging(0)
    dp.debug_fdb_learn(0, mac(3), a)
    assert dp.fdb_age(now=1_000_000) == 0 and dp.debug_fdb_lookup(0, mac(3)) == a


def test_aging_is_right_across_the_wrap_of_the_clock(dp):
    (a,) = ports(dp, 1)
    dp.fdb_set_aging(5)
    dp.fdb_age(now=0xFFFFFFFE)
    dp.debug_fdb_learn(0, X, a)
    assert dp.fdb_age(now=4) == 0               # 6 s later, across the wrap
    assert dp.fdb_age(now=5) == 1


def test_forgotten_slots_are_reused(dp):
    # 40 rounds of 3000 new MACs = 120000 > the 65536 slots: without reuse
    # of aged slots the table would fill up and learning would fail.
    (a,) = ports(dp, 1)
    dp.fdb_set_aging(1)
    now = 10
    for r in range(40):
        dp.fdb_age(now=now)
        for i in range(3000):
            dp.debug_fdb_learn(0, mac(r * 3000 + i), a)
        assert learned(dp, a) == 3000
        now += 5
        assert dp.fdb_age(now=now) == 3000
    assert dp.fdb_stats()["full"] == 0
    assert learned(dp, a) == 0 and dp.fdb_entries() == []


def test_removing_a_port_forgets_its_entries_static_ones_too(dp):
    a, b = ports(dp, 2)
    dp.debug_fdb_learn(0, mac(1), a)
    dp.fdb_set_static(X, a, vlan=3)
    dp.debug_fdb_learn(0, mac(2), b)
    dp.port_reset(a)                            # a disconnect: learned ones go
    assert {e["mac"] for e in dp.fdb_entries()} == {X, mac(2)}
    dp.debug_fdb_learn(0, mac(1), a)
    dp.port_remove(a)                           # the slot may be reused: pinned ones go too
    assert {e["mac"] for e in dp.fdb_entries()} == {mac(2)}
    c = dp.port_add(1)
    assert c == a and learned(dp, c) == 0 and dp.debug_fdb_lookup(3, X) is None


def test_a_full_chain_is_counted_and_learning_goes_on(dp):
    (a,) = ports(dp, 1)
    n = 70000                                   # more than the table holds
    for i in range(n):
        dp.debug_fdb_learn(0, mac(i), a)
    st = dp.fdb_stats()
    assert st["full"] > 0 and st["learned"] == learned(dp, a) == n - st["full"]
    # what is in the table is found; what did not fit floods
    table = {e["mac"] for e in dp.fdb_entries()}
    assert len(table) == st["learned"]
    for i in range(0, n, 97):
        assert dp.debug_fdb_lookup(0, mac(i)) == (a if mac(i) in table else None)


def test_bad_arguments_are_refused(dp):
    (a,) = ports(dp, 1)
    with pytest.raises(DatapathError):
        dp.fdb_set_static(X, a, vlan=5000)
    with pytest.raises(DatapathError):
        dp.fdb_set_static(X, 99)
    with pytest.raises(DatapathError):
        dp.port_set_fdb_max(a, -1)
    with pytest.raises(DatapathError):
        dp.fdb_set_aging(-1)


def test_dead_keys_are_cleared_once_their_macs_are_gone(dp):
    # Without clearing, every slot a MAC ever used would keep its key and
    # lookups of unknown MACs would walk whole probe chains of dead keys.
    (a,) = ports(dp, 1)
    dp.fdb_set_aging(1)
    dp.fdb_age(now=1)
    dp.debug_fdb_learn_many(0, 0x020000000000, 20000, a)
    dp.fdb_set_static(X, a)
    assert dp.fdb_stats()["learned"] == 20000
    assert dp.fdb_age(now=10) == 20000
    st = dp.fdb_stats()
    # only dead slots right in front of the one live entry keep their keys
    # (its chain may run through them)
    assert (st["learned"], st["static"]) == (0, 1) and st["dead_keys"] <= 32
    assert dp.debug_fdb_lookup(0, X) == a
    dp.fdb_set_static(X, -1)
    dp.fdb_age(now=11)
    assert dp.fdb_stats()["dead_keys"] == 0
    # half forgotten: what is left is still found
    dp.debug_fdb_learn_many(0, 0x020000000000, 1000, a)
    dp.fdb_flush(vlan=0)
    dp.debug_fdb_learn_many(0, 0x020000100000, 1000, a)
    dp.fdb_age(now=12)
    assert all(dp.debug_fdb_lookup(0, mac(0x100000 + i)) == a for i in range(1000))


def test_workers_learning_in_parallel_keep_every_count_right(dp):
    # Four threads without the GIL learn overlapping MAC sets on four ports
    # (so MACs keep moving) under caps, while the aging sweep and flushes
    # run; afterwards each port's count is exactly its live entries.
    import threading
    ps = ports(dp, 4)
    for p in ps[:2]:
        dp.port_set_fdb_max(p, 700)
    dp.fdb_set_aging(1)
    stop = threading.Event()

    def learner(k: int) -> None:
        # ports k and k+1 share half their MACs with the neighbour
        dp.debug_fdb_learn_many(0, 0x020000000000 + k * 500, 1000, ps[k], rounds=300)

    def control() -> None:
        now = 1
        while not stop.is_set():
            now += 1
            dp.fdb_age(now=now)
            if now % 7 == 0:
                dp.fdb_flush(port=ps[now % 4])

    threads = [threading.Thread(target=learner, args=(k,)) for k in range(4)]
    sweeper = threading.Thread(target=control)
    sweeper.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sweeper.join()
    live: dict[int, int] = {}
    for e in dp.fdb_entries():
        live[e["port"]] = live.get(e["port"], 0) + 1
    for p in ps:
        assert dp.port_fdb_info(p)["learned"] == live.get(p, 0), (p, dp.port_fdb_info(p), live)
    for p in ps[:2]:
        assert dp.port_fdb_info(p)["learned"] <= 700
    # and the table settles: one more round per port from a quiet start
    dp.fdb_flush()
    assert all(dp.port_fdb_info(p)["learned"] == 0 for p in ps) and dp.fdb_entries() == []
    for k, p in enumerate(ps[2:], start=2):
        dp.debug_fdb_learn_many(0, 0x020100000000 + k * 10000, 1000, p)
        assert dp.port_fdb_info(p)["learned"] == 1000


# --- vswitch/fdb.py: the config's entries put into the datapath ----------------------------

class _Port:
    def __init__(self, dp, name, cfg):
        self.name, self.config, self.dp = name, cfg, dp
        self.slot = dp.port_add(1)


def test_static_entries_follow_their_port_to_a_new_slot_and_leave_with_the_config(dp):
    from vswitch.config import TapPortConfig, VlanConfig, parse_config
    from vswitch.fdb import FdbControl, port_vlan
    cfg = parse_config("""
fdb:
  aging_time: 7
  max_entries_per_port: 50
  static:
    - {mac: "02:00:00:00:00:aa", port: a, vlan: 3}
    - {mac: "02:00:00:00:00:bb", port: b}
ports:
  a: {type: vhost-user, mac: "02:00:00:00:00:01", fdb_max_entries: 5}
  b: {type: tap}
""", check_host=False)
    dp.fdb_set_default_max(1024)
    ports = {name: _Port(dp, name, pc) for name, pc in cfg.ports.items()}
    ctl = FdbControl(dp)
    ctl.configure(cfg, ports)
    a, b = ports["a"].slot, ports["b"].slot
    assert {(e["mac"], e["vlan"]): e["port"] for e in dp.fdb_entries()} == {
        ("02:00:00:00:00:aa", 3): a, ("02:00:00:00:00:bb", 0): b, ("02:00:00:00:00:01", 0): a}
    assert dp.port_fdb_info(a)["max"] == 5 and dp.port_fdb_info(b)["max"] == 50
    assert dp.fdb_stats()["aging_time"] == 7
    # a re-created port (new queue count at reconnection): removing the slot
    # unpinned its entries; the port's slot change pins them on the new one
    dp.port_remove(a)
    assert dp.port_add(1) == a                 # another port takes the freed slot
    ports["a"].slot = dp.port_add(2)
    writes = ctl.static_writes
    ctl.tick()                                 # the aging sweep pins nothing
    assert ctl.static_writes == writes
    assert ("02:00:00:00:00:01", 0) not in {(e["mac"], e["vlan"]) for e in dp.fdb_entries()}
    ctl.port_slot_changed(ports["a"])
    new_a = ports["a"].slot
    assert new_a != a
    assert {(e["mac"], e["vlan"]): e["port"] for e in dp.fdb_entries()} == {
        ("02:00:00:00:00:aa", 3): new_a, ("02:00:00:00:00:bb", 0): b, ("02:00:00:00:00:01", 0): new_a}
    assert dp.port_fdb_info(new_a)["max"] == 5
    assert ctl.static_writes == writes + 2     # a's two entries, nothing else rewritten
    ctl.port_slot_changed(ports["a"])          # told again: nothing to write
    assert ctl.static_writes == writes + 2
    # entries that leave the config are unpinned
    cfg2 = parse_config("ports: {a: {type: vhost-user}, b: {type: tap}}\n", check_host=False)
    for name in ports:
        ports[name].config = cfg2.ports[name]
    ctl.configure(cfg2, ports)
    assert dp.fdb_entries() == [] and dp.port_fdb_info(b)["max"] == 1024
    # the default VLAN of a port is its access VLAN, a trunk's native one, else 0
    def tap(vlan: VlanConfig | None) -> TapPortConfig:
        return TapPortConfig(name="t", ifname="t", queues=1, vlan=vlan)

    assert port_vlan(tap(None)) == 0
    assert port_vlan(tap(VlanConfig(mode="access", id=10))) == 10
    assert port_vlan(tap(VlanConfig(mode="trunk", native=7, allowed=(7,)))) == 7
    assert port_vlan(tap(VlanConfig(mode="trunk", allowed=(7,)))) == 0
