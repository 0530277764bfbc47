"""vswitchctl: query a running vswitchd over its control socket.

Exit codes: 0 success, 1 failed operation, 2 usage error, 6 invalid
configuration (`config check`). Errors go to stderr.

The commands, their arguments and their help come from vswitch/api.py's
COMMANDS, the table the daemon dispatches from: `vswitchctl --help` lists
them, `vswitchctl COMMAND --help` shows one. That module is plain data: this
one runs without the datapath extension.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import textwrap
from typing import Any, Callable

from . import __version__
from .api import COMMANDS, Arg, Command

DEFAULT_RUNTIME_DIR = "/run/vswitch"

# "Program is not configured" in the LSB init-script actions and in systemd's
# exit codes (EXIT_NOTCONFIGURED): `vswitchctl config check` and vswitchd
# exit with it on an invalid file, and the unit's RestartPreventExitStatus=6
# keeps systemd from restarting into the same error.
EXIT_NOT_CONFIGURED = 6


def request(path: str, command: str, args: dict | None = None, timeout: float = 10.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall((json.dumps({"command": command, "args": args or {}}) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def _size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} bytes"


def _render_port(port: dict) -> str:
    where = port["socket"] or port.get("ifname") or port.get("local")
    lines = [f"port {port['name']} ({port['type']}, {port['mode']}, {where}): {port['state']}",
             f"  connections {port['connections']}, disconnects {port['disconnects']}, "
             f"protocol errors {port['protocol_errors']}"
             + (f", memory faults {port['memory_faults']}" if port.get("memory_faults") else "")
             + (f", message timeouts {port['message_timeouts']}" if "message_timeouts" in port else ""),
             f"  queues offered {port['queues_offered']}, enabled {port['queues_enabled']}"]
    if port.get("memory_mapped"):
        lines.append(f"  guest memory mapped {_size(port['memory_mapped'])}")
    if port.get("features"):
        lines.append("  features: " + " ".join(port["features"]))
    if port.get("protocol_features"):
        lines.append("  protocol features: " + " ".join(port["protocol_features"]))
    if port.get("mac"):
        lines.append(f"  static mac {port['mac']}")
    policy = port.get("policy") or {}
    vlan = policy.get("vlan") or {}
    if vlan.get("mode") == "access":
        lines.append(f"  vlan access {vlan['id']}")
    elif vlan.get("mode") == "trunk":
        lines.append("  vlan trunk " + ",".join(vlan["allowed"])
                     + (f" native {vlan['native']}" if vlan.get("native") else ""))
    if policy.get("allowed_macs"):
        lines.append("  allowed source macs " + " ".join(policy["allowed_macs"]))
    for key, label in (("storm_control", "storm control (frames/s)"),
                       ("ingress_policing", "ingress policing"), ("egress_policing", "egress policing")):
        if policy.get(key):
            lines.append(f"  {label}: " + " ".join(f"{k}={v}" for k, v in policy[key].items()))
    if policy.get("mirror"):
        lines.append(f"  mirror {policy['mirror']['direction']} to {policy['mirror']['to']}")
    if port.get("type") == "vxlan":
        lines.append(f"  vni {port['vni']}, mtu {port.get('mtu') or 'unlimited'}, remotes: "
                     + ", ".join(f"{r['address']} ({r['learned_macs']} MACs)" for r in port["remotes"]))
    if port.get("fdb"):
        f = port["fdb"]
        cap = f["max"] if f["max"] else "no cap"
        lines.append(f"  fdb: {f['learned']} learned MACs (cap {cap}), {f['limit_refused']} refused at the cap")
    if port.get("pending"):
        lines.append("  pending until the guest reconnects: "
                     + ", ".join(f"{k}={v}" for k, v in port["pending"].items()))
    if port.get("capture"):
        c = port["capture"]
        lines.append(f"  capture running: direction {c['direction']}, captured {c['captured']}, lost {c['lost']}")
    if port.get("last_error"):
        lines.append(f"  last error: {port['last_error']}")
    for alert in port.get("alerts", {}).values():
        lines.append(f"  ALERT: {alert}")
    for q in port.get("queues", []):
        for direction in ("rx", "tx"):
            r = q[direction]
            state = "started" if r["started"] else "stopped"
            state += ",enabled" if r["enabled"] else ",disabled"
            if r["broken"]:
                state += ",BROKEN"
            drops = " ".join(f"{k}={v}" for k, v in r["drops"].items()) or "-"
            lines.append(f"  q{q['pair']} {direction} [{state}] packets {r['packets']} bytes {r['bytes']} drops {drops}")
    return "\n".join(lines)


def _render_fdb(entries: list[dict]) -> str:
    rows = [("VLAN", "MAC", "PORT", "TYPE", "AGE")]
    rows += [(str(e["vlan"]), e["mac"], e["port"], e["type"], "-" if e["static"] else f"{e['age_s']}s")
             for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    return "\n".join(lines)


def config_check(path: str, as_json: bool) -> int:
    from .config import ConfigError, load_config
    try:
        config = load_config(path)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "errors": [str(e) for e in exc.errors]}, indent=2))
        print(str(exc), file=sys.stderr)
        return EXIT_NOT_CONFIGURED
    except OSError as exc:
        print(f"vswitchctl: {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NOT_CONFIGURED
    if as_json:
        print(json.dumps({"ok": True, "config": config.to_dict()}, indent=2))
    else:
        print(f"{path}: OK, {len(config.ports)} port(s)")
    return 0


def _render_show(result: dict) -> str:
    lines = [f"vswitchd {result['version']} pid {result['pid']} config {result['config']}"]
    sec = result.get("security")
    if sec:
        lines.append(f"security: seccomp {sec['seccomp']}; {sec['privileges']}")
        if "fds_needed" in sec:
            lines.append(f"file descriptors: up to {sec['fds_needed']} needed, limit "
                         f"{sec['nofile_soft']} (hard {sec['nofile_hard']})")
    if result.get("control_cpus"):
        pinned = sorted({w["cpu"] for w in result.get("workers", []) if w.get("cpu") is not None})
        lines.append(f"control plane on CPU(s) {result['control_cpus']}"
                     + (f", workers pinned to {','.join(map(str, pinned))}" if pinned else ", workers unpinned"))
    lines += [_render_port(port) for port in result["ports"]]
    return "\n".join(lines)


def _render_port_list(result: list[dict]) -> str:
    return "\n".join(f"{p['name']:16} {p['type']:12} {p['state']:12} {p['socket'] or ''}"
                     + ("  (changes pending)" if p.get("pending") else "") for p in result)


def _render_fdb_flush(result: dict) -> str:
    n = result["forgotten"]
    return f"{n} learned entr{'y' if n == 1 else 'ies'} forgotten"


def _render_stats(result: dict) -> str:
    lines = []
    for name, t in result["ports"].items():
        lines.append(f"{name} ({t['state']}): rx {t['receive_packets']} pkts {t['receive_bytes']} bytes, "
                     f"tx {t['transmit_packets']} pkts {t['transmit_bytes']} bytes")
        for way in ("receive", "transmit"):
            if t[f"{way}_drops"]:
                lines.append(f"  {way} drops: " + " ".join(f"{k}={v}" for k, v in t[f"{way}_drops"].items()))
    for i, w in enumerate(result["workers"]):
        lines.append(f"worker {i}: rounds {w['rounds']} sleeps {w['idle_sleeps']} "
                     f"busy {w['busy_ns'] / 1e9:.3f} s, TAP writes via {w['tap_io']}"
                     + (f" ({w['tap_batched_writes']} in {w['tap_batches']} batches)"
                        if w.get("tap_batches") else "")
                     + f", notifications via {w.get('notify_io', '?')}"
                     + ("" if w.get("io_uring_restricted", True) else ", io_uring not restricted"))
    fdb = result["fdb"]
    lines.append(f"fdb: {fdb['entries']} entries ({fdb.get('learned', 0)} learned, "
                 f"{fdb.get('static', 0)} static), aged {fdb.get('aged', 0)}, "
                 f"table full {fdb.get('full', 0)}")
    return "\n".join(lines)


def _render_reload(result: dict) -> str:
    lines = [f"{name}: {what}" for name, what in result["ports"].items()]
    lines.append(f"{len(result['unchanged'])} port(s) untouched")
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def _render_version(result: dict) -> str:
    build = f", datapath built for {result['build']}" if result.get("build") else ""
    return f"vswitchd {result['version']} (vswitchctl {__version__}{build})"


# How a command's result reads on a terminal; the rest print their JSON.
RENDER: dict[str, Callable[[Any], str]] = {
    "show": _render_show,
    "port show": _render_port,
    "port list": _render_port_list,
    "fdb show": _render_fdb,
    "fdb flush": _render_fdb_flush,
    "stats": _render_stats,
    "reload": _render_reload,
    "version": _render_version,
}


def _render(command: str, result: Any) -> str:
    render = RENDER.get(command)
    return render(result) if render else json.dumps(result, indent=2)


def _runtime_dir(args) -> str | None:
    runtime_dir = args.runtime_dir or os.environ.get("VSWITCH_RUNTIME_DIR", DEFAULT_RUNTIME_DIR)
    if args.config:
        from .config import ConfigError, load_config
        try:
            runtime_dir = load_config(args.config).runtime_dir
        except (ConfigError, OSError) as exc:
            print(f"vswitchctl: {args.config}: {exc}", file=sys.stderr)
            return None
    return runtime_dir


def _capture(args: argparse.Namespace) -> int:
    from .capture_client import run_capture
    runtime_dir = _runtime_dir(args)
    if runtime_dir is None:
        return 1
    return run_capture(os.path.join(runtime_dir, "vswitchd.ctl"), args.port, args.write,
                       args.direction, args.count, args.duration, args.snaplen)


def _config_check(args: argparse.Namespace) -> int:
    if args.file and args.config and args.file != args.config:
        print(f"vswitchctl: config check: two files given ({args.file} and -c {args.config})",
              file=sys.stderr)
        return 2
    path = args.file or args.config
    if not path:
        print("vswitchctl: config check: which file? (FILE or -c FILE)", file=sys.stderr)
        return 2
    return config_check(path, args.json)


# The commands vswitchctl does itself (runs_in="vswitchctl" in the table).
LOCAL: dict[str, Callable[[argparse.Namespace], int]] = {
    "config check": _config_check,
    "capture": _capture,
}

# --- the parser, from the command table -------------------------------------------------

CLI_COMMANDS: tuple[Command, ...] = tuple(c for c in COMMANDS if c.cli)


def _add_globals(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--runtime-dir", default=None,
                       help=f"the daemon's runtime directory (default: $VSWITCH_RUNTIME_DIR or {DEFAULT_RUNTIME_DIR})")
    where.add_argument("-c", "--config", default=None,
                       help="take the runtime directory from this configuration file")
    parser.add_argument("-j", "--json", action="store_true", help="print the reply as JSON")


def _add_arg(parser: argparse.ArgumentParser, arg: Arg) -> None:
    kwargs: dict[str, Any] = {"help": arg.help}
    if arg.choices:
        kwargs["choices"] = arg.choices
    if arg.type is bool:
        parser.add_argument(arg.option, dest=arg.name, action="store_true", **kwargs)
        return
    kwargs["type"] = arg.type
    if arg.positional:
        if arg.default is not None:
            kwargs.update(nargs="?", default=arg.default)
        parser.add_argument(arg.name, metavar=arg.word, **kwargs)
    else:
        parser.add_argument(arg.option, dest=arg.name, metavar=arg.word,
                            required=arg.required, default=arg.default, **kwargs)


def command_parser(command: Command) -> argparse.ArgumentParser:
    """`vswitchctl COMMAND ...`: the global options and the command's own."""
    parser = argparse.ArgumentParser(prog=f"vswitchctl {command.name}", description=command.help
                                     + (" (answered only with `debug: true` in the daemon's "
                                        "configuration)" if command.debug else ""))
    _add_globals(parser)
    for arg in command.args:
        _add_arg(parser, arg)
    return parser


def _help_lines(commands: list[Command]) -> list[str]:
    lines = []
    for c in commands:
        head = "\n".join(textwrap.wrap(c.synopsis, 76, initial_indent="  ", subsequent_indent="      "))
        wrapped = textwrap.wrap(c.help, 78 - 28) or [""]
        if len(head) > 26:
            lines += head.split("\n")
            lines += [" " * 28 + w for w in wrapped]
        else:
            lines.append(f"{head:28}{wrapped[0]}")
            lines += [" " * 28 + w for w in wrapped[1:]]
    return lines


def main_parser() -> argparse.ArgumentParser:
    """`vswitchctl --help`: every command with its help; debug ones named in a note."""
    debug = [c.name for c in CLI_COMMANDS if c.debug]
    epilog = ["commands:", *_help_lines([c for c in CLI_COMMANDS if not c.debug]), "",
              "vswitchctl COMMAND --help shows a command's arguments.", "",
              "exit status: 0 success, 1 the operation failed, 2 usage error,",
              f"{EXIT_NOT_CONFIGURED} invalid configuration (config check)."]
    if debug:
        epilog += ["", *textwrap.wrap("debug: " + ", ".join(debug) + " are for test systems: the "
                                      "daemon answers them only with `debug: true` in its "
                                      "configuration.", 78)]
    parser = argparse.ArgumentParser(prog="vswitchctl", description="control a running vswitchd",
                                     usage="vswitchctl [options] COMMAND [ARGS]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(epilog))
    _add_globals(parser)
    parser.add_argument("command", nargs="+", metavar="COMMAND", help="see below")
    return parser


def _value_options() -> set[str]:
    """Options that take a value, of vswitchctl and of every command: the
    words after them are not command words."""
    options = {"--runtime-dir", "-c", "--config"}
    for command in CLI_COMMANDS:
        options |= {a.option for a in command.args if not a.positional and a.type is not bool}
    return options


def split_command(argv: list[str]) -> tuple[Command | None, list[str], list[str]]:
    """(the command named in argv, the command's words, argv without them).
    The command is the longest table name that the words not belonging to an
    option start with; None when they name none."""
    takes_value = _value_options()
    words: list[int] = []          # indexes of positional words
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            words += range(i + 1, len(argv))
            break
        if token.startswith("-") and len(token) > 1:
            if token in takes_value:
                i += 1                 # its value
        else:
            words.append(i)
        i += 1
    given = [argv[i] for i in words]
    best: Command | None = None
    for command in CLI_COMMANDS:
        name = command.name.split()
        if given[:len(name)] == name and (best is None or len(name) > len(best.name.split())):
            best = command
    if best is None:
        return None, given, argv
    used = set(words[:len(best.name.split())])
    return best, given[:len(best.name.split())], [t for i, t in enumerate(argv) if i not in used]


def _misplaced_option(command: Command, rest: list[str]) -> str | None:
    """An option of other commands given to this one: said as today's
    `--force applies to reload only`."""
    own = {a.option for a in command.args if not a.positional}
    for token in rest:
        option = token.split("=", 1)[0]
        if option in own or not option.startswith("-"):
            continue
        users = [c.name for c in CLI_COMMANDS if option in {a.option for a in c.args if not a.positional}]
        if users:
            return f"{option} applies to {' and '.join(users)} only"
    return None


# the global options, by the name Command.global_options uses
_GLOBALS = {"runtime_dir": ("--runtime-dir",), "config": ("-c", "--config"), "json": ("-j", "--json")}


def _unused_global(command: Command, rest: list[str]) -> str | None:
    """A global option that means nothing to this command: said, so that
    `vswitchctl -j capture ...` does not look as if it printed JSON."""
    for name, spellings in _GLOBALS.items():
        if name in command.global_options:
            continue
        for token in rest:
            option = token.split("=", 1)[0]
            if option in spellings:
                return f"{option} does not apply to {command.name}"
    return None


def parse(argv: list[str]) -> tuple[Command, argparse.Namespace, dict] | int:
    """The command, its parsed arguments and the request's args; or an exit
    code (0 after a help, 2 for a usage error, said on stderr)."""
    command, words, rest = split_command(argv)
    if command is None:
        if not words or "-h" in argv or "--help" in argv:
            try:
                main_parser().parse_args(argv)
            except SystemExit as exc:
                return 2 if exc.code else 0
        print(f"vswitchctl: unknown command: {' '.join(words)} (see vswitchctl --help)", file=sys.stderr)
        return 2
    problem = _misplaced_option(command, rest) or _unused_global(command, rest)
    if problem is not None and "-h" not in rest and "--help" not in rest:
        print(f"vswitchctl: {problem}", file=sys.stderr)
        return 2
    try:
        args = command_parser(command).parse_intermixed_args(rest)
    except SystemExit as exc:
        return 2 if exc.code else 0
    request_args: dict = {}
    for arg in command.args:
        value = getattr(args, arg.name)
        if arg.range is not None and value is not None:
            why = arg.range.problem(value)
            if why is not None:
                print(f"vswitchctl: {arg.name if arg.positional else arg.option} {why}", file=sys.stderr)
                return 2
        if value is not None and value is not False:
            request_args[arg.name] = value
    return command, args, request_args


def main(argv: list[str] | None = None) -> int:
    parsed = parse(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, int):
        return parsed
    command, args, cmd_args = parsed
    if command.runs_in == "vswitchctl":
        return LOCAL[command.name](args)
    runtime_dir = _runtime_dir(args)
    if runtime_dir is None:
        return 1
    path = os.path.join(runtime_dir, "vswitchd.ctl")
    try:
        reply = request(path, command.name, cmd_args, timeout=command.timeout)
    except OSError as exc:
        print(f"vswitchctl: cannot reach vswitchd at {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        if args.json and reply.get("result") is not None:
            print(json.dumps(reply["result"], indent=2))
        print(f"vswitchctl: {reply.get('error')}", file=sys.stderr)
        return 1
    result = reply["result"]
    print(json.dumps(result, indent=2) if args.json else _render(command.name, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
