"""vswitchctl capture: pull a port's frames from vswitchd into a pcap file.

The control connection stays open for the whole capture: the daemon ends the
capture when it closes, however vswitchctl dies. Frames are fetched with
"capture read" every POLL_S seconds.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import sys
import time
from typing import BinaryIO

POLL_S = 0.05
# Classic pcap with nanosecond timestamps (the 0xa1b23c4d magic), Ethernet frames.
PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1


class PcapWriter:
    """pcap (not pcapng) writer: a 24-byte file header, then per frame a
    16-byte record header (seconds, nanoseconds, captured, original length)
    and the captured bytes. Little-endian, as the magic says to readers."""

    def __init__(self, out: BinaryIO, snaplen: int) -> None:
        self.out = out
        self.frames = 0
        out.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        out.flush()

    def write(self, ts_ns: int, orig_len: int, data: bytes) -> None:
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        self.out.write(struct.pack("<IIII", sec & 0xFFFFFFFF, nsec, len(data), orig_len))
        self.out.write(data)
        self.frames += 1


class _Conn:
    """One persistent JSON-lines connection to the control socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def request(self, command: str, args: dict | None = None) -> dict:
        self.sock.sendall((json.dumps({"command": command, "args": args or {}}) + "\n").encode())
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("vswitchd closed the control connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


def run_capture(path: str, port: str, out_path: str, direction: str = "both", count: int | None = None,
                duration: float | None = None, snaplen: int = 262144) -> int:
    """Exit code: 0 done, 1 failed. Stops after `count` frames, `duration`
    seconds, SIGINT/SIGTERM, or a closed output (a reader that went away)."""
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    try:
        conn = _Conn(path)
    except OSError as exc:
        print(f"vswitchctl: cannot reach vswitchd at {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        reply = conn.request("capture start", {"port": port, "direction": direction, "snaplen": snaplen})
        if not reply.get("ok"):
            print(f"vswitchctl: {reply.get('error')}", file=sys.stderr)
            return 1
        try:
            out = sys.stdout.buffer if out_path == "-" else open(out_path, "wb")
        except OSError as exc:
            print(f"vswitchctl: {out_path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        writer = PcapWriter(out, snaplen)
        lost = 0
        deadline = time.monotonic() + duration if duration is not None else None
        broken_output = False
        try:
            while True:
                done = stop or (deadline is not None and time.monotonic() >= deadline)
                try:
                    reply = conn.request("capture stop" if done else "capture read")
                except OSError as exc:       # vswitchd stopped: keep what we have
                    print(f"vswitchctl: lost vswitchd: {exc.strerror or exc}; "
                          f"{writer.frames} frames captured, {lost} lost", file=sys.stderr)
                    return 1
                if not reply.get("ok"):
                    print(f"vswitchctl: {reply.get('error')}; {writer.frames} frames captured, {lost} lost",
                          file=sys.stderr)
                    return 1
                result = reply["result"]
                lost = result["lost"]
                try:
                    for ts_ns, _dir, orig_len, b64 in result["frames"]:
                        if count is not None and writer.frames >= count:
                            break
                        if not broken_output:
                            writer.write(ts_ns, orig_len, base64.b64decode(b64))
                    if not broken_output:
                        out.flush()       # `-w -`: the reader sees frames as they come
                except BrokenPipeError:
                    broken_output = True  # the reader went away: stop the capture cleanly
                if done:
                    break
                if count is not None and writer.frames >= count:
                    stop = True          # next request is "capture stop"
                    continue
                if broken_output:
                    stop = True
                    continue
                time.sleep(POLL_S)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if out is not sys.stdout.buffer:
                out.close()
            elif broken_output:
                # what is still buffered can go nowhere: keep Python's exit flush quiet
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
        print(f"{writer.frames} frames captured, {lost} lost", file=sys.stderr)
        return 0
    except (OSError, ValueError) as exc:
        print(f"vswitchctl: capture of {port}: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
