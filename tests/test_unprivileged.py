"""vswitchd as an unprivileged user (docs/service.md), started with setpriv.

* as `nobody` with CAP_NET_ADMIN as an ambient capability (systemd's
  User= with AmbientCapabilities=CAP_NET_ADMIN): a vhost-user port for the
  test front-end and a TAP port it creates; frames from the front-end reach
  the kernel through the TAP;
* as `nobody` with no capability at all: vhost-user ports forward, a VXLAN
  port binds, and a persistent TAP made for that user (`ip tuntap add ...
  user nobody`) is attached;
* what needs a privilege the user lacks fails with a message naming it, and
  costs only that port.

The runtime directory lives in a directory `nobody` owns (pytest's tmp_path
is root's, mode 0700). Needs root (to switch user), setpriv (util-linux) and
/dev/net/tun.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness.linux.netns import link_exists
from tests.harness.switch import Vswitchd
from tests.harness.traffic import connect, exchange_by_name, frame
from vswitch import privileges, seccomp

NOBODY = 65534            # nobody / nogroup on Debian
CAP_NET_ADMIN = 12

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]


def as_nobody(*caps: str) -> list[str]:
    """setpriv as systemd runs User=nobody with AmbientCapabilities=caps."""
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if caps:
        listed = ",".join(f"+{c}" for c in caps)
        argv += [f"--inh-caps={listed}", f"--ambient-caps={listed}"]
    return [*argv, "--"]


@pytest.fixture
def workdir():
    top = Path(tempfile.mkdtemp(prefix="vswitch-nobody-"))
    top.chmod(0o755)
    os.chown(top, NOBODY, NOBODY)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def ifname():
    name = f"vsn{os.getpid() % 100000}"
    yield name
    subprocess.run(["ip", "link", "del", name], capture_output=True)


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def sysfs_int(ifname: str, attr: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/{attr}").read_text())


def test_nobody_with_net_admin_serves_vhost_user_and_a_tap(workdir, ifname):
    sw = Vswitchd(workdir, {"fe": {"type": "vhost-user"},
                            "up": {"type": "tap", "ifname": ifname, "mtu": 1400}},
                  wrapper=as_nobody("net_admin"))
    with sw:
        st = proc_status(sw.proc.pid)
        assert st["Uid"].split()[:2] == [str(NOBODY)] * 2 and st["Gid"].split()[0] == str(NOBODY)
        assert int(st["CapEff"], 16) == 1 << CAP_NET_ADMIN
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"
        assert privileges.effective_capabilities(sw.proc.pid) == {"cap_net_admin"}
        sw.wait_port("up", lambda p: p["state"] == "up", timeout=10, what="TAP attached")
        assert sysfs_int(ifname, "mtu") == 1400
        assert os.stat(sw.socket("fe")).st_uid == NOBODY

        fe = connect(sw, "fe")
        sw.wait_port("fe", lambda p: p["state"] == "connected", timeout=10, what="connected")
        before = sysfs_int(ifname, "statistics/rx_packets")
        for seq in range(10):
            fe.tx(0).post_tx(frame(b"\xff" * 6, "a", seq, 100))    # flooded into the TAP
        deadline = time.monotonic() + 10
        while sysfs_int(ifname, "statistics/rx_packets") < before + 10:
            assert time.monotonic() < deadline, sw.log_tail()
            time.sleep(0.05)
        show = sw.ctl("show")
        assert show["security"]["privileges"] == (f"uid {NOBODY} (nobody), gid {NOBODY} (nogroup), "
                                                  "capabilities: cap_net_admin")
    log = sw.log_path.read_text()
    assert " ERROR " not in log and "Traceback" not in log, log


def test_nobody_without_capabilities_forwards_between_guests(workdir, ifname):
    """No capability at all: vhost-user and VXLAN ports, and a persistent TAP
    created for the daemon's user beforehand (up, no mtu to set)."""
    subprocess.run(["ip", "tuntap", "add", "dev", ifname, "mode", "tap", "multi_queue", "vnet_hdr",
                    "user", str(NOBODY)], check=True)
    subprocess.run(["ip", "link", "set", ifname, "up"], check=True)
    udp_port = 20000 + os.getpid() % 20000
    sw = Vswitchd(workdir, {"a": {"type": "vhost-user"}, "b": {"type": "vhost-user"},
                            "up": {"type": "tap", "ifname": ifname, "create": False},
                            "vx": {"type": "vxlan", "local": "127.0.0.1", "remotes": ["127.0.0.2"],
                                   "vni": 9, "udp_port": udp_port}},
                  wrapper=as_nobody())
    with sw:
        st = proc_status(sw.proc.pid)
        assert int(st["CapEff"], 16) == 0 and st["Uid"].split()[0] == str(NOBODY)
        assert seccomp.status(sw.proc.pid)["Seccomp"] == 2
        a, b = connect(sw, "a"), connect(sw, "b")
        exchange_by_name(a, b, "a", "b")
        exchange_by_name(b, a, "b", "a")
        sw.wait_port("vx", lambda p: p["state"] == "up", timeout=10, what="VXLAN bound")
        sw.wait_port("up", lambda p: p["state"] == "up", timeout=10, what="persistent TAP attached")
    log = sw.log_path.read_text()
    assert "capabilities: none" in log
    assert " ERROR " not in log and "Traceback" not in log, log


def test_what_needs_a_capability_says_which(workdir, ifname):
    sw = Vswitchd(workdir, {"owned": {"type": "vhost-user", "socket_owner": 0},
                            "fine": {"type": "vhost-user"},
                            "up": {"type": "tap", "ifname": ifname}},
                  extra={"control": {"group": 0}}, wrapper=as_nobody())
    with sw:
        owned = sw.port("owned")
        assert "cannot give the socket to user 0: Operation not permitted (needs CAP_CHOWN" \
            in owned["last_error"], owned
        assert not os.path.exists(sw.socket("owned"))      # never listened with the wrong owner
        assert sw.port("fine")["state"] == "listening"
        up = sw.wait_port("up", lambda p: p["last_error"], timeout=10, what="TAP error")
        assert "TUNSETIFF: not permitted (needs CAP_NET_ADMIN" in up["last_error"], up
        assert not link_exists(ifname)
    log = sw.log_path.read_text()
    assert ("cannot give it to group 0: Operation not permitted (needs CAP_CHOWN, unless the "
            "daemon's user is a member of the group)") in log
    assert "Traceback" not in log
