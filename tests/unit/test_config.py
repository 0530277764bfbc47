"""Tests for vswitch.config: loading, defaults, and positioned error reports."""

from __future__ import annotations

import os
import pwd
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from vswitch import config as config_module
from vswitch.config import validate
from vswitch.cpus import cpu_list
from vswitch.config.bounds import MAX_ALLOWED_MACS, MAX_PORTS
from vswitch.config import (
    TapPortConfig,
    Config,
    ConfigError,
    ConfigIssue,
    ControlConfig,
    DatapathConfig,
    FdbConfig,
    StaticFdbEntry,
    MetricsConfig,
    MirrorConfig,
    PolicerConfig,
    StormControlConfig,
    VhostUserPortConfig,
    VlanConfig,
    load_config,
    parse_config,
)


# The keys a port takes, as listed in "unknown key" messages (every feature
# adds some).
VHOST_USER_KEYS = ", ".join(sorted(validate._VHOST_USER_KEYS))
TAP_KEYS = ", ".join(sorted(validate._TAP_KEYS))


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def errors(text: str) -> list[str]:
    """All issues for ``text`` (which must be invalid), as strings."""
    with pytest.raises(ConfigError) as info:
        parse_config(doc(text), "c.yaml")
    return [str(issue) for issue in info.value.errors]


def one_error(text: str) -> str:
    found = errors(text)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------
# Valid configurations


GOOD = """
version: 1
runtime_dir: /run/vs
ports:
  vm1:
    type: vhost-user
    mode: server
    socket: /run/vs/one.sock
    queues: 2
  vm2:
    type: vhost-user
    mode: client
datapath:
  workers: 4
"""


def test_good_config() -> None:
    config = parse_config(doc(GOOD))
    assert config == Config(
        version=1,
        runtime_dir="/run/vs",
        ports={
            "vm1": VhostUserPortConfig(name="vm1", mode="server", socket="/run/vs/one.sock", queues=2),
            "vm2": VhostUserPortConfig(name="vm2", mode="client", socket="/run/vs/vm2.sock", queues=1),
        },
        datapath=DatapathConfig(workers=4),
        path=None,
    )
    assert config.ports["vm1"].type == "vhost-user"


def test_defaults() -> None:
    config = parse_config("ports:\n  vm1: {type: vhost-user}\n")
    assert config.version == 1
    assert config.runtime_dir == "/run/vswitch"
    assert config.datapath == DatapathConfig(workers=1)
    assert config.ports == {
        "vm1": VhostUserPortConfig(name="vm1", mode="server", socket="/run/vswitch/vm1.sock", queues=1)
    }


def test_default_socket_follows_runtime_dir() -> None:
    config = parse_config("runtime_dir: /tmp/vs/\nports: {a.b-c_1: {type: vhost-user}}\n")
    assert config.ports["a.b-c_1"].socket == "/tmp/vs/a.b-c_1.sock"


def test_empty_ports_allowed() -> None:
    config = parse_config("ports: {}\n")
    assert config.ports == {}


def test_port_order_is_file_order() -> None:
    text = "ports:\n" + "".join(f"  p{i}: {{type: vhost-user}}\n" for i in (3, 1, 2, 0))
    assert list(parse_config(text).ports) == ["p3", "p1", "p2", "p0"]


def test_limits_accepted() -> None:
    config = parse_config(doc("""
        ports:
          a: {type: vhost-user, queues: 1}
          b: {type: vhost-user, queues: 64}
        datapath: {workers: 64}
        """))
    assert config.ports["a"].queues == 1
    assert config.ports["b"].queues == 64
    assert config.datapath.workers == 64


def test_port_name_limits_accepted() -> None:
    name = "A" + "z" * 31
    config = parse_config(f"ports: {{{name}: {{type: vhost-user, socket: /s.sock}}, 9: {{type: vhost-user}}}}\n")
    assert list(config.ports) == [name, "9"]


def test_socket_path_of_exactly_107_bytes_accepted() -> None:
    path = "/" + "s" * 101 + ".sock"
    assert len(path) == 107
    config = parse_config(f"ports: {{vm1: {{type: vhost-user, socket: {path}}}}}\n")
    assert config.ports["vm1"].socket == path


def test_to_dict_round_trips() -> None:
    config = parse_config(doc(GOOD))
    as_dict = config.to_dict()
    features = {"mrg_rxbuf": True, "event_idx": True, "indirect_desc": True, "in_order": True, "offloads": True,
                "memory_slots": True, "allow_file_memory": False}
    assert as_dict == {
        "version": 1,
        "runtime_dir": "/run/vs",
        "control": {},
        "metrics": {"enabled": True, "listen": "127.0.0.1:9479"},
        "ports": {
            "vm1": {"type": "vhost-user", "mode": "server", "socket": "/run/vs/one.sock", "queues": 2,
                    "socket_mode": 0o660, **features},
            "vm2": {"type": "vhost-user", "mode": "client", "socket": "/run/vs/vm2.sock", "queues": 1,
                    **features},
        },
        "datapath": {"workers": 4, "mode": "adaptive", "tap_io": "io_uring"},
    }
    assert parse_config(yaml.safe_dump(as_dict, sort_keys=False)) == config


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "vswitch.yaml"
    path.write_text(doc(GOOD), encoding="utf-8")
    config = load_config(path)
    assert config.path == str(path)
    assert config.ports["vm1"].queues == 2
    assert load_config(str(path)) == config


def test_load_config_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "vswitch.yaml"
    path.write_bytes(b"\xef\xbb\xbfports:\n  vm1: {type: vhost-user, queues: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(e) for e in info.value.errors] == [
        f"{path}:2:35: ports.vm1.queues: must be 1..64 (got 0)"
    ]


# --------------------------------------------------------------------------
# Error reporting format


def test_issue_str() -> None:
    issue = ConfigIssue("f.yaml", 3, 13, "ports.vm1.queues", "must be 1..64 (got 0)")
    assert str(issue) == "f.yaml:3:13: ports.vm1.queues: must be 1..64 (got 0)"
    assert str(ConfigIssue("f.yaml", 1, 1, "", "bad")) == "f.yaml:1:1: bad"
    assert str(ConfigIssue("f.yaml", 0, 0, "", "cannot read")) == "f.yaml: cannot read"


def test_config_error_str_lists_all_issues() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("ports: {}\ndatapath: {workers: 0}\nx: 1\n", "c.yaml")
    assert str(info.value) == (
        "c.yaml:2:21: datapath.workers: must be 1..64 (got 0)\n"
        "c.yaml:3:1: x: unknown key 'x' (expected one of: "
        "control, datapath, debug, defaults, fdb, limits, metrics, ports, runtime_dir, security, version)"
    )
    assert all(isinstance(e, ConfigIssue) for e in info.value.errors)


def test_default_filename() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("ports: []\n")
    assert str(info.value) == "<string>:1:8: ports: must be a mapping (got a list)"


# --------------------------------------------------------------------------
# Individual errors, with exact positions


def test_queues_out_of_range() -> None:
    assert one_error("""
        ports:
          vm1:
            type: vhost-user
            queues: 0
        """) == "c.yaml:4:13: ports.vm1.queues: must be 1..64 (got 0)"
    assert one_error("ports: {vm1: {type: vhost-user, queues: 65}}") == (
        "c.yaml:1:41: ports.vm1.queues: must be 1..64 (got 65)"
    )


@pytest.mark.parametrize(
    "value, got",
    [
        ('"2"', "string '2'"),
        ("2.0", "float 2.0"),
        ("true", "boolean true"),
        ("yes", "boolean yes"),
        ("~", "null"),
        ("[2]", "a list"),
        ("{n: 2}", "a mapping"),
    ],
)
def test_queues_must_be_a_real_int(value: str, got: str) -> None:
    assert one_error(f"ports:\n  vm1:\n    type: vhost-user\n    queues: {value}\n") == (
        f"c.yaml:4:13: ports.vm1.queues: must be an integer 1..64 (got {got})"
    )


def test_workers_out_of_range_and_type() -> None:
    assert one_error("ports: {}\ndatapath:\n  workers: 65\n") == (
        "c.yaml:3:12: datapath.workers: must be 1..64 (got 65)"
    )
    assert one_error("ports: {}\ndatapath:\n  workers: '4'\n") == (
        "c.yaml:3:12: datapath.workers: must be an integer 1..64 (got string '4')"
    )


def test_datapath_must_be_a_mapping() -> None:
    assert one_error("ports: {}\ndatapath: 4\n") == (
        "c.yaml:2:11: datapath: must be a mapping (got integer 4)"
    )


def test_unknown_keys() -> None:
    assert errors("""
        ports:
          vm1:
            type: vhost-user
            queus: 2
        datapath: {workers: 1, threads: 2}
        portz: {}
        """) == [
        "c.yaml:4:5: ports.vm1.queus: unknown key 'queus', did you mean 'queues'? (expected one of: "
        + VHOST_USER_KEYS + ")",
        "c.yaml:5:24: datapath.threads: unknown key 'threads' (expected one of: cpus, mode, tap_io, workers)",
        "c.yaml:6:1: portz: unknown key 'portz', did you mean 'ports'? (expected one of: "
        "control, datapath, debug, defaults, fdb, limits, metrics, ports, runtime_dir, security, version)",
    ]


def test_missing_ports() -> None:
    assert one_error("""
        # comment
        datapath: {workers: 2}
        """) == "c.yaml:2:1: missing required key 'ports'"


def test_ports_null() -> None:
    assert one_error("ports:\n") == (
        "c.yaml:1:7: ports: must be a mapping of port name to port (got null); "
        "use 'ports: {}' for a switch without ports"
    )


def test_ports_must_be_a_mapping() -> None:
    assert one_error("ports:\n  - vm1\n") == "c.yaml:2:3: ports: must be a mapping (got a list)"


def test_port_must_be_a_mapping() -> None:
    assert one_error("ports:\n  vm1:\n  vm2: {type: vhost-user}\n") == (
        "c.yaml:2:7: ports.vm1: must be a mapping (got null)"
    )


def test_missing_type_points_at_port_mapping() -> None:
    # The rest of the port is still checked (as vhost-user, the only type).
    assert errors("""
        ports:
          vm1:
            mode: server
            queues: 99
        """) == [
        "c.yaml:3:5: ports.vm1: missing required key 'type' (supported: vhost-user, tap, vxlan)",
        "c.yaml:4:13: ports.vm1.queues: must be 1..64 (got 99)",
    ]


def test_unsupported_port_type() -> None:
    # Keys of an unsupported type are not second-guessed.
    assert one_error("""
        ports:
          gn0:
            type: geneve
            vni: 5
        """) == "c.yaml:3:11: ports.gn0.type: unsupported port type 'geneve' (supported: vhost-user, tap, vxlan)"
    assert one_error("ports: {vm1: {type: 1}}") == (
        "c.yaml:1:21: ports.vm1.type: must be one of: vhost-user, tap, vxlan (got integer 1)"
    )


def test_bad_mode() -> None:
    assert one_error("ports: {vm1: {type: vhost-user, mode: serve}}") == (
        "c.yaml:1:39: ports.vm1.mode: must be one of: server, client (got 'serve')"
    )
    assert one_error("ports: {vm1: {type: vhost-user, mode: on}}") == (
        "c.yaml:1:39: ports.vm1.mode: must be one of: server, client (got boolean on)"
    )


@pytest.mark.parametrize(
    "name",
    ["-vm", ".vm", "_vm", "a" * 33, "vm/1", "vm 1", "vm:1", "'vm\u00e9'", "''"],
)
def test_bad_port_names(name: str) -> None:
    found = one_error(f"ports:\n  {name}: {{type: vhost-user, socket: /s.sock}}\n")
    assert found.startswith("c.yaml:2:3: ports.")
    assert "invalid port name" in found
    assert "must be 1..32 characters from A-Z a-z 0-9 _ . - and start with a letter or digit" in found


def test_relative_and_empty_paths() -> None:
    assert errors("""
        runtime_dir: run/vswitch
        ports:
          vm1: {type: vhost-user, socket: vm1.sock}
          vm2: {type: vhost-user, socket: ""}
          vm3: {type: vhost-user, socket: 42}
        """) == [
        "c.yaml:1:14: runtime_dir: must be an absolute path (got 'run/vswitch')",
        "c.yaml:3:35: ports.vm1.socket: must be an absolute path (got 'vm1.sock')",
        "c.yaml:4:35: ports.vm2.socket: must be an absolute path (got an empty string)",
        "c.yaml:5:35: ports.vm3.socket: must be a string (got integer 42)",
    ]


def test_socket_path_too_long() -> None:
    path = "/" + "s" * 102 + ".sock"  # 108 bytes
    assert one_error(f"ports:\n  vm1:\n    type: vhost-user\n    socket: {path}\n") == (
        f"c.yaml:4:13: ports.vm1.socket: socket path too long for AF_UNIX: 108 bytes, "
        f"at most 107 allowed (got '{path}')"
    )


def test_socket_path_length_counts_bytes() -> None:
    path = "/" + "\u00e9" * 51 + ".sock"  # 57 characters, 108 bytes
    found = one_error(f"ports:\n  vm1: {{type: vhost-user, socket: {path}}}\n")
    assert "too long for AF_UNIX: 108 bytes, at most 107 allowed" in found


def test_default_socket_path_too_long() -> None:
    runtime_dir = "/" + "d" * 99
    assert one_error(f"runtime_dir: {runtime_dir}\nports:\n  vm1: {{type: vhost-user}}\n") == (
        f"c.yaml:3:3: ports.vm1.socket: default socket path too long for AF_UNIX: "
        f"109 bytes, at most 107 allowed (got '{runtime_dir}/vm1.sock'); "
        "use a shorter runtime_dir or port name, or set 'socket'"
    )


def test_duplicate_socket_paths_reported_on_both_ports() -> None:
    assert errors("""
        ports:
          vm1:
            type: vhost-user
            socket: /run/vswitch/shared.sock
          vm2:
            type: vhost-user
            socket: /run/vswitch/./shared.sock
          vm3: {type: vhost-user}
        """) == [
        "c.yaml:4:13: ports.vm1.socket: socket path '/run/vswitch/shared.sock' is also used by port 'vm2'",
        "c.yaml:7:13: ports.vm2.socket: socket path '/run/vswitch/./shared.sock' is also used by port 'vm1'",
    ]


def test_explicit_socket_clashing_with_default_socket() -> None:
    assert errors("""
        ports:
          vm1: {type: vhost-user}
          vm2: {type: vhost-user, socket: /run/vswitch/vm1.sock}
        """) == [
        "c.yaml:2:3: ports.vm1.socket: default socket path '/run/vswitch/vm1.sock' is also used by port 'vm2'",
        "c.yaml:3:35: ports.vm2.socket: socket path '/run/vswitch/vm1.sock' is also used by port 'vm1'",
    ]


def test_version() -> None:
    assert parse_config("version: 1\nports: {}\n").version == 1
    # An unknown version stops validation: its schema is unknown.
    assert one_error("version: 2\nports: {}\nnew_in_v2: true\n") == (
        "c.yaml:1:10: version: unsupported configuration version 2 (supported: 1)"
    )
    assert one_error("version: '1'\nports: {}\n") == (
        "c.yaml:1:10: version: must be an integer (got string '1')"
    )


def test_bad_explicit_tag() -> None:
    found = one_error("ports: {}\ndatapath: {workers: !!int four}\n")
    assert found.startswith("c.yaml:2:21: datapath.workers: invalid value 'four' for tag tag:yaml.org,2002:int")
    found = one_error("ports: {}\nversion: !custom 1\n")
    assert found.startswith("c.yaml:2:10: version: invalid value '1' for tag !custom")


def test_merge_keys_rejected() -> None:
    assert errors("""
        ports:
          vm1:
            <<: {type: vhost-user}
        """) == [
        "c.yaml:3:5: ports.vm1: merge keys ('<<') are not supported",
        "c.yaml:3:5: ports.vm1: missing required key 'type' (supported: vhost-user, tap, vxlan)",
    ]


def test_non_scalar_key() -> None:
    assert one_error("ports: {}\n? [a, b]\n: 1\n") == "c.yaml:2:3: keys must be scalars (got a list)"


# --------------------------------------------------------------------------
# Duplicate keys


def test_duplicate_keys() -> None:
    assert errors("""
        ports:
          vm1:
            type: vhost-user
            queues: 2
            queues: 3
          vm1:
            type: vhost-user
        ports: {}
        """) == [
        "c.yaml:5:5: ports.vm1.queues: duplicate key 'queues' (first defined at line 4, column 5)",
        "c.yaml:6:3: ports.vm1: duplicate key 'vm1' (first defined at line 2, column 3)",
        "c.yaml:8:1: ports: duplicate key 'ports' (first defined at line 1, column 1)",
    ]


def test_duplicate_keys_quoted_and_plain() -> None:
    assert one_error("ports: {}\nversion: 1\n'version': 1\n") == (
        "c.yaml:3:1: version: duplicate key 'version' (first defined at line 2, column 1)"
    )


# --------------------------------------------------------------------------
# Many errors at once


def test_all_errors_reported_at_once_in_file_order() -> None:
    assert errors("""
        runtime_dir: relative
        ports:
          vm1:
            type: vhost-user
            mode: sever
            queues: 0
            sockt: /x.sock
          -bad: {type: vhost-user, socket: /y.sock}
          vm2: {type: vhost-user, socket: /x.sock, queues: 2}
          vm3: {type: vhost-user, socket: /x.sock}
        datapath:
          workers: 0
        """) == [
        "c.yaml:1:14: runtime_dir: must be an absolute path (got 'relative')",
        "c.yaml:5:11: ports.vm1.mode: must be one of: server, client (got 'sever')",
        "c.yaml:6:13: ports.vm1.queues: must be 1..64 (got 0)",
        "c.yaml:7:5: ports.vm1.sockt: unknown key 'sockt', did you mean 'socket'? (expected one of: "
        + VHOST_USER_KEYS + ")",
        "c.yaml:8:3: ports.-bad: invalid port name '-bad' (must be 1..32 characters from "
        "A-Z a-z 0-9 _ . - and start with a letter or digit)",
        "c.yaml:9:35: ports.vm2.socket: socket path '/x.sock' is also used by port 'vm3'",
        "c.yaml:10:35: ports.vm3.socket: socket path '/x.sock' is also used by port 'vm2'",
        "c.yaml:12:12: datapath.workers: must be 1..64 (got 0)",
    ]


def test_error_fields() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("ports:\n  vm1: {type: vhost-user, queues: 0}\n", "f.yaml")
    assert info.value.errors == [
        ConfigIssue(file="f.yaml", line=2, col=35, key="ports.vm1.queues", message="must be 1..64 (got 0)")
    ]


# --------------------------------------------------------------------------
# Not a usable document


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_document(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    [issue] = info.value.errors
    assert issue.key == ""
    assert issue.message == (
        "configuration is empty (expected a mapping with at least a 'ports' key; "
        "use 'ports: {}' for a switch without ports)"
    )


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:1:1: configuration is empty")


@pytest.mark.parametrize(
    "text, got",
    [("- a\n- b\n", "a list"), ("hello\n", "string 'hello'"), ("42\n", "integer 42")],
)
def test_top_level_not_a_mapping(text: str, got: str) -> None:
    assert one_error(text) == f"c.yaml:1:1: top level must be a mapping of settings (got {got})"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ports: {}\nx: a: b\n", "c.yaml:2:5: invalid YAML: mapping values are not allowed here"),
        (
            "ports: {vm1: {type: vhost-user}\n",
            "c.yaml:2:1: invalid YAML: while parsing a flow mapping (line 1, column 8), "
            "expected ',' or '}', but got '<stream end>'",
        ),
        (
            "ports:\n\tvm1: {}\n",
            "c.yaml:2:1: invalid YAML: while scanning for the next token, "
            "found character '\\t' that cannot start any token",
        ),
        (
            "ports: {}\n---\nports: {}\n",
            "c.yaml:2:1: invalid YAML: expected a single document in the stream (line 1, column 1), "
            "but found another document",
        ),
        ("ports: *nothing\n", "c.yaml:1:8: invalid YAML: found undefined alias 'nothing'"),
        (
            "ports: {}\nx: \"\x01\"\n",
            "c.yaml:2:5: invalid YAML: unacceptable character U+0001: special characters are not allowed",
        ),
    ],
)
def test_yaml_syntax_errors(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_yaml_syntax_error_from_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("ports:\n  vm1: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [issue] = info.value.errors
    assert (issue.file, issue.line, issue.col) == (str(path), 3, 1)
    assert issue.message.startswith((
        "invalid YAML: while parsing a flow node, expected the node content, but found '<stream end>'"
    ))


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.errors == [
        ConfigIssue(str(missing), 0, 0, "", "cannot read configuration file: No such file or directory")
    ]
    assert str(info.value) == f"{missing}: cannot read configuration file: No such file or directory"
    with pytest.raises(ConfigError, match="cannot read configuration file: Is a directory"):
        load_config(tmp_path)


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"ports: {}\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2:6: file is not valid UTF-8 (byte 0xe9)"


def test_aliases_are_followed() -> None:
    text = doc("""
        datapath: {workers: &n 4}
        ports:
          vm1: {type: vhost-user, queues: *n}
        """)
    assert parse_config(text).ports["vm1"].queues == 4


def test_config_error_is_an_exception() -> None:
    err = ConfigError([ConfigIssue("f", 1, 2, "k", "m")])
    assert isinstance(err, Exception)
    assert str(err) == "f:1:2: k: m"
    assert err.errors == [ConfigIssue("f", 1, 2, "k", "m")]


def test_datapath_mode() -> None:
    assert parse_config("ports: {}\ndatapath: {mode: event}\n").datapath.mode == "event"
    assert parse_config("ports: {}\n").datapath.mode == "adaptive"
    with pytest.raises(ConfigError) as exc:
        parse_config("ports: {}\ndatapath:\n  mode: sleepy\n", "m.yaml")
    assert str(exc.value).startswith("m.yaml:3:9: datapath.mode:")
    assert "poll" in str(exc.value) and "sleepy" in str(exc.value)


def test_tap_port() -> None:
    config = parse_config("ports:\n  up: {type: tap, ifname: vs0, queues: 2, mtu: 1500, create: false}\n")
    assert config.ports["up"] == TapPortConfig(name="up", ifname="vs0", queues=2, mtu=1500, create=False)
    assert parse_config("ports:\n  uplink0: {type: tap}\n").ports["uplink0"].ifname == "uplink0"
    with pytest.raises(ConfigError) as exc:
        parse_config("ports:\n  up: {type: tap, ifname: abcdefghijklmnop, mtu: 20, create: 3}\n", "t.yaml")
    lines = str(exc.value).splitlines()
    assert lines[0].startswith("t.yaml:2:27: ports.up.ifname: not a valid interface name: at most 15 bytes")
    assert lines[1] == "t.yaml:2:50: ports.up.mtu: must be 68..65535 (got 20)"
    assert lines[2] == "t.yaml:2:62: ports.up.create: must be true or false (got integer 3)"


# --------------------------------------------------------------------------
# control, metrics, datapath.cpus, defaults, and the per-port socket and feature keys

MISSING = "no-such-name-vswitch-test"
FEATURES_ON = {"mrg_rxbuf": True, "event_idx": True, "indirect_desc": True, "in_order": True, "offloads": True,
               "memory_slots": True}


def test_new_sections_default() -> None:
    config = parse_config("ports: {vm1: {type: vhost-user}, up: {type: tap}}\n")
    assert config.metrics == MetricsConfig(enabled=True, host="127.0.0.1", port=9479)
    assert config.metrics.listen == "127.0.0.1:9479"
    assert config.control == ControlConfig(group=None)
    assert config.datapath == DatapathConfig(workers=1, mode="adaptive", cpus=None)
    vm1 = config.ports["vm1"]
    assert (vm1.mtu, vm1.mac, vm1.socket_owner, vm1.socket_group, vm1.socket_mode) == (None, None, None, None, 0o660)
    assert (vm1.mrg_rxbuf, vm1.event_idx, vm1.indirect_desc, vm1.offloads) == (True, True, True, True)
    assert config.ports["up"].mac is None


def test_dataclass_defaults_for_direct_construction() -> None:
    # Other modules build these directly (tests, the daemon's diff).
    port = VhostUserPortConfig(name="p", mode="server", socket="/s", queues=1)
    assert port.socket_mode == 0o660 and port.mrg_rxbuf and port.type == "vhost-user"
    assert TapPortConfig(name="t", ifname="t", queues=1).mac is None
    config = Config(version=1, runtime_dir="/r", ports={}, datapath=DatapathConfig())
    assert config.metrics == MetricsConfig() and config.control == ControlConfig()
    # Frozen and compared by value, so the daemon can diff old and new ports.
    assert port == VhostUserPortConfig(name="p", mode="server", socket="/s", queues=1)
    assert port != VhostUserPortConfig(name="p", mode="server", socket="/s", queues=1, event_idx=False)
    with pytest.raises(AttributeError):
        port.queues = 2  # type: ignore[misc]


def test_every_new_key() -> None:
    config = parse_config(doc("""
        control: {group: root}
        metrics: {enabled: false, listen: "[::1]:9100"}
        datapath: {workers: 2, mode: poll, cpus: [0]}
        ports:
          vm1:
            type: vhost-user
            queues: 2
            mtu: 9000
            mac: "52:54:00:AB:CD:EF"
            socket_owner: root
            socket_group: 0
            socket_mode: 0600
            mrg_rxbuf: false
            event_idx: false
            indirect_desc: false
            in_order: false
            offloads: false
          up: {type: tap, ifname: vs0, mac: "02:00:00:00:00:01"}
        """))
    assert config.control == ControlConfig(group=0)
    assert config.metrics == MetricsConfig(enabled=False, host="::1", port=9100)
    assert config.metrics.listen == "[::1]:9100"
    assert config.datapath == DatapathConfig(workers=2, mode="poll", cpus=(0,))
    assert config.ports["vm1"] == VhostUserPortConfig(
        name="vm1", mode="server", socket="/run/vswitch/vm1.sock", queues=2, mtu=9000,
        mac="52:54:00:ab:cd:ef", socket_owner=0, socket_group=0, socket_mode=0o600,
        mrg_rxbuf=False, event_idx=False, indirect_desc=False, in_order=False, offloads=False,
    )
    assert config.ports["up"] == TapPortConfig(name="up", ifname="vs0", queues=1, mac="02:00:00:00:00:01")


def test_full_config_round_trips_through_to_dict() -> None:
    config = parse_config(doc("""
        control: {group: root}
        metrics: {listen: "[2001:DB8::0001]:9100"}
        datapath: {cpus: [1, 0]}
        defaults: {queues: 3, socket_owner: root, socket_mode: "0640", offloads: false}
        ports:
          vm1: {type: vhost-user, mac: 52:54:00:12:34:56, mtu: 1500}
          vm2: {type: vhost-user, mode: client}
          up: {type: tap, mac: "02:00:00:00:00:0A", mtu: 9000, create: false}
        """))
    as_dict = config.to_dict()
    assert as_dict["control"] == {"group": 0}
    assert as_dict["metrics"] == {"enabled": True, "listen": "[2001:db8::1]:9100"}
    assert as_dict["datapath"] == {"workers": 1, "mode": "adaptive", "tap_io": "io_uring", "cpus": [1, 0]}
    assert as_dict["ports"]["vm1"] == {
        "type": "vhost-user", "mode": "server", "socket": "/run/vswitch/vm1.sock", "queues": 3,
        "mtu": 1500, "mac": "52:54:00:12:34:56", "socket_owner": 0, "socket_mode": 0o640,
        "mrg_rxbuf": True, "event_idx": True, "indirect_desc": True, "in_order": True,
        "offloads": False, "memory_slots": True, "allow_file_memory": False,
    }
    # A client port has no socket_* keys (they would be an error).
    assert not any(k.startswith("socket_") for k in as_dict["ports"]["vm2"])
    assert as_dict["ports"]["up"]["mac"] == "02:00:00:00:00:0a"
    assert parse_config(yaml.safe_dump(as_dict, sort_keys=False)) == config
    assert parse_config(yaml.safe_dump(as_dict)) == config


# -- defaults ---------------------------------------------------------------


def test_defaults_apply_to_vhost_user_ports_and_ports_override_them() -> None:
    config = parse_config(doc("""
        defaults:
          mode: client
          queues: 4
          mtu: 1500
          mrg_rxbuf: false
        ports:
          a: {type: vhost-user}
          b: {type: vhost-user, mode: server, queues: 1, mtu: 9000, mrg_rxbuf: true}
          up: {type: tap}
        """))
    a, b, up = config.ports["a"], config.ports["b"], config.ports["up"]
    assert (a.mode, a.queues, a.mtu, a.mrg_rxbuf) == ("client", 4, 1500, False)
    assert (b.mode, b.queues, b.mtu, b.mrg_rxbuf) == ("server", 1, 9000, True)
    assert (up.queues, up.mtu) == (1, None)   # defaults are for vhost-user ports only


def test_socket_defaults_apply_to_server_ports_only() -> None:
    config = parse_config(doc("""
        defaults: {socket_owner: 0, socket_group: root, socket_mode: 0600}
        ports:
          srv: {type: vhost-user}
          cli: {type: vhost-user, mode: client}
          own: {type: vhost-user, socket_group: 0, socket_mode: 0666}
        """))
    srv, cli, own = config.ports["srv"], config.ports["cli"], config.ports["own"]
    assert (srv.socket_owner, srv.socket_group, srv.socket_mode) == (0, 0, 0o600)
    assert (cli.socket_owner, cli.socket_group, cli.socket_mode) == (None, None, 0o660)
    assert (own.socket_owner, own.socket_group, own.socket_mode) == (0, 0, 0o666)


def test_invalid_default_is_reported_once_at_defaults() -> None:
    assert errors("""
        defaults:
          queues: 0
          mode: sever
        ports:
          a: {type: vhost-user}
          b: {type: vhost-user}
          c: {type: vhost-user, queues: 2, mode: client}
        """) == [
        "c.yaml:2:11: defaults.queues: must be 1..64 (got 0)",
        "c.yaml:3:9: defaults.mode: must be one of: server, client (got 'sever')",
    ]


def test_defaults_errors() -> None:
    assert errors("""
        defaults:
          socket: /x.sock
          type: tap
          offloads: 'no'
        ports: {}
        """) == [
        "c.yaml:2:3: defaults.socket: unknown key 'socket', did you mean 'socket_mode'? (expected one of: allow_file_memory, event_idx, "
        "in_order, indirect_desc, memory_slots, mode, mrg_rxbuf, mtu, offloads, queues, socket_group, socket_mode, "
        "socket_owner)",
        "c.yaml:3:3: defaults.type: unknown key 'type' (expected one of: allow_file_memory, event_idx, "
        "in_order, indirect_desc, memory_slots, mode, mrg_rxbuf, mtu, offloads, queues, socket_group, socket_mode, "
        "socket_owner)",
        "c.yaml:4:13: defaults.offloads: must be true or false (got string 'no')",
    ]
    assert one_error("defaults: [1]\nports: {}\n") == "c.yaml:1:11: defaults: must be a mapping (got a list)"


def test_client_port_with_socket_permissions_via_default_mode() -> None:
    assert one_error("defaults: {mode: client}\nports:\n  vm1: {type: vhost-user, socket_mode: 0600}\n") == (
        "c.yaml:3:27: ports.vm1.socket_mode: only for server-mode ports: in client mode QEMU "
        "creates the socket and sets its owner, group and mode"
    )


# -- socket_owner / socket_group / socket_mode --------------------------------


def test_client_port_rejects_socket_permissions() -> None:
    assert errors("""
        ports:
          vm1:
            type: vhost-user
            mode: client
            socket_owner: root
            socket_group: 0
            socket_mode: 0660
        """) == [
        f"c.yaml:{line}:5: ports.vm1.{key}: only for server-mode ports: in client mode QEMU "
        "creates the socket and sets its owner, group and mode"
        for line, key in ((5, "socket_owner"), (6, "socket_group"), (7, "socket_mode"))
    ]


@pytest.mark.parametrize(
    "value, mode",
    [("0660", 0o660), ("'0660'", 0o660), ('"660"', 0o660), ("'0o640'", 0o640), ("432", 0o660),
     ("0600", 0o600), ("0777", 0o777), ("'777'", 0o777), ("0700", 0o700)],
)
def test_socket_mode_forms(value: str, mode: int) -> None:
    config = parse_config(f"ports: {{vm1: {{type: vhost-user, socket_mode: {value}}}}}\n")
    assert config.ports["vm1"].socket_mode == mode


@pytest.mark.parametrize(
    "value, message",
    [
        ("660", "must be a permission mode 0000..0777 (got 660; YAML reads 660 without a leading 0 "
                "as a decimal number: write 0660 or quote it)"),
        ("01000", "must be a permission mode 0000..0777 (got 512)"),
        ("-1", "must be a permission mode 0000..0777 (got -1)"),
        ("0460", "must give the owner read and write permission (0600), else nobody can connect "
                 "as the owner (got 0460)"),
        ("'0066'", "must give the owner read and write permission (0600), else nobody can connect "
                   "as the owner (got 0066)"),
        ("0", "must give the owner read and write permission (0600), else nobody can connect "
              "as the owner (got 0000)"),
        ("rw-rw----", "must be a permission mode of 3 octal digits such as 0660 or '0660' (got 'rw-rw----')"),
        ("'0680'", "must be a permission mode of 3 octal digits such as 0660 or '0660' (got '0680')"),
        ("true", "must be a permission mode such as 0660 or '0660' (got boolean true)"),
        ("6.6", "must be a permission mode such as 0660 or '0660' (got float 6.6)"),
    ],
)
def test_bad_socket_mode(value: str, message: str) -> None:
    assert one_error(f"ports:\n  vm1:\n    type: vhost-user\n    socket_mode: {value}\n") == (
        f"c.yaml:4:18: ports.vm1.socket_mode: {message}"
    )


def test_owner_and_group_by_name_and_number() -> None:
    config = parse_config(doc("""
        control: {group: root}
        ports:
          a: {type: vhost-user, socket_owner: root, socket_group: root}
          b: {type: vhost-user, socket_owner: 0, socket_group: 0}
          c: {type: vhost-user, socket_owner: 4294967294, socket_group: 107}
        """))
    assert config.control.group == 0
    assert (config.ports["a"].socket_owner, config.ports["a"].socket_group) == (0, 0)
    assert config.ports["a"].socket_owner == config.ports["b"].socket_owner
    assert (config.ports["c"].socket_owner, config.ports["c"].socket_group) == (4294967294, 107)


def test_unknown_owner_and_group_names() -> None:
    assert errors(f"""
        control: {{group: {MISSING}}}
        ports:
          a:
            type: vhost-user
            socket_owner: {MISSING}
            socket_group: {MISSING}
        """) == [
        f"c.yaml:1:18: control.group: unknown group '{MISSING}' (no such group on this host; "
        "create it or give a numeric gid)",
        f"c.yaml:5:19: ports.a.socket_owner: unknown user '{MISSING}' (no such user on this host; "
        "create it or give a numeric uid)",
        f"c.yaml:6:19: ports.a.socket_group: unknown group '{MISSING}' (no such group on this host; "
        "create it or give a numeric gid)",
    ]


def test_bad_owner_and_group_values() -> None:
    assert errors("""
        ports:
          a:
            type: vhost-user
            socket_owner: -1
            socket_group: 4294967295
          b: {type: vhost-user, socket_owner: [root], socket_group: ""}
        """) == [
        "c.yaml:4:19: ports.a.socket_owner: uid must be 0..4294967294 (got -1)",
        "c.yaml:5:19: ports.a.socket_group: gid must be 0..4294967294 (got 4294967295)",
        "c.yaml:6:39: ports.b.socket_owner: must be a user name or a numeric uid (got a list)",
        "c.yaml:6:61: ports.b.socket_group: must be a group name or a numeric gid (got an empty string)",
    ]


# -- mac ------------------------------------------------------------------------


def test_mac_normalized_and_unquoted_form_taken_as_written() -> None:
    config = parse_config(doc("""
        ports:
          a: {type: vhost-user, mac: 52:54:00:12:34:56}
          b: {type: vhost-user, mac: "52:54:00:AB:cd:0F"}
          c: {type: tap, mac: 02:00:00:00:00:01}
        """))
    # YAML 1.1 would read 52:54:00:12:34:56 as the base-60 integer 41135085296.
    assert config.ports["a"].mac == "52:54:00:12:34:56"
    assert config.ports["b"].mac == "52:54:00:ab:cd:0f"
    assert config.ports["c"].mac == "02:00:00:00:00:01"


def test_bad_macs() -> None:
    assert errors("""
        ports:
          a: {type: vhost-user, mac: "01:00:5e:00:00:01"}
          b: {type: vhost-user, mac: "ff:ff:ff:ff:ff:ff"}
          c: {type: vhost-user, mac: "00:00:00:00:00:00"}
          d: {type: vhost-user, mac: "52:54:00:12:34"}
          e: {type: vhost-user, mac: 525400123456}
          f: {type: tap, mac: "52-54-00-12-34-56"}
        """) == [
        "c.yaml:2:30: ports.a.mac: must be a unicast MAC address (the first byte's lowest bit is the "
        "multicast bit) (got '01:00:5e:00:00:01')",
        "c.yaml:3:30: ports.b.mac: must be a unicast MAC address (the first byte's lowest bit is the "
        "multicast bit) (got 'ff:ff:ff:ff:ff:ff')",
        "c.yaml:4:30: ports.c.mac: must not be the all-zero MAC address (got '00:00:00:00:00:00')",
        "c.yaml:5:30: ports.d.mac: must be a MAC address of 6 hex bytes separated by ':', such as "
        "'52:54:00:12:34:56' (got '52:54:00:12:34')",
        "c.yaml:6:30: ports.e.mac: must be a MAC address such as '52:54:00:12:34:56' (got integer 525400123456)",
        "c.yaml:7:23: ports.f.mac: must be a MAC address of 6 hex bytes separated by ':', such as "
        "'52:54:00:12:34:56' (got '52-54-00-12-34-56')",
    ]


def test_duplicate_macs_across_port_types() -> None:
    assert errors("""
        ports:
          a: {type: vhost-user, mac: "52:54:00:00:00:AA"}
          b: {type: vhost-user, mac: "52:54:00:00:00:01"}
          up: {type: tap, mac: "52:54:00:00:00:aa"}
        """) == [
        "c.yaml:2:30: ports.a.mac: MAC address '52:54:00:00:00:aa' is also used by port 'up'",
        "c.yaml:4:24: ports.up.mac: MAC address '52:54:00:00:00:aa' is also used by port 'a'",
    ]


def test_duplicate_tap_ifnames() -> None:
    assert errors("""
        ports:
          vs0: {type: tap}
          up: {type: tap, ifname: vs0}
        """) == [
        "c.yaml:2:8: ports.vs0.ifname: default interface name 'vs0' is also used by port 'up'",
        "c.yaml:3:27: ports.up.ifname: interface name 'vs0' is also used by port 'vs0'",
    ]


# -- feature switches ----------------------------------------------------------


@pytest.mark.parametrize("key", ["mrg_rxbuf", "event_idx", "indirect_desc", "in_order", "offloads"])
def test_feature_switches(key: str) -> None:
    config = parse_config(f"ports: {{vm1: {{type: vhost-user, {key}: false}}}}\n")
    assert getattr(config.ports["vm1"], key) is False
    assert one_error(f"ports:\n  vm1:\n    type: vhost-user\n    {key}: 0\n") == (
        f"c.yaml:4:{7 + len(key)}: ports.vm1.{key}: must be true or false (got integer 0)"
    )


# -- metrics ------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen, host, port",
    [("127.0.0.1:9479", "127.0.0.1", 9479), ("0.0.0.0:1", "0.0.0.0", 1),
     ("[::]:65535", "::", 65535), ("[FE80::1]:80", "fe80::1", 80)],
)
def test_metrics_listen(listen: str, host: str, port: int) -> None:
    config = parse_config(f"metrics: {{listen: '{listen}'}}\nports: {{}}\n")
    assert (config.metrics.host, config.metrics.port) == (host, port)


@pytest.mark.parametrize(
    "listen, message",
    [
        ("localhost:9479", "host must be an IPv4 or IPv6 address, not a name (got 'localhost' in 'localhost:9479')"),
        ("127.0.0.1:0", "port must be 1..65535 (got 0 in '127.0.0.1:0')"),
        ("127.0.0.1:65536", "port must be 1..65535 (got 65536 in '127.0.0.1:65536')"),
        ("127.0.0.1", 'must be "HOST:PORT" with an IP address as HOST, IPv6 in brackets ("[::1]:9479") '
                      "(got '127.0.0.1')"),
        (":9479", "host must be an IPv4 or IPv6 address, not a name (got '' in ':9479')"),
        ("::1:9479", "an IPv6 address must be written in brackets, such as '[::1]:9479' (got '::1:9479')"),
        ("[127.0.0.1]:9479", "brackets are only for IPv6 addresses (got '[127.0.0.1]:9479')"),
        ("[fe80::1%eth0]:9479", "host must be an IPv4 or IPv6 address, not a name (got 'fe80::1%eth0' "
                                "in '[fe80::1%eth0]:9479')"),
    ],
)
def test_bad_metrics_listen(listen: str, message: str) -> None:
    assert one_error(f"ports: {{}}\nmetrics:\n  listen: '{listen}'\n") == f"c.yaml:3:11: metrics.listen: {message}"


def test_metrics_errors() -> None:
    assert errors("""
        ports: {}
        metrics:
          enabled: "yes"
          listen: 9479
          port: 1
        """) == [
        "c.yaml:3:12: metrics.enabled: must be true or false (got string 'yes')",
        "c.yaml:4:11: metrics.listen: must be a string (got integer 9479)",
        "c.yaml:5:3: metrics.port: unknown key 'port' (expected one of: enabled, listen)",
    ]


def test_control_errors() -> None:
    assert errors("ports: {}\ncontrol: {mode: 0660, group: 1.5}\n") == [
        "c.yaml:2:11: control.mode: unknown key 'mode' (expected one of: group)",
        "c.yaml:2:30: control.group: must be a group name or a numeric gid (got float 1.5)",
    ]
    assert one_error("ports: {}\ncontrol: root\n") == "c.yaml:2:10: control: must be a mapping (got string 'root')"


# -- datapath.cpus ---------------------------------------------------------------


def test_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 8})
    assert parse_config("ports: {}\ndatapath: {cpus: [3, 0, 8]}\n").datapath.cpus == (3, 0, 8)
    assert errors("""
        ports: {}
        datapath:
          cpus: [1, 7, 1, -1, '2', 4096]
        """) == [
        "c.yaml:3:13: datapath.cpus[1]: cpu 7 is not available to this process (allowed: 0-3,8)",
        "c.yaml:3:16: datapath.cpus[2]: cpu 1 is listed twice",
        "c.yaml:3:19: datapath.cpus[3]: must be 0..4095 (got -1)",
        "c.yaml:3:23: datapath.cpus[4]: must be an integer 0..4095 (got string '2')",
        "c.yaml:3:28: datapath.cpus[5]: must be 0..4095 (got 4096)",
    ]
    # Without the host checks, any CPU number is accepted.
    assert parse_config("ports: {}\ndatapath: {cpus: [7]}\n", check_host=False).datapath.cpus == (7,)


def test_cpus_must_be_a_non_empty_list() -> None:
    assert one_error("ports: {}\ndatapath: {cpus: []}\n") == (
        "c.yaml:2:18: datapath.cpus: must not be empty (leave 'cpus' out to let the workers run on "
        "every CPU the daemon may use)"
    )
    assert one_error("ports: {}\ndatapath: {cpus: 0-3}\n") == (
        "c.yaml:2:18: datapath.cpus: must be a list of CPU numbers such as [0, 1] (got string '0-3')"
    )


def test_cpu_list_format() -> None:
    assert cpu_list({0, 1}) == "0-1"
    assert cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert cpu_list({3}) == "3"


# -- directories the daemon must create ------------------------------------------


def test_socket_directory_must_be_creatable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert errors(f"""
        runtime_dir: {tmp_path}/run
        ports:
          a: {{type: vhost-user, socket: {blocker}/sub/a.sock}}
          b: {{type: vhost-user, mode: client, socket: {blocker}/b.sock}}
          c: {{type: vhost-user, socket: {tmp_path}/new/dirs/c.sock}}
        """) == [
        f"c.yaml:3:33: ports.a.socket: cannot create {blocker}/sub/a.sock: {blocker} is not a directory",
    ]   # b: QEMU creates a client port's socket; c: the directories can be made


def test_runtime_dir_must_be_creatable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    # Reported once for runtime_dir, not again for each default socket in it.
    assert errors(f"""
        runtime_dir: {blocker}/run
        ports:
          a: {{type: vhost-user}}
          b: {{type: vhost-user}}
        """) == [f"c.yaml:1:14: runtime_dir: cannot create {blocker}/run: {blocker} is not a directory"]
    # Running as root, pretend tmp_path is read-only.
    real_access = os.access
    monkeypatch.setattr(os, "access",
                        lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    uid = os.geteuid()
    assert errors(f"runtime_dir: {tmp_path}/run\nports: {{}}\n") == [
        f"c.yaml:1:14: runtime_dir: cannot create {tmp_path}/run: {tmp_path} is not writable "
        f"by this process (uid {uid})"
    ]
    assert errors(f"runtime_dir: /run/vswitch\nports: {{a: {{type: vhost-user, socket: {tmp_path}/a.sock}}}}\n") == [
        f"c.yaml:2:39: ports.a.socket: cannot create {tmp_path}/a.sock: {tmp_path} is not writable "
        f"by this process (uid {uid})"
    ]
    # check_host=False skips what depends on this host and process.
    parse_config(f"runtime_dir: {tmp_path}/run\nports: {{}}\n", check_host=False)


def test_socket_directories_must_be_writable_by_nobody_else(tmp_path: Path) -> None:
    """Where others may write, they could swap a socket or the lock for a
    link elsewhere (vswitch/safefiles.py): refused, with what to do."""
    shared, theirs, sticky = tmp_path / "shared", tmp_path / "theirs", tmp_path / "sticky"
    for directory, mode in ((shared, 0o777), (theirs, 0o755), (sticky, 0o1777)):
        directory.mkdir()
        directory.chmod(mode)
    os.chown(theirs, 65534, 65534)
    try:
        nobody = f" ({pwd.getpwuid(65534).pw_name})"
    except KeyError:
        nobody = ""
    assert errors(f"""
        runtime_dir: {shared}/run
        ports:
          a: {{type: vhost-user, socket: {theirs}/a.sock}}
          b: {{type: vhost-user, mode: client, socket: {shared}/b.sock}}
          c: {{type: vhost-user, socket: {sticky}/c.sock}}
        """) == [
        f"c.yaml:1:14: runtime_dir: {shared} (on the way to {shared}/run) is mode 0777: writable "
        "by group or others (and not sticky), who could replace the files vswitchd creates in it; "
        f"run chmod go-w {shared}, or use a directory only root can write",
        f"c.yaml:3:33: ports.a.socket: {theirs} is owned by uid 65534{nobody}, not by root: that "
        "user could replace the files vswitchd creates in it; "
        f"run chown root {theirs}, or use another directory",
    ]   # b: QEMU creates a client port's socket; c: sticky, like /tmp
    # check_host=False skips what depends on this host and process.
    parse_config(f"runtime_dir: {shared}/run\nports: {{}}\n", check_host=False)


def test_load_config_check_host_flag(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text("runtime_dir: /etc/hostname/x\nports: {}\n")
    with pytest.raises(ConfigError, match="runtime_dir: cannot create /etc/hostname/x"):
        load_config(path)
    assert load_config(path, check_host=False).runtime_dir == "/etc/hostname/x"


# -- many problems at once --------------------------------------------------------


def test_new_keys_all_errors_at_once() -> None:
    assert errors(f"""
        control: {{group: {MISSING}}}
        metrics: {{listen: "localhost:80"}}
        datapath: {{cpus: [0, 0]}}
        defaults: {{queues: 99, socket_mode: 0400}}
        ports:
          vm1:
            type: vhost-user
            mode: client
            socket_group: kvm
            mac: "01:02:03:04:05:06"
            mtu: 10
          vm2: {{type: vhost-user, socket_owner: {MISSING}, offloads: maybe, mac: "52:54:00:00:00:01"}}
          up: {{type: tap, ifname: way-too-long-name0, mac: "52:54:00:00:00:01", queus: 1}}
        """) == [
        f"c.yaml:1:18: control.group: unknown group '{MISSING}' (no such group on this host; "
        "create it or give a numeric gid)",
        "c.yaml:2:19: metrics.listen: host must be an IPv4 or IPv6 address, not a name "
        "(got 'localhost' in 'localhost:80')",
        "c.yaml:3:22: datapath.cpus[1]: cpu 0 is listed twice",
        "c.yaml:4:20: defaults.queues: must be 1..64 (got 99)",
        "c.yaml:4:37: defaults.socket_mode: must give the owner read and write permission (0600), "
        "else nobody can connect as the owner (got 0400)",
        "c.yaml:9:5: ports.vm1.socket_group: only for server-mode ports: in client mode QEMU creates "
        "the socket and sets its owner, group and mode",
        "c.yaml:10:10: ports.vm1.mac: must be a unicast MAC address (the first byte's lowest bit is "
        "the multicast bit) (got '01:02:03:04:05:06')",
        "c.yaml:11:10: ports.vm1.mtu: must be 68..65535 (got 10)",
        f"c.yaml:12:41: ports.vm2.socket_owner: unknown user '{MISSING}' (no such user on this host; "
        "create it or give a numeric uid)",
        "c.yaml:12:78: ports.vm2.offloads: must be true or false (got string 'maybe')",
        "c.yaml:12:90: ports.vm2.mac: MAC address '52:54:00:00:00:01' is also used by port 'up'",
        "c.yaml:13:27: ports.up.ifname: not a valid interface name: at most 15 bytes, no '/', ':', "
        "'%' or whitespace (got 'way-too-long-name0', 18 bytes)",
        "c.yaml:13:52: ports.up.mac: MAC address '52:54:00:00:00:01' is also used by port 'vm2'",
        "c.yaml:13:73: ports.up.queus: unknown key 'queus', did you mean 'queues'? (expected one of: "
        + TAP_KEYS + ")",
    ]


# --------------------------------------------------------------------------
# Forwarding policies (docs/tenants.md): vlan, allowed_macs, storm_control,
# ingress_policing, egress_policing, mirror


@pytest.mark.parametrize("text, bps", [
    (1000, 1000), ("1000", 1000), ("1000bit", 1000), ("500k", 500_000), ("500kbit", 500_000),
    ("100Mbit", 100_000_000), ("100mbit", 100_000_000), ("100 Mbit", 100_000_000),
    ("1G", 1_000_000_000), ("2.5Gbit", 2_500_000_000), ("1.5Kbit/s", 1500), ("0.0015M", 1500),
    ("1.0005k", 1001),   # rounded to whole bits/s, halves up
])
def test_parse_rate(text: object, bps: int) -> None:
    assert config_module.parse_rate(text) == bps


@pytest.mark.parametrize("text, message", [
    ("100MBps", "rates are in bits per second"), ("10mbps", "tc's 'mbps' means megabytes/s"),
    ("1MB", "rates are in bits per second"), ("5T", "unknown unit 'T' (use k, M or G"),
    ("1kk", "unknown unit 'kk'"), ("Mbit", "must be a number with an optional unit"),
    ("-5M", "must be a number"), ("1,5M", "must be a number"), ("", "must be a number"),
    ("1e6", "must be a number"), (1.5, "must be an integer (bits/s) or a string such as '100Mbit'"),
    (True, "must be an integer"), (None, "must be an integer"),
])
def test_parse_rate_rejects(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        config_module.parse_rate(text)


@pytest.mark.parametrize("text, size", [
    (1514, 1514), ("1514", 1514), ("1514B", 1514), ("64KiB", 65536), ("64k", 64000), ("64kB", 64000),
    ("1.5MiB", 1_572_864), ("2M", 2_000_000), ("2MB", 2_000_000), ("1GiB", 2**30), ("1G", 10**9),
    ("1.5 KiB", 1536), ("1.0001KiB", 1024),
])
def test_parse_burst(text: object, size: int) -> None:
    assert config_module.parse_burst(text) == size


@pytest.mark.parametrize("text, message", [
    ("64K", "unknown unit 'K' (use B, k, kB, KiB, M, MB, MiB, G, GB or GiB)"),
    ("64KB", "unknown unit 'KB'"), ("1kiB", "unknown unit 'kiB'"), ("8kbit", "unknown unit 'kbit'"),
    ("KiB", "must be a number"), (2.5, "must be an integer (bytes) or a string such as '64KiB'"),
])
def test_parse_burst_rejects(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        config_module.parse_burst(text)


def test_vlan_ranges_compress_sorted_ids() -> None:
    assert config_module.vlan_ranges((1, 10, 20, 21, 22, 4094)) == [1, 10, "20-22", 4094]
    assert config_module.vlan_ranges(()) == []


POLICIES = """
ports:
  vm1:
    type: vhost-user
    mac: "52:54:00:00:00:01"
    vlan: {mode: access, id: 10}
    allowed_macs: ["52:54:00:00:00:AA", "02:00:00:00:00:02"]
    storm_control: {broadcast: 1000, multicast: 2000, unknown_unicast: 3000}
    ingress_policing: {rate: "100Mbit", burst: "64KiB", pps: 20000, pps_burst: 64}
    egress_policing: {rate: 1G}
    mirror: {to: tap0, direction: egress}
  vm2:
    type: vhost-user
    vlan: {mode: trunk, allowed: [30, "20-25", "22-26", 4094, "7"], native: 1}
    ingress_policing: {pps: 100000}
    mirror: {to: vm1}
  tap0:
    type: tap
    vlan: {mode: trunk, native: 5}
    allowed_macs: ["02:00:00:00:00:02"]
    storm_control: {unknown_unicast: 1}
    egress_policing: {rate: 10Mbit}
    ingress_policing: {rate: 400Gbit, pps: 100}
"""


def test_every_policy_key() -> None:
    config = parse_config(doc(POLICIES))
    vm1, vm2, tap0 = config.ports["vm1"], config.ports["vm2"], config.ports["tap0"]
    assert vm1.vlan == VlanConfig(mode="access", id=10)
    assert vm1.allowed_macs == ("52:54:00:00:00:aa", "02:00:00:00:00:02")
    assert vm1.storm_control == StormControlConfig(broadcast=1000, multicast=2000, unknown_unicast=3000)
    assert vm1.ingress_policing == PolicerConfig(rate_bps=100_000_000, burst_bytes=65536, pps=20000,
                                                 pps_burst=64)
    # Default bursts: 20 ms at the rate, at least 64 KiB / 64 frames.
    assert vm1.egress_policing == PolicerConfig(rate_bps=10**9, burst_bytes=2_500_000)
    assert vm1.mirror == MirrorConfig(to="tap0", direction="egress")
    assert vm2.vlan == VlanConfig(mode="trunk", allowed=(7, *range(20, 27), 30, 4094), native=1)
    assert vm2.ingress_policing == PolicerConfig(pps=100000, pps_burst=2000)
    assert vm2.mirror == MirrorConfig(to="vm1", direction="both")
    assert (vm2.allowed_macs, vm2.storm_control, vm2.egress_policing) == ((), None, None)
    assert tap0 == TapPortConfig(
        name="tap0", ifname="tap0", queues=1, vlan=VlanConfig(mode="trunk", native=5),
        allowed_macs=("02:00:00:00:00:02",), storm_control=StormControlConfig(unknown_unicast=1),
        egress_policing=PolicerConfig(rate_bps=10_000_000, burst_bytes=65536),
        ingress_policing=PolicerConfig(rate_bps=400 * 10**9, burst_bytes=10**9, pps=100, pps_burst=64))


def test_policies_default_to_off() -> None:
    config = parse_config("ports: {vm1: {type: vhost-user}, up: {type: tap}}\n")
    for port in config.ports.values():
        assert (port.vlan, port.allowed_macs, port.storm_control, port.ingress_policing,
                port.egress_policing, port.mirror) == (None, (), None, None, None, None)
    assert VhostUserPortConfig(name="p", mode="server", socket="/s", queues=1).vlan is None
    assert TapPortConfig(name="t", ifname="t", queues=1).allowed_macs == ()
    assert "vlan" not in config.ports["vm1"].to_dict()


def test_policies_round_trip_through_to_dict() -> None:
    config = parse_config(doc(POLICIES))
    as_dict = config.to_dict()
    assert as_dict["ports"]["vm2"]["vlan"] == {"mode": "trunk", "allowed": [7, "20-26", 30, 4094],
                                               "native": 1}
    assert as_dict["ports"]["vm1"]["egress_policing"] == {"rate": 10**9, "burst": 2_500_000}
    assert parse_config(yaml.safe_dump(as_dict, sort_keys=False)) == config


def test_policy_burst_defaults_follow_the_rate() -> None:
    def policer(text: str) -> PolicerConfig:
        port = parse_config("ports: {p: {type: tap, ingress_policing: %s}}\n" % text).ports["p"]
        return port.ingress_policing

    assert policer("{rate: 1k}").burst_bytes == 65536
    assert policer("{rate: 26214400}").burst_bytes == 65536           # exactly 64 KiB per 20 ms
    assert policer("{rate: 26214600}").burst_bytes == 65537           # rounded: 65536.5 -> 65537
    assert policer("{rate: 2.5G}").burst_bytes == 6_250_000
    assert policer("{pps: 1}").pps_burst == 64
    assert policer("{pps: 1000000}").pps_burst == 20000
    assert policer("{pps: 1000}") == PolicerConfig(pps=1000, pps_burst=64)


def test_vlan_errors() -> None:
    assert errors("""
        ports:
          a: {type: vhost-user, vlan: {mode: access}}
          b: {type: vhost-user, vlan: {mode: access, id: 4095, allowed: [1], native: 2}}
          c: {type: vhost-user, vlan: {mode: trunk}}
          d: {type: vhost-user, vlan: {mode: trunk, allowed: []}}
          e: {type: vhost-user, vlan: {mode: trunk, id: 5, native: 0}}
          f: {type: vhost-user, vlan: {id: 5, mode: hybrid}}
          g: {type: vhost-user, vlan: {id: 5}}
          h: {type: tap, vlan: [10]}
          i: {type: tap, vlan: {mode: trunk, allowed: ["30-20", "0-9", 4095, "5-4096", x, 1.5, true, "010"]}}
          j: {type: tap, vlan: {mode: trunk, allowed: 10, nativ: 3}}
        """) == [
        "c.yaml:2:31: ports.a.vlan: an access port needs 'id', its VLAN (1..4094)",
        "c.yaml:3:50: ports.b.vlan.id: must be 1..4094 (802.1Q reserves 0 and 4095) (got 4095)",
        "c.yaml:3:56: ports.b.vlan.allowed: only for trunk ports: an access port carries the one VLAN "
        "'id', untagged",
        "c.yaml:3:70: ports.b.vlan.native: only for trunk ports: an access port carries the one VLAN "
        "'id', untagged",
        "c.yaml:4:31: ports.c.vlan: a trunk port needs 'allowed' (the tagged VLANs it carries) or "
        "'native' (its untagged VLAN), or both",
        "c.yaml:5:54: ports.d.vlan.allowed: a trunk port needs 'allowed' (the tagged VLANs it carries) "
        "or 'native' (its untagged VLAN), or both",
        "c.yaml:6:45: ports.e.vlan.id: only for access ports: a trunk port lists its tagged VLANs in "
        "'allowed' and its untagged VLAN in 'native'",
        "c.yaml:6:60: ports.e.vlan.native: must be 1..4094 (802.1Q reserves 0 and 4095) (got 0)",
        "c.yaml:7:45: ports.f.vlan.mode: must be one of: access, trunk (got 'hybrid')",
        "c.yaml:8:31: ports.g.vlan: missing required key 'mode'",
        "c.yaml:9:24: ports.h.vlan: must be a mapping (got a list)",
        "c.yaml:10:48: ports.i.vlan.allowed[0]: range is reversed: its first id must not be above "
        "its last; write '20-30' (got '30-20')",
        "c.yaml:10:57: ports.i.vlan.allowed[1]: VLAN ids must be 1..4094 (802.1Q reserves 0 and 4095) "
        "(got '0-9')",
        "c.yaml:10:64: ports.i.vlan.allowed[2]: must be 1..4094 (802.1Q reserves 0 and 4095) (got 4095)",
        "c.yaml:10:70: ports.i.vlan.allowed[3]: VLAN ids must be 1..4094 (got '5-4096')",
        "c.yaml:10:80: ports.i.vlan.allowed[4]: must be a VLAN id 1..4094 or a range such as '20-30' "
        "(got string 'x')",
        "c.yaml:10:83: ports.i.vlan.allowed[5]: must be a VLAN id 1..4094 or a range such as '20-30' "
        "(got float 1.5)",
        "c.yaml:10:88: ports.i.vlan.allowed[6]: must be a VLAN id 1..4094 or a range such as '20-30' "
        "(got boolean true)",
        "c.yaml:10:94: ports.i.vlan.allowed[7]: must be a VLAN id 1..4094 or a range such as '20-30' "
        "(got string '010')",
        "c.yaml:11:47: ports.j.vlan.allowed: must be a list of VLAN ids and ranges such as "
        "[10, '20-30'] (got integer 10)",
        "c.yaml:11:51: ports.j.vlan.nativ: unknown key 'nativ', did you mean 'native'? "
        "(expected one of: allowed, id, mode, native)",
    ]


def test_trunk_native_alone_and_empty_allowed_with_native() -> None:
    config = parse_config("ports: {a: {type: tap, vlan: {mode: trunk, allowed: [], native: 4094}}}\n")
    assert config.ports["a"].vlan == VlanConfig(mode="trunk", allowed=(), native=4094)


def test_allowed_macs_errors() -> None:
    assert errors("""
        ports:
          a: {type: vhost-user, mac: "52:54:00:00:00:01", allowed_macs: []}
          b: {type: vhost-user, allowed_macs: "52:54:00:00:00:02"}
          c: {type: vhost-user, allowed_macs: ["52:54:00:00:00:0A", "52:54:00:00:00:0a", "33:33:00:00:00:01", "00:00:00:00:00:00", "52-54-00-00-00-03"]}
          d: {type: tap, allowed_macs: ["52:54:00:00:00:01", "52:54:00:00:00:0a"]}
        """) == [
        "c.yaml:2:65: ports.a.allowed_macs: must not be empty (leave 'allowed_macs' out to allow every "
        "source MAC, or list the port's MAC to allow only it)",
        "c.yaml:3:39: ports.b.allowed_macs: must be a list of MAC addresses such as "
        "['52:54:00:12:34:56'] (got string '52:54:00:00:00:02')",
        "c.yaml:4:61: ports.c.allowed_macs[1]: '52:54:00:00:00:0a' is listed twice (first at "
        "ports.c.allowed_macs[0])",
        "c.yaml:4:82: ports.c.allowed_macs[2]: must be a unicast MAC address (the first byte's lowest "
        "bit is the multicast bit) (got '33:33:00:00:00:01')",
        "c.yaml:4:103: ports.c.allowed_macs[3]: must not be the all-zero MAC address "
        "(got '00:00:00:00:00:00')",
        "c.yaml:4:124: ports.c.allowed_macs[4]: must be a MAC address of 6 hex bytes separated by ':', "
        "such as '52:54:00:12:34:56' (got '52-54-00-00-00-03')",
        # Another port's static MAC: allowing it would let this port take that port's traffic.
        "c.yaml:5:33: ports.d.allowed_macs[0]: '52:54:00:00:00:01' is the mac of port 'a' (its static "
        "FDB entry): port 'd' may not send from it",
    ]


def test_allowed_macs_bounded_by_what_the_datapath_holds() -> None:
    # Found at validation, not when a reload reaches the datapath.
    def listing(n: int, port: int) -> str:
        return ", ".join(f'"52:54:00:{port:02x}:00:{i:02x}"' for i in range(1, n + 1))
    assert errors(f"""
        ports:
          a: {{type: vhost-user, allowed_macs: [{listing(MAX_ALLOWED_MACS, 1)}]}}
          b: {{type: vhost-user, allowed_macs: [{listing(MAX_ALLOWED_MACS + 1, 2)}]}}
          c: {{type: vhost-user, mac: "52:54:00:03:00:01", allowed_macs: [{listing(MAX_ALLOWED_MACS, 3)}]}}
          d: {{type: vhost-user, mac: "52:54:00:ff:00:01", allowed_macs: [{listing(MAX_ALLOWED_MACS, 4)}]}}
        """) == [
        f"c.yaml:3:39: ports.b.allowed_macs: lists {MAX_ALLOWED_MACS + 1} MAC addresses; "
        f"a port may allow at most {MAX_ALLOWED_MACS} in all",
        f"c.yaml:5:65: ports.d.allowed_macs: lists {MAX_ALLOWED_MACS} MAC addresses and the "
        f"port's mac; a port may allow at most {MAX_ALLOWED_MACS} in all",
    ]


def test_port_count_bounded_by_the_datapath_slots() -> None:
    def ports(n: int) -> str:
        return "\n".join(f"  p{i}: {{type: vhost-user}}" for i in range(n))
    assert len(parse_config("ports:\n" + ports(MAX_PORTS), "c.yaml").ports) == MAX_PORTS
    assert errors("ports:\n" + ports(MAX_PORTS + 1)) == [
        f"c.yaml:2:3: ports: declares {MAX_PORTS + 1} ports; the switch holds at most {MAX_PORTS}",
    ]


def test_allowed_macs_may_repeat_the_own_mac_and_be_shared() -> None:
    # A MAC that moves between two guests (a failover pair) may be allowed on both.
    config = parse_config(doc("""
        ports:
          a: {type: vhost-user, mac: "52:54:00:00:00:01", allowed_macs: ["52:54:00:00:00:01", "02:00:00:00:00:99"]}
          b: {type: vhost-user, allowed_macs: ["02:00:00:00:00:99"]}
        """))
    assert config.ports["b"].allowed_macs == ("02:00:00:00:00:99",)


def test_storm_control_errors() -> None:
    assert errors("""
        ports:
          a: {type: vhost-user, storm_control: {}}
          b: {type: vhost-user, storm_control: {broadcast: 0, multicast: 100000001, unknown_unicast: 1.0}}
          c: {type: tap, storm_control: {unknown-unicast: 10}}
          d: {type: tap, storm_control: 100}
        """) == [
        "c.yaml:2:40: ports.a.storm_control: must set at least one of: broadcast, multicast, "
        "unknown_unicast (frames/s; leave 'storm_control' out for no limit)",
        "c.yaml:3:52: ports.b.storm_control.broadcast: must be 1..100000000 (got 0)",
        "c.yaml:3:66: ports.b.storm_control.multicast: must be 1..100000000 (got 100000001)",
        "c.yaml:3:94: ports.b.storm_control.unknown_unicast: must be an integer 1..100000000 "
        "(got float 1.0)",
        "c.yaml:4:34: ports.c.storm_control.unknown-unicast: unknown key 'unknown-unicast', did you "
        "mean 'unknown_unicast'? (expected one of: broadcast, multicast, unknown_unicast)",
        "c.yaml:5:33: ports.d.storm_control: must be a mapping (got integer 100)",
    ]


def test_policing_errors() -> None:
    assert errors("""
        ports:
          a: {type: vhost-user, ingress_policing: {burst: 2000}}
          b: {type: vhost-user, ingress_policing: {rate: 999, pps: 0, pps_burst: 0}}
          c: {type: vhost-user, ingress_policing: {rate: 401G, burst: 1KiB}}
          d: {type: vhost-user, mtu: 9000, egress_policing: {rate: 1G, burst: 9013}}
          e: {type: tap, mtu: 9000, egress_policing: {rate: 1G, burst: "8KiB"}}
          f: {type: tap, egress_policing: {rate: 100MBps, burst: 2GiB, pps_burst: 10, tokens: 1}}
          g: {type: tap, ingress_policing: {rate: 1.5e+6, burst: 1.5}}
        """) == [
        "c.yaml:2:43: ports.a.ingress_policing: needs 'rate' (bits/s) or 'pps' (frames/s), or both",
        "c.yaml:2:44: ports.a.ingress_policing.burst: only with 'rate': it sizes the byte bucket "
        "(the frame bucket's size is 'pps_burst')",
        "c.yaml:3:50: ports.b.ingress_policing.rate: must be 1kbit..400Gbit, 1000..400000000000 bits/s "
        "(got 999)",
        "c.yaml:3:60: ports.b.ingress_policing.pps: must be 1..1000000000 (got 0)",
        "c.yaml:3:74: ports.b.ingress_policing.pps_burst: must be 1..1000000000 (got 0)",
        "c.yaml:4:50: ports.c.ingress_policing.rate: must be 1kbit..400Gbit, 1000..400000000000 bits/s "
        "(got '401G' = 401000000000 bit/s)",
        "c.yaml:4:63: ports.c.ingress_policing.burst: must be at least 1514 bytes so that a full "
        "1514-byte frame fits (got '1KiB' = 1024 bytes)",
        "c.yaml:5:71: ports.d.egress_policing.burst: must be at least 9014 bytes so that a full frame "
        "of the port's mtu 9000 (9014 bytes with the Ethernet header) fits (got 9013)",
        "c.yaml:6:64: ports.e.egress_policing.burst: must be at least 9014 bytes so that a full frame "
        "of the port's mtu 9000 (9014 bytes with the Ethernet header) fits (got '8KiB' = 8192 bytes)",
        "c.yaml:7:42: ports.f.egress_policing.rate: rates are in bits per second: write e.g. "
        "'100Mbit' (bytes per second are not accepted; tc's 'mbps' means megabytes/s) "
        "(got string '100MBps')",
        "c.yaml:7:58: ports.f.egress_policing.burst: must be at most 1GiB, 1073741824 bytes "
        "(got '2GiB' = 2147483648 bytes)",
        "c.yaml:7:64: ports.f.egress_policing.pps_burst: only with 'pps': it sizes the frame bucket "
        "(the byte bucket's size is 'burst')",
        "c.yaml:7:79: ports.f.egress_policing.tokens: unknown key 'tokens' (expected one of: action, burst, "
        "pps, pps_burst, rate)",
        "c.yaml:8:43: ports.g.ingress_policing.rate: must be an integer (bits/s) or a string such as "
        "'100Mbit' (got float 1.5e+6)",
        "c.yaml:8:58: ports.g.ingress_policing.burst: must be an integer (bytes) or a string such as "
        "'64KiB' (got float 1.5)",
    ]


def test_policing_mtu_from_defaults() -> None:
    [found] = errors("""
        defaults: {mtu: 4000}
        ports: {a: {type: vhost-user, ingress_policing: {rate: 1G, burst: 4000}}}
        """)
    assert "ports.a.ingress_policing.burst: must be at least 4014 bytes" in found


def test_mirror_errors() -> None:
    assert errors("""
        ports:
          a: {type: vhost-user, mirror: {to: a}}
          b: {type: vhost-user, mirror: {to: cc, direction: in}}
          c: {type: vhost-user, mirror: {direction: both}}
          d: {type: tap, mirror: {to: 5}}
          e: {type: tap, mirror: sniffer}
        """) == [
        "c.yaml:2:38: ports.a.mirror.to: a port cannot mirror to itself (got 'a')",
        "c.yaml:3:38: ports.b.mirror.to: no port named 'cc', did you mean 'c'?",
        "c.yaml:3:53: ports.b.mirror.direction: must be one of: ingress, egress, both (got 'in')",
        "c.yaml:4:33: ports.c.mirror: missing required key 'to'",
        "c.yaml:5:31: ports.d.mirror.to: must be a string (got integer 5)",
        "c.yaml:6:26: ports.e.mirror: must be a mapping (got string 'sniffer')",
    ]


def test_mirror_loops_name_the_ports() -> None:
    assert errors("""
        ports:
          a: {type: vhost-user, mirror: {to: b, direction: ingress}}
          b: {type: vhost-user, mirror: {to: a, direction: egress}}
          c: {type: tap, mirror: {to: d}}
          d: {type: tap, mirror: {to: e}}
          e: {type: tap, mirror: {to: c}}
        """) == [
        "c.yaml:2:38: ports.a.mirror.to: mirror loop: port 'b' mirrors back to 'a' (a -> b -> a)",
        "c.yaml:3:38: ports.b.mirror.to: mirror loop: port 'a' mirrors back to 'b' (b -> a -> b)",
        "c.yaml:4:31: ports.c.mirror.to: mirror loop: port 'e' mirrors back to 'c' (c -> d -> e -> c)",
        "c.yaml:5:31: ports.d.mirror.to: mirror loop: port 'c' mirrors back to 'd' (d -> e -> c -> d)",
        "c.yaml:6:31: ports.e.mirror.to: mirror loop: port 'd' mirrors back to 'e' (e -> c -> d -> e)",
    ]


def test_mirror_chains_and_fan_in_are_fine() -> None:
    config = parse_config(doc("""
        ports:
          a: {type: vhost-user, mirror: {to: b}}
          b: {type: vhost-user, mirror: {to: sniffer}}
          c: {type: vhost-user, mirror: {to: sniffer, direction: ingress}}
          sniffer: {type: tap}
        """))
    assert [p.mirror.to for p in config.ports.values() if p.mirror] == ["b", "sniffer", "sniffer"]


def test_mirror_to_a_port_that_is_itself_invalid_reports_only_that_port() -> None:
    [found] = errors("""
        ports:
          a: {type: vhost-user, mirror: {to: b}}
          b: {type: vhost-user, queues: 0}
        """)
    assert "ports.b.queues: must be 1..64 (got 0)" in found


# --- FDB --------------------------------------------------------------------------

def test_fdb_defaults_when_absent() -> None:
    config = parse_config("ports: {vm1: {type: vhost-user}, up: {type: tap}}\n")
    assert config.fdb == FdbConfig(aging_time=300, max_entries_per_port=1024, static=())
    assert config.ports["vm1"].fdb_max_entries is None and config.ports["up"].fdb_max_entries is None
    assert "fdb" not in config.to_dict()


def test_fdb_section_parsed_and_round_trips() -> None:
    config = parse_config(doc("""
        fdb:
          aging_time: 2
          max_entries_per_port: 100
          static:
            - {mac: "52:54:00:00:00:AA", port: vm1, vlan: 10}
            - {mac: "52:54:00:00:00:aa", port: up}
        ports:
          vm1: {type: vhost-user, fdb_max_entries: 0}
          up: {type: tap, fdb_max_entries: 5000}
        """))
    assert config.fdb == FdbConfig(aging_time=2, max_entries_per_port=100, static=(
        StaticFdbEntry(mac="52:54:00:00:00:aa", port="vm1", vlan=10),
        StaticFdbEntry(mac="52:54:00:00:00:aa", port="up", vlan=None)))
    assert (config.ports["vm1"].fdb_max_entries, config.ports["up"].fdb_max_entries) == (0, 5000)
    assert parse_config(yaml.safe_dump(config.to_dict(), sort_keys=False)) == config


def test_fdb_static_errors_all_at_once() -> None:
    assert errors("""
        fdb:
          static:
            - {mac: "52:54:00:00:00:01", port: vm9}
            - {mac: "52:54:00:00:00:02", port: vm1, vlan: 7}
            - {mac: "52:54:00:00:00:02", port: up, vlan: 7}
            - {mac: "52:54:00:00:00:03", port: up}
            - {port: vm1, vln: 3}
        ports:
          vm1: {type: vhost-user}
          up: {type: tap, mac: "52:54:00:00:00:03"}
        """) == [
        "c.yaml:3:40: fdb.static[0].port: no port named 'vm9', did you mean 'vm1'? (ports: up, vm1)",
        "c.yaml:5:7: fdb.static[2]: 52:54:00:00:00:02 in VLAN 7 is already pinned by fdb.static[1]",
        "c.yaml:6:7: fdb.static[3]: 52:54:00:00:00:03 in VLAN 0 is already pinned by port 'up' (its mac)",
        "c.yaml:7:7: fdb.static[4]: missing required key 'mac'",
        "c.yaml:7:19: fdb.static[4].vln: unknown key 'vln', did you mean 'vlan'? (expected one of: "
        "mac, port, vlan)",
    ]


def test_fdb_static_of_an_invalid_port_reports_the_port_only() -> None:
    # the port is named in the file but invalid: its own error is enough
    assert errors("""
        fdb: {static: [{mac: "52:54:00:00:00:01", port: vm1}]}
        ports:
          vm1: {type: vhost-user, queues: 0}
        """) == ["c.yaml:3:35: ports.vm1.queues: must be 1..64 (got 0)"]


def test_ingress_policer_may_hold_egress_only_drops() -> None:
    config = parse_config(doc("""
        ports:
          vm1: {type: vhost-user, ingress_policing: {rate: 100Mbit, action: hold}}
        """))
    assert config.ports["vm1"].ingress_policing.action == "hold"
    assert parse_config(yaml.safe_dump(config.to_dict(), sort_keys=False)) == config
    assert errors("""
        ports:
          vm1: {type: vhost-user, egress_policing: {rate: 100Mbit, action: hold}}
          vm2: {type: vhost-user, ingress_policing: {rate: 100Mbit, action: queue}}
        """) == [
        "c.yaml:2:68: ports.vm1.egress_policing.action: egress policing can only drop: frames to a "
        "port come from many senders and the switch keeps no queue per port (got 'hold')",
        "c.yaml:3:69: ports.vm2.ingress_policing.action: must be one of: drop, hold (got 'queue')",
    ]


def test_hold_needs_a_guest_tx_ring() -> None:
    assert errors("""
        ports:
          up: {type: tap, ingress_policing: {rate: 100Mbit, action: hold}}
        """) == ["c.yaml:2:61: ports.up.ingress_policing.action: 'hold' needs a vhost-user port (frames "
                 "wait in the guest's TX ring); use 'drop' here (got 'hold')"]


def test_tap_io_defaults_to_io_uring_and_accepts_write() -> None:
    assert parse_config("ports: {}\n").datapath.tap_io == "io_uring"
    config = parse_config("ports: {}\ndatapath: {tap_io: write}\n")
    assert config.datapath.tap_io == "write"
    assert parse_config(yaml.safe_dump(config.to_dict(), sort_keys=False)) == config


def test_tap_io_rejects_other_methods_with_its_position() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("ports: {}\ndatapath:\n  tap_io: aio\n", "c.yaml")
    assert str(info.value) == "c.yaml:3:11: datapath.tap_io: must be one of: io_uring, write (got 'aio')"


# -- limits and allow_file_memory ---------------------------------------------------


def test_limits_default_to_10_s_1_tib_per_port_and_32_tib_in_all() -> None:
    config = parse_config("ports: {a: {type: vhost-user}}\n")
    assert config.limits == config_module.LimitsConfig(10.0, 1 << 40, 32 << 40)
    assert config.ports["a"].allow_file_memory is False
    assert "limits" not in config.to_dict()       # a file without it round-trips unchanged


def test_limits_take_seconds_and_sizes_with_binary_units() -> None:
    config = parse_config(doc("""
        limits:
          message_timeout: 0.25
          guest_memory_per_port: 1.5 GiB
          guest_memory_total: 2TiB
        ports: {}
        """))
    assert config.limits == config_module.LimitsConfig(0.25, 3 << 29, 2 << 40)
    assert parse_config(yaml.safe_dump(config.to_dict())) == config
    assert parse_config("limits: {message_timeout: 30, guest_memory_per_port: 1048576}\nports: {}\n").limits \
        == config_module.LimitsConfig(30.0, 1 << 20, 32 << 40)
    assert config_module.parse_size("4KiB") == 4096 and config_module.parse_size(7) == 7
    with pytest.raises(ValueError, match="unknown unit 'GB'"):
        config_module.parse_size("1GB")


def test_limits_errors_are_positioned() -> None:
    assert errors("""
        limits:
          message_timeout: 0.01
          guest_memory_per_port: 2TiB
          guest_memory_total: 1TiB
        ports: {}
        """) == [
        "c.yaml:2:20: limits.message_timeout: must be 0.1..3600 seconds (got 0.01)",
        "c.yaml:4:23: limits.guest_memory_total: must be at least limits.guest_memory_per_port "
        "(2199023255552 bytes) (got 1099511627776)",
    ]
    assert one_error("limits: {guest_memory_per_port: lots}\nports: {}\n") == (
        "c.yaml:1:33: limits.guest_memory_per_port: must be a number with an optional unit (got string 'lots')")
    assert one_error("limits: {message_timeout: 5 s}\nports: {}\n") == (
        "c.yaml:1:27: limits.message_timeout: must be a number of seconds 0.1..3600 (got string '5 s')")


def test_allow_file_memory_from_defaults_and_per_port() -> None:
    config = parse_config(doc("""
        defaults: {allow_file_memory: true}
        ports:
          a: {type: vhost-user}
          b: {type: vhost-user, allow_file_memory: false}
          up: {type: tap}
        """))
    assert (config.ports["a"].allow_file_memory, config.ports["b"].allow_file_memory) == (True, False)
    assert one_error("ports: {a: {type: vhost-user, allow_file_memory: 'no'}}\n") == (
        "c.yaml:1:50: ports.a.allow_file_memory: must be true or false (got string 'no')")
