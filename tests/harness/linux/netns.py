"""Network namespaces for tests, through iproute2.

    with NetNs(f"vst{os.getpid()}n") as ns:
        move_link("vst123x", ns.name)
        ns.run(["ip", "addr", "add", "10.9.0.1/24", "dev", "vst123x"])
        ns.run(["ip", "link", "set", "vst123x", "up"])

A TAP moved into a namespace keeps working through the fds opened in the
root namespace (tests/unit/test_tap.py checks it); it comes up *down* there.
Deleting a namespace destroys the TUN/TAP devices inside it (asynchronously:
the namespace goes when its last reference does); fds on them then fail with
EBADFD.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

IP = "ip"


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    p = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join("/run/netns", name))


def link_exists(ifname: str, netns: str | None = None) -> bool:
    args = (["-n", netns] if netns else []) + ["link", "show", "dev", ifname]
    return _ip(*args, check=False).returncode == 0


def move_link(ifname: str, netns: str) -> None:
    """Move network device `ifname` from our namespace into namespace `netns`."""
    _ip("link", "set", "dev", ifname, "netns", netns)


def delete_link(ifname: str, netns: str | None = None) -> bool:
    """Delete `ifname` (in `netns` if given); False if there was none."""
    args = (["-n", netns] if netns else []) + ["link", "del", "dev", ifname]
    return _ip(*args, check=False).returncode == 0


def wait_for(pred, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class NetNs:
    """A named network namespace: created on enter (with `lo` up), deleted on exit."""

    def __init__(self, name: str) -> None:
        if not name or "/" in name or len(name) > 64:
            raise ValueError(f"bad namespace name {name!r}")
        self.name = name

    def create(self) -> NetNs:
        if netns_exists(self.name):  # left over from a crashed run with our name
            _ip("netns", "del", self.name, check=False)
        _ip("netns", "add", self.name)
        self.run([IP, "link", "set", "lo", "up"])
        return self

    def delete(self) -> None:
        if netns_exists(self.name):
            _ip("netns", "del", self.name, check=False)

    def __enter__(self) -> NetNs:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.delete()

    def run(self, cmd: Sequence[str] | str, *, check: bool = True, timeout: float = 30.0,
            **kw) -> subprocess.CompletedProcess:
        """Run `cmd` (argv list, or a string for ``sh -c``) inside the namespace."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        p = subprocess.run([IP, "netns", "exec", self.name, *argv], timeout=timeout, **kw)
        if check and p.returncode:
            raise RuntimeError(f"in netns {self.name}: {argv}: exit {p.returncode}: "
                               f"{(p.stderr or '').strip() if isinstance(p.stderr, str) else p.stderr}")
        return p

    def popen(self, cmd: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen([IP, "netns", "exec", self.name, *cmd], **kw)

    def move_in(self, ifname: str) -> None:
        move_link(ifname, self.name)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NAME args...``"""
        return _ip("-n", self.name, *args, check=check)


def snmp(text: str, proto: str, field: str) -> int:
    """One counter of /proc/net/snmp's text: `proto` ("Tcp", "Udp", ...), `field` ("InCsumErrors")."""
    lines = [line.split() for line in text.splitlines() if line.startswith(f"{proto}:")]
    return int(lines[1][lines[0].index(field)])
