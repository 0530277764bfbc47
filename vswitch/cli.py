"""vswitchctl: query a running vswitchd over its control socket.

Exit codes: 0 success, 1 failed operation, 2 usage error. Errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from . import __version__

DEFAULT_RUNTIME_DIR = "/run/vswitch"


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


USAGE = """commands:
  show                      the daemon, its workers and every port
  port list                 one line per port
  port show NAME            one port: state, negotiated features, queues, counters, pending changes
  fdb show [--port P] [--vlan V]
                            the MAC table (VLAN, MAC, port, static or learned, age)
  fdb flush [--port P] [--vlan V]
                            forget learned MACs (all, of a port, of a VLAN); static ones stay
  stats                     totals per port and direction, drops by reason, workers
  config check FILE         validate a configuration file (no daemon needed)
  reload [--force]          re-read the daemon's file and apply the difference;
                            --force restarts ports whose guest-negotiated settings changed
  version                   daemon and vswitchctl versions
  capture PORT -w FILE      live capture into a pcap file (-w -: stdout), until
                            --count N frames, --duration S seconds or Ctrl-C;
                            --direction in|out|both (default both), --snaplen B
"""


def _parse(words: list[str]) -> tuple[str, dict] | None:
    if words[:2] == ["port", "show"] and len(words) == 3:
        return "port show", {"name": words[2]}
    if words[:2] == ["config", "check"] and len(words) == 3:
        return "config check", {"file": words[2]}
    if words[:2] == ["debug", "stall-worker"] and len(words) == 4:
        try:
            return "debug stall-worker", {"worker": int(words[2]), "seconds": float(words[3])}
        except ValueError:
            return None
    if words == ["debug", "seccomp-probe"]:
        return "debug seccomp-probe", {}
    if " ".join(words) in ("fdb show", "fdb flush"):
        return " ".join(words), {}
    if " ".join(words) in ("show", "port list", "stats", "reload", "version"):
        return " ".join(words), {}
    return None


def config_check(path: str, as_json: bool) -> int:
    from .config import ConfigError, load_config
    try:
        config = load_config(path)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "errors": [str(e) for e in exc.errors]}, indent=2))
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"vswitchctl: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"ok": True, "config": config.to_dict()}, indent=2))
    else:
        print(f"{path}: OK, {len(config.ports)} port(s)")
    return 0


def _render(command: str, result) -> str:
    if command == "show":
        lines = [f"vswitchd {result['version']} pid {result['pid']} config {result['config']}"]
        sec = result.get("security")
        if sec:
            lines.append(f"security: seccomp {sec['seccomp']}; {sec['privileges']}")
            if "fds_needed" in sec:
                lines.append(f"file descriptors: up to {sec['fds_needed']} needed, limit "
                             f"{sec['nofile_soft']} (hard {sec['nofile_hard']})")
        lines += [_render_port(port) for port in result["ports"]]
        return "\n".join(lines)
    if command == "port show":
        return _render_port(result)
    if command == "port list":
        return "\n".join(f"{p['name']:16} {p['type']:12} {p['state']:12} {p['socket'] or ''}"
                         + ("  (changes pending)" if p.get("pending") else "") for p in result)
    if command == "fdb show":
        return _render_fdb(result)
    if command == "fdb flush":
        n = result["forgotten"]
        return f"{n} learned entr{'y' if n == 1 else 'ies'} forgotten"
    if command == "stats":
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
                         + f", notifications via {w.get('notify_io', '?')}")
        fdb = result["fdb"]
        lines.append(f"fdb: {fdb['entries']} entries ({fdb.get('learned', 0)} learned, "
                     f"{fdb.get('static', 0)} static), aged {fdb.get('aged', 0)}, "
                     f"table full {fdb.get('full', 0)}")
        return "\n".join(lines)
    if command == "reload":
        lines = [f"{name}: {what}" for name, what in result["ports"].items()]
        lines.append(f"{len(result['unchanged'])} port(s) untouched")
        lines += [f"warning: {w}" for w in result["warnings"]]
        return "\n".join(lines)
    if command == "version":
        return f"vswitchd {result['version']} (vswitchctl {__version__})"
    return json.dumps(result, indent=2)


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


def _capture(args) -> int:
    from .capture_client import run_capture
    if len(args.command) != 2 or not args.write:
        print("vswitchctl: usage: capture PORT -w FILE [--direction in|out|both] [--count N]"
              " [--duration S] [--snaplen B]", file=sys.stderr)
        return 2
    if (args.count is not None and args.count < 1) or (args.duration is not None and args.duration <= 0) \
            or not 1 <= args.snaplen <= 262144:
        print("vswitchctl: --count and --duration must be positive, --snaplen 1..262144", file=sys.stderr)
        return 2
    runtime_dir = _runtime_dir(args)
    if runtime_dir is None:
        return 1
    return run_capture(os.path.join(runtime_dir, "vswitchd.ctl"), args.command[1], args.write,
                       args.direction, args.count, args.duration, args.snaplen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vswitchctl", description="control a running vswitchd",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=USAGE)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--runtime-dir", default=None,
                       help=f"the daemon's runtime directory (default: $VSWITCH_RUNTIME_DIR or {DEFAULT_RUNTIME_DIR})")
    where.add_argument("-c", "--config", default=None,
                       help="take the runtime directory from this configuration file")
    parser.add_argument("-j", "--json", action="store_true", help="print the reply as JSON")
    parser.add_argument("--force", action="store_true",
                        help="reload: restart ports whose guest-negotiated settings changed now")
    parser.add_argument("--port", default=None, help="fdb show/flush: only this port")
    parser.add_argument("--vlan", type=int, default=None, help="fdb show/flush: only this VLAN")
    parser.add_argument("command", nargs="+", help="see below")
    cap = parser.add_argument_group("capture")
    cap.add_argument("-w", dest="write", metavar="FILE", help="capture: pcap file to write, - for stdout")
    cap.add_argument("--direction", choices=("in", "out", "both"), default="both",
                     help="capture: frames from the port (in), to it (out), or both")
    cap.add_argument("--count", type=int, default=None, help="capture: stop after N frames")
    cap.add_argument("--duration", type=float, default=None, help="capture: stop after S seconds")
    cap.add_argument("--snaplen", type=int, default=262144, help="capture: bytes kept per frame")
    try:
        args = parser.parse_intermixed_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.command[0] == "capture":
        return _capture(args)
    parsed = _parse(args.command)
    if parsed is None:
        print(f"vswitchctl: unknown command: {' '.join(args.command)} (see vswitchctl --help)",
              file=sys.stderr)
        return 2
    command, cmd_args = parsed
    if args.force:
        if command != "reload":
            print("vswitchctl: --force applies to reload only", file=sys.stderr)
            return 2
        cmd_args = {"force": True}
    if args.port is not None or args.vlan is not None:
        if not command.startswith("fdb "):
            print("vswitchctl: --port and --vlan apply to fdb show and fdb flush only", file=sys.stderr)
            return 2
        if args.vlan is not None and not 0 <= args.vlan <= 4095:
            print(f"vswitchctl: --vlan must be 0..4095 (got {args.vlan})", file=sys.stderr)
            return 2
        cmd_args = {k: v for k, v in (("port", args.port), ("vlan", args.vlan)) if v is not None}
    if command == "config check":
        return config_check(cmd_args["file"], args.json)
    runtime_dir = args.runtime_dir or os.environ.get("VSWITCH_RUNTIME_DIR", DEFAULT_RUNTIME_DIR)
    if args.config:
        from .config import ConfigError, load_config
        try:
            runtime_dir = load_config(args.config).runtime_dir
        except (ConfigError, OSError) as exc:
            print(f"vswitchctl: {args.config}: {exc}", file=sys.stderr)
            return 1
    path = os.path.join(runtime_dir, "vswitchd.ctl")
    try:
        # a reload waits for ports to close and open: give it time
        reply = request(path, command, cmd_args, timeout=120.0 if command == "reload" else 10.0)
    except OSError as exc:
        print(f"vswitchctl: cannot reach vswitchd at {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        if args.json and reply.get("result") is not None:
            print(json.dumps(reply["result"], indent=2))
        print(f"vswitchctl: {reply.get('error')}", file=sys.stderr)
        return 1
    result = reply["result"]
    print(json.dumps(result, indent=2) if args.json else _render(command, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
