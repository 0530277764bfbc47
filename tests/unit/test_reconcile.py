"""Reload as a diff: which change is applied how (vswitch/reconcile.py)."""

from __future__ import annotations

import yaml

from vswitch.config import parse_config
from vswitch.reconcile import plan, port_change


def cfg(ports: dict, **top) -> object:
    return parse_config(yaml.safe_dump({"runtime_dir": "/tmp/vsw-reconcile", "ports": ports, **top}))


A = {"type": "vhost-user", "queues": 2}
TAP = {"type": "tap", "ifname": "vsw-up0"}


def test_equal_configs_touch_nothing():
    p = plan(cfg({"a": A, "up": TAP}), cfg({"a": A, "up": TAP}))
    assert p.empty and p.unchanged == ["a", "up"] and not p.errors


def test_added_removed_and_untouched_ports_by_name():
    p = plan(cfg({"a": A, "b": A}), cfg({"a": A, "c": A}))
    assert (p.added, p.removed, p.unchanged, p.changed) == (["c"], ["b"], ["a"], [])


def test_fields_a_guest_negotiated_wait_for_its_next_connection():
    for field, value in (("queues", 4), ("mrg_rxbuf", False), ("event_idx", False),
                         ("indirect_desc", False), ("in_order", False), ("offloads", False)):
        old, new = cfg({"a": A}), cfg({"a": {**A, field: value}})
        change = port_change("a", old.ports["a"], new.ports["a"])
        assert not change.restart and change.at_connect == (field,) and change.in_place == (), field


def test_socket_permissions_mac_and_mtu_apply_in_place():
    new = cfg({"a": {**A, "socket_mode": 0o666, "mac": "52:54:00:00:00:01", "mtu": 9000}})
    change = port_change("a", cfg({"a": A}).ports["a"], new.ports["a"])
    assert not change.restart and set(change.in_place) == {"socket_mode", "mac", "mtu"}


def test_identity_changes_restart_the_port_alone():
    for new_port in ({**A, "socket": "/tmp/vsw-reconcile/other.sock"}, {**A, "mode": "client",
                     "socket": "/tmp/vsw-reconcile/qemu.sock"}, TAP):
        p = plan(cfg({"a": A, "b": A}), cfg({"a": new_port, "b": A}))
        assert [c.name for c in p.changed] == ["a"] and p.changed[0].restart
        assert p.unchanged == ["b"]


def test_tap_mtu_in_place_but_queues_reopen_the_device():
    old = cfg({"up": TAP}).ports["up"]
    assert not port_change("up", old, cfg({"up": {**TAP, "mtu": 1400}}).ports["up"]).restart
    assert port_change("up", old, cfg({"up": {**TAP, "queues": 2}}).ports["up"]).restart


def test_runtime_dir_cannot_change_under_a_running_daemon():
    old = cfg({"a": A})
    new = parse_config(yaml.safe_dump({"runtime_dir": "/tmp/vsw-elsewhere", "ports": {"a": A}}))
    p = plan(old, new)
    assert p.errors and "runtime_dir" in p.errors[0] and not p.added and not p.changed


def test_workers_warn_mode_and_cpus_apply_metrics_and_control_noticed():
    old = cfg({"a": A})
    new = cfg({"a": A}, datapath={"workers": 2, "mode": "poll", "cpus": [0]},
              metrics={"listen": "127.0.0.1:9999"})
    p = plan(old, new)
    assert any("workers" in w for w in p.warnings)
    assert p.datapath_in_place == ("mode", "cpus") and p.metrics_changed and p.unchanged == ["a"]


def test_defaults_change_reaches_every_port_that_inherits_it():
    old = cfg({"a": A, "b": {"type": "vhost-user"}})
    new = cfg({"a": A, "b": {"type": "vhost-user"}}, defaults={"queues": 3})
    p = plan(old, new)
    assert [c.name for c in p.changed] == ["b"] and p.changed[0].at_connect == ("queues",)


# Forwarding policies (docs/tenants.md): every one of them, set, changed or removed,
# is applied to the running port; neither port type restarts or waits.
POLICIES = {
    "vlan": ({"mode": "access", "id": 10}, {"mode": "trunk", "allowed": [10, "20-30"], "native": 1}),
    "allowed_macs": (["52:54:00:00:00:aa"], ["52:54:00:00:00:aa", "52:54:00:00:00:bb"]),
    "storm_control": ({"broadcast": 1000}, {"broadcast": 1000, "unknown_unicast": 50}),
    "ingress_policing": ({"rate": "100Mbit"}, {"rate": "100Mbit", "pps": 20000}),
    "egress_policing": ({"rate": "1G", "burst": "1MiB"}, {"rate": "1G"}),
    "mirror": ({"to": "other"}, {"to": "other", "direction": "ingress"}),
}


def test_forwarding_policies_apply_in_place_on_both_port_types():
    other = {"type": "vhost-user"}
    for base in (A, TAP):
        for key, (first, second) in POLICIES.items():
            plain = cfg({"p": base, "other": other})
            one = cfg({"p": {**base, key: first}, "other": other})
            two = cfg({"p": {**base, key: second}, "other": other})
            for old, new in ((plain, one), (one, two), (two, plain)):
                p = plan(old, new)
                assert p.unchanged == ["other"] and [c.name for c in p.changed] == ["p"], key
                change = p.changed[0]
                assert change.fields == (key,), (key, change.fields)
                assert not change.restart and change.in_place == (key,) and change.at_connect == (), \
                    (base["type"], key)
                assert p.summary()["changed"]["p"]["in_place"] == [key]


def test_policy_change_together_with_a_negotiated_field_still_waits_only_for_that_field():
    old = cfg({"a": A})
    new = cfg({"a": {**A, "queues": 4, "vlan": {"mode": "access", "id": 5}}})
    change = port_change("a", old.ports["a"], new.ports["a"])
    assert not change.restart and change.in_place == ("vlan",) and change.at_connect == ("queues",)


def test_fdb_cap_applies_in_place_and_the_fdb_section_is_noticed():
    for port in (A, TAP):
        old, new = cfg({"a": port}), cfg({"a": {**port, "fdb_max_entries": 10}})
        change = port_change("a", old.ports["a"], new.ports["a"])
        assert not change.restart and change.in_place == ("fdb_max_entries",), port
    p = plan(cfg({"a": A}), cfg({"a": A}, fdb={"aging_time": 5}))
    assert p.fdb_changed and not p.empty and p.unchanged == ["a"] and p.summary()["fdb"]
    assert not plan(cfg({"a": A}), cfg({"a": A})).fdb_changed


def test_tap_io_change_is_a_warning_for_the_next_start():
    p = plan(cfg({"a": A}), cfg({"a": A}, datapath={"tap_io": "write"}))
    assert p.warnings == ["datapath.tap_io: io_uring -> write takes effect at the next start of the daemon"]
    assert p.datapath_in_place == () and p.unchanged == ["a"]


def test_allow_file_memory_applies_in_place_and_limits_are_noticed():
    old, new = cfg({"a": A}), cfg({"a": {**A, "allow_file_memory": True}})
    change = port_change("a", old.ports["a"], new.ports["a"])
    assert not change.restart and change.in_place == ("allow_file_memory",) and change.at_connect == ()
    p = plan(cfg({"a": A}), cfg({"a": A}, limits={"message_timeout": 2}))
    assert p.limits_changed and not p.empty and p.unchanged == ["a"] and p.summary()["limits"]
    assert not plan(cfg({"a": A}), cfg({"a": A})).limits_changed


# The field classes live with the port classes (vswitch/ports/); the planner asks the registry.

def test_every_port_class_puts_each_config_field_in_exactly_one_class():
    import dataclasses

    from vswitch.ports import PORT_CLASSES
    for config_class, port_class in PORT_CLASSES.items():
        fields = {f.name for f in dataclasses.fields(config_class)} - {"name"}
        sets = (port_class.IN_PLACE, port_class.AT_CONNECT, port_class.RESTART)
        assert fields <= set().union(*sets), (port_class.__name__, fields - set().union(*sets))
        assert all(not (x & y) for i, x in enumerate(sets) for y in sets[i + 1:]), port_class.__name__


class _Running:
    def __init__(self, config, pending=None):
        self.config, self.pending = config, pending


def test_a_change_is_planned_against_what_the_port_runs():
    one, two = cfg({"a": A}), cfg({"a": {**A, "queues": 4}})
    # a queue change an earlier reload left pending, file unchanged: planned again (force applies it)
    p = plan(two, two, running={"a": _Running(one.ports["a"], pending=two.ports["a"])})
    assert [c.at_connect for c in p.changed] == [("queues",)] and p.changed[0].old == one.ports["a"]
    # the file reverts it: a change without fields, which withdraws what is pending
    p = plan(two, one, running={"a": _Running(one.ports["a"], pending=two.ports["a"])})
    assert [(c.name, c.fields, c.restart) for c in p.changed] == [("a", (), False)]
    # nothing pending, nothing changed: untouched
    p = plan(one, one, running={"a": _Running(one.ports["a"])})
    assert p.unchanged == ["a"] and p.empty
