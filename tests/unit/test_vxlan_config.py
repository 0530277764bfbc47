"""The vxlan port type: configuration, schema, reload classification, sockaddrs."""

from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from vswitch.config import ConfigError, VxlanPortConfig, parse_config
from vswitch.reconcile import port_change
from vswitch.ports.vxlan import VxlanError, open_vxlan_socket, pack_sockaddr

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = Draft202012Validator(json.loads((ROOT / "config" / "vswitch.schema.json").read_text()))


def errors(text: str) -> list[str]:
    try:
        parse_config(textwrap.dedent(text), "c.yaml", check_host=False)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def schema_errors(text: str) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(textwrap.dedent(text)))]


def test_a_full_port_parses_with_defaults_and_normalised_addresses() -> None:
    text = """
        ports:
          vx0: {type: vxlan, local: "2001:DB8::1", remotes: ["2001:db8::2", "2001:db8:0::3"], vni: 16777215}
          vx1: {type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 1, udp_port: 8472, mtu: 1450}
        """
    assert schema_errors(text) == []
    cfg = parse_config(textwrap.dedent(text), check_host=False)
    assert cfg.ports["vx0"] == VxlanPortConfig(name="vx0", local="2001:db8::1",
                                               remotes=("2001:db8::2", "2001:db8::3"), vni=16777215)
    assert cfg.ports["vx0"].udp_port == 4789 and cfg.ports["vx0"].mtu is None
    assert cfg.ports["vx1"].to_dict() == {"type": "vxlan", "local": "192.0.2.1", "remotes": ["192.0.2.2"],
                                          "vni": 1, "udp_port": 8472, "mtu": 1450}


@pytest.mark.parametrize("port, message", [
    ("{type: vxlan, remotes: [192.0.2.2], vni: 5}", "missing required key 'local'"),
    ("{type: vxlan, local: 192.0.2.1, vni: 5}", "missing required key 'remotes'"),
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2]}", "missing required key 'vni'"),
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 0}", "vx.vni: must be 1..16777215 (got 0)"),
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 16777216}", "must be 1..16777215"),
    ("{type: vxlan, local: 192.0.2.1, remotes: [], vni: 5}", "vx.remotes: must list 1..64 remote endpoints (got 0)"),
    ("{type: vxlan, local: 192.0.2.1, remotes: 192.0.2.2, vni: 5}", "vx.remotes: must be a list of IP addresses"),
    ("{type: vxlan, local: host1, remotes: [192.0.2.2], vni: 5}", "vx.local: must be an IPv4 or IPv6 address (got 'host1')"),
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.300], vni: 5}", "vx.remotes[0]: must be an IPv4 or IPv6 address"),
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 5, udp_port: 0}", "vx.udp_port: must be 1..65535"),
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 5, mtu: 60}", "vx.mtu: must be 68..65535"),
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 5, mac: '02:00:00:00:00:01'}",
     "vx.mac: unknown key 'mac'"),
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 5, queues: 2}", "vx.queues: unknown key"),
    # a VXLAN port learns no MACs of its own to cap (the validator used to
    # crash on it, building the port with a field it does not have)
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 5, fdb_max_entries: 3}",
     "vx.fdb_max_entries: unknown key 'fdb_max_entries'"),
])
def test_schema_and_validator_reject(port: str, message: str) -> None:
    text = f"ports: {{vx: {port}}}\n"
    assert schema_errors(text) != [], "schema accepts it"
    assert any(message in e for e in errors(text)), errors(text)


@pytest.mark.parametrize("port, message", [
    ("{type: vxlan, local: 192.0.2.1, remotes: [192.0.2.1], vni: 5}",
     "vx.remotes[0]: remote '192.0.2.1' is the local address itself"),
    ("{type: vxlan, local: 192.0.2.1, remotes: ['2001:db8::2'], vni: 5}",
     "vx.remotes[0]: IPv6 remote '2001:db8::2' with an IPv4 local address: both must be the same family"),
    ("{type: vxlan, local: '2001:db8::1', remotes: ['2001:db8::2', '2001:DB8::2'], vni: 5}",
     "vx.remotes[1]: remote '2001:db8::2' is listed twice (first as remotes[0])"),
    ("{type: vxlan, local: 224.0.0.1, remotes: [192.0.2.2], vni: 5}", "vx.local: must be a unicast address"),
    ("{type: vxlan, local: 'fe80::1', remotes: ['fe80::2'], vni: 5}",
     "vx.local: link-local IPv6 addresses are not supported"),
])
def test_validator_only_rejects(port: str, message: str) -> None:
    text = f"ports: {{vx: {port}}}\n"
    assert schema_errors(text) == []
    assert any(message in e for e in errors(text)), errors(text)


def test_two_ports_on_one_endpoint_are_refused() -> None:
    found = errors("""
        ports:
          a: {type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 5}
          b: {type: vxlan, local: 192.0.2.1, remotes: [192.0.2.3], vni: 6}
          c: {type: vxlan, local: 192.0.2.1, remotes: [192.0.2.3], vni: 6, udp_port: 4790}
        """)
    assert any("ports.a.local: VXLAN endpoint '192.0.2.1:4789' is also used by port 'b'" in e for e in found)
    assert not any("ports.c" in e for e in found), found


def test_a_static_fdb_entry_may_point_at_a_vxlan_port() -> None:
    # A VXLAN port has no `mac` of its own: the static entries' check for
    # MACs pinned twice skips it (it used to read a field the port lacks).
    text = """
        fdb:
          static: [{mac: "02:00:00:00:00:aa", port: vx}]
        ports:
          vx: {type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 7}
          vm: {type: vhost-user, mac: "02:00:00:00:00:01"}
        """
    assert schema_errors(text) == []
    cfg = parse_config(textwrap.dedent(text), check_host=False)
    assert [(e.mac, e.port, e.vlan) for e in cfg.fdb.static] == [("02:00:00:00:00:aa", "vx", None)]


def test_reload_remotes_vni_mtu_in_place_local_and_port_restart() -> None:
    old = VxlanPortConfig(name="vx", local="192.0.2.1", remotes=("192.0.2.2",), vni=5)
    change = port_change("vx", old, VxlanPortConfig(name="vx", local="192.0.2.1",
                                                   remotes=("192.0.2.2", "192.0.2.3"), vni=6, mtu=1450))
    assert not change.restart and set(change.in_place) == {"remotes", "vni", "mtu"}
    for field, value in (("local", "192.0.2.9"), ("udp_port", 4790)):
        new = VxlanPortConfig(**{**old.__dict__, field: value})
        assert port_change("vx", old, new).restart, field


def test_sockaddrs_are_what_the_kernel_reads() -> None:
    sa = pack_sockaddr("192.0.2.7", 4789)
    assert len(sa) == 16 and sa[:2] == socket.AF_INET.to_bytes(2, "little")
    assert sa[2:4] == (4789).to_bytes(2, "big") and sa[4:8] == bytes([192, 0, 2, 7])
    sa6 = pack_sockaddr("2001:db8::7", 8472)
    assert len(sa6) == 28 and sa6[:2] == socket.AF_INET6.to_bytes(2, "little")
    assert sa6[2:4] == (8472).to_bytes(2, "big") and sa6[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8::7")


def test_bind_errors_say_what_is_wrong() -> None:
    with pytest.raises(VxlanError, match=r"192\.0\.2\.77 is not configured on this host"):
        open_vxlan_socket("192.0.2.77", 4789)
    sock = open_vxlan_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(VxlanError, match=f"UDP port {port} on 127.0.0.1 is already in use"):
            open_vxlan_socket("127.0.0.1", port)
        assert not sock.getblocking()
    finally:
        sock.close()
