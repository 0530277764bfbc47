"""Tests for vswitch.config: loading, defaults, and positioned error reports."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from vswitch.config import (
    TapPortConfig,
    Config,
    ConfigError,
    ConfigIssue,
    DatapathConfig,
    VhostUserPortConfig,
    load_config,
    parse_config,
)


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
    assert as_dict == {
        "version": 1,
        "runtime_dir": "/run/vs",
        "ports": {
            "vm1": {"type": "vhost-user", "mode": "server", "socket": "/run/vs/one.sock", "queues": 2},
            "vm2": {"type": "vhost-user", "mode": "client", "socket": "/run/vs/vm2.sock", "queues": 1},
        },
        "datapath": {"workers": 4, "mode": "adaptive"},
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
        "c.yaml:3:1: x: unknown key 'x' (expected one of: datapath, ports, runtime_dir, version)"
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
        "c.yaml:4:5: ports.vm1.queus: unknown key 'queus' (expected one of: mode, queues, socket, type)",
        "c.yaml:5:24: datapath.threads: unknown key 'threads' (expected one of: mode, workers)",
        "c.yaml:6:1: portz: unknown key 'portz' (expected one of: datapath, ports, runtime_dir, version)",
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
        "c.yaml:3:5: ports.vm1: missing required key 'type' (supported: vhost-user, tap)",
        "c.yaml:4:13: ports.vm1.queues: must be 1..64 (got 99)",
    ]


def test_unsupported_port_type() -> None:
    # Keys of an unsupported type are not second-guessed.
    assert one_error("""
        ports:
          vx0:
            type: vxlan
            vni: 5
        """) == "c.yaml:3:11: ports.vx0.type: unsupported port type 'vxlan' (supported: vhost-user, tap)"
    assert one_error("ports: {vm1: {type: 1}}") == (
        "c.yaml:1:21: ports.vm1.type: must be one of: vhost-user, tap (got integer 1)"
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
        "c.yaml:3:5: ports.vm1: missing required key 'type' (supported: vhost-user, tap)",
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
        "c.yaml:7:5: ports.vm1.sockt: unknown key 'sockt' (expected one of: mode, queues, socket, type)",
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
    assert lines[2] == "t.yaml:2:62: ports.up.create: must be true or false (got 3)"
