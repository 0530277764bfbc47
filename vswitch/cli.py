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


def _render_port(port: dict) -> str:
    where = port["socket"] or port.get("ifname")
    lines = [f"port {port['name']} ({port['type']}, {port['mode']}, {where}): {port['state']}",
             f"  connections {port['connections']}, disconnects {port['disconnects']}, "
             f"protocol errors {port['protocol_errors']}",
             f"  queues offered {port['queues_offered']}, enabled {port['queues_enabled']}"]
    if port.get("features"):
        lines.append("  features: " + " ".join(port["features"]))
    if port.get("protocol_features"):
        lines.append("  protocol features: " + " ".join(port["protocol_features"]))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vswitchctl", description="control a running vswitchd")
    parser.add_argument("--runtime-dir", default=os.environ.get("VSWITCH_RUNTIME_DIR", DEFAULT_RUNTIME_DIR))
    parser.add_argument("-j", "--json", action="store_true", help="print the reply as JSON")
    parser.add_argument("command", nargs="+", help="show | port list | port show NAME | fdb show | version")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    words = args.command
    cmd_args: dict = {}
    if words[:2] == ["port", "show"] and len(words) == 3:
        command, cmd_args = "port show", {"name": words[2]}
    elif " ".join(words) in ("show", "port list", "fdb show", "version"):
        command = " ".join(words)
    else:
        print(f"vswitchctl: unknown command: {' '.join(words)}", file=sys.stderr)
        return 2
    path = os.path.join(args.runtime_dir, "vswitchd.ctl")
    try:
        reply = request(path, command, cmd_args)
    except OSError as exc:
        print(f"vswitchctl: cannot reach vswitchd at {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"vswitchctl: {reply.get('error')}", file=sys.stderr)
        return 1
    result = reply["result"]
    if args.json:
        print(json.dumps(result, indent=2))
    elif command == "show":
        print(f"vswitchd {result['version']} pid {result['pid']} config {result['config']}")
        for port in result["ports"]:
            print(_render_port(port))
    elif command == "port show":
        print(_render_port(result))
    elif command == "port list":
        for p in result:
            print(f"{p['name']:16} {p['type']:12} {p['state']:12} {p['socket'] or ''}")
    elif command == "fdb show":
        for e in result:
            print(f"{e['mac']}  {e['port']}")
    else:
        print(f"vswitchd {result['version']} (vswitchctl {__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
