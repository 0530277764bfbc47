"""vswitch/api.py: the command table that the control socket and vswitchctl
are both built from, SwitchAPI over a stand-in switch (no datapath), and the
rule that clients reach the switch through SwitchAPI only."""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vswitch import __version__, cli
from vswitch.api import BY_NAME, COMMANDS, CommandError, SwitchAPI, debug_refusal
from vswitch.control import ControlServer

VSWITCH = Path(__file__).resolve().parents[2] / "vswitch"
DAEMON_COMMANDS = [c for c in COMMANDS if c.runs_in == "daemon"]
DEBUG_COMMANDS = [c for c in COMMANDS if c.debug]


# --- clients go through SwitchAPI ------------------------------------------------------

@pytest.mark.parametrize("module", ["control.py", "capture.py", "capture_client.py", "metrics.py",
                                    "cli.py"])
def test_clients_do_not_reach_into_the_switch(module: str) -> None:
    """The datapath (`.dp`), its slots (`.slot`) and the Switch's port
    objects (`.ports`) are api.py's business: a client that used them would
    bypass the command table and the datapath's control thread."""
    tree = ast.parse((VSWITCH / module).read_text(), module)

    def reaches_in(node: ast.Attribute) -> bool:
        if node.attr == "ports":   # a configuration's ports (config check) are not the switch's
            return not (isinstance(node.value, ast.Name) and node.value.id == "config")
        return node.attr in ("dp", "slot")
    found = [f"{module}:{node.lineno}: .{node.attr}" for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and reaches_in(node)]
    found += [f"{module}:{node.lineno}: imports {node.module}" for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module in ("_datapath", "daemon", "port")]
    assert found == []


def test_vswitchctl_imports_neither_the_datapath_nor_the_daemon() -> None:
    code = ("import sys, vswitch.cli; vswitch.cli.split_command(['show']); "
            "print(sorted(m for m in sys.modules if m.startswith('vswitch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == ["vswitch", "vswitch.api", "vswitch.cli"]


# --- a stand-in switch -------------------------------------------------------------------

class FakeDatapath:
    def __init__(self) -> None:
        self.stalled: list[tuple[int, float]] = []
        self.captures: dict[int, str] = {}
        self.on_thread: list[str] = []

    def port_fdb_info(self, slot: int) -> dict:
        return {"learned": slot, "max": 0, "limit_refused": 0}

    def vring_info(self, slot: int, index: int) -> dict:
        return {"slot": slot, "index": index}

    def debug_stall_worker(self, worker: int, seconds: float) -> None:
        self.on_thread.append("debug_stall_worker")
        self.stalled.append((worker, seconds))

    def capture_start(self, slot: int, direction: str, snaplen: int, ring_bytes: int) -> None:
        self.on_thread.append("capture_start")
        self.captures[slot] = direction

    def capture_drain(self, slot: int) -> list:
        return [(1, "in", 60, b"\x01" * 60)]

    def capture_info(self, slot: int) -> dict:
        return {"captured": 1, "lost": 0}

    def capture_stop(self, slot: int) -> dict:
        self.on_thread.append("capture_stop")
        del self.captures[slot]
        return {"frames": [], "captured": 1, "lost": 0}

    def fdb_flush(self, port=None, vlan=None) -> int:
        self.on_thread.append("fdb_flush")
        return 2


class FakeControl:
    """The datapath's control thread: counts what goes through it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def call(self, fn, *args, **kwargs):
        self.calls.append(fn.__name__)
        return fn(*args, **kwargs)


class FakePort:
    def __init__(self, name: str, slot: int) -> None:
        self.name, self.slot = name, slot

    def show(self) -> dict:
        return {"name": self.name, "type": "vhost-user", "state": "listening", "socket": f"/{self.name}.sock"}


class FakeSwitch:
    def __init__(self, tmp_path: Path, debug: bool) -> None:
        self.config = SimpleNamespace(debug=debug, runtime_dir=str(tmp_path))
        self.ports = {"a": FakePort("a", 0), "b": FakePort("b", 1)}
        self.dp = FakeDatapath()
        self.ctl = FakeControl()
        self.reload_ok = True

    def show(self) -> dict:
        return {"version": __version__, "ports": [p.show() for p in self.ports.values()]}

    def stats(self) -> dict:
        return {"ports": {}, "workers": [], "fdb": {"entries": 0}}

    def fdb(self, port=None, vlan=None) -> list:
        return [{"port": port, "vlan": vlan}]

    async def fdb_flush(self, port=None, vlan=None) -> int:
        return await self.ctl.call(self.dp.fdb_flush, port=port, vlan=vlan)

    async def reload(self, force: bool = False) -> dict:
        if not self.reload_ok:
            return {"ok": False, "errors": ["ports.a.queues: must be 1..64 (got 0)"]}
        return {"ok": True, "force": force, "ports": {}, "unchanged": [], "warnings": []}


# Arguments for each command that it accepts and answers.
SAMPLE_ARGS = {
    "port show": {"name": "a"},
    "fdb show": {"port": "a", "vlan": 7},
    "fdb flush": {"vlan": 0},
    "reload": {"force": True},
    "capture start": {"port": "b", "direction": "in", "snaplen": 100},
    "debug vring": {"port": "a", "index": 1},
    "debug stall-worker": {"worker": 0, "seconds": 0.5},
}


def dispatch(server: ControlServer, command: str, args: dict | None = None, owner: object = None) -> dict:
    line = json.dumps({"command": command, "args": args or {}}).encode()
    return asyncio.run(server.dispatch(line, owner))


@pytest.fixture
def switch(tmp_path) -> FakeSwitch:
    return FakeSwitch(tmp_path, debug=True)


@pytest.fixture
def server(switch) -> ControlServer:
    return ControlServer(SwitchAPI(switch), "/nonexistent/vswitchd.ctl")


# --- the control socket, from the table ------------------------------------------------

def test_every_daemon_command_of_the_table_is_answered(server: ControlServer) -> None:
    owner = object()
    answered = []
    # capture start first: read and stop answer the capture it started
    order = sorted(DAEMON_COMMANDS, key=lambda c: c.name != "capture start")
    for command in order:
        reply = dispatch(server, command.name, SAMPLE_ARGS.get(command.name),
                         owner if command.connection else None)
        assert reply["ok"], (command.name, reply)
        answered.append(command.name)
    assert sorted(answered) == sorted(c.name for c in DAEMON_COMMANDS)


def test_every_daemon_command_has_a_method_and_only_declared_args(switch: FakeSwitch) -> None:
    import inspect
    api = SwitchAPI(switch)
    for command in DAEMON_COMMANDS:
        method = getattr(api, command.method, None)
        assert callable(method), command.name
        params = set(inspect.signature(method).parameters)
        expected = {a.name for a in command.args} | ({"owner"} if command.connection else set())
        assert params == expected, command.name


def test_changes_to_the_datapath_go_through_its_control_thread(server: ControlServer,
                                                                switch: FakeSwitch) -> None:
    owner = object()
    assert dispatch(server, "capture start", {"port": "a"}, owner)["ok"]
    assert dispatch(server, "capture stop", {}, owner)["ok"]
    assert dispatch(server, "fdb flush")["ok"]
    assert dispatch(server, "debug stall-worker", {"worker": 0, "seconds": 1})["ok"]
    assert switch.ctl.calls == switch.dp.on_thread == ["capture_start", "capture_stop", "fdb_flush",
                                                       "debug_stall_worker"]


def test_unknown_malformed_and_local_commands(server: ControlServer) -> None:
    assert dispatch(server, "frobnicate") == {"ok": False, "error": "unknown command 'frobnicate'"}
    # vswitchctl's own commands are not the daemon's
    assert dispatch(server, "config check", {"file": "x"}) == {"ok": False,
                                                              "error": "unknown command 'config check'"}
    assert asyncio.run(server.dispatch(b"{not json")) == {"ok": False, "error": "malformed request"}
    assert asyncio.run(server.dispatch(b'{"command": 3}')) == {"ok": False, "error": "malformed request"}


def test_failures_keep_their_messages(server: ControlServer, switch: FakeSwitch) -> None:
    assert dispatch(server, "port show", {"name": "nope"}) == {"ok": False, "error": "no port named 'nope'"}
    assert dispatch(server, "fdb flush", {"port": "nope"})["error"] == "no port named 'nope'"
    assert dispatch(server, "fdb show", {"vlan": 5000})["error"] == "VLAN must be 0..4094 (got 5000)"
    assert dispatch(server, "fdb show", {"vlan": True})["error"] == "VLAN must be 0..4094 (got True)"
    assert dispatch(server, "capture read")["error"] == "capture needs a control connection"
    assert dispatch(server, "capture read", owner=object())["error"] == "no capture running on this connection"
    bad = dispatch(server, "capture start", {"port": "a", "direction": "sideways"}, object())
    assert bad == {"ok": False, "error": "direction must be in, out or both, not 'sideways'"}
    switch.reload_ok = False
    reply = dispatch(server, "reload")
    assert reply["ok"] is False and reply["error"].startswith("configuration not applied:\n")
    assert reply["result"]["errors"] == ["ports.a.queues: must be 1..64 (got 0)"]


def test_a_failing_command_is_an_internal_error_not_a_crash(server: ControlServer,
                                                           switch: FakeSwitch) -> None:
    def boom() -> dict:
        raise RuntimeError("datapath gone")
    switch.stats = boom   # type: ignore[method-assign]
    assert dispatch(server, "stats") == {"ok": False, "error": "internal error: datapath gone"}


def test_a_capture_belongs_to_its_connection(server: ControlServer, switch: FakeSwitch) -> None:
    first, second = object(), object()
    assert dispatch(server, "capture start", {"port": "a"}, first)["result"] == \
        {"port": "a", "direction": "both", "snaplen": 262144}
    assert "already being captured" in dispatch(server, "capture start", {"port": "a"}, second)["error"]
    assert "already captures port 'a'" in dispatch(server, "capture start", {"port": "b"}, first)["error"]
    read = dispatch(server, "capture read", {}, first)["result"]
    assert read["captured"] == 1 and read["frames"][0][:3] == [1, "in", 60]
    asyncio.run(server.api.release_captures(first))        # its connection closed
    assert switch.dp.captures == {}
    # a reload that rebuilt the port (new slot) ended the capture
    assert dispatch(server, "capture start", {"port": "a"}, second)["ok"]
    switch.ports["a"] = FakePort("a", 5)
    assert "was removed or rebuilt" in dispatch(server, "capture read", {}, second)["error"]


# --- debug commands: test systems only ------------------------------------------------------

@pytest.mark.parametrize("command", [c.name for c in DEBUG_COMMANDS])
def test_debug_commands_answer_only_with_debug_true(tmp_path, command: str) -> None:
    switch = FakeSwitch(tmp_path, debug=False)
    server = ControlServer(SwitchAPI(switch), "/nonexistent/vswitchd.ctl")
    refused = dispatch(server, command, SAMPLE_ARGS.get(command))
    assert refused == {"ok": False, "error": debug_refusal(command)}
    assert "`debug: true`" in refused["error"]
    assert switch.dp.stalled == [] and switch.ctl.calls == []
    switch.config.debug = True               # a reload that sets it
    assert dispatch(server, command, SAMPLE_ARGS.get(command))["ok"]


def test_debug_commands_are_the_three_test_hooks() -> None:
    assert {c.name for c in DEBUG_COMMANDS} == {"debug vring", "debug stall-worker", "debug seccomp-probe"}
    assert all(c.name.startswith("debug ") == c.debug for c in COMMANDS)


def test_debug_vring_takes_the_port_by_name_too(server: ControlServer) -> None:
    assert dispatch(server, "debug vring", {"name": "b"})["result"] == {"slot": 1, "index": 0}
    assert dispatch(server, "debug vring", {"port": "nope"})["error"] == "no such port"


# --- vswitchctl, from the same table ------------------------------------------------------

def sample_argv(command) -> list[str]:
    argv = command.name.split()
    for arg in command.args:
        value = {int: "1", float: "0.5", str: "x"}.get(arg.type, "x")
        if arg.choices:
            value = arg.choices[0]
        if arg.positional and arg.default is None:
            argv.append(value)
        elif arg.required:
            argv += [arg.option, value]
    return argv


def test_vswitchctl_accepts_exactly_the_tables_commands() -> None:
    accepted = set()
    for command in COMMANDS:
        parsed = cli.parse(sample_argv(command))
        if command.cli:
            assert not isinstance(parsed, int), command.name
            assert parsed[0] is command
            accepted.add(command.name)
        else:
            # the protocol of `vswitchctl capture` is not a command of its own
            assert isinstance(parsed, int) or parsed[0].name != command.name
    assert accepted == {c.name for c in cli.CLI_COMMANDS} == {c.name for c in COMMANDS if c.cli}
    assert set(cli.LOCAL) == {c.name for c in COMMANDS if c.runs_in == "vswitchctl"}
    assert set(cli.RENDER) <= {c.name for c in DAEMON_COMMANDS}


def test_main_help_lists_every_command_and_names_the_debug_ones(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for command in cli.CLI_COMMANDS:
        if command.debug:
            assert command.name in out.split("debug:", 1)[1]
            assert command.synopsis not in out.split("debug:", 1)[0]
        else:
            assert command.synopsis in out and " ".join(command.help.split()) in out, command.name


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.cli], ids=lambda c: c.name)
def test_each_command_has_its_help(capsys, command) -> None:
    assert cli.main([*command.name.split(), "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(f"usage: vswitchctl {command.name}")
    assert " ".join(command.help.split()) in out
    for arg in command.args:
        assert " ".join(arg.help.split()) in out, arg.name


@pytest.mark.parametrize("argv, message", [
    (["frobnicate"], "unknown command: frobnicate (see vswitchctl --help)"),
    (["port"], "unknown command: port"),
    ([], "the following arguments are required: COMMAND"),
    (["port", "show"], "the following arguments are required: NAME"),
    (["port", "show", "a", "b"], "unrecognized arguments: b"),
    (["stats", "--port", "a"], "--port applies to fdb show and fdb flush only"),
    (["show", "--force"], "--force applies to reload only"),
    (["fdb", "show", "-w", "f"], "-w applies to capture only"),
    (["fdb", "show", "--vlan", "5000"], "--vlan must be 0..4094 (got 5000)"),
    (["fdb", "show", "--vlan", "4095"], "--vlan must be 0..4094 (got 4095)"),
    (["-j", "capture", "a", "-w", "f"], "-j does not apply to capture"),
    (["capture", "a", "-w", "-", "--json"], "--json does not apply to capture"),
    (["config", "check", "f", "--runtime-dir", "/run/x"], "--runtime-dir does not apply to config check"),
    (["config", "check"], "config check: which file? (FILE or -c FILE)"),
    (["config", "check", "a.yaml", "-c", "b.yaml"], "two files given (a.yaml and -c b.yaml)"),
    (["fdb", "show", "--vlan", "x"], "invalid int value"),
    (["debug", "stall-worker", "0", "soon"], "invalid float value"),
    (["capture", "a"], "the following arguments are required: -w"),
    (["capture", "a", "-w", "f", "--count", "0"], "--count must be at least 1 (got 0)"),
    (["capture", "a", "-w", "f", "--duration", "0"], "--duration must be above 0 (got 0.0)"),
    (["capture", "a", "-w", "f", "--snaplen", "300000"], "--snaplen must be 1..262144 (got 300000)"),
    (["capture", "a", "-w", "f", "--direction", "sideways"], "invalid choice"),
])
def test_usage_errors_exit_2(capsys, argv: list[str], message: str) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_request_args_come_from_the_table() -> None:
    parsed = cli.parse(["--runtime-dir", "/r", "fdb", "flush", "--vlan", "0"])
    assert not isinstance(parsed, int) and parsed[2] == {"vlan": 0}
    parsed = cli.parse(["fdb", "show", "--port", "a", "-j"])
    assert not isinstance(parsed, int) and parsed[2] == {"port": "a"} and parsed[1].json
    parsed = cli.parse(["--port", "a", "fdb", "show"])          # options before the command too
    assert not isinstance(parsed, int) and parsed[0].name == "fdb show" and parsed[2] == {"port": "a"}
    assert cli.parse(["reload"])[2] == {}                        # type: ignore[index]
    assert cli.parse(["reload", "--force"])[2] == {"force": True}  # type: ignore[index]
    assert cli.parse(["debug", "stall-worker", "0", "5"])[2] == {"worker": 0, "seconds": 5.0}  # type: ignore[index]
    parsed = cli.parse(["capture", "a", "-w", "-", "--count", "3"])
    assert not isinstance(parsed, int) and (parsed[1].port, parsed[1].write, parsed[1].count,
                                            parsed[1].direction, parsed[1].snaplen) == ("a", "-", 3, "both", 262144)
    assert BY_NAME["reload"].timeout > BY_NAME["show"].timeout


def test_an_unreachable_daemon_is_a_failed_operation(tmp_path, capsys) -> None:
    assert cli.main(["--runtime-dir", str(tmp_path), "show"]) == 1
    assert "cannot reach vswitchd" in capsys.readouterr().err


def test_config_check_exit_status_is_6_for_an_invalid_file(tmp_path, capsys) -> None:
    """6 is "program is not configured" (LSB, systemd's EXIT_NOTCONFIGURED),
    the status the unit's RestartPreventExitStatus= names."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(f"runtime_dir: {tmp_path}/run\nports: {{}}\n")
    bad.write_text("ports:\n  a: {type: vhost-user, queues: 0}\n")
    assert cli.main(["config", "check", str(good)]) == 0
    assert cli.main(["config", "check", str(bad)]) == cli.EXIT_NOT_CONFIGURED == 6
    assert "ports.a.queues: must be 1..64" in capsys.readouterr().err
    assert cli.main(["config", "check", "-j", str(bad)]) == 6
    assert '"ok": false' in capsys.readouterr().out
    # the file of -c: what `vswitchctl -c FILE` means for every other command
    assert cli.main(["-c", str(bad), "config", "check"]) == 6
    assert "ports.a.queues: must be 1..64" in capsys.readouterr().err
    assert cli.main(["config", "check", "-c", str(good), str(good)]) == 0
    assert cli.main(["config", "check", str(tmp_path / "missing.yaml")]) == 6
    assert "cannot read configuration file" in capsys.readouterr().err
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "vswitchd.service").read_text()
    assert f"\nRestartPreventExitStatus={cli.EXIT_NOT_CONFIGURED}\n" in unit
    assert "exit status:" in cli.main_parser().format_help()


def test_command_error_carries_the_result() -> None:
    exc = CommandError("nope", {"errors": ["x"]})
    assert str(exc) == "nope" and exc.result == {"errors": ["x"]}
